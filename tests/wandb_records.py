"""Read back what an offline W&B run wrote (its .wandb file: LevelDB log blocks of protobuf records)."""
import json
import struct
import time
from pathlib import Path

from wandb.proto import wandb_internal_pb2

_BLOCK, _HEADER = 32768, 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def records(path: Path):
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        if _BLOCK - pos % _BLOCK < _HEADER:  # block trailer too small for a header: skip to the next block
            pos += _BLOCK - pos % _BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        pos += _HEADER
        if kind == 0:
            break
        chunk, pos = data[pos:pos + length], pos + length
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending + chunk if kind == _LAST else chunk)
            pending = b""
            yield record
        else:
            pending = chunk if kind == _FIRST else pending + chunk


def finished_records(path: Path, wait: float = 15.0) -> list:
    """The records of an offline run file, once its exit record is written: W&B's service process may still be
    writing the file when finish() returns. After `wait` seconds, whatever is there (a run killed before its exit)."""
    from google.protobuf.message import DecodeError

    deadline = time.monotonic() + wait
    while True:
        try:
            found = list(records(path))
        except (DecodeError, AssertionError):  # a record (or the header) half written
            found = []
        if any(r.WhichOneof("record_type") == "exit" for r in found) or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def _items(items):
    return {(item.key or ".".join(item.nested_key)): json.loads(item.value_json) for item in items}


def history_and_summary(run_dir: Path, wandb_file: Path | None = None) -> tuple[list[dict], dict, list]:
    """(history rows, final summary, image/table file records) of the single offline run in `run_dir/wandb`, or
    of the offline run file `wandb_file`."""
    files = [wandb_file] if wandb_file else list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    history, summary, logged_files = [], {}, []
    for record in finished_records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append(_items(record.history.item))
        elif kind == "summary":
            summary.update(_items(record.summary.update))
        elif kind == "files":
            logged_files += [f.path for f in record.files.files]
    return history, summary, logged_files


def offline_runs(run_dir: Path) -> list[Path]:
    """The .wandb files of the offline runs under `run_dir/wandb`, oldest first."""
    return sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))


def run_record(path: Path) -> dict:
    """What one offline run recorded besides its history: the run's project, job_type, group and tags (as last
    set), notes and name, its config (updates applied), the metrics it defined, its artifacts (`used`: an input of
    the run) and its exit code."""
    run: dict = {"config": {}, "metrics": {}, "artifacts": [], "exit_code": None, "preempting": False}
    for record in finished_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.update({k: v for k, v in (("project", r.project), ("job_type", r.job_type), ("group", r.run_group),
                                         ("run_id", r.run_id), ("notes", r.notes), ("name", r.display_name)) if v})
            run["tags"] = list(r.tags) if r.tags or "tags" not in run else run["tags"]
            run["config"].update(_items(r.config.update))
        elif kind == "config":
            run["config"].update(_items(record.config.update))
        elif kind == "metric":
            m = record.metric
            run["metrics"][m.name or m.glob_name] = {"step_metric": m.step_metric,
                                                     "summary_none": m.summary.none}
        elif kind == "artifact":
            a = record.artifact
            run["artifacts"].append({"name": a.name, "type": a.type, "aliases": list(a.aliases),
                                     "metadata": json.loads(a.metadata or "{}"),
                                     "files": [c.path for c in a.manifest.contents],
                                     "references": {c.path: c.ref for c in a.manifest.contents if c.ref},
                                     "used": a.use_after_commit})
        elif kind == "exit":
            run["exit_code"] = record.exit.exit_code
        elif kind == "preempting":
            run["preempting"] = True
    return run
