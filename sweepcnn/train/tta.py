"""Test-time augmentation: the mean of the logits over a few views of each (normalised) image batch. Used by
validation, --test, the report and part_b/predict.py alike, so their accuracies agree."""
from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F


CROP = 7 / 8  # flip_crops' central crop: the side share torchvision's eval transforms crop (224 of 256)


def views(images: torch.Tensor, mode: str) -> Iterator[torch.Tensor]:
    """The views of a [B, C, H, W] batch that `mode` averages over, the batch itself first."""
    yield images
    if mode == "none":
        return
    yield images.flip(-1)
    if mode == "flip_crops":
        h, w = images.shape[-2:]
        ch, cw = round(h * CROP), round(w * CROP)
        top, left = (h - ch) // 2, (w - cw) // 2
        crop = F.interpolate(images[..., top:top + ch, left:left + cw], size=(h, w), mode="bilinear",
                             align_corners=False)
        yield crop
        yield crop.flip(-1)


def tta_logits(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, mode: str) -> torch.Tensor:
    """forward(images) averaged over the views of `mode`, in float32."""
    logits = None
    count = 0
    for view in views(images, mode):
        out = forward(view).float()
        logits = out if logits is None else logits + out
        count += 1
    return logits if count == 1 else logits / count


def tta_mode(cfg: dict) -> str:
    """The run's --tta (a config saved before the option existed: none)."""
    return cfg.get("tta", "none")
