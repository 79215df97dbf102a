"""Mixup and CutMix: the soft targets sum to one and carry the images' mixing ratio; the draws follow the flags."""
import numpy as np
import pytest
import torch

from sweepcnn.train.mixing import Mixer, cutmix_box, mixer

CLASSES = 5


def batch(n=8, size=16):
    images = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))
    return images, torch.arange(n) % CLASSES


def test_mixup_blends_images_and_targets_in_the_same_ratio():
    mix = Mixer(mixup=0.4, cutmix=0.0, prob=1.0, switch_prob=0.5, num_classes=CLASSES)
    images, labels = batch()
    mixed, targets = mix(images, labels)
    lam = mix.last_lam
    assert 0 < lam < 1
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * images.flip(0))
    torch.testing.assert_close(targets.sum(1), torch.ones(len(labels)))
    expected = torch.zeros(len(labels), CLASSES)
    expected[torch.arange(len(labels)), labels] += lam
    expected[torch.arange(len(labels)), labels.flip(0)] += 1 - lam
    torch.testing.assert_close(targets, expected)


def test_cutmix_pastes_a_box_whose_area_share_is_the_targets_ratio():
    mix = Mixer(mixup=0.0, cutmix=1.0, prob=1.0, switch_prob=0.5, num_classes=CLASSES)
    images, labels = batch(size=20)
    for _ in range(10):
        mixed, targets = mix(images, labels)
        from_partner = (mixed == images.flip(0)) & (mixed != images)
        share = from_partner[0, 0].float().mean().item()  # the same box in every image and channel
        assert targets[0, labels[0]].item() == pytest.approx(1 - share, abs=1e-6)
        torch.testing.assert_close(targets.sum(1), torch.ones(len(labels)))
        assert from_partner.all(1).sum((1, 2)).eq(from_partner[:, 0].sum((1, 2))).all()


def test_cutmix_box_is_clipped_and_its_ratio_corrected():
    rng = np.random.default_rng(3)
    for lam in (0.1, 0.5, 0.9):
        for _ in range(50):
            top, bottom, left, right, kept = cutmix_box(24, 32, lam, rng)
            assert 0 <= top <= bottom <= 24 and 0 <= left <= right <= 32
            assert kept == pytest.approx(1 - (bottom - top) * (right - left) / (24 * 32))
            assert kept >= lam - 1e-9  # clipping only shrinks the box


def test_probabilities_of_mixing_and_switching():
    both = Mixer(mixup=0.2, cutmix=1.0, prob=0.5, switch_prob=0.25, num_classes=CLASSES)
    draws = [both._draw() for _ in range(4000)]
    mixed = [cut for lam, cut in draws if lam < 1]
    assert 0.45 < len(mixed) / len(draws) < 0.55
    assert 0.2 < sum(mixed) / len(mixed) < 0.3  # CutMix's share of the mixed batches


def test_reseeding_repeats_the_draws():
    mix = Mixer(mixup=0.2, cutmix=1.0, prob=1.0, switch_prob=0.5, num_classes=CLASSES)
    images, labels = batch()
    mix.reseed(7)
    first = [mix(images, labels) for _ in range(3)]
    mix.reseed(7)
    for (a, ta), (b, tb) in zip(first, [mix(images, labels) for _ in range(3)]):
        assert torch.equal(a, b) and torch.equal(ta, tb)


@pytest.mark.parametrize("mixup, cutmix, prob, on", [(0, 0, 1, False), (0.2, 0, 0, False), (0.2, 0, 1, True),
                                                      (0, 1.0, 0.5, True)])
def test_mixer_is_off_unless_a_mix_is_on(mixup, cutmix, prob, on):
    cfg = {"mixup": mixup, "cutmix": cutmix, "mix_prob": prob, "mix_switch_prob": 0.5}
    assert (mixer(cfg, CLASSES) is not None) == on
