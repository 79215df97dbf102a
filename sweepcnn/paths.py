"""Where the project keeps caches (downloads, decoded images) unless told otherwise."""
import os
from pathlib import Path


def default_cache_dir() -> Path:
    """`$SWEEPCNN_CACHE`, else `$XDG_CACHE_HOME/sweepcnn`, else `~/.cache/sweepcnn`."""
    if os.environ.get("SWEEPCNN_CACHE"):
        return Path(os.environ["SWEEPCNN_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sweepcnn"
