"""Best checkpoints of runs of either part -> class probabilities of image files: the work of python -m
sweepcnn.predict (sweepcnn/predict.py, its command line, loads this module once its flags are parsed).

Members of one architecture, input and normalisation run as one batched model with torch.func (stack_module_state +
functional_call + vmap).
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from sweepcnn.data.images import BadImageError, is_image_file, load_image
from sweepcnn.errors import UserError
from sweepcnn.train.checkpoint import load_checkpoint
from sweepcnn.train.record import RECORD, load_rebuild, read_record
from sweepcnn.train.tta import tta_logits, tta_mode

Input = tuple[int, int]  # (input size, channels): how an image is decoded for a model


@dataclass
class Recipe:
    """How to rebuild a checkpoint's model: run.json's rebuild function, input size and channels."""
    rebuild: Callable  # rebuild(cfg, classes) -> ModelSpec
    input: Input


# A part's recipe for a checkpoint's config when no run.json lies beside it (None: not that part's checkpoint)
Standalone = Callable[[dict], "Recipe | None"]


def recipe(path: Path, config: dict, standalone: Standalone | None) -> Recipe:
    run_dir = path.parent
    if not (run_dir / RECORD).is_file():
        found = standalone(config) if standalone else None
        if found is None:
            raise UserError(f"--checkpoints: no {RECORD} beside {path}, which says how to rebuild its model: give "
                            f"the best.pt in its run folder (or copy the run folder's {RECORD} beside it)")
        return found
    record = read_record(run_dir)
    size, channels = record.get("input_size"), record.get("in_channels")
    if not isinstance(size, int) or not isinstance(channels, int):
        raise UserError(f"{run_dir / RECORD}: needs the run's input_size and in_channels (integers)")
    return Recipe(load_rebuild(run_dir, record), (size, channels))


class _Group:
    """Members of one architecture, input and normalisation: one model, or several run as one batched model."""

    def __init__(self, models: list[nn.Module], input: Input, norm: dict, device: torch.device):
        self.models, self.input = [m.to(device) for m in models], input
        shape = (1, input[1], 1, 1)
        self.mean = torch.tensor(norm["mean"], device=device).view(shape) * 255
        self.std = torch.tensor(norm["std"], device=device).view(shape) * 255
        if len(self.models) > 1:
            self.params, self.buffers = stack_module_state(self.models)
            self.base = copy.deepcopy(self.models[0]).to("meta")  # only its structure is used

    def probabilities(self, images: torch.Tensor, tta: str) -> torch.Tensor:
        """uint8 [N, C, S, S] on the device -> each member's class probabilities [members, N, classes]."""
        x = (images.float() - self.mean) / self.std
        if len(self.models) == 1:
            return tta_logits(self.models[0], x, tta).softmax(-1)[None]

        def one(params, buffers, batch):
            return functional_call(self.base, (params, buffers), (batch,))

        def ensemble(batch: torch.Tensor) -> torch.Tensor:  # [members, N, classes]
            return vmap(one, in_dims=(0, 0, None))(self.params, self.buffers, batch)

        return tta_logits(ensemble, x, tta).softmax(-1)


def _architecture(model: nn.Module) -> tuple:
    """What must agree for models to be stacked into one batched model."""
    shapes = tuple((name, tuple(t.shape), t.dtype) for name, t in model.state_dict().items())
    return type(model), repr(model), shapes


class Predictor:
    """Best checkpoints of one list of classes -> class probabilities (the average of their members')."""

    def __init__(self, paths: list[Path], device: torch.device, tta: str | None = None,
                 standalone: Standalone | None = None):
        states = [load_checkpoint(p) for p in paths]
        for path, state in zip(paths, states):
            if not {"model", "classes", "normalization", "config"} <= set(state):
                raise UserError(f"--checkpoints: {path} is not a best checkpoint of part_a/train.py or "
                                "part_b/finetune.py (a run's best.pt)")
        self.classes = list(states[0]["classes"])
        for path, state in zip(paths[1:], states[1:]):
            if list(state["classes"]) != self.classes:
                raise UserError(f"--checkpoints: {path} predicts the classes {list(state['classes'])} but "
                                f"{paths[0]} predicts {self.classes}: an ensemble averages one list of classes")
        self.tta = tta or tta_mode(states[0]["config"])
        groups: dict[tuple, tuple[list[nn.Module], Input, dict]] = {}
        for path, state in zip(paths, states):
            how = recipe(path, state["config"], standalone)
            model = how.rebuild(state["config"], self.classes).model
            try:
                model.load_state_dict(state["model"])
            except RuntimeError as exc:
                raise UserError(f"--checkpoints: {path} does not fit the model its run describes: "
                                f"{str(exc).splitlines()[0]}") from None
            norm = {k: list(state["normalization"][k]) for k in ("mean", "std")}
            key = (*_architecture(model), how.input, repr(norm))
            groups.setdefault(key, ([], how.input, norm))[0].append(model.eval())
        self.groups = [_Group(models, input, norm, device) for models, input, norm in groups.values()]
        self.models = [m for g in self.groups for m in g.models]
        self.inputs = list(dict.fromkeys(g.input for g in self.groups))
        self.device = device

    @torch.no_grad()
    def __call__(self, images: dict[Input, torch.Tensor]) -> torch.Tensor:
        """uint8 [N, C, S, S] per input -> the members' mean probabilities [N, classes]."""
        total = sum(g.probabilities(images[g.input].to(self.device), self.tta).sum(0) for g in self.groups)
        return total / len(self.models)


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
                pixels.append({(size, ch): load_image(path, size, ch) for size, ch in predictor.inputs})
                good.append(name)
            except BadImageError as exc:
                rows.append({"file": name, "error": str(exc)})
        if good:
            probs = predictor({i: torch.stack([p[i] for p in pixels]) for i in predictor.inputs}).cpu()
            for name, p in zip(good, probs):
                best = int(p.argmax())
                rows.append({"file": name, "prediction": predictor.classes[best], "probability": float(p[best]),
                             **{f"p_{c}": float(v) for c, v in zip(predictor.classes, p)}, "error": ""})
    order = {str(p.relative_to(root)): i for i, p in enumerate(files)}
    return sorted(rows, key=lambda row: order[row["file"]])
