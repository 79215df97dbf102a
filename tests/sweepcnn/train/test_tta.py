"""Test-time augmentation: the mean of the views' logits; a flip-invariant model is unchanged by flip TTA."""
import torch
from torch import nn

from sweepcnn.train.tta import tta_logits, views


def pooled_model():
    """Global average pooling then a linear layer: invariant to horizontal flips."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)).eval()


def test_a_flip_invariant_model_gives_the_same_logits_with_flip_tta():
    images = torch.randn(6, 3, 16, 16)
    model = pooled_model()
    with torch.no_grad():
        torch.testing.assert_close(tta_logits(model, images, "flip"), tta_logits(model, images, "none"))


def test_tta_is_the_mean_of_the_views_logits():
    images = torch.randn(4, 3, 16, 16)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 5)).eval()  # sees where pixels are
    with torch.no_grad():
        plain = model(images)
        assert torch.equal(tta_logits(model, images, "none"), plain)
        flipped = tta_logits(model, images, "flip")
        torch.testing.assert_close(flipped, (plain + model(images.flip(-1))) / 2)
        assert not torch.allclose(flipped, plain)
        crops = list(views(images, "flip_crops"))
        torch.testing.assert_close(tta_logits(model, images, "flip_crops"),
                                   torch.stack([model(v) for v in crops]).mean(0))


def test_flip_crops_views():
    images = torch.arange(2 * 1 * 16 * 16, dtype=torch.float32).view(2, 1, 16, 16)
    original, flipped, crop, crop_flipped = views(images, "flip_crops")
    assert torch.equal(original, images) and torch.equal(flipped, images.flip(-1))
    assert crop.shape == images.shape and torch.equal(crop_flipped, crop.flip(-1))
    assert not torch.equal(crop, images)  # a zoom into the centre: its corners are not the image's
    centre = images[..., 1:15, 1:15]  # the central 14 of 16 pixels (7/8)
    assert crop.min() >= centre.min() - 1e-4 and crop.max() <= centre.max() + 1e-4
