"""Training-time augmentation: random transforms on uint8 [C, S, S] tensors, each keeping the image size."""
from __future__ import annotations

from torchvision.transforms import v2

from sweepcnn.config import Option, grouped
from sweepcnn.data.datasets import ImageSet

AUGMENTATIONS = ("hflip", "vflip", "rotate", "random_resized_crop", "color_jitter", "gaussian_blur", "sharpness",
                 "autoaugment", "randaugment", "trivialaugment")

AUGMENT_OPTIONS = grouped("augmentation", {
    "augmentation": Option(False, "random augmentation of training images", "bool"),
    "augmentations": Option(["hflip", "rotate", "random_resized_crop", "color_jitter"],
                            "augmentations used when --augmentation=true", "strs", choices=AUGMENTATIONS),
})


def train_transform(names: list[str], size: int, channels: int) -> v2.Compose:
    """The augmentations `names` (from AUGMENTATIONS), applied in that order."""
    color = channels == 3
    make = {
        "hflip": lambda: v2.RandomHorizontalFlip(),
        "vflip": lambda: v2.RandomVerticalFlip(),
        "rotate": lambda: v2.RandomRotation(10),
        "random_resized_crop": lambda: v2.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True),
        "color_jitter": lambda: v2.ColorJitter(0.3, 0.3, 0.3 if color else 0, 0.05 if color else 0),
        "gaussian_blur": lambda: v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 2.0))], p=0.3),
        "sharpness": lambda: v2.RandomAdjustSharpness(2.0, p=0.3),
        "autoaugment": lambda: v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET),
        "randaugment": lambda: v2.RandAugment(),
        "trivialaugment": lambda: v2.TrivialAugmentWide(),
    }
    return v2.Compose([make[name]() for name in names])


def augmented(images: ImageSet, cfg: dict) -> ImageSet:
    """The training split with cfg's augmentations (--augmentation, --augmentations), or as is when off."""
    if not cfg["augmentation"]:
        return images.with_transform(None)
    channels, size = images.pixels.shape[1], images.pixels.shape[-1]
    return images.with_transform(train_transform(cfg["augmentations"], size, channels))
