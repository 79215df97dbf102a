"""Predict with the best checkpoint of a run of either part, or average several (an ensemble).

    python -m sweepcnn.predict --checkpoints runs/a/best.pt --images photos/ --out preds.csv
    python -m sweepcnn.predict --checkpoints runs/a runs/b runs/c --images photo.jpg     # run folders: their best.pt

Each checkpoint's model is rebuilt as its run folder's run.json says (sweepcnn.train.record), at the run's input size
and channels, with its normalisation. An ensemble averages the members' class probabilities, so its members must
predict one list of classes; they may differ otherwise (Part A and Part B runs, other sizes). part_b/predict.py is
this program (and also takes a Part B best.pt without its run folder).

The CSV (stdout without --out) has one row per image: file, predicted class, its probability, the probability of
every class, and an error column; unreadable images get their reason there and the rest are still predicted.
Test-time augmentation is the first checkpoint's --tta (as its validation and test used), unless --tta is given.
--out is checked before any model is loaded or image read: its folder must exist and be writable, and it may not
be one of the inputs (a checkpoint, its run.json or an image).

This module is the command line (flags, --out, the CSV); the models and the images are sweepcnn.predictor's.
"""
from __future__ import annotations

import csv
import io
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from sweepcnn.config import run_cli
from sweepcnn.errors import ArgumentParser, UserError
from sweepcnn.io import atomic_write, check_writable
from sweepcnn.options import TTA_MODES
from sweepcnn.train.record import RECORD

if TYPE_CHECKING:
    from sweepcnn.predictor import Standalone


def checkpoint_path(path: Path) -> Path:
    """A --checkpoints entry: a checkpoint file, or a run folder (its best.pt)."""
    return path / "best.pt" if path.is_dir() else path


def check_out(out: Path, inputs: list[Path]) -> None:
    """A UserError unless the CSV can be written to `out` without replacing an input; nothing is written."""
    if out.is_dir():
        raise UserError(f"--out: {out} is a folder: give a file name, e.g. {out / 'predictions.csv'}")
    if not out.parent.is_dir():
        problem = "is not a folder" if out.parent.exists() else "does not exist"
        raise UserError(f"--out: the folder {out.parent} {problem}: create it, or write into another folder")
    for path in inputs:
        if path.exists() and out.exists() and os.path.samefile(out, path):
            raise UserError(f"--out: {out} is an input ({path}) and would be overwritten: choose another file")
    check_writable(out.parent, "--out")
    if out.exists() and not os.access(out, os.W_OK):
        raise UserError(f"--out: cannot write to {out}: permission denied")


def write_rows(rows: list[dict], classes: list[str], out: Path | None) -> None:
    """The CSV to `out` (replaced whole, never left torn) or standard output."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=["file", "prediction", "probability", *(f"p_{c}" for c in classes),
                                              "error"], restval="")
    writer.writeheader()
    writer.writerows(rows)
    if out is None:
        sys.stdout.write(text.getvalue())
        return
    try:
        atomic_write(out, text.getvalue())
    except OSError as exc:
        raise UserError(f"--out: cannot write {out}: {exc.strerror or exc}") from None


def main(argv: list[str], prog: str = "python -m sweepcnn.predict", standalone: Standalone | None = None) -> int:
    parser = ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", nargs="+", required=True, type=Path,
                        help="best.pt of runs of part_a/train.py or part_b/finetune.py, or their run folders; "
                             "several: the average of their probabilities (one list of classes)")
    parser.add_argument("--images", required=True, type=Path, help="an image file or a folder (searched recursively)")
    parser.add_argument("--out", type=Path, help="CSV file to write (default: standard output); never an input")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--tta", choices=TTA_MODES, help="test-time augmentation (default: the first checkpoint's "
                                                        "--tta, see sweepcnn.train.tta)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise UserError("--batch_size must be at least 1")
    # torch loads after the flags are parsed, which keeps --help fast
    from sweepcnn.predictor import Predictor, image_files, predict
    from sweepcnn.runtime import resolve_device

    checkpoints = [checkpoint_path(p) for p in args.checkpoints]
    files, root = image_files(args.images)
    if args.out:
        check_out(args.out, [*checkpoints, *(c.parent / RECORD for c in checkpoints), *files])
    predictor = Predictor(checkpoints, resolve_device(args.device), args.tta, standalone)
    rows = predict(predictor, files, root, args.batch_size)
    write_rows(rows, predictor.classes, args.out)
    bad = [row for row in rows if row["error"]]
    print(f"{len(rows) - len(bad)} of {len(rows)} images predicted with {len(predictor.models)} model(s)"
          + (f"; {len(bad)} unreadable (reason in the error column): "
             + ", ".join(row["file"] for row in bad[:5]) + (" ..." if len(bad) > 5 else "") if bad else "")
          + (f"; wrote {args.out}" if args.out else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main)
