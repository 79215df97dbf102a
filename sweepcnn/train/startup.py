"""Phase 1 of a run's start-up: read and check everything, write nothing.

A start-up runs in two phases. This one resolves the config (flags, --config files in order, the W&B agent's
parameters), decides what happens to the run folder (new, resumed, relaunched, or nothing to do), and checks the W&B
settings, the model's flags and weights, the device, the data and, on --resume, that the run was made by this
program and that its last.pt is readable and of this model. Only then does phase 2 (sweepcnn.train.runner) take the
run folder's lock and write; a refused command changes nothing on disk.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sweepcnn.config import Option, parse_args
from sweepcnn.data.datasets import Data, check_cache_dir, load_data
from sweepcnn.errors import UserError
from sweepcnn.runtime import resolve_device, seed_everything, set_deterministic, tune_allocator
from sweepcnn.tracking import agent_parameters, check_tracking, read_summary
from sweepcnn.train.checkpoint import load_checkpoint, shapes, state_mismatch
from sweepcnn.train.engine import Progress
from sweepcnn.train.run_dir import RunFolder, load_config_file, open_run
from sweepcnn.train.spec import ModelSpec



def flag_given(argv: list[str], name: str) -> bool:
    """Whether `--name` is on the command line itself (not only in a --config file)."""
    return any(arg[2:].partition("=")[0].replace("-", "_") == name for arg in argv if arg.startswith("--"))


def resolve_config(argv: list[str], options: dict[str, Option], prog: str = "", description: str = ""
                   ) -> tuple[dict, set[str]]:
    """The run's config, final: defaults, each --config file in order, the command line's flags (`${args}` under
    `wandb agent`), then the agent's parameter file ($WANDB_SWEEP_PARAM_PATH), which wins. Returns (config, keys
    given explicitly). Reads only these; writes nothing."""
    cfg, explicit = parse_args(argv, options, prog, description, load_file=load_config_file)
    if not flag_given(argv, "num_classes"):  # a config file's num_classes (e.g. a run's config.yaml) is not a flag
        explicit.discard("num_classes")
    agent = agent_parameters(options)
    return {**cfg, **agent}, explicit | set(agent)


@dataclass
class Start:
    """What phase 1 found: the run folder and, unless there is nothing to do, the data and the model."""

    run: RunFolder
    data: Data | None = None
    spec: ModelSpec | None = None
    size: int = 0
    channels: int = 0
    nothing_to_do: str | None = None  # why this command trains nothing and writes nothing

    @property
    def cfg(self) -> dict:
        return self.run.cfg


def _saved_progress(run: RunFolder) -> tuple[Progress, dict] | None:
    """A resumed run's last.pt: (its progress, its model's parameter shapes); a UserError if it is unreadable."""
    last = run.path / "last.pt"
    if not (run.resume and last.is_file()):
        return None
    state = load_checkpoint(last)
    if not isinstance(state, dict) or not {"model", "progress"} <= set(state):
        raise UserError(f"--resume: {last} is not a last.pt of this project (no model or progress in it)")
    return Progress(**state["progress"]), shapes(state["model"])


def _finished(run: RunFolder, progress: Progress, argv: list[str]) -> str | None:
    """A finished run that this command would give no new epoch: nothing to do, unless --test is asked for again."""
    cfg = run.cfg
    if read_summary(run.path).get("status") != "finished" or (flag_given(argv, "test") and cfg["test"]):
        return None
    if progress.epoch < cfg["epochs"] and not progress.early_stopped(cfg["patience"], cfg["epochs"]):
        return None
    return (f"run folder: {run.path} (already finished after {progress.epoch} epochs: nothing to do; raise --epochs "
            "or --patience to train on, or add --test to test it again)")


def _check_test(run: RunFolder) -> None:
    cfg = run.cfg
    if cfg["test"] and cfg["epochs"] == 0 and not (run.path / "best.pt").is_file():
        raise UserError("--test with --epochs 0: no epoch is trained, so there is no best checkpoint to test; use "
                        "--epochs 1 or more")


def _read_data(cfg: dict, explicit: set[str], size: int, channels: int) -> Data:
    data = load_data(cfg, size, channels)
    if "num_classes" in cfg:
        if "num_classes" in explicit and cfg["num_classes"] != len(data.classes):
            raise UserError(f"--num_classes={cfg['num_classes']} but the data has {len(data.classes)} classes")
        cfg["num_classes"] = len(data.classes)
    return data


def plan_start(argv: list[str], resolved: tuple[dict, set[str]], options: dict[str, Option], *, prog: str,
               prepare: Callable[[dict], tuple[int, int]], build: Callable[[dict, Data], ModelSpec]) -> Start:
    """Phase 1, from the command line `argv` and its `resolve_config`. `prepare(cfg)` checks the part's flags (and
    loads its weights) and returns (input_size, channels); `build(cfg, data)` returns the model once
    cfg['num_classes'] is known. Sets the process up (allocator, seeds, determinism) but writes nothing."""
    cfg, explicit = resolved
    run = open_run(cfg, explicit, options, prog.removeprefix("python "))
    if run.done:
        return Start(run, nothing_to_do=f"run folder: {run.path} (already {run.done}: nothing more to train, its "
                                        "summary is kept)")
    saved = _saved_progress(run)
    finished = _finished(run, saved[0], argv) if saved is not None else None
    if finished:
        return Start(run, nothing_to_do=finished)
    cfg = run.cfg
    check_tracking(cfg)
    resolve_device(cfg["device"])
    _check_test(run)
    size, channels = prepare(cfg)
    check_cache_dir(cfg)
    tune_allocator()
    set_deterministic(cfg["deterministic"])
    seed_everything(cfg["seed"])
    data = _read_data(cfg, explicit, size, channels)
    run.check_data(data.split_record(cfg["split_seed"]))
    spec = build(cfg, data)
    if saved is not None:
        mismatch = state_mismatch(shapes(spec.model.state_dict()), saved[1])
        if mismatch:
            raise UserError(f"--resume: {run.path / 'last.pt'} does not fit the model of {run.path / 'config.yaml'}: "
                            f"{mismatch}")
    return Start(run, data, spec, size, channels)


def follow_start(run: RunFolder, nothing_to_do: str | None, prepare: Callable[[dict], tuple[int, int]],
                 build: Callable[[dict, Data], ModelSpec]) -> Start:
    """Phase 1 of a rank other than 0 (several processes, sweepcnn.distributed): rank 0 planned the run (`run`
    holds its final config) and checked everything; this rank sets itself up alike, reads the data and builds the
    model, writing nothing."""
    if nothing_to_do:
        return Start(run, nothing_to_do=nothing_to_do)
    cfg = run.cfg
    size, channels = prepare(cfg)
    tune_allocator()
    set_deterministic(cfg["deterministic"])
    seed_everything(cfg["seed"])
    data = _read_data(cfg, set(), size, channels)
    return Start(run, data, build(cfg, data), size, channels)
