"""Mixup and CutMix of whole training batches on the training device, as timm's `Mixup` in its default batch mode:
one mixing ratio per batch, each image mixed with its mirror in the batch (image i with image B-1-i), the targets
mixed in the same ratio (label smoothing then applies to the mixed targets, in the loss). CutMix's ratio is the
pasted box's true share of the image, after clipping at the border (timm's `correct_lam`).

The draws come from a NumPy generator that the engine reseeds from (seed, epoch), so exact resume stays exact.
"""
from __future__ import annotations

import numpy as np
import torch



def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int, float]:
    """A box (top, bottom, left, right) of about (1 - lam) of the image, centred anywhere, clipped at the border;
    and the ratio it leaves, 1 - its true share of the area."""
    cut = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    top, bottom = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, height)
    left, right = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, width)
    return int(top), int(bottom), int(left), int(right), 1.0 - (bottom - top) * (right - left) / (height * width)


class Mixer:
    """Mixes a normalised training batch and returns it with soft targets [B, classes] (rows sum to one)."""

    def __init__(self, mixup: float, cutmix: float, prob: float, switch_prob: float, num_classes: int):
        self.mixup, self.cutmix, self.prob, self.switch_prob = mixup, cutmix, prob, switch_prob
        self.num_classes = num_classes
        self.rng = np.random.default_rng(0)
        self.last_lam = 1.0  # the ratio of the last batch (1: not mixed)

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def _draw(self) -> tuple[float, bool]:
        """(ratio of the image kept, whether CutMix) for the next batch."""
        if self.rng.random() >= self.prob:
            return 1.0, False
        use_cutmix = self.cutmix > 0 and (self.mixup == 0 or self.rng.random() < self.switch_prob)
        alpha = self.cutmix if use_cutmix else self.mixup
        return float(self.rng.beta(alpha, alpha)), use_cutmix

    def __call__(self, images: torch.Tensor, labels: torch.Tensor,
                 partners: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`partners`: the (images, labels) each image is mixed with (default: the batch's mirror; several ranks
        pass the partners of their shard in the global batch)."""
        others, other_labels = partners if partners is not None else (images.flip(0), labels.flip(0))
        lam, use_cutmix = self._draw()
        if use_cutmix:
            top, bottom, left, right, lam = cutmix_box(images.shape[-2], images.shape[-1], lam, self.rng)
            images = images.clone()
            images[..., top:bottom, left:right] = others[..., top:bottom, left:right]
        elif lam < 1.0:
            images = images.mul(lam).add_(others, alpha=1.0 - lam)
        targets = self.one_hot(labels)
        self.last_lam = lam
        other_targets = targets.flip(0) if partners is None else self.one_hot(other_labels)
        return images, targets * lam + other_targets * (1.0 - lam)

    def one_hot(self, labels: torch.Tensor) -> torch.Tensor:
        # scatter, not F.one_hot: on the CPU one_hot reads the labels' min and max back to check them
        return torch.zeros(len(labels), self.num_classes, device=labels.device).scatter_(1, labels[:, None], 1.0)


def mixer(cfg: dict, num_classes: int) -> Mixer | None:
    """The run's Mixer, or None when --mixup and --cutmix are both off (or --mix_prob is 0)."""
    if (cfg["mixup"] == 0 and cfg["cutmix"] == 0) or cfg["mix_prob"] == 0:
        return None
    return Mixer(cfg["mixup"], cfg["cutmix"], cfg["mix_prob"], cfg["mix_switch_prob"], num_classes)
