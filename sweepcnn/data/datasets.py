"""Datasets: find the folder layout (or a built-in source), split it, cache decoded pixels, build loaders.

Every split is an `ImageSet` of uint8 images [C, S, S] read from one pixel array (a memmap of the decoded-image
cache, or memory for `digits`). Augmentation, conversion to float and normalisation happen on the training device,
batched (see `sweepcnn.data.augment` and `sweepcnn.train.engine.Batches`).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, WeightedRandomSampler

from sweepcnn.options import DATA_HELP, DATA_OPTIONS
from sweepcnn.errors import UserError
from sweepcnn.io import check_writable
from sweepcnn.paths import default_cache_dir
from sweepcnn.data.batches import NoSmallLastBatch, note_dropped_batch
from sweepcnn.data.cache import build_image_cache
from sweepcnn.data.folders import check_same_classes, class_files, relative
from sweepcnn.data.splits import stratified_split


def _already_batched(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch


class ImageSet(Dataset):
    """Rows of a uint8 pixel array [N, C, S, S] with labels; `names` identify each image (relative paths)."""

    def __init__(self, pixels: np.ndarray, rows: np.ndarray, labels: np.ndarray, names: list[str]):
        self.pixels, self.rows, self.labels, self.names = pixels, rows, labels, names

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        images, labels = self.__getitems__([i])
        return images[0], int(labels[0])

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch, (uint8 images [B, C, S, S], int64 labels [B]): one fancy-indexed read of the cache, and
        the DataLoader's collate passes it on as is (see make_loader). Augmentation happens on the training
        device, batched (sweepcnn.data.augment)."""
        images = torch.from_numpy(np.ascontiguousarray(self.pixels[self.rows[indices]]))
        return images, torch.from_numpy(self.labels[indices].astype(np.int64))


@dataclass
class Data:
    classes: list[str]
    train: ImageSet
    val: ImageSet
    test: ImageSet
    source: str
    layout: str
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def split_record(self, seed: int) -> dict:
        return {"source": self.source, "layout": self.layout, "split_seed": seed, "classes": self.classes,
                **{name: [[n, self.classes[int(y)]] for n, y in zip(s.names, s.labels)]
                   for name, s in (("train", self.train), ("val", self.val), ("test", self.test))},
                "skipped": [{"file": f, "reason": r} for f, r in self.skipped]}


def check_cache_dir(cfg: dict) -> None:
    """A UserError naming --cache_dir unless the decoded-image cache can be written there (before any data is read)."""
    if cfg["data"] != "digits":  # digits decodes nothing
        check_writable(Path(cfg["cache_dir"]).expanduser() if cfg["cache_dir"] else default_cache_dir(),
                       "--cache_dir", create=True)


def load_data(cfg: dict, input_size: int, channels: int, progress: bool = True) -> Data:
    """Load `cfg['data']` at `input_size` with `channels` (1 or 3), split per its layout (see DATA_HELP)."""
    source = cfg["data"]
    if source == "digits":
        _note_fixed_split(source, cfg["val_fraction"])
        return _digits(input_size, channels, cfg["split_seed"], cfg["max_images_per_class"])
    if source == "inaturalist":
        from sweepcnn.data.download import download_inaturalist

        root = download_inaturalist(Path(cfg["cache_dir"]) if cfg["cache_dir"] else None, progress=progress)
    else:
        root = Path(source).expanduser()
    return _folder(root, cfg, input_size, channels, progress)


def count_classes(source: str) -> int:
    """The number of classes of `--data` from folder names alone, reading no image (for dry runs)."""
    if source in ("digits", "inaturalist"):  # both have 10 classes
        return 10
    root = Path(source).expanduser()
    if not root.is_dir():
        raise UserError(f"--data: {root} is not a folder: expected {DATA_HELP}")
    folder = root / "train" if (root / "train").is_dir() else root
    return sum(1 for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _note_fixed_split(source: str, val_fraction: float) -> None:
    if val_fraction != DATA_OPTIONS["val_fraction"].default:
        print(f"note: --val_fraction={val_fraction:g} is ignored: it splits train/ of a train/ + val/ layout; --data "
              f"{source} is split 80/10/10 into train/validation/test", file=sys.stderr)


def _digits(size: int, channels: int, seed: int, limit: int | None) -> Data:
    from sklearn.datasets import load_digits

    digits = load_digits()
    labels = digits.target.astype(np.int64)
    # --max_images_per_class: the first images of each class, as for class folders
    keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:limit] for c in np.unique(labels)]))
    small = torch.from_numpy(digits.images[keep]).float().mul(255 / 16).unsqueeze(1)  # 8x8 grey levels 0..16
    big = torch.nn.functional.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)
    pixels = big.round().clamp(0, 255).to(torch.uint8).expand(-1, channels, -1, -1).contiguous().numpy()
    labels = labels[keep]
    names = [f"digits/{i}" for i in keep]
    parts = stratified_split((np.arange(len(labels)), labels, names), (0.8, 0.1, 0.1), seed)
    sets = [ImageSet(pixels, rows, y, n) for rows, y, n in parts]
    return Data([str(d) for d in digits.target_names], *sets, source="digits",
                layout="scikit-learn digits, stratified 80/10/10 train/val/test")


def _folder(root: Path, cfg: dict, size: int, channels: int, progress: bool) -> Data:
    if not root.is_dir():
        raise UserError(f"--data: {root} is not a folder: expected {DATA_HELP}")
    subdirs = {p.name for p in root.iterdir() if p.is_dir()}
    if {"train", "val", "test"} <= subdirs:
        layout = "train/ val/ test/ folders used as given"
        folders = {s: root / s for s in ("train", "val", "test")}
    elif {"train", "val"} <= subdirs:
        layout = (f"train/ split {1 - cfg['val_fraction']:.0%}/{cfg['val_fraction']:.0%} into train/val; "
                  "val/ is the test set")
        folders = {"train": root / "train", "test": root / "val"}
    elif "train" in subdirs:
        raise UserError(f"--data: {root} has train/ but no val/: add val/<class>/ images, or pass {root / 'train'} "
                        "to split its class folders 80/10/10")
    else:
        layout = "class folders, stratified 80/10/10 train/val/test"
        folders = {"all": root}
        _note_fixed_split(str(root), cfg["val_fraction"])
    splits = {role: class_files(folder, cfg["max_images_per_class"]) for role, folder in folders.items()}
    classes = check_same_classes({folders[role]: files for role, files in splits.items()})

    files = [path for per_class in splits.values() for c in classes for path in per_class[c]]
    cache = build_image_cache(files, size, channels, Path(cfg["cache_dir"]) if cfg["cache_dir"] else None,
                              num_workers=max(1, min(os.cpu_count() or 1, 4)), progress=progress)
    skipped = [(relative(p, root), reason) for p, reason in cache.skipped]
    if skipped and cfg["strict"]:
        raise UserError(f"--strict: {len(skipped)} unreadable image file(s) under {root}, first: "
                        f"{skipped[0][0]} ({skipped[0][1]})")
    if skipped:
        listing = "\n".join(f"  {f}: {r}" for f, r in skipped)
        print(f"warning: skipped {len(skipped)} unreadable image file(s) under {root} "
              f"(also in summary.json 'skipped_files'; --strict makes this an error):\n{listing}", file=sys.stderr)

    row_of = {path: row for row, path in enumerate(cache.paths)}
    label_of = {c: i for i, c in enumerate(classes)}

    def rows_and_labels(per_class: dict[str, list[Path]]) -> tuple[np.ndarray, np.ndarray, list[str]]:
        kept = [(row_of[p], label_of[c], relative(p, root)) for c in classes for p in per_class[c] if p in row_of]
        for c in classes:
            if not any(label == label_of[c] for _, label, _ in kept):
                raise UserError(f"--data: class '{c}' under {root} has no readable images")
        rows, labels, names = zip(*kept)
        return np.array(rows), np.array(labels, dtype=np.int64), list(names)

    seed = cfg["split_seed"]
    if "all" in splits:
        parts = stratified_split(rows_and_labels(splits["all"]), (0.8, 0.1, 0.1), seed, classes)
    elif "val" in splits:
        parts = [rows_and_labels(splits[s]) for s in ("train", "val", "test")]
    else:
        fraction = cfg["val_fraction"]
        parts = stratified_split(rows_and_labels(splits["train"]), (1 - fraction, fraction), seed, classes)
        parts.append(rows_and_labels(splits["test"]))
    sets = [ImageSet(cache.pixels, rows, labels, names) for rows, labels, names in parts]
    return Data(classes, *sets, source=str(root), layout=layout, skipped=skipped)


def channel_stats(images: ImageSet, max_images: int = 2000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units over (an evenly spaced subset of) a split."""
    step = max(1, len(images) // max_images)
    total = total_sq = 0.0
    count = 0
    for start in range(0, len(images), 256 * step):
        rows = images.rows[start:start + 256 * step:step]
        batch = torch.from_numpy(np.ascontiguousarray(images.pixels[rows])).double().div_(255)
        total = total + batch.sum(dim=(0, 2, 3))
        total_sq = total_sq + batch.square().sum(dim=(0, 2, 3))
        count += batch.numel() // batch.shape[1]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.tolist()


def make_loader(images: ImageSet, batch_size: int, train: bool, cfg: dict, generator: torch.Generator,
                pin_memory: bool, smallest: int = 2) -> DataLoader:
    """Training loaders shuffle (or sample by inverse class frequency) from `generator`, which the engine reseeds
    every epoch: the shuffling order then depends only on (seed, epoch). They drop a final batch of fewer than
    `smallest` images (sweepcnn.data.batches)."""
    if not train:
        return DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=cfg["num_workers"],
                          pin_memory=pin_memory, generator=generator, collate_fn=_already_batched)
    if cfg["balanced_sampler"]:
        per_class = np.bincount(images.labels)
        weights = torch.as_tensor(1.0 / per_class[images.labels], dtype=torch.double)
        sampler = WeightedRandomSampler(weights, len(images), replacement=True, generator=generator)
    else:
        sampler = RandomSampler(images, generator=generator)
    note_dropped_batch(len(images), batch_size, smallest)
    return DataLoader(images, batch_sampler=NoSmallLastBatch(sampler, batch_size, smallest),
                      num_workers=cfg["num_workers"], pin_memory=pin_memory, generator=generator,
                      collate_fn=_already_batched)
