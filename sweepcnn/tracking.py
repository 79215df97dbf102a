"""Experiment tracking: W&B (online, offline or disabled) plus the same records written into the run directory.

The mode comes from --wandb_mode, else $WANDB_MODE, else W&B's settings files, else `online` when W&B credentials
are configured and `offline` otherwise (sweepcnn.wandb_auth), so a run never blocks waiting for a server it cannot
reach. Offline runs land in `<run_dir>/wandb/` and can be uploaded later with
`wandb sync` of the newest `<run_dir>/wandb/offline-run-*` folder (a resumed offline run holds the whole history,
see Tracker). W&B conventions: project `sweepcnn` unless one is given, a job type (`train`, `finetune`, `report`,
`compare`, `sweep-report`), the sweep as group, tags (part, model, strategy), `epoch` as the x-axis of the per-epoch
metrics, and a summary that holds the best epoch after every epoch. Name, tags, notes and group: sweepcnn.wandb_args.
W&B prints nothing to the console but the line that says where the run is (its banner goes to its log files).
"""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sweepcnn.artifacts import log_model, log_model_choice, use_dataset
from sweepcnn.config import Option, parse_value, read_yaml_mapping
from sweepcnn.errors import UserError
from sweepcnn.io import atomic_write, write_json
from sweepcnn.wandb_args import quiet_settings, rewind_point, run_group, under_agent
from sweepcnn.wandb_args import run_name as wandb_run_name
from sweepcnn.wandb_auth import chosen_mode, credentials_source, resolve_mode

DEFAULT_PROJECT = "sweepcnn"
# How to run, not what to train: kept out of the W&B config, so they never show up in parameter importance.
RUNTIME_KEYS = frozenset({"out_dir", "run_name", "resume", "test", "report", "deterministic", "device",
                          "num_workers", "cache_dir", "compile", "dry_run", "wandb_mode", "wandb_project",
                          "wandb_entity", "wandb_log_model", "wandb_tags", "wandb_notes", "wandb_group",
                          "wandb_watch", "report_table_rows"})
# Summary keys that hold the best epoch's value (W&B's default, the last logged value, would hide it).
BEST_KEYS = ("val_acc", "val_loss")


def has_api_key() -> bool:
    """Whether W&B credentials are configured, where wandb itself would find them (sweepcnn.wandb_auth)."""
    return credentials_source() is not None


def project_name(flag: str | None) -> str | None:
    """--wandb_project, else $WANDB_PROJECT, else `sweepcnn`; under an agent, None lets wandb take the sweep's."""
    return flag or os.environ.get("WANDB_PROJECT") or (None if under_agent() else DEFAULT_PROJECT)


RETRAINED = "retrained"  # the tag of a sweep's best trial trained again from its best.yaml


def sweep_group_of(source: str | Path) -> str:
    """The group of a sweep's runs from its folder or W&B path: sweep-<folder name>, as `python -m sweepcnn.sweep`
    sets it, or sweep-<sweep id>, as training runs under `wandb agent` set it."""
    return f"sweep-{Path(str(source).rstrip('/')).name}"


def saved_group(run_dir: Path) -> str | None:
    """The W&B group a run folder's run started in (its wandb_group file); None for a run without one, or a run
    folder from before the group was saved."""
    try:
        return (Path(run_dir) / "wandb_group").read_text().strip() or None
    except OSError:
        return None


def wandb_config(cfg: dict) -> dict:
    """The run config W&B records: everything but the runtime keys."""
    return {k: v for k, v in cfg.items() if k not in RUNTIME_KEYS}


def read_history(run_dir: Path) -> list[dict]:
    """A run's metrics.jsonl rows ([] before the first epoch). Stops at a line still being written (a live run
    read by a sweep worker, or a run killed mid-write)."""
    try:
        lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def read_summary(run_dir: Path) -> dict:
    """A run's summary.json ({} while it has none, or while it is being replaced)."""
    try:
        return json.loads((Path(run_dir) / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def describe_wandb_run(run: Any) -> str:
    """One line saying where a W&B run's records went."""
    if run.settings.mode == "disabled":
        return "W&B is disabled (WANDB_MODE=disabled): nothing logged"
    if run.settings.mode == "offline":
        return f"logged to offline W&B run {run.id}: upload with `wandb sync {run.settings.sync_dir}`"
    return f"logged to W&B: {run.url}"


def active_wandb_run() -> Any:
    """This process's W&B run, or None. An active run implies wandb was imported: nothing is imported otherwise."""
    wandb = sys.modules.get("wandb")
    return None if wandb is None else wandb.run


def start_side_run(job_type: str, folder: Path, config: dict, *, mode: str | None = None, project: str | None = None,
                   entity: str | None = None, name: str | None = None, group: str | None = None) -> Any:
    """A W&B run for work done after training (a report, a comparison, a sweep report), its files in `folder`.
    Mode from `mode`, else as a training run's; project and entity from the arguments, else $WANDB_PROJECT (else
    `sweepcnn`) and $WANDB_ENTITY. The caller finishes it."""
    import wandb

    return wandb.init(project=project_name(project), entity=entity or os.environ.get("WANDB_ENTITY"), name=name,
                      group=group, job_type=job_type, dir=str(folder), mode=resolve_mode(mode), config=config,
                      settings=quiet_settings())


def check_tracking(cfg: dict) -> str:
    """The run's W&B mode; a UserError (before anything is written) for a bad mode, online without credentials, a
    bad $WANDB_LOG_MODEL, or a project or entity name that W&B refuses."""
    log_model_choice(cfg.get("wandb_log_model"))
    mode = resolve_mode(cfg["wandb_mode"])
    project, entity = project_name(cfg["wandb_project"]), cfg["wandb_entity"] or os.environ.get("WANDB_ENTITY")
    if (project and project != DEFAULT_PROJECT) or entity:
        from wandb.errors import UsageError
        from wandb.sdk.wandb_settings import Settings

        try:
            Settings(project=project, entity=entity)  # W&B's own checks, as wandb.init makes them
        except (UsageError, ValueError) as exc:
            source = "--wandb_project" if cfg["wandb_project"] else "WANDB_PROJECT"
            hint = (f"; for a team's project use --wandb_entity {project.split('/')[0]} --wandb_project "
                    f"{project.split('/', 1)[1]}" if project and project.count("/") == 1 else "")
            raise UserError(f"{source} / --wandb_entity: {str(exc).splitlines()[0]}{hint}") from None
    return mode


def warn_agent_offline(mode: str, flag: str | None) -> None:
    """Under `wandb agent`, a run that does not reach the server leaves the sweep controller blind: say so."""
    if under_agent() and mode != "online":
        source = chosen_mode(flag)[1]
        print(f"warning: W&B mode is {mode} (from {source}) under `wandb agent` (sweep "
              f"{os.environ['WANDB_SWEEP_ID']}): the sweep controller will never see this run's metrics, so its "
              "search and early termination run blind; unset WANDB_MODE or run `wandb online`", file=sys.stderr)


def identity_args(cfg: dict) -> dict[str, Any]:
    """wandb.init's tags, notes and group from --wandb_tags, --wandb_notes and --wandb_group (None: W&B reads its
    environment variables; see sweepcnn.wandb_args)."""
    return {"tags": list(cfg["wandb_tags"]) if cfg.get("wandb_tags") else None,
            "notes": cfg.get("wandb_notes") or None, "group": run_group(cfg.get("wandb_group"))}


def agent_parameters(options: dict[str, Option]) -> dict:
    """The parameters `wandb agent` wrote for this run ($WANDB_SWEEP_PARAM_PATH: {name: {value: v}}), typed; {}
    unless launched by an agent. Read before anything is written: a missing, unreadable or malformed file, or a
    parameter the program does not take or of the wrong type, is a UserError."""
    path = os.environ.get("WANDB_SWEEP_PARAM_PATH")
    if not (under_agent() and path):
        return {}
    params = read_yaml_mapping(path, "WANDB_SWEEP_PARAM_PATH")
    where = f"WANDB_SWEEP_PARAM_PATH {path}"
    typed = {}
    for key, entry in params.items():
        if key in ("wandb_version", "_wandb"):
            continue
        if not (isinstance(entry, dict) and "value" in entry):
            raise UserError(f"{where}: {key}: expected {{value: ...}} as `wandb agent` writes it, got {entry!r}")
        if key not in options:
            raise UserError(f"{where}: unknown parameter {key!r}: the program takes the options of its --help")
        try:
            typed[key] = parse_value(key, options[key], entry["value"])
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None
    return typed


class Tracker:
    """Logs per-epoch metrics to `metrics.jsonl` and W&B, and the run summary to `summary.json` and W&B.

    W&B records `epoch` as the step of the per-epoch metrics (rows get W&B's own `_step`, so a resumed run or a
    report logged after the last epoch never collides with an earlier row), and after every epoch the summary's
    val_acc, val_loss and best_epoch are the best epoch's, so a stopped, interrupted or crashed run keeps its best.
    W&B cannot resume an offline run (a second offline run of the same id replaces the first when synced), so a
    resumed offline run first logs the epochs it continues from again: its offline folder holds the whole history,
    and it is the one folder to sync (the line printed when the run starts and ends names it). Online, a resume
    continues the run; after a hard kill between an epoch's log and its checkpoint (metrics.jsonl holds an epoch that
    last.pt does not), it rewinds the run's history to the checkpoint (wandb.init's resume_from) so that no epoch
    appears twice, or, where the server refuses rewinds, continues it and says so.
    """

    def __init__(self, run_dir: Path, cfg: dict, run_name: str, resume: bool, job_type: str = "train"):
        self.run_dir = run_dir
        self.metrics_path = run_dir / "metrics.jsonl"
        self.history = read_history(run_dir) if resume else []
        self.mode = check_tracking(cfg)
        self.log_model = log_model_choice(cfg.get("wandb_log_model"))
        self.watching = cfg.get("wandb_watch", "false")
        self.selection = (cfg.get("monitor", "val_acc"), cfg.get("min_delta", 0.0))  # as the engine picks best.pt
        self.replay = resume and self.mode == "offline"
        self.final: dict = {}
        self.defined = {"epoch"}  # metrics declared to W&B in this process
        self.run = None
        warn_agent_offline(self.mode, cfg["wandb_mode"])
        if self.mode == "disabled":
            return
        import wandb

        id_file = run_dir / "wandb_id"
        run_id = id_file.read_text().strip() if resume and id_file.exists() else None
        if under_agent():
            run_id = os.environ.get("WANDB_RUN_ID") if resume else None  # None: wandb takes the agent's
        init = dict(project=project_name(cfg["wandb_project"]), id=run_id, dir=str(run_dir), config=wandb_config(cfg),
                    entity=cfg["wandb_entity"] or os.environ.get("WANDB_ENTITY"), name=wandb_run_name(run_name),
                    mode=self.mode, job_type=job_type, settings=quiet_settings(), **identity_args(cfg))
        rewind = self._rewind_point(run_id) if resume else None
        try:
            self.run = self._start(wandb, init, rewind)
        except wandb.errors.Error as exc:  # the server refused the run (permissions, project, network, ...)
            raise UserError(f"W&B refused the run ({type(exc).__name__}): {str(exc).strip().splitlines()[0]}; "
                            "check --wandb_project/--wandb_entity and `wandb login`, or use --wandb_mode offline"
                            ) from None
        try:
            self.run.define_metric("epoch")
            atomic_write(id_file, self.run.id)
            if init["group"]:  # a sweep trial's group comes from its environment: the report's side run needs it
                atomic_write(run_dir / "wandb_group", init["group"])
            print(describe_wandb_run(self.run), file=sys.stderr)
        except BaseException:  # e.g. a full disk: the caller undoes the run folder, so end the W&B run first
            self.run.finish(exit_code=1)
            raise

    def _rewind_point(self, run_id: str | None) -> str | None:
        """Online, for a run whose metrics.jsonl holds an epoch its last.pt does not (a hard kill between the two):
        where wandb.init rewinds it to, the step after the W&B step last.pt recorded for its epoch (see
        sweepcnn.wandb_args.rewind_point); None otherwise."""
        from sweepcnn.train.engine import Progress, saved_progress

        if self.mode != "online" or not run_id or not self.history:
            return None
        kept = saved_progress(self.run_dir) or Progress()
        if max(row["epoch"] for row in self.history) <= kept.epoch:
            return None
        # a last.pt from before it recorded the step: one history row per epoch (_step = epoch - 1)
        return rewind_point(run_id, kept.epoch if kept.wandb_step is None else kept.wandb_step + 1)

    @staticmethod
    def _start(wandb: Any, init: dict, rewind: str | None) -> Any:
        if rewind is None:
            return wandb.init(**init, resume="allow")
        try:
            return wandb.init(**init, resume_from=rewind)
        except Exception as exc:  # rewinding is a preview feature that a server may refuse
            print(f"warning: W&B did not rewind the run to its checkpoint ({type(exc).__name__}: {exc}); it is "
                  "continued instead, and the epochs after the checkpoint appear twice in its history",
                  file=sys.stderr)
            return wandb.init(**init, resume="allow")

    def update_config(self, values: dict) -> None:
        """Config values known only after W&B started (num_classes, from the data)."""
        if self.run is not None:
            changed = {k: v for k, v in wandb_config(values).items() if self.run.config.get(k) != v}
            self.run.config.update(changed, allow_val_change=True)

    def watch(self, model: Any) -> None:
        """wandb.watch the model (--wandb_watch: gradients, parameters or all; false: nothing)."""
        if self.run is not None and self.watching != "false":
            self.run.watch(model, log=self.watching, log_freq=100)

    def use_dataset(self) -> None:
        """Record the run's data as the input artifact of the run (see sweepcnn.artifacts.use_dataset)."""
        if self.run is not None:
            try:
                use_dataset(self.run, self.run_dir)
            except Exception as exc:  # lineage is worth a warning, not a failed run
                print(f"warning: W&B dataset artifact not logged: {type(exc).__name__}: {exc}", file=sys.stderr)

    def tag(self, rebuild: Callable | None, identity: dict | None) -> None:
        """Tags: the part that built the model (the package of its rebuild function), the model, the strategy."""
        if self.run is None:
            return
        identity = identity or {}
        part = rebuild.__module__.split(".")[0] if rebuild is not None else None
        tags = [str(t) for t in (part, identity.get("model"), identity.get("strategy")) if t]
        self.run.tags = tuple(dict.fromkeys([*self.run.tags, *tags]))

    def log(self, metrics: dict, step: int) -> int | None:
        """Record an epoch's metrics; the W&B step of their history row (None without W&B)."""
        # A resumed run redoes epochs after its last checkpoint: drop their earlier records.
        if any(row["epoch"] >= step for row in self.history):
            self.history = [row for row in self.history if row["epoch"] < step]
            atomic_write(self.metrics_path, "".join(json.dumps(row) + "\n" for row in self.history))
        earlier = list(self.history)
        self.history.append(metrics)
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(metrics) + "\n")
        if self.run is None:
            return None
        if self.replay:
            for row in earlier:
                self._log_row(row)
            self.replay = False
        logged_at = self.run.step
        self._log_row(metrics)
        self.run.summary.update(self.best())
        return logged_at

    def _log_row(self, row: dict) -> None:
        for key in row.keys() - self.defined:
            self.run.define_metric(key, step_metric="epoch", summary="none" if key in BEST_KEYS else None)
        self.defined |= row.keys()
        self.run.log(row)

    def best(self) -> dict:
        """val_acc, val_loss and best_epoch of the best epoch so far, selected as the engine selects best.pt."""
        from sweepcnn.train.engine import Progress

        progress = Progress()
        for row in self.history:
            progress.update(row, *self.selection)
        best = {key: progress.best_metrics.get(key) for key in BEST_KEYS}
        return {k: v for k, v in {**best, "best_epoch": progress.best_epoch}.items() if v is not None}

    def summary(self, summary: dict) -> None:
        write_json(self.run_dir / "summary.json", summary)
        self.final = summary
        if self.run is not None:
            self.run.summary.update({k: v for k, v in summary.items() if v is not None})

    def mark_preempting(self) -> None:
        """Tell W&B the run is being preempted: with the non-zero exit that follows, W&B marks it preempted (and
        a sweep requeues it)."""
        if self.run is not None:
            self.run.mark_preempting()

    def finish(self, exit_code: int = 0) -> None:
        """Log the model artifacts of a finished or stopped run (see sweepcnn.artifacts), then finish W&B."""
        if self.run is not None:
            if self.final.get("status") in ("finished", "stopped"):
                try:
                    log_model(self.run, self.run_dir, self.final, self.log_model)
                except Exception as exc:  # the run's results are saved: a failed upload must not fail it
                    print(f"warning: W&B model artifact not logged: {type(exc).__name__}: {exc}", file=sys.stderr)
            self.run.finish(exit_code=exit_code)
            print(describe_wandb_run(self.run), file=sys.stderr)
            self.run = None


class Replica(Tracker):
    """The tracker of a rank other than 0 when several processes train one run (sweepcnn.distributed): it writes
    nothing and starts no W&B run; rank 0's Tracker records the run."""

    def __init__(self):  # noqa: super().__init__ would start W&B and write files
        self.run, self.final, self.history = None, {}, []

    def log(self, metrics: dict, step: int) -> None:
        pass

    def summary(self, summary: dict) -> None:
        self.final = summary
