"""Typed options, `--key=value` command lines and YAML config files with command-line overrides.

Every config key is also a CLI flag and a sweep parameter name. A run's config is a flat dict: defaults, then each
`--config file.yaml` in the order given (a later file wins over an earlier one), then the flags given on the command
line, which win over every file.
"""
from __future__ import annotations

import difflib
import math
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from sweepcnn.errors import UserError

KINDS = ("int", "float", "str", "bool", "ints", "strs")
_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}
_NONE = {"none", "null", ""}


@dataclass(frozen=True)
class Option:
    """One config key. `kind` is one of KINDS ("ints"/"strs" are comma-separated lists on the command line)."""

    default: Any
    help: str
    kind: str = "str"
    choices: tuple = ()
    min: float | None = None
    max: float | None = None
    nullable: bool = False
    length: int | None = None  # exact list length for "ints"/"strs"
    group: str = ""  # the --help heading it is listed under (see `grouped`)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown option kind {self.kind!r}")


def grouped(title: str, options: dict[str, Option]) -> dict[str, Option]:
    """`options` listed under the heading `title` in --help."""
    return {name: replace(opt, group=title) for name, opt in options.items()}


def _scalar(text: str, kind: str) -> Any:
    if kind == "int":
        value = float(text)
        if not value.is_integer():
            raise ValueError
        return int(value)
    if kind == "float":
        value = float(text)
        if not math.isfinite(value):
            raise ValueError
        return value
    if kind == "bool":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError
    return text


def _describe(opt: Option) -> str:
    what = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
            "ints": "comma-separated integers", "strs": "comma-separated names"}[opt.kind]
    if opt.choices:
        what = "one of " + ", ".join(map(str, opt.choices))
        if opt.kind in ("ints", "strs"):
            what = "comma-separated values from: " + ", ".join(map(str, opt.choices))
    if opt.min is not None and opt.max is not None:
        what += f" in [{opt.min}, {opt.max}]"
    elif opt.min is not None:
        what += f" >= {opt.min}"
    elif opt.max is not None:
        what += f" <= {opt.max}"
    if opt.length:
        what += f" ({opt.length} of them)"
    return what + (" (or none)" if opt.nullable else "")


def parse_value(name: str, opt: Option, raw: Any) -> Any:
    """Convert a command-line string or a YAML value to the option's type, or raise UserError naming the flag."""
    if raw is None or (isinstance(raw, str) and raw.strip().lower() in _NONE and raw.strip() not in opt.choices):
        if opt.nullable:
            return None
        raise UserError(f"--{name}: a value is required: expected {_describe(opt)}")
    try:
        if opt.kind in ("ints", "strs"):
            if isinstance(raw, str) and raw.strip().startswith("["):  # a W&B agent's str(list): [a, 'b']
                raw = yaml.safe_load(raw)
            items = raw if isinstance(raw, (list, tuple)) else str(raw).replace(" ", "").split(",")
            scalar_kind = "int" if opt.kind == "ints" else "str"
            values = [_scalar(str(item).strip(), scalar_kind) for item in items if str(item).strip() != ""]
            value: Any = values
        else:
            if isinstance(raw, bool) and opt.kind != "bool":
                raise ValueError
            value = _scalar(str(raw).strip(), opt.kind)
            values = [value]
    except (TypeError, ValueError, yaml.YAMLError):
        raise UserError(f"--{name}: expected {_describe(opt)}, got {raw!r}") from None
    if opt.length is not None and len(values) != opt.length:
        raise UserError(f"--{name}: expected {_describe(opt)}, got {len(values)} value(s): {raw!r}")
    if opt.kind in ("ints", "strs") and not values:
        raise UserError(f"--{name}: expected {_describe(opt)}, got an empty list")
    for v in values:
        if opt.choices and v not in opt.choices:
            close = difflib.get_close_matches(str(v), [str(c) for c in opt.choices], n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UserError(f"--{name}: {v!r} is not valid{hint}: expected {_describe(opt)}")
        if (opt.min is not None and v < opt.min) or (opt.max is not None and v > opt.max):
            raise UserError(f"--{name}: {v!r} is out of range: expected {_describe(opt)}")
    return value


def _unknown(name: str, options: dict[str, Option], where: str) -> UserError:
    close = difflib.get_close_matches(name, list(options), n=1)
    hint = f" (did you mean --{close[0]}?)" if close else ""
    return UserError(f"{where}: unknown option {name!r}{hint}; run with --help for the list")


def read_yaml_mapping(path: str | Path, where: str) -> dict:
    """A YAML file's mapping; a UserError starting with `where` if it is missing, unreadable or not a mapping."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise UserError(f"{where}: file not found: {path}") from None
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{where}: cannot read {path}: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise UserError(f"{where}: {path} must hold a mapping of option: value")
    return data


def load_yaml_config(path: str | Path, options: dict[str, Option]) -> dict[str, Any]:
    """Read a flat YAML mapping of option values. W&B's `{key: {value: v}}` form is accepted too."""
    data = read_yaml_mapping(path, "--config")
    config = {}
    for key, raw in data.items():
        if isinstance(raw, dict) and "value" in raw:
            raw = raw["value"]
        key = str(key)
        if key.startswith("_wandb") or key == "wandb_version":
            continue
        if key not in options:
            raise _unknown(key, options, f"--config {path}")
        config[key] = parse_value(key, options[key], raw)
    return config


def format_help(prog: str, description: str, options: dict[str, Option]) -> str:
    """The usage line, then the flags under their groups' headings (ungrouped ones first, under "options:")."""
    groups: dict[str, list[str]] = {"": []}
    for name, opt in options.items():
        groups.setdefault(opt.group, []).append(name)
    lines = [f"usage: {prog} [--config FILE.yaml ...] [--key=value ...]", "", description]
    for title, names in groups.items():
        lines += ["", f"{title or 'options'}:"]
        if not title:
            lines.append(f"  {'--config FILE.yaml':34} config file (YAML option: value); several are applied in the "
                         "order given, a later one winning, and flags given on the command line win over every file")
        for name in names:
            opt = options[name]
            default = ",".join(map(str, opt.default)) if isinstance(opt.default, (list, tuple)) else opt.default
            lines.append(f"  --{name + '=' + opt.kind.upper():32} {opt.help} [{_describe(opt)}; default: {default}]")
    return "\n".join(lines)


def exit_on_help(argv: Iterable[str], options: dict[str, Option], prog: str, description: str) -> None:
    """With `-h` or `--help` anywhere in argv (not as a flag's value: `--wandb_notes -h`), print the generated help
    and exit 0."""
    args = list(argv)
    for i, arg in enumerate(args):
        if arg in ("-h", "--help") and not (i and _takes_a_value(args[i - 1], options)):
            print(format_help(prog, description, options))
            sys.exit(0)


def _takes_a_value(arg: str, options: dict[str, Option]) -> bool:
    """Whether `arg` is a flag that takes the next argument as its value (as parse_args reads them)."""
    name = arg[2:].replace("-", "_")
    if not arg.startswith("--") or "=" in arg:
        return False
    return name == "config" or (name in options and options[name].kind != "bool")


def parse_args(argv: Iterable[str], options: dict[str, Option], prog: str = "", description: str = "",
               load_file: Callable[[str, dict[str, Option]], dict[str, Any]] = load_yaml_config
               ) -> tuple[dict[str, Any], set[str]]:
    """Parse `--key=value`/`--key value` flags. Returns (config, keys given explicitly on the command line or in
    a --config file). Config files (read by `load_file`) apply in order, then the flags. A bare boolean flag
    (`--test`) means true. Arguments starting with `--_` (W&B agent internals) are ignored. `-h`/`--help` prints the
    generated help and exits 0."""
    args = list(argv)
    exit_on_help(args, options, prog, description)
    flags: dict[str, Any] = {}
    config_files: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("--"):
            raise UserError(f"unexpected argument {arg!r}: flags look like --key=value")
        name, has_value, value = arg[2:].partition("=")
        if name.startswith("_"):
            continue
        name = name.replace("-", "_")
        if name == "config":
            if not has_value:
                if i >= len(args):
                    raise UserError("--config: a file path is required")
                value, i = args[i], i + 1
            config_files.append(value)
            continue
        if name not in options:
            raise _unknown(name, options, "command line")
        if not has_value:
            takes_next = i < len(args) and not args[i].startswith("--")
            if options[name].kind == "bool" and not (takes_next and args[i].lower() in _TRUE | _FALSE):
                value = "true"
            elif takes_next:
                value, i = args[i], i + 1
            else:
                raise UserError(f"--{name}: a value is required: expected {_describe(options[name])}")
        flags[name] = parse_value(name, options[name], value)
    config = {name: opt.default for name, opt in options.items()}
    from_files: dict[str, Any] = {}
    for path in config_files:
        from_files.update(load_file(path, options))
    config.update(from_files)
    config.update(flags)
    return config, set(from_files) | set(flags)


def run_cli(main: Callable[[list[str]], int | None]) -> None:
    """Run `main(sys.argv[1:])`; a UserError becomes `error: ...` on stderr and exit code 2, without a traceback."""
    try:
        code = main(sys.argv[1:])
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:  # output piped into a reader that stopped early (`--help | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at interpreter exit
        sys.exit(1)
    sys.exit(code or 0)
