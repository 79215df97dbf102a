"""Stratified splits reproducible from a seed, with at least one image of every class in every part."""
from __future__ import annotations

import math

import numpy as np

from sweepcnn.errors import UserError

Part = tuple[np.ndarray, np.ndarray, list[str]]  # pixel rows, labels, names


def _part_sizes(n: int, fractions: tuple[float, ...]) -> list[int]:
    """Images of one class per part: the later parts get their rounded share but at least one, the first the rest."""
    later = [max(1, math.floor(f * n + 0.5)) for f in fractions[1:]]
    return [n - sum(later), *later]


def stratified_split(whole: Part, fractions: tuple[float, ...], seed: int, classes: list[str] | None = None
                     ) -> list[Part]:
    """Stratified split into len(fractions) parts, reproducible from `seed`; each part keeps the original order.
    Every class is shuffled and cut in the given fractions with at least one image in every part (done per class
    because sklearn's train_test_split fails on a class with one image left in the intermediate split)."""
    rows, labels, names = whole
    rng = np.random.default_rng(seed)
    pieces: list[list[int]] = [[] for _ in fractions]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        sizes = _part_sizes(len(members), fractions)
        if sizes[0] < 1:
            need = next(n for n in range(len(fractions), 10 * len(fractions)) if _part_sizes(n, fractions)[0] >= 1)
            name = classes[label] if classes else str(label)
            raise UserError(f"--data: class '{name}' has only {len(members)} image(s); a stratified split needs at "
                            f"least {need} per class")
        bounds = np.cumsum(sizes)[:-1]
        for piece, part in zip(pieces, np.split(members, bounds)):
            piece.extend(part.tolist())
    return [(rows[p], labels[p], [names[i] for i in p]) for p in (np.sort(np.array(q, dtype=int)) for q in pieces)]
