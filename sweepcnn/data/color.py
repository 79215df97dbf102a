"""Pixel augmentation of a float batch (0-255 scale) on its device, each sample with its own parameters.

The affine colour adjustments (brightness, contrast, saturation, hue, invert) of every sample accumulate into one
pending C x C matrix and offset per sample (`Canvas`), applied once: with the batch's normalisation at the end, or
before an op that needs the actual pixel values (posterize, solarize, autocontrast, equalize: torchvision's own
batched uint8 kernels, on the rows that drew them). Hue is a rotation about the grey axis in RGB space, with no RGB
to HSV round trip per pixel: like a rotation in YIQ space but with equal channel weights, which measured closer to
torchvision's HSV hue shift on imagenette photos (see tests/sweepcnn/data/test_augment.py). Blur and sharpening are
linear filters whose weights sum to 1: they commute with the pending colour map (clamping apart) and run on the
float pixels directly.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

LUMA = (0.2989, 0.587, 0.114)  # torchvision's grayscale weights (saturation, contrast)


@contextmanager
def one_thread() -> Iterator[None]:
    """Run small ops on one thread. With anything else running on the cores every parallel region can wait for a
    scheduler tick: measured here while other processes were busy, rounding 6 images took 15 ms on 2 threads and
    0.3 ms on 1, and trivialaugment of a 64-image batch 960 ms with its per-op groups on 2 threads, 190 ms on 1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor on `device`; on CUDA through pinned memory, so the copy does not wait for the GPU."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def hue_matrices(shift: torch.Tensor) -> torch.Tensor:
    """RGB -> RGB matrices [n, 3, 3] turning the hue by `shift` turns (torchvision's hue_factor): a rotation about
    the grey axis (1, 1, 1), Rodrigues' formula. It keeps grey pixels and the channel mean."""
    a = 2 * math.pi * shift.to(torch.float64)[:, None, None]
    u = torch.full((3,), 3 ** -0.5, dtype=torch.float64)
    cross = torch.tensor([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]], dtype=torch.float64)
    return a.cos() * torch.eye(3, dtype=torch.float64) + a.sin() * cross + (1 - a.cos()) * torch.outer(u, u)


def colour_matrices(channels: int, brightness: torch.Tensor, saturation: torch.Tensor, hue: torch.Tensor,
                    invert: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample (matrix [n, C, C], offset [n, C]) of invert, then saturation and hue, then brightness (the last
    three commute). One channel: invert and brightness only."""
    eye = torch.eye(channels, dtype=torch.float64)
    inverted = invert.to(torch.float64)[:, None]
    matrix = eye * (1 - 2 * inverted)[:, :, None]
    offset = 255 * inverted.repeat(1, channels)
    if channels == 3:
        s = saturation.to(torch.float64)[:, None, None]
        grey = torch.ones(3, 1, dtype=torch.float64) @ torch.tensor([LUMA], dtype=torch.float64)
        tint = hue_matrices(hue) @ (s * eye + (1 - s) * grey)
        matrix, offset = tint @ matrix, (tint @ offset[:, :, None])[:, :, 0]
    b = brightness.to(torch.float64)[:, None]
    return matrix * b[:, :, None], offset * b


@dataclass
class ColourStep:
    """Per-sample affine colour adjustments [n] each; neutral values (1, 1, 1, 0, False) leave a sample as is."""

    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor
    invert: torch.Tensor

    def apply(self, canvas: Canvas) -> None:
        canvas.colour(self)

    def select(self, positions: torch.Tensor, total: int) -> ColourStep:
        """The step of the samples at `positions` of the `total` it was drawn for, in that order."""
        return ColourStep(*(getattr(self, f)[positions] for f in ("brightness", "contrast", "saturation", "hue",
                                                                     "invert")))


@dataclass
class RowStep:
    """An operation on `rows` with a value per row: the filters `blur` (Gaussian sigmas, 5 x 5) and `sharpen`
    (sharpness factors), and the uint8 ops `posterize` (bits), `solarize` (thresholds), `autocontrast`, `equalize`."""

    kind: str
    rows: torch.Tensor
    values: torch.Tensor

    def select(self, positions: torch.Tensor, total: int) -> RowStep:
        """The step of the samples at `positions` of the `total` it was drawn for, numbered as they are there."""
        slot = torch.full((total,), -1, dtype=torch.long)
        slot[self.rows] = torch.arange(len(self.rows))
        picked = slot[positions]
        kept = torch.nonzero(picked >= 0).flatten()
        return RowStep(self.kind, kept, self.values[picked[kept]])

    def apply(self, canvas: Canvas) -> None:
        if len(self.rows):
            (canvas.filter if self.kind in ("blur", "sharpen") else canvas.levels)(self)


def blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """torchvision's gaussian_blur (5 x 5, reflect padding) with a sigma per image, as one grouped convolution."""
    n, c, h, w = images.shape
    x = torch.arange(-2, 3, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (x[None] / sigma[:, None]) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)
    flat = F.pad(images.reshape(1, n * c, h, w), (2, 2, 2, 2), mode="reflect")
    flat = F.conv2d(flat, kernel[:, None, None, :], groups=n * c)
    return F.conv2d(flat, kernel[:, None, :, None], groups=n * c).view(n, c, h, w)


def sharpen(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_sharpness (blend with a 3 x 3 smoothing, borders kept) with a factor per image."""
    c = images.shape[1]
    kernel = torch.ones(3, 3, device=images.device, dtype=images.dtype)
    kernel[1, 1] = 5
    smooth = F.conv2d(images, (kernel / 13).expand(c, 1, 3, 3), groups=c)
    out = images.clone()
    inner = out[..., 1:-1, 1:-1]
    inner.add_((smooth - inner) * (1 - factor)[:, None, None, None])
    return out


def levels(images: torch.Tensor, kind: str, values: torch.Tensor) -> torch.Tensor:
    """The uint8 operations of the policies, values per image."""
    if kind == "posterize":
        masks = ((torch.full_like(values, 255, dtype=torch.long) << (8 - values.long())) & 255).to(torch.uint8)
        return images & masks[:, None, None, None]
    if kind == "solarize":
        return torch.where(images >= values[:, None, None, None], 255 - images, images)
    return TF.autocontrast(images) if kind == "autocontrast" else TF.equalize(images)


class Canvas:
    """A float batch [n, C, H, W] (0-255) being augmented, with each sample's pending colour map."""

    def __init__(self, pixels: torch.Tensor):
        n, c = pixels.shape[:2]
        self.pixels, self.device = pixels, pixels.device
        self.matrix = torch.eye(c, device=self.device).repeat(n, 1, 1)
        self.offset = torch.zeros(n, c, device=self.device)
        self.pending = torch.zeros(n, dtype=torch.bool)  # host: samples whose colour map is not the identity
        self.overshoot = False  # values may leave 0-255: clamp at the end

    def threads(self, rows: torch.Tensor):
        """One thread for an op on part of a CPU batch (see one_thread); a whole batch's ops use them all."""
        return one_thread() if self.device.type == "cpu" and len(rows) < len(self.pixels) else nullcontext()

    def _rows(self, rows: torch.Tensor) -> torch.Tensor:
        return self.pixels if len(rows) == len(self.pixels) else self.pixels[to_device(rows, self.device)]

    def _put(self, rows: torch.Tensor, values: torch.Tensor) -> None:
        if len(rows) == len(self.pixels):
            self.pixels = values
        else:
            self.pixels[to_device(rows, self.device)] = values

    def colour(self, step: ColourStep) -> None:
        c = self.pixels.shape[1]
        matrix, offset = colour_matrices(c, step.brightness, step.saturation, step.hue, step.invert)
        changed = (matrix - torch.eye(c, dtype=matrix.dtype)).abs().amax((1, 2)) + offset.abs().amax(1) > 1e-9
        if changed.any():
            m, o = to_device(matrix.float(), self.device), to_device(offset.float(), self.device)
            self.matrix, self.offset = m @ self.matrix, (m @ self.offset[:, :, None])[:, :, 0] + o
        rows = torch.nonzero(step.contrast != 1).flatten()
        if len(rows):  # blend with the mean grey of the image as it is now (pending map included)
            r = to_device(rows, self.device)
            factor = to_device(step.contrast[rows].float(), self.device)[:, None]
            with self.threads(rows):
                means = self._rows(rows).mean((2, 3))
            mean = (self.matrix[r] @ means[:, :, None])[:, :, 0] + self.offset[r]
            grey = mean @ torch.tensor(LUMA, device=self.device)[:, None] if c == 3 else mean
            self.matrix[r] *= factor[:, :, None]
            self.offset[r] = factor * self.offset[r] + (1 - factor) * grey
        self.pending |= changed
        self.pending[rows] = True
        self.overshoot |= bool(self.pending.any())

    def filter(self, step: RowStep) -> None:
        values = to_device(step.values.float(), self.device)
        with self.threads(step.rows):
            images = self._rows(step.rows)
            self._put(step.rows, blur(images, values) if step.kind == "blur" else sharpen(images, values))
        self.overshoot |= step.kind == "sharpen"

    def levels(self, step: RowStep) -> None:
        rows = step.rows
        with self.threads(rows):
            images = self._mapped(rows).round().clamp_(0, 255).to(torch.uint8)
            self._put(rows, levels(images, step.kind, to_device(step.values, self.device)).float())

    def _mapped(self, rows: torch.Tensor) -> torch.Tensor:
        """The rows with their pending colour map applied (and reset): the actual pixel values."""
        todo = rows[self.pending[rows]]
        if len(todo) == 0:
            return self._rows(rows)
        r = to_device(todo, self.device)
        mapped = self.map(self.pixels[r], self.matrix[r], self.offset[r]).clamp_(0, 255)
        self.pixels[r] = mapped
        self.matrix[r], self.offset[r] = torch.eye(self.matrix.shape[1], device=self.device), 0.0
        self.pending[todo] = False
        return self._rows(rows)

    @staticmethod
    def map(images: torch.Tensor, matrix: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """matrix @ pixel + offset for every pixel, per image: one batched matrix product."""
        n, c, h, w = images.shape
        return torch.baddbmm(offset[:, :, None], matrix, images.reshape(n, c, h * w)).view(n, c, h, w)

    def result(self, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """scale * (pending map of the pixels) + shift per channel ([C] each), clamped to the image of 0-255."""
        out = self.map(self.pixels, scale[None, :, None] * self.matrix, scale * self.offset + shift)
        if self.overshoot:
            lo, hi = shift.view(1, -1, 1, 1), (255 * scale + shift).view(1, -1, 1, 1)
            out = torch.maximum(torch.minimum(out, hi, out=out), lo, out=out)
        return out
