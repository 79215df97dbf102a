"""A run's folder: its name, whether it can be written, and whether a command starts, resumes or leaves it alone.

Every check here runs before anything in the folder is written: a refused command changes nothing on disk.
"""
from __future__ import annotations

import json
import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sweepcnn.config import Option, load_yaml_config, parse_value
from sweepcnn.errors import UserError
from sweepcnn.io import atomic_write, check_writable, nearest_existing, write_json
from sweepcnn.tracking import read_summary
from sweepcnn.wandb_args import under_sweep
from sweepcnn.train.run_lock import check_free

# Flags that describe how to run, not what to train: they may differ when a run is resumed.
RUNTIME_KEYS = {"out_dir", "run_name", "resume", "test", "report", "epochs", "patience", "num_workers", "device",
                "compile", "deterministic", "cache_dir", "wandb_mode", "wandb_project", "wandb_entity",
                "wandb_log_model", "wandb_tags", "wandb_notes", "wandb_group", "wandb_watch", "report_table_rows"}
# A run folder's own keys, where and how that run ran: a new run started from its config.yaml does not take them.
OWN_KEYS = ("out_dir", "run_name", "resume", "device", "num_workers", "compile", "cache_dir", "wandb_mode",
            "wandb_project", "wandb_entity", "wandb_group", "wandb_notes")
DONE = ("finished", "stopped")  # a relaunch of a run in one of these states trains nothing more
_SPLITS = ("train", "val", "test")


def load_config_file(path: str, options: dict[str, Option]) -> dict[str, Any]:
    """A --config file's values (sweepcnn.config.load_yaml_config); from a run folder's own config.yaml, without
    OWN_KEYS, so `--config runs/X/config.yaml --learning_rate 3e-4` starts a new run with X's recipe."""
    config = load_yaml_config(path, options)
    folder = Path(path).parent
    if not (Path(path).name == "config.yaml" and (folder / "split.json").is_file()):
        return config
    dropped = [k for k in OWN_KEYS if k in config and config[k] != options[k].default]
    if dropped:
        print(f"note: --config {path} is a run folder's config: its {', '.join(dropped)} (where and how that run "
              "ran) are not carried into this run", file=sys.stderr)
    return {k: v for k, v in config.items() if k not in OWN_KEYS}


def check_run_name(name: str, flag: str = "--run_name", out_dir: Path = Path(".")) -> None:
    if name in ("", ".") or ".." in name or "/" in name or "\\" in name or "\0" in name:
        raise UserError(f"{flag}: {name!r} is not a plain folder name (no path separators, no '..'): the run folder "
                        "must be a direct sub-folder of --out_dir")
    try:
        limit = os.pathconf(nearest_existing(out_dir), "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    if len(name.encode()) > limit:
        raise UserError(f"{flag}: {name[:40]!r}... is {len(name.encode())} bytes long: the file system of --out_dir "
                        f"takes folder names of at most {limit} bytes; pick a shorter name")


def file_stamps(source: str, record: dict) -> dict[str, list[int]]:
    """Size and mtime of every image file of a split record, as the image cache keys them."""
    if source == "digits":  # built in: no files
        return {}
    stamps = {}
    for part in _SPLITS:
        for name, _ in record[part]:
            try:
                st = (Path(source) / name).stat()
                stamps[name] = [st.st_size, st.st_mtime_ns]
            except OSError:
                stamps[name] = [-1, -1]
    return stamps


def _same(key: str, a: Any, b: Any) -> bool:
    if key == "data" and a != b and a not in ("digits", "inaturalist"):
        return Path(str(a)).expanduser().resolve() == Path(str(b)).expanduser().resolve()
    return a == b


def _seen(path: Path) -> tuple:
    """What phase 1 decided from: config.yaml's bytes and last.pt's size and mtime (None where missing)."""
    config, last = path / "config.yaml", path / "last.pt"
    return (config.read_bytes() if config.is_file() else None,
            (last.stat().st_size, last.stat().st_mtime_ns) if last.is_file() else None)


@dataclass
class RunFolder:
    """What a command does with `<out_dir>/<run_name>`: start it, resume it, or nothing (`done`: its status)."""

    path: Path
    cfg: dict
    done: str | None = None
    seen: tuple = (None, None)  # _seen(path) when phase 1 looked

    @property
    def resume(self) -> bool:
        return self.cfg["resume"]

    def check_data(self, record: dict) -> None:
        """On resume: the data must be what the run started with (same split, same files by size and mtime)."""
        path = self.path / "split.json"
        if not self.resume or not path.exists():
            return
        old = json.loads(path.read_text())
        source = old.get("source", "")
        if {k: old.get(k) for k in _SPLITS} != {k: record[k] for k in _SPLITS}:
            raise UserError(f"--resume: the data under {source} changed since the run started (split differs from "
                            f"{path}); start a new run instead")
        stamps = file_stamps(source, old) if "stamps" in old else {}
        changed = [name for name, stamp in stamps.items() if old["stamps"].get(name) != stamp]
        if changed:
            raise UserError(f"--resume: {len(changed)} image file(s) under {source} changed since the run started "
                            f"(size or modification time), first: {changed[0]}; start a new run instead")

    def check_unchanged(self) -> None:
        """Under the run folder's lock: the folder is as phase 1 saw it (no other process started or trained it
        since), so what phase 1 decided still holds."""
        now = _seen(self.path)
        if now == self.seen:
            return
        if self.seen[0] is None:
            raise _exists(self.path)
        raise UserError(f"run folder {self.path} changed while this command was starting (another process trained "
                        "it meanwhile): run the command again")


def _exists(path: Path) -> UserError:
    return UserError(f"run folder {path} already exists: add --resume to continue it, or pick another --run_name")


def write_run_files(path: Path, cfg: dict, options: dict[str, Option], record: dict) -> None:
    """config.yaml and split.json (with each file's size and mtime)."""
    atomic_write(path / "config.yaml", yaml.safe_dump({k: cfg[k] for k in options}, sort_keys=False))
    write_json(path / "split.json", {**record, "stamps": file_stamps(record["source"], record)})


def _new_run_name() -> str:
    return os.environ.get("WANDB_RUN_ID") or f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def open_run(cfg: dict, explicit: set[str], options: dict[str, Option], program: str) -> RunFolder:
    """Decide, without writing anything, what this command (`program`, e.g. part_a/train.py) does with its run
    folder. A relaunch of an existing run (the same WANDB_RUN_ID, or any existing run under a sweep) resumes it, or
    does nothing if it is done. A folder a live process holds is refused (sweepcnn.train.run_lock)."""
    out_dir = Path(cfg["out_dir"]).expanduser()
    if cfg["run_name"]:
        check_run_name(cfg["run_name"], out_dir=out_dir)
    elif cfg["resume"]:
        raise UserError("--resume needs --run_name (the folder under --out_dir to continue)")
    name = cfg["run_name"] or _new_run_name()
    check_run_name(name, "--run_name (from WANDB_RUN_ID)", out_dir)
    path = out_dir / name
    cfg = {**cfg, "run_name": name}
    if path.is_dir():
        check_free(path)
    seen = _seen(path)  # before deciding from it: phase 2 checks under the lock that it still holds
    started = seen[0] is not None
    relaunch = started and not cfg["resume"] and (under_sweep() or os.environ.get("WANDB_RUN_ID") == name)
    if relaunch:
        status = read_summary(path).get("status")
        if status in DONE:
            return RunFolder(path, cfg, done=status)
        print(f"note: {path} exists (status {status or 'unknown'}): resuming it, a relaunch of run {name}",
              file=sys.stderr)
    elif not cfg["resume"]:
        if started:
            raise _exists(path)
        check_writable(path if path.exists() else path.parent, "--out_dir")
        return RunFolder(path, cfg, seen=seen)
    elif not started:
        if not path.is_dir():
            raise UserError(f"--resume: no run folder {path}: is --out_dir/--run_name right?")
        print(f"note: {path} has no config.yaml: the run never started (it was stopped during start-up); starting "
              "it now with the flags given", file=sys.stderr)
        check_writable(path, "--out_dir")
        return RunFolder(path, {**cfg, "resume": False}, seen=seen)
    check_writable(path, "--resume: the run folder", remedy="a run resumes in its own folder: make it writable, "
                   "or copy it to a folder you can write and resume the copy there (--out_dir)")
    return RunFolder(path, _resumed_config(path, cfg, explicit, options, program), seen=seen)


def _check_program(path: Path, saved: dict, options: dict[str, Option], program: str) -> None:
    """The run was made by this program: run.json names the program (or its part's rebuild function) that made it,
    and its config.yaml holds only options of this program."""
    try:
        record = json.loads((path / "run.json").read_text())
    except (OSError, json.JSONDecodeError):
        record = {}
    record = record if isinstance(record, dict) else {}
    maker = record.get("program") or str(record.get("rebuild") or "").partition(".")[0] or "another program"
    foreign = sorted(k for k in saved if k not in options)
    if (record.get("program") and record["program"] != program) or foreign:
        keys = f" (its config.yaml has {', '.join(foreign[:4])}, which {program} does not take)" if foreign else ""
        raise UserError(f"--resume: run folder {path} was made by {maker}, not by {program}{keys}: resume it with "
                        f"the program that made it")


def _resumed_config(path: Path, cfg: dict, explicit: set[str], options: dict[str, Option], program: str) -> dict:
    try:
        saved = yaml.safe_load((path / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"--resume: cannot read {path / 'config.yaml'}: {exc}".splitlines()[0]) from None
    if not isinstance(saved, dict):
        raise UserError(f"--resume: {path / 'config.yaml'} does not hold a mapping of option: value")
    _check_program(path, saved, options, program)
    resumed = {k: parse_value(k, options[k], v) for k, v in saved.items()}
    changed = [k for k in sorted(explicit - RUNTIME_KEYS) if k in resumed and not _same(k, resumed[k], cfg[k])]
    if changed:
        given = ", ".join(f"--{k} (run: {resumed[k]!r}, given: {cfg[k]!r})" for k in changed)
        may = ", ".join(f"--{k}" for k in sorted(RUNTIME_KEYS - {"out_dir", "run_name", "resume"}) if k in options)
        raise UserError(f"--resume: {given} cannot change when a run is resumed: the flags that define the model, "
                        f"the data and the training (architecture, --strategy, --data, optimiser, ...) are fixed; "
                        f"only {may} may change; start a new run (another --run_name) to change the others")
    return {**cfg, **resumed, **{k: cfg[k] for k in explicit}, "out_dir": cfg["out_dir"],
            "run_name": cfg["run_name"], "resume": True}
