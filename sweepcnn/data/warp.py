"""Geometric augmentation as per-sample affine matrices, composed on the host and applied in one resampling.

A matrix maps an output pixel to the input position it samples, in pixel units centred on the image (x right,
y down), as a 3 x 3 homogeneous matrix. Transforms applied one after the other compose as M1 @ M2 @ ...; the
composite is applied once with `affine_grid` + bilinear `grid_sample` (one interpolation, zero fill outside).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DTYPE = torch.float64  # host-side matrices: composing several stays exact to float32 precision


def identity(n: int) -> torch.Tensor:
    return torch.eye(3, dtype=DTYPE).repeat(n, 1, 1)


def chance(n: int, p: float, generator: torch.Generator) -> torch.Tensor:
    """Per sample: True with probability p."""
    return torch.rand(n, generator=generator, dtype=DTYPE) < p


def uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, dtype=DTYPE)


def flip(mask: torch.Tensor, axis: int) -> torch.Tensor:
    """Mirror the samples in `mask` along x (axis 0) or y (axis 1)."""
    m = identity(len(mask))
    m[:, axis, axis] = 1 - 2 * mask.to(DTYPE)
    return m


def rotation(degrees: torch.Tensor) -> torch.Tensor:
    """Rotate the content counter-clockwise by `degrees` about the centre (torchvision's rotate)."""
    a = torch.deg2rad(degrees.to(DTYPE))
    m = identity(len(a))
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = a.cos(), -a.sin(), a.sin(), a.cos()
    return m


def shear(magnitude: torch.Tensor, axis: int, height: int, width: int) -> torch.Tensor:
    """torchvision's ShearX (axis 0) / ShearY (axis 1) of the policies: x += m * y about the top-left corner."""
    m = identity(len(magnitude))
    other, half = 1 - axis, (height if axis == 0 else width) / 2
    m[:, axis, other] = magnitude
    m[:, axis, 2] = magnitude * half
    return m


def translation(dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Move the content by (dx, dy) pixels."""
    m = identity(len(dx))
    m[:, 0, 2], m[:, 1, 2] = -dx.to(DTYPE), -dy.to(DTYPE)
    return m


def crop_boxes(n: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
               generator: torch.Generator) -> torch.Tensor:
    """RandomResizedCrop's boxes [n, 4] as (top, left, h, w): area share in `scale`, w/h in `ratio` (log-uniform),
    10 tries per sample as torchvision, else its fallback (the whole image, ratio clamped, centred)."""
    tries = 10
    area = height * width * uniform(n * tries, *scale, generator).view(n, tries)
    logs = uniform(n * tries, math.log(ratio[0]), math.log(ratio[1]), generator).view(n, tries)
    w = torch.sqrt(area * logs.exp()).round()
    h = torch.sqrt(area / logs.exp()).round()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(ok.any(1), ok.to(torch.int8).argmax(1), 0)
    rows = torch.arange(n)
    w, h = w[rows, first], h[rows, first]
    top = (torch.rand(n, generator=generator, dtype=DTYPE) * (height - h + 1)).floor()
    left = (torch.rand(n, generator=generator, dtype=DTYPE) * (width - w + 1)).floor()
    fallback = ~ok.any(1)
    if fallback.any():
        in_ratio = width / height
        fw = width if in_ratio <= ratio[1] else round(height * ratio[1])
        fh = height if in_ratio >= ratio[0] else round(width / ratio[0])
        w[fallback], h[fallback] = float(fw), float(fh)
        top[fallback], left[fallback] = float((height - fh) // 2), float((width - fw) // 2)
    return torch.stack([top, left, h, w], 1)


def crop(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Crop each (top, left, h, w) box and resize it to the full image."""
    top, left, h, w = boxes.unbind(1)
    m = identity(len(boxes))
    m[:, 0, 0], m[:, 1, 1] = w / width, h / height
    m[:, 0, 2], m[:, 1, 2] = left + w / 2 - width / 2, top + h / 2 - height / 2
    return m


def moving(matrices: torch.Tensor) -> torch.Tensor:
    """Indices of the samples whose matrix is not the identity."""
    return torch.nonzero((matrices - torch.eye(3, dtype=matrices.dtype)).abs().amax((1, 2)) > 1e-9).flatten()


def normalized(matrices: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The [n, 2, 3] float32 thetas of affine_grid (align_corners=False) for pixel-unit matrices."""
    to_norm = torch.diag(torch.tensor([2 / width, 2 / height, 1.0], dtype=DTYPE))
    from_norm = torch.diag(torch.tensor([width / 2, height / 2, 1.0], dtype=DTYPE))
    return (to_norm @ matrices @ from_norm)[:, :2].float()


def warp(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample float images [n, C, H, W] with thetas [n, 2, 3] (on their device): bilinear, zeros outside.
    The grid is built by broadcasting (a third of affine_grid's time on CPU; the same values)."""
    n, _, height, width = images.shape
    xs = (torch.arange(width, device=images.device, dtype=theta.dtype) * 2 + 1) / width - 1
    ys = (torch.arange(height, device=images.device, dtype=theta.dtype) * 2 + 1) / height - 1
    along_x = xs[None, :, None] * theta[:, None, :, 0]  # [n, W, 2]
    along_y = ys[None, :, None] * theta[:, None, :, 1] + theta[:, None, :, 2]  # [n, H, 2]
    grid = along_y[:, :, None, :] + along_x[:, None, :, :]
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
