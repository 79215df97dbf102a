"""Image files of a folder of class folders, as the datasets read them."""
from __future__ import annotations

import os
from pathlib import Path

from sweepcnn.data.images import is_image_file
from sweepcnn.errors import UserError


def class_files(folder: Path, limit: int | None) -> dict[str, list[Path]]:
    """Image files per class folder, sorted; hidden files and folders and non-image files are ignored."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = {}
    for c in classes:
        found = []
        seen = {os.path.realpath(folder / c)}
        # Symlinked sub-folders are followed (their images count), each real folder once (no symlink loops).
        for dirpath, dirnames, filenames in os.walk(folder / c, followlinks=True):
            dirnames[:] = [d for d in dirnames if not d.startswith(".") and
                           os.path.realpath(os.path.join(dirpath, d)) not in seen]
            seen.update(os.path.realpath(os.path.join(dirpath, d)) for d in dirnames)
            found += [Path(dirpath) / f for f in filenames if is_image_file(Path(f))]
        if not found:
            raise UserError(f"--data: class folder {folder / c} has no image files "
                            "(expected .jpg, .jpeg, .png, .bmp, .gif, .webp or .tif files)")
        files[c] = sorted(found)[:limit]
    return files


def check_same_classes(splits: dict[Path, dict[str, list[Path]]]) -> list[str]:
    """The classes of the split folders (folder -> class_files of it): at least two, the same in every folder."""
    first, *others = splits
    classes = list(splits[first])
    if len(classes) < 2:
        raise UserError(f"--data: {first} has {len(classes)} class folder(s); at least two are needed "
                        "(one sub-folder of images per class)")
    for other in others:
        missing = sorted(set(classes) - set(splits[other]))
        extra = sorted(set(splits[other]) - set(classes))
        if missing or extra:
            where, what = (other, missing[0]) if missing else (first, extra[0])
            raise UserError(f"--data: class '{what}' is missing from {where}: every split folder needs the same "
                            "class folders")
    return classes


def relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
