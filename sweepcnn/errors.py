"""The one exception type that the command-line entry points turn into a one-line error and exit code 2, and an
argparse parser that raises it."""
import argparse
from typing import NoReturn


class UserError(Exception):
    """Bad input from the user (a flag, a config value, a data folder): the message says what to fix."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are UserErrors: one line and exit code 2 under sweepcnn.config.run_cli."""

    def error(self, message: str) -> NoReturn:
        raise UserError(message)
