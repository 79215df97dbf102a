"""Predict with one fine-tuned checkpoint, or average several of the same architecture (an ensemble run as one
batched model with torch.func: stack_module_state + functional_call + vmap).

    python part_b/predict.py --checkpoints runs/a/best.pt --images photos/ --out preds.csv
    python part_b/predict.py --checkpoints runs/a/best.pt runs/b/best.pt runs/c/best.pt --images photo.jpg

The CSV (stdout without --out) has one row per image: file, predicted class, its probability, the probability of
every class, and an error column; unreadable images get their reason there and the rest are still predicted.
Test-time augmentation is the first checkpoint's --tta (as its validation and test used), unless --tta is given.
"""
from __future__ import annotations

import copy
import csv
import sys
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from sweepcnn.train.checkpoint import load_checkpoint
from sweepcnn.config import run_cli
from sweepcnn.errors import ArgumentParser, UserError
from sweepcnn.data.images import BadImageError, is_image_file, load_image
from sweepcnn.runtime import resolve_device
from sweepcnn.train.tta import TTA_MODES, tta_logits, tta_mode
from part_b.part import input_size, rebuild


class Predictor:
    """Checkpoints of one architecture and class list -> class probabilities (their average for several)."""

    def __init__(self, paths: list[Path], device: torch.device, tta: str | None = None):
        states = [load_checkpoint(p) for p in paths]
        for path, state in zip(paths, states):
            if not {"model", "classes", "normalization", "config"} <= set(state) or "strategy" not in state["config"]:
                raise UserError(f"--checkpoints: {path} is not a checkpoint of part_b/finetune.py (its best.pt)")
        first = states[0]["config"]
        self.tta = tta or tta_mode(first)
        self.name, self.channels = first["model"], first["in_channels"]
        self.size = input_size(first)
        self.classes = states[0]["classes"]
        norm = states[0]["normalization"]
        for path, state in zip(paths[1:], states[1:]):
            cfg = state["config"]
            size = input_size(cfg)
            if (cfg["model"], cfg["in_channels"], size) != (self.name, self.channels, self.size):
                raise UserError(f"--checkpoints: {path} is {cfg['model']} ({cfg['in_channels']} channels, {size} "
                                f"px) but {paths[0]} is {self.name} ({self.channels} channels, {self.size} px): an "
                                "ensemble needs one architecture")
            if state["classes"] != self.classes or state["normalization"] != norm:
                raise UserError(f"--checkpoints: {path} was trained on other classes or normalisation than "
                                f"{paths[0]}")
        self.models = [self._build(state).to(device) for state in states]
        shape = (1, self.channels, 1, 1)
        self.mean = torch.tensor(norm["mean"], device=device).view(shape) * 255
        self.std = torch.tensor(norm["std"], device=device).view(shape) * 255
        self.device = device
        if len(self.models) > 1:
            self.params, self.buffers = stack_module_state(self.models)
            self.base = copy.deepcopy(self.models[0]).to("meta")  # only its structure is used

    def _build(self, state: dict) -> nn.Module:
        model = rebuild(state["config"], self.classes).model
        model.load_state_dict(state["model"])
        return model.eval()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N, C, S, S] -> probabilities [N, classes]."""
        x = (images.to(self.device).float() - self.mean) / self.std
        if len(self.models) == 1:
            return tta_logits(self.models[0], x, self.tta).softmax(-1)

        def one(params, buffers, batch):
            return functional_call(self.base, (params, buffers), (batch,))

        def ensemble(batch: torch.Tensor) -> torch.Tensor:  # [models, N, classes]
            return vmap(one, in_dims=(0, 0, None))(self.params, self.buffers, batch)

        return tta_logits(ensemble, x, self.tta).softmax(-1).mean(0)


def image_files(target: Path) -> tuple[list[Path], Path]:
    if target.is_file() or target.is_symlink() and not target.is_dir():
        return [target], target.parent
    if not target.is_dir():
        raise UserError(f"--images: {target} is neither an image file nor a folder")
    # A dangling symlink is listed too (is_file() is false for it): it gets a row with its error, as training lists
    # it among the skipped files.
    files = sorted(p for p in target.rglob("*") if (p.is_file() or p.is_symlink() and not p.is_dir())
                   and is_image_file(p) and not any(part.startswith(".") for part in p.relative_to(target).parts))
    if not files:
        raise UserError(f"--images: no image files under {target} (.jpg, .jpeg, .png, .bmp, .gif, .webp, .tif)")
    return files, target


def predict(predictor: Predictor, files: list[Path], root: Path, batch_size: int) -> list[dict]:
    rows: list[dict] = []
    for start in range(0, len(files), batch_size):
        good, pixels = [], []
        for path in files[start:start + batch_size]:
            name = str(path.relative_to(root))
            try:
                pixels.append(load_image(path, predictor.size, predictor.channels))
                good.append(name)
            except BadImageError as exc:
                rows.append({"file": name, "error": str(exc)})
        if good:
            probs = predictor(torch.stack(pixels)).cpu()
            for name, p in zip(good, probs):
                best = int(p.argmax())
                rows.append({"file": name, "prediction": predictor.classes[best], "probability": float(p[best]),
                             **{f"p_{c}": float(v) for c, v in zip(predictor.classes, p)}, "error": ""})
    order = {str(p.relative_to(root)): i for i, p in enumerate(files)}
    return sorted(rows, key=lambda row: order[row["file"]])


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="python part_b/predict.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", nargs="+", required=True, type=Path,
                        help="best.pt of part_b/finetune.py runs; several: their average (same architecture)")
    parser.add_argument("--images", required=True, type=Path, help="an image file or a folder (searched recursively)")
    parser.add_argument("--out", type=Path, help="CSV file to write (default: standard output)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--tta", choices=TTA_MODES, help="test-time augmentation (default: the first checkpoint's "
                                                        "--tta, see sweepcnn.train.tta)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise UserError("--batch_size must be at least 1")
    files, root = image_files(args.images)
    predictor = Predictor(args.checkpoints, resolve_device(args.device), args.tta)
    rows = predict(predictor, files, root, args.batch_size)
    fields = ["file", "prediction", "probability", *(f"p_{c}" for c in predictor.classes), "error"]
    out = open(args.out, "w", newline="") if args.out else sys.stdout
    try:
        writer = csv.DictWriter(out, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
    finally:
        if args.out:
            out.close()
    bad = [row for row in rows if row["error"]]
    print(f"{len(rows) - len(bad)} of {len(rows)} images predicted with {len(predictor.models)} model(s)"
          + (f"; {len(bad)} unreadable (reason in the error column): "
             + ", ".join(row["file"] for row in bad[:5]) + (" ..." if len(bad) > 5 else "") if bad else "")
          + (f"; wrote {args.out}" if args.out else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main)
