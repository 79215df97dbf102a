"""Training-time augmentation of whole uint8 batches [B, C, H, W] on the training device.

Every sample draws its own parameters from a host `torch.Generator` (the engine reseeds it from (seed, epoch), so
exact resume stays exact, and CPU and CUDA draw the same values). The geometric augmentations of all stages compose
into one affine matrix per sample, applied with one bilinear resampling; the pixel ones follow in the order named
(see sweepcnn.data.warp and sweepcnn.data.color). Ranges are torchvision's: hflip and vflip (p 0.5), rotate
(+-10 degrees), random_resized_crop (scale 0.5-1, ratio 3/4-4/3), color_jitter (0.3, 0.3, 0.3, hue 0.05; one
channel: brightness and contrast), gaussian_blur (p 0.3, 5 x 5, sigma 0.1-2), sharpness (p 0.3, factor 2),
autoaugment (ImageNet policy), randaugment, trivialaugment (TrivialAugmentWide).
"""
from __future__ import annotations

from typing import Callable

import torch

from sweepcnn.data import warp
from sweepcnn.data.color import Canvas, ColourStep, RowStep, to_device
from sweepcnn.data.policies import Policy
from sweepcnn.data.shards import Shard

Stage = Callable[[int, int, int, torch.Generator], tuple[torch.Tensor | None, list]]


def _flip(axis: int) -> Stage:
    return lambda n, h, w, g: (warp.flip(warp.chance(n, 0.5, g), axis), [])


def _rotate(n: int, h: int, w: int, g: torch.Generator) -> tuple[torch.Tensor, list]:
    return warp.rotation(warp.uniform(n, -10, 10, g)), []


def _resized_crop(n: int, h: int, w: int, g: torch.Generator) -> tuple[torch.Tensor, list]:
    return warp.crop(warp.crop_boxes(n, h, w, (0.5, 1.0), (3 / 4, 4 / 3), g), h, w), []


def _color_jitter(channels: int) -> Stage:
    def stage(n: int, h: int, w: int, g: torch.Generator) -> tuple[None, list]:
        brightness, contrast = warp.uniform(n, 0.7, 1.3, g), warp.uniform(n, 0.7, 1.3, g)
        saturation, hue = warp.uniform(n, 0.7, 1.3, g), warp.uniform(n, -0.05, 0.05, g)
        if channels == 1:
            saturation, hue = torch.ones(n), torch.zeros(n)
        return None, [ColourStep(brightness, contrast, saturation, hue, torch.zeros(n, dtype=torch.bool))]
    return stage


def _filter(kind: str) -> Stage:
    def stage(n: int, h: int, w: int, g: torch.Generator) -> tuple[None, list]:
        rows = torch.nonzero(warp.chance(n, 0.3, g)).flatten()
        values = warp.uniform(len(rows), 0.1, 2.0, g) if kind == "blur" else torch.full((len(rows),), 2.0)
        return None, [RowStep(kind, rows, values)]
    return stage


def stages(names: list[str], channels: int) -> list[Stage]:
    make = {"hflip": lambda: _flip(0), "vflip": lambda: _flip(1), "rotate": lambda: _rotate,
            "random_resized_crop": lambda: _resized_crop, "color_jitter": lambda: _color_jitter(channels),
            "gaussian_blur": lambda: _filter("blur"), "sharpness": lambda: _filter("sharpen"),
            "autoaugment": lambda: Policy("autoaugment"), "randaugment": lambda: Policy("randaugment"),
            "trivialaugment": lambda: Policy("trivialaugment")}
    return [make[name]() for name in names]


class Augment:
    """The augmentations `names` (from AUGMENTATIONS) of batches with `channels` (1 or 3) channels."""

    def __init__(self, names: list[str], channels: int):
        self.names, self.channels, self.stages = list(names), channels, stages(names, channels)

    def draw(self, n: int, height: int, width: int, generator: torch.Generator) -> tuple[torch.Tensor, list]:
        """Every sample's parameters: the composed affine matrices [n, 3, 3] (pixel units) and the pixel steps."""
        matrices, steps = warp.identity(n), []
        for stage in self.stages:
            m, s = stage(n, height, width, generator)
            matrices, steps = (matrices if m is None else matrices @ m), steps + s
        return matrices, steps

    def canvas(self, images: torch.Tensor, generator: torch.Generator, shard: Shard | None = None) -> Canvas:
        n, _, height, width = images.shape
        if shard is None:
            matrices, steps = self.draw(n, height, width, generator)
        else:  # drawn for the whole global batch, as one process draws them: this rank's samples' parameters
            index = torch.as_tensor(shard.positions, dtype=torch.long)
            matrices, steps = self.draw(shard.total, height, width, generator)
            matrices, steps = matrices[index], [step.select(index, shard.total) for step in steps]
        pixels = images.float()
        rows = warp.moving(matrices)
        theta = to_device(warp.normalized(matrices[rows], height, width), images.device)
        if len(rows) == n:
            pixels = warp.warp(pixels, theta)
        canvas = Canvas(pixels)
        if 0 < len(rows) < n:
            with canvas.threads(rows):
                r = to_device(rows, images.device)
                canvas.pixels[r] = warp.warp(pixels[r], theta)
        for step in steps:
            step.apply(canvas)
        return canvas

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augmented uint8 images, the same shape as `images` (uint8 [B, C, H, W])."""
        c = images.shape[1]
        ones, zeros = torch.ones(c, device=images.device), torch.zeros(c, device=images.device)
        return self.canvas(images, generator).result(ones, zeros).round_().clamp_(0, 255).to(torch.uint8)

    def normalized(self, images: torch.Tensor, generator: torch.Generator, mean: torch.Tensor, std: torch.Tensor,
                   shard: Shard | None = None) -> torch.Tensor:
        """(augmented - mean) / std as float, `mean` and `std` per channel on the 0-255 scale: the normalisation
        joins the colour map's matrix product, so augmenting costs no extra pass for it. `shard`: `images` are these
        positions of a global batch (several ranks), augmented as the whole batch would be."""
        return self.canvas(images, generator, shard).result(1 / std, -mean / std)


def augmenter(cfg: dict, channels: int) -> Augment | None:
    """cfg's augmentation (--augmentation, --augmentations) of `channels`-channel batches, or None when off."""
    return Augment(cfg["augmentations"], channels) if cfg["augmentation"] else None
