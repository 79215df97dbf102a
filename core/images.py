"""Robust image decoding: any common photo file -> a uint8 [channels, size, size] tensor, or a BadImageError saying why not.

Decoding is done by Pillow, not torchvision.io: torchvision's decoders are deprecated since 0.29, cannot read BMP/TIFF,
ignore EXIF orientation in WebP and cannot downscale JPEGs while decoding (`Image.draft`, several times faster for
photos much larger than the target size). The antialiased resize is torchvision's, which is faster than Pillow's.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# Identify files by content, never by extension, and only as these formats: Pillow knows formats without a magic
# number (TGA, ...) that would happily "identify" random bytes.
FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
MAX_PIXELS = 100_000_000  # 100 MP (e.g. 12000x8333): above any real photo, far below a decompression bomb


class BadImageError(Exception):
    """A file that cannot be used as an image; the message is a short human reason."""


def is_image_file(path: str | os.PathLike) -> bool:
    name = Path(path).name
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def load_image(path: str | os.PathLike, size: int, channels: int) -> torch.Tensor:
    """Decode `path` into a uint8 tensor [channels, size, size] (channels 1 or 3).

    The whole picture is squashed to size x size (bilinear, antialiased; nothing is cropped), after applying the EXIF
    orientation. Transparent pixels are composited onto white; 16-bit images are scaled to 8 bits (v >> 8); animated
    images give their first frame. Raises BadImageError for empty, unidentifiable, truncated or corrupt files and for
    images over MAX_PIXELS (checked from the header, before decoding).
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if os.stat(path).st_size == 0:
        raise BadImageError("zero-byte file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # MAX_PIXELS is checked below instead
            im = Image.open(path, formats=FORMATS)
    except UnidentifiedImageError:
        raise BadImageError("not an image (cannot identify format)") from None
    except Image.DecompressionBombError:  # Pillow's own hard limit, 2 * Image.MAX_IMAGE_PIXELS
        raise BadImageError(f"image too large: over {2 * Image.MAX_IMAGE_PIXELS:,} pixels (limit {MAX_PIXELS:,})") from None
    with im:
        w, h = im.size
        if w * h > MAX_PIXELS:
            raise BadImageError(f"image too large: {w}x{h} pixels (limit {MAX_PIXELS:,})")
        fmt = im.format
        try:
            if isinstance(im, JpegImagePlugin.JpegImageFile):
                # decode at 1/2, 1/4 or 1/8 scale in the DCT domain while staying >= size on both sides
                im.draft("L" if channels == 1 else "RGB", (size, size))
            im.load()  # raises on truncated data (unless someone set ImageFile.LOAD_TRUNCATED_IMAGES)
            ImageOps.exif_transpose(im, in_place=True)
            if im.has_transparency_data:
                im = Image.alpha_composite(Image.new("RGBA", im.size, "white"), im.convert("RGBA"))
            if im.mode.startswith("I"):  # 16/32-bit integer grey; Pillow's convert() would clip it to 0..255
                im = Image.fromarray((np.clip(np.asarray(im), 0, 65535) >> 8).astype(np.uint8))
            im = im.convert("L" if channels == 1 else "RGB")
        except Exception as e:  # Pillow's plugins raise many types on malformed data
            raise BadImageError(f"truncated or corrupt {fmt}: {e}") from None
    x = torch.from_numpy(np.array(im))
    x = x[None] if channels == 1 else x.permute(2, 0, 1)  # channels-last strides: the faster uint8 resize kernel
    return F.resize(x, [size, size], antialias=True).contiguous()
