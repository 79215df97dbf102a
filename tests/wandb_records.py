"""Read back what an offline W&B run wrote (its .wandb file: LevelDB log blocks of protobuf records)."""
import json
import struct
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


def _items(items):
    return {(item.key or ".".join(item.nested_key)): json.loads(item.value_json) for item in items}


def history_and_summary(run_dir: Path) -> tuple[list[dict], dict, list]:
    """(history rows, final summary, image/table file records) of the single offline run in `run_dir/wandb`."""
    files = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    history, summary, logged_files = [], {}, []
    for record in records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append(_items(record.history.item))
        elif kind == "summary":
            summary.update(_items(record.summary.update))
        elif kind == "files":
            logged_files += [f.path for f in record.files.files]
    return history, summary, logged_files
