"""One training run from the command line, shared by Part A and Part B, in two phases: phase 1
(sweepcnn.train.startup) reads and checks everything and writes nothing; phase 2, here, holds the run folder's lock
for the life of the run (sweepcnn.train.run_lock), writes the run's files, starts W&B, trains and tests. Each part
supplies only how to check its config and how to build its model, and the step to take after --test (its report).

Under torchrun with several processes (sweepcnn.distributed) rank 0 alone plans the run from the files it reads,
holds the lock and writes; the other ranks receive its plan (the run folder and its final config), read the data and
build the model themselves, and train beside it writing nothing."""
from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from sweepcnn import distributed
from sweepcnn.config import Option
from sweepcnn.data.datasets import Data, channel_stats
from sweepcnn.errors import UserError
from sweepcnn.runtime import Interrupted, install_signal_handlers, resolve_device
from sweepcnn.tracking import Replica, Tracker
from sweepcnn.train.checkpoint import NO_SPACE
from sweepcnn.train.engine import amp_dtype, fit
from sweepcnn.train.record import write_record
from sweepcnn.train.run_dir import write_run_files
from sweepcnn.train.run_lock import hold_run_folder
from sweepcnn.train.spec import ModelSpec
from sweepcnn.train.startup import Start, follow_start, plan_start, resolve_config
from sweepcnn.train.stops import end_before_start, end_stopped_run, stop_code

# A part's step after --test (e.g. its report): (run_dir, spec whose model holds the best checkpoint, data,
# normalization, cfg, W&B run)
AfterTest = Callable[[Path, ModelSpec, Data, Any, dict, Any], None]


def run_training(argv: list[str], options: dict[str, Option], *, prog: str, description: str,
                 prepare: Callable[[dict], tuple[int, int]], build: Callable[[dict, Data], ModelSpec],
                 job_type: str = "train", after_test: AfterTest | None = None) -> int:
    """`prepare(cfg)` validates the part's config and returns (input_size, channels) before any data is touched;
    `build(cfg, data)` returns the model once cfg['num_classes'] is known; `job_type` is the W&B run's;
    `after_test` runs after --test (the report). A stop signal at any moment has the run's stop
    semantics (sweepcnn.train.stops)."""
    install_signal_handlers()
    try:
        resolved = _resolve(argv, options, prog, description)
        cfg = resolved[0]
        if distributed.launched() > 1:  # several processes under torchrun: join them
            distributed.init(cfg, resolve_device(cfg["device"]))
    except Interrupted as stop:
        return end_before_start(stop)
    try:
        return _run(argv, resolved, options, prog, prepare, build, job_type, after_test)
    finally:
        distributed.cleanup(raise_pending=False)


def _resolve(argv: list[str], options: dict[str, Option], prog: str, description: str) -> tuple[dict, set[str]]:
    """The config, resolved once per process. Under torchrun every rank resolves it (joining the process group
    takes its device and global batch); rank 0 alone prints its notes and errors, which the others would repeat."""
    with distributed.said_by_rank_0():
        return resolve_config(argv, options, prog, description)


def _plan(argv: list[str], resolved: tuple[dict, set[str]], options: dict[str, Option], prog: str,
          prepare: Callable[[dict], tuple[int, int]], build: Callable[[dict, Data], ModelSpec]) -> Start:
    """Phase 1; several ranks: rank 0's plan (first: it builds the decoded-image cache), followed by the others."""
    def plan() -> Start:
        start = plan_start(argv, resolved, options, prog=prog, prepare=prepare, build=build)
        if distributed.active() and start.spec is not None and start.spec.run is not fit:
            raise UserError("--lr_find runs in one process: run it without torchrun")
        return start

    start = distributed.on_main(plan, share=False)
    run, nothing_to_do = distributed.agreed((start.run, start.nothing_to_do) if start is not None else None)
    return start if distributed.is_main() else follow_start(run, nothing_to_do, prepare, build)


def _run(argv: list[str], resolved: tuple[dict, set[str]], options: dict[str, Option], prog: str,
         prepare: Callable[[dict], tuple[int, int]], build: Callable[[dict, Data], ModelSpec], job_type: str,
         after_test: AfterTest | None) -> int:
    main = distributed.is_main()
    try:
        start = _plan(argv, resolved, options, prog, prepare, build)
    except Interrupted as stop:
        return end_before_start(stop)
    if start.nothing_to_do:
        print(start.nothing_to_do)
        return 0
    try:
        with hold_run_folder(start.run.path) if main else nullcontext() as rollback:
            try:
                # rank 0 writes; its failure reaches the other ranks, which end quietly with its exit code
                tracker = distributed.on_main(lambda: _begin(start, options, job_type, prog.removeprefix("python ")),
                                              share=False) or Replica()
            except BaseException as exc:
                if main:  # the other ranks hold no rollback: they wrote nothing
                    try:
                        rollback.undo()
                    except OSError as failed:  # e.g. the full disk that stopped the start-up
                        raise UserError(f"start-up failed ({exc}) and the run folder {start.run.path} could not be "
                                        f"put back as it was ({failed.strerror}: {failed.filename})") from None
                if isinstance(exc, OSError) and exc.errno in (*NO_SPACE, errno.EACCES, errno.EROFS, errno.EPERM):
                    raise UserError(f"cannot write the run folder {start.run.path}: {exc.strerror} "
                                    f"({exc.filename}); it is left as it was") from None
                raise
            return _train(start, tracker, after_test, main)
    except Interrupted as stop:  # while the run folder or the W&B run was being made (then undone)
        return end_before_start(stop)


def _begin(start: Start, options: dict[str, Option], job_type: str, program: str) -> Tracker:
    """Phase 2's writes before training: config.yaml, split.json, the W&B run, run.json. Undone by the caller if
    any fails."""
    cfg, run_dir, spec = start.cfg, start.run.path, start.spec
    start.run.check_unchanged()
    write_run_files(run_dir, cfg, options, start.data.split_record(cfg["split_seed"]))
    tracker = Tracker(run_dir, cfg, run_dir.name, start.run.resume, job_type)
    try:
        tracker.update_config({**cfg, "amp_dtype": amp_dtype(cfg)})
        tracker.tag(spec.rebuild, spec.identity)
        write_record(run_dir, spec, start.size, start.channels, program)
        tracker.use_dataset()
        tracker.watch(spec.model)
    except BaseException:
        tracker.finish(1)
        raise
    return tracker


def _train(start: Start, tracker: Tracker, after_test: AfterTest | None, main: bool) -> int:
    cfg, run_dir, spec, data = start.cfg, start.run.path, start.spec, start.data
    summary: dict = {"status": "running"}
    try:
        normalization = spec.normalization or channel_stats(data.train)
        skipped = [{"file": f, "reason": r} for f, r in data.skipped]
        summary = {"status": "running", **spec.info, "skipped_files": skipped}
        summary = spec.run(spec.model, data, cfg, run_dir, tracker.log, normalization, resume=start.run.resume,
                           extra=summary, phases=spec.phases, train_mode=spec.train_mode, test=cfg["test"])
        distributed.cleanup()  # the report runs on rank 0 alone
        if not main:
            return 0
        summary["status"] = "finished"
        tracker.summary(summary)
        if cfg["test"] and spec.run is fit and after_test is not None:
            after_test(run_dir, spec, data, normalization, cfg, tracker.run)  # spec.model holds the best checkpoint
        tracker.finish(0)
        print(f"run folder: {run_dir}")
        return 0
    except Interrupted as stop:
        return end_stopped_run(stop, run_dir, tracker, summary) if main else stop_code(stop)
    except FloatingPointError as exc:
        summary["status"] = "failed"
        tracker.summary(summary)
        tracker.finish(1)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BaseException:
        tracker.finish(1)
        raise
