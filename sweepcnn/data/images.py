"""Robust image decoding: a photo file -> a uint8 [channels, size, size] tensor, or a BadImageError saying why not.

Decoding is done by Pillow, not torchvision.io: torchvision's decoders are deprecated since 0.29, cannot read BMP or
TIFF, ignore EXIF orientation in WebP and cannot downscale a JPEG while decoding it (`Image.draft`: 1.2-1.6x faster
for photos at least 4x the target size). The antialiased resize is torchvision's, several times faster than Pillow's.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from PIL import ExifTags, Image, JpegImagePlugin, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# Files are identified by content, never by extension, and only as one of these: not as Pillow's exotic formats
# (EPS runs Ghostscript on the file, TGA has no magic number).
FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
MAX_PIXELS = 100_000_000  # 100 MP (e.g. 12000x8333): above any real photo, far below a decompression bomb
# EXIF orientation -> the transpose that shows the picture upright. Not ImageOps.exif_transpose: it also rewrites the
# EXIF block, which raises on some malformed (but otherwise fine) photos.
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class BadImageError(Exception):
    """A file that cannot be used as an image; the message is a short human reason."""


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether the name has an image extension (any case); hidden files (".name") are never images."""
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
    try:
        f = open(path, "rb")
    except OSError as e:  # a broken symlink, a permission problem: reported with the bad images, not fatal
        raise BadImageError(f"cannot read file: {e.strerror or e}") from None
    with f:
        if os.fstat(f.fileno()).st_size == 0:
            raise BadImageError("zero-byte file")
        fmt = "image"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # MAX_PIXELS is checked instead
                im = Image.open(f, formats=FORMATS)
            fmt = im.format
            if im.width * im.height > MAX_PIXELS:
                raise BadImageError(f"image too large: {im.width}x{im.height} pixels (limit {MAX_PIXELS:,})")
            im = _decode(im, size, "L" if channels == 1 else "RGB")
        except BadImageError:
            raise
        except UnidentifiedImageError:
            raise BadImageError("not an image (cannot identify format)") from None
        except Image.DecompressionBombError:  # Pillow's own limit, 2 * Image.MAX_IMAGE_PIXELS, hit before ours
            pillow_limit = 2 * Image.MAX_IMAGE_PIXELS
            raise BadImageError(f"image too large: over {pillow_limit:,} pixels (limit {MAX_PIXELS:,})") from None
        except Exception as e:  # Pillow's plugins raise many types on malformed data
            raise BadImageError(f"truncated or corrupt {fmt}: {e}") from None
    x = torch.from_numpy(np.array(im))
    x = x[None] if channels == 1 else x.permute(2, 0, 1)  # channels-last strides: the faster uint8 resize kernel
    return F.resize(x, [size, size], antialias=True).contiguous()


def _decode(im: Image.Image, size: int, mode: str) -> Image.Image:
    """Load a just-opened image as an upright, opaque, 8-bit image of `mode`."""
    if isinstance(im, JpegImagePlugin.JpegImageFile):
        # decode at 1/2, 1/4 or 1/8 scale in the DCT domain, but only down to 2 x size so that the antialiased
        # resize still does the last step: the same pixels as a full decode, within about 1 level
        im.draft(mode, (2 * size, 2 * size))
    im.load()  # raises on truncated data (unless someone set ImageFile.LOAD_TRUNCATED_IMAGES)
    method = _UPRIGHT.get(im.getexif().get(ExifTags.Base.Orientation))
    if method is not None:
        im = im.transpose(method)
    if im.has_transparency_data:
        im = Image.alpha_composite(Image.new("RGBA", im.size, "white"), im.convert("RGBA"))
    if im.mode.startswith("I"):  # 16/32-bit integer grey; Pillow's convert() would clip it to 0..255
        im = Image.fromarray((np.clip(np.asarray(im), 0, 65535) >> 8).astype(np.uint8))
    return im if im.mode == mode else im.convert(mode)
