"""Which W&B mode a run uses, and whether W&B credentials are configured, found in wandb's own order.

wandb (0.31, sdk/lib/wbauth/authenticate.py) looks for credentials in $WANDB_API_KEY, then
$WANDB_IDENTITY_TOKEN_FILE, then a netrc file ($NETRC, else ~/.netrc, else ~/_netrc) for the host of the server
URL, then the `api_key` of its settings files. The server URL is $WANDB_BASE_URL, else the settings files'
`base_url`, else W&B's cloud. The settings files are the global one ($WANDB_CONFIG_DIR/settings, else
~/.config/wandb/settings) and the workspace one (wandb/settings under $WANDB_DIR or the current folder, written by
`wandb offline`), which wins.
Nothing here imports wandb: a mode is chosen before W&B starts.
"""
from __future__ import annotations

import configparser
import netrc
import os
from pathlib import Path
from urllib.parse import urlsplit

from sweepcnn.errors import UserError

MODES = ("online", "offline", "disabled")
# W&B's cloud under both of its names: `wandb login` of wandb >= 0.31 writes the first, older versions the second.
CLOUD_HOSTS = ("api.forge.coreweave.com", "api.wandb.ai")
_CLOUD_NAMES = {*CLOUD_HOSTS, "forge.coreweave.com"}


def settings_files() -> list[Path]:
    """W&B's settings files, lowest precedence first."""
    config_dir = os.environ.get("WANDB_CONFIG_DIR")
    global_file = Path(config_dir).expanduser() / "settings" if config_dir else Path("~/.config/wandb/settings")
    root = Path(os.environ.get("WANDB_DIR") or ".").expanduser()
    workspace = root / ".wandb" if (root / ".wandb").exists() else root / "wandb"
    return [global_file.expanduser(), workspace / "settings"]


def file_settings() -> dict[str, tuple[str, Path]]:
    """The settings files' `[default]` keys, each with the file it came from (the workspace file wins)."""
    found: dict[str, tuple[str, Path]] = {}
    for path in settings_files():
        parser = configparser.ConfigParser()
        try:
            parser.read(path)
        except (OSError, configparser.Error):
            continue  # wandb warns about an unreadable file and ignores it
        if parser.has_section("default"):
            found.update({key: (value, path) for key, value in parser.items("default")})
    return found


def server_hosts(settings: dict[str, tuple[str, Path]]) -> tuple[str, ...]:
    """The netrc machine names of the configured server (host[:port] of its URL)."""
    url = os.environ.get("WANDB_BASE_URL") or settings.get("base_url", ("",))[0]
    if not url:
        return CLOUD_HOSTS
    parts = urlsplit(url)
    return CLOUD_HOSTS if parts.hostname in _CLOUD_NAMES else (parts.netloc,)


def netrc_path() -> Path:
    """The netrc file wandb reads: $NETRC, else ~/.netrc if it exists, else ~/_netrc if it exists."""
    if os.environ.get("NETRC"):
        return Path(os.environ["NETRC"]).expanduser()
    unix = Path("~/.netrc").expanduser()
    windows = Path("~/_netrc").expanduser()
    return windows if not unix.exists() and windows.exists() else unix


def _netrc_has_key(path: Path, hosts: tuple[str, ...]) -> bool:
    try:
        entries = netrc.netrc(str(path))
    except (OSError, netrc.NetrcParseError):
        return False  # wandb too ignores a missing or unparsable netrc
    return any((entries.authenticators(host) or ("", "", ""))[2] for host in hosts)


def credentials_source() -> str | None:
    """Where wandb would find credentials for the configured server (an environment variable or a file), or None."""
    api_key, token_file = os.environ.get("WANDB_API_KEY"), os.environ.get("WANDB_IDENTITY_TOKEN_FILE")
    if api_key and token_file:
        raise UserError("both WANDB_API_KEY and WANDB_IDENTITY_TOKEN_FILE are set, which wandb refuses: unset one")
    if api_key:
        return "WANDB_API_KEY"
    if token_file:
        return "WANDB_IDENTITY_TOKEN_FILE"
    settings = file_settings()
    if _netrc_has_key(netrc_path(), server_hosts(settings)):
        return str(netrc_path())
    if settings.get("api_key", ("",))[0]:
        return str(settings["api_key"][1])
    return None


def chosen_mode(flag: str | None) -> tuple[str | None, str]:
    """(mode as given, what gave it): --wandb_mode, else $WANDB_MODE, else the settings files' `mode` (which
    `wandb offline` writes); (None, "the default") when none of them sets it."""
    if flag:
        return flag, "--wandb_mode"
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"], "WANDB_MODE"
    setting = file_settings().get("mode")
    return (setting[0], str(setting[1])) if setting else (None, "the default")


def resolve_mode(flag: str | None) -> str:
    """The chosen mode, else online when credentials are configured and offline otherwise (so nothing blocks on a
    login prompt). Online without credentials is a UserError."""
    mode, source = chosen_mode(flag)
    if mode is None:
        return "online" if credentials_source() else "offline"
    mode = {"dryrun": "offline", "run": "online"}.get(mode, mode)
    if mode not in MODES:
        raise UserError(f"W&B mode {mode!r} (from {source}) is not valid: use one of {', '.join(MODES)}")
    if mode == "online" and not credentials_source():
        raise UserError(f"W&B mode online (from {source}) but no W&B credentials are configured: run `wandb login` "
                        "(or set WANDB_API_KEY), or use --wandb_mode offline")
    return mode
