"""What a model looks at: the layers a report inspects, forward hooks, guided backpropagation and Grad-CAM.

A part names its model's layers (`Layers`, handed over in its ModelSpec); `conv_layers` is the fallback for any
other model: its first and last Conv2d. ViT tokens are reshaped to the patch grid (`as_grid`).
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sweepcnn.errors import UserError
from sweepcnn.train.spec import Layers

NEURONS = 10  # guided backpropagation: the channels with the strongest peak activation
# Activation modules that guided backpropagation hooks (see `guided`).
GUIDED_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
                      nn.Hardswish, nn.Tanh)


def conv_layers(model: nn.Module) -> Layers:
    """The first and the last Conv2d of `model`: the layers of a model whose part names none."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise UserError(f"{type(model).__name__} has no Conv2d layer: no filters, Grad-CAM or guided backpropagation")
    return Layers(convs[0], convs[-1])


def module_name(model: nn.Module, module: nn.Module) -> str:
    """The dotted name of `module` inside `model`."""
    return next(name for name, m in model.named_modules() if m is module)


def as_grid(activation: torch.Tensor) -> torch.Tensor:
    """A layer's output as [N, C, h, w]: feature maps as they are; ViT tokens [N, T, D] reshaped to the patch grid
    (without the class token, which torchvision puts first)."""
    if activation.dim() == 4:
        return activation
    if activation.dim() != 3:
        raise ValueError(f"cannot map a layer output of shape {tuple(activation.shape)} onto the image")
    tokens = activation.shape[1]
    side = math.isqrt(tokens - 1)
    if side * side == tokens - 1:
        activation = activation[:, 1:]
    else:
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise ValueError(f"{tokens} tokens do not form a square patch grid")
    return activation.transpose(1, 2).reshape(activation.shape[0], -1, side, side)


@contextmanager
def capture(layer: nn.Module) -> Iterator[dict]:
    """Records the layer's output of the next forward pass in `captured["output"]`."""
    captured: dict[str, torch.Tensor] = {}
    handle = layer.register_forward_hook(lambda module, args, output: captured.__setitem__("output", output))
    try:
        yield captured
    finally:
        handle.remove()


@contextmanager
def guided(model: nn.Module) -> Iterator[list[str]]:
    """Guided backpropagation (Springenberg et al., 2015) while inside: the gradient leaving every activation module
    towards its input is clamped at 0. Yields the activation types hooked.

    Full backward hooks see grad_input = grad_output * f'(x); clamping it gives max(0, grad_output * f'(x)). For
    ReLU that is exactly the guided rule, (x > 0) * max(0, grad_output). GELU, SiLU and Mish are not monotonic:
    f'(x) < 0 below about x = -0.75, -1.28 and -1.19, where a negative grad_output passes as a positive gradient,
    and slightly negative inputs pass gradient where ReLU would block it; the map is then a close analogue, not the
    published method. Activations called as functions (F.relu in a forward) are not modules and are not hooked.
    In-place activations run out of place while hooked: full backward hooks forbid in-place changes of a hooked
    module's output."""
    def clamp(module: nn.Module, grad_input: tuple, grad_output: tuple) -> tuple | None:
        return None if grad_input[0] is None else (grad_input[0].clamp(min=0), *grad_input[1:])

    activations = [m for m in model.modules() if isinstance(m, GUIDED_ACTIVATIONS)]
    in_place = [m for m in activations if getattr(m, "inplace", False)]
    handles = [m.register_full_backward_hook(clamp) for m in activations]
    for m in in_place:
        m.inplace = False
    try:
        yield sorted({type(m).__name__ for m in activations})
    finally:
        for m in in_place:
            m.inplace = True
        for h in handles:
            h.remove()


@dataclass
class GuidedMaps:
    maps: torch.Tensor  # [n, C, H, W] input gradients, one per neuron
    neurons: list[tuple[int, int, int]]  # (channel, y, x) on the layer's grid
    activations: list[str]  # activation types hooked


def guided_backprop(model: nn.Module, layer: nn.Module, image: torch.Tensor, count: int = NEURONS) -> GuidedMaps:
    """Guided backpropagation from `count` neurons of `layer` to a normalised image [1, C, H, W]: the channels with
    the strongest peak activation, each at the position of its peak. The model should be in eval mode."""
    with torch.no_grad(), capture(layer) as out:
        model(image)
    grid = as_grid(out["output"])[0]
    peaks, where = grid.flatten(1).max(1)
    channels = peaks.argsort(descending=True)[:count]
    ys, xs = where[channels] // grid.shape[2], where[channels] % grid.shape[2]
    # one copy of the image per neuron: one forward and one backward pass for all of them (eval mode keeps the
    # copies independent)
    batch = image.detach().expand(len(channels), -1, -1, -1).clone().requires_grad_(True)
    with guided(model) as kinds, capture(layer) as out:
        model(batch)
    selected = as_grid(out["output"])[torch.arange(len(channels)), channels, ys, xs]
    maps, = torch.autograd.grad(selected.sum(), batch)
    neurons = [(int(c), int(y), int(x)) for c, y, x in zip(channels, ys, xs)]
    return GuidedMaps(maps.detach(), neurons, kinds)


def grad_cam(model: nn.Module, layer: nn.Module, images: torch.Tensor, targets: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM (Selvaraju et al., 2017) of normalised images [N, C, H, W] for `targets` (default: the predicted
    classes): (maps [N, H, W] in [0, 1], upsampled bilinearly to the input size; the classes explained)."""
    images = images.detach().clone().requires_grad_(True)  # gives frozen layers a gradient path
    with capture(layer) as out:
        logits = model(images)
    targets = logits.argmax(1) if targets is None else targets.to(logits.device)
    grads, = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), out["output"])
    acts, grads = as_grid(out["output"].detach()), as_grid(grads)
    cam = F.relu((grads.mean((2, 3), keepdim=True) * acts).sum(1, keepdim=True))
    cam = F.interpolate(cam.float(), size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(1).clamp_min(1e-12)
    return (cam / peak[:, None, None]).cpu(), targets.cpu()
