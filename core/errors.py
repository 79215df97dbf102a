"""The one exception type that the command-line entry points turn into a one-line error and exit code 2."""


class UserError(Exception):
    """Bad input from the user (a flag, a config value, a data folder): the message says what to fix."""
