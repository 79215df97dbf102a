import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from sweepcnn.data.images import BadImageError, is_image_file, load_image
from tests.helpers import photo, write_png

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def stripes(w: int, h: int, colors) -> Image.Image:
    """Vertical stripes of equal width, left to right."""
    im = Image.new("RGB", (w, h))
    for k, c in enumerate(colors):
        im.paste(c, (k * w // len(colors), 0, (k + 1) * w // len(colors), h))
    return im


def near(t: torch.Tensor, color, tol: int = 12) -> bool:
    """Every pixel of t [C, ...] within tol of color."""
    return bool(((t.int() - torch.tensor(color).view(-1, *[1] * (t.dim() - 1))).abs() <= tol).all())


def test_is_image_file():
    assert is_image_file("a.jpg") and is_image_file("dir/B.JPEG") and is_image_file(Path("c.Tiff"))
    assert is_image_file("x.webp") and is_image_file("x.gif") and is_image_file("x.bmp") and is_image_file("x.png")
    assert not is_image_file(".hidden.jpg") and not is_image_file("notes.txt") and not is_image_file("jpg")


@pytest.mark.parametrize("ext", ["jpg", "png", "gif", "webp", "bmp", "tiff"])
@pytest.mark.parametrize("channels", [1, 3])
def test_formats_shape_dtype_and_colour(tmp_path, ext, channels):
    path = tmp_path / f"x.{ext}"
    stripes(48, 32, [RED, BLUE]).save(path)
    x = load_image(path, 16, channels)
    assert x.shape == (channels, 16, 16) and x.dtype == torch.uint8 and x.is_contiguous()
    if channels == 3:
        assert near(x[:, :, :6], RED, 20) and near(x[:, :, -6:], BLUE, 20)
    else:  # ITU-R 601 luma
        assert near(x[:, :, :6], (76,), 20) and near(x[:, :, -6:], (29,), 20)


def test_grayscale_jpeg_to_rgb(tmp_path):
    Image.new("L", (20, 20), 200).save(tmp_path / "g.jpg")
    x = load_image(tmp_path / "g.jpg", 8, 3)
    assert x.shape == (3, 8, 8) and near(x, (200, 200, 200), 2)


def test_cmyk_jpeg(tmp_path):
    Image.new("RGB", (20, 20), (200, 40, 40)).convert("CMYK").save(tmp_path / "c.jpg")
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    assert near(load_image(tmp_path / "c.jpg", 8, 3), (200, 40, 40), 8)


def test_alpha_is_composited_onto_white(tmp_path):
    im = Image.new("RGBA", (20, 10), (0, 0, 0, 0))  # transparent black: shows as white
    im.paste((255, 0, 0, 255), (0, 0, 10, 10))
    im.save(tmp_path / "a.png")
    x = load_image(tmp_path / "a.png", 10, 3)
    assert near(x[:, :, :4], RED, 2) and near(x[:, :, -4:], (255, 255, 255), 2)


@pytest.mark.parametrize("ext", ["png", "gif"])
def test_palette_with_transparency(tmp_path, ext):
    im = Image.new("P", (20, 10), 1)
    im.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    im.paste(0, (0, 0, 10, 10))  # left half red, right half the transparent green
    im.save(tmp_path / f"p.{ext}", transparency=1)
    x = load_image(tmp_path / f"p.{ext}", 10, 3)
    assert near(x[:, :, :4], RED, 2) and near(x[:, :, -4:], (255, 255, 255), 2)


def test_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in (RED, BLUE, GREEN)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert near(load_image(tmp_path / "anim.gif", 8, 3), RED, 2)


def test_16bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    Image.fromarray(np.array([[65535, 32768, 0, 512]], np.uint16)).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    x = load_image(tmp_path / "g16.png", 4, 1)  # upscaling 1 row to 4 repeats it (bilinear, align_corners=False)
    assert x[0].tolist() == [[255, 128, 0, 2]] * 4
    assert load_image(tmp_path / "g16.png", 4, 3)[:, 0].tolist() == [[255, 128, 0, 2]] * 3


def test_16bit_rgb_png(tmp_path):
    px = np.array([[[65535, 32768, 0], [0, 65535, 512]]], dtype=">u2")
    write_png(tmp_path / "rgb16.png", 2, 1, 16, 2, b"\0" + px.tobytes())
    assert load_image(tmp_path / "rgb16.png", 2, 3)[:, 0].T.tolist() == [[255, 128, 0], [0, 255, 2]]


@pytest.mark.parametrize("ext", ["jpg", "png", "webp"])
def test_exif_orientation(tmp_path, ext):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display = rotate 90 degrees clockwise, so the left half goes on top
    stripes(40, 20, [RED, BLUE]).save(tmp_path / f"r.{ext}", exif=exif)
    x = load_image(tmp_path / f"r.{ext}", 16, 3)
    assert near(x[:, :6], RED, 20) and near(x[:, -6:], BLUE, 20)


def test_tiny_and_extreme_aspect_ratio_keep_everything(tmp_path):
    Image.new("RGB", (1, 1), (10, 200, 30)).save(tmp_path / "one.png")
    assert near(load_image(tmp_path / "one.png", 32, 3), (10, 200, 30), 0)
    stripes(4000, 10, [RED, GREEN, BLUE]).save(tmp_path / "wide.png")  # a centre crop would be all green
    x = load_image(tmp_path / "wide.png", 24, 3)
    assert x.shape == (3, 24, 24) and near(x[:, :, :6], RED, 2) and near(x[:, :, 9:15], GREEN, 2)
    assert near(x[:, :, -6:], BLUE, 2)


def test_downscale_is_antialiased(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    # antialiased 4x downscale averages ~64 pixels per output pixel (std ~10); plain bilinear samples 4 (std ~37)
    assert load_image(tmp_path / "noise.png", 16, 1).float().std() < 20


def test_jpeg_draft_decode_matches_full_decode(tmp_path):
    texture = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    Image.fromarray(texture).resize((512, 512), Image.BILINEAR).save(tmp_path / "big.jpg", quality=90)
    full = torch.from_numpy(np.array(Image.open(tmp_path / "big.jpg"))).permute(2, 0, 1)
    ref = F.resize(full, [64, 64], antialias=True)
    assert (load_image(tmp_path / "big.jpg", 64, 3).float() - ref.float()).abs().mean() < 3


def test_bad_channels(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "x.png")
    with pytest.raises(ValueError):
        load_image(tmp_path / "x.png", 4, 4)


def _cut_jpeg(path: Path, fraction: float) -> None:
    buf = path.with_suffix(".full.jpg")
    photo(320, 240).save(buf)
    path.write_bytes(buf.read_bytes()[: int(buf.stat().st_size * fraction)])


@pytest.mark.parametrize(
    "name, make, reason",
    [
        ("empty.jpg", lambda p: p.write_bytes(b""), "zero-byte"),
        ("notes.jpg", lambda p: p.write_text("just some text\n" * 20), "not an image"),
        ("page.png", lambda p: p.write_text("<!DOCTYPE html><html><body>404 Not Found</body></html>"), "not an image"),
        ("noise.jpg", lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)), "not an image"),
        # formats Pillow knows but we do not accept (EPS would run Ghostscript)
        ("eps.jpg", lambda p: p.write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"), "not an image"),
        ("ppm.jpg", lambda p: Image.new("RGB", (4, 4)).save(p, format="PPM"), "not an image"),
        ("half.jpg", lambda p: _cut_jpeg(p, 0.5), "truncated or corrupt JPEG"),  # not a half-grey image
        ("header.jpg", lambda p: _cut_jpeg(p, 0.02), "truncated or corrupt"),
        ("bomb.png", lambda p: write_png(p, 20000, 20000, 8, 2, b"\0" * 61), "too large"),
        ("big.png", lambda p: write_png(p, 12000, 10000, 8, 0, b"\0" * 13), "12000x10000"),
    ],
)
def test_bad_files_raise(tmp_path, name, make, reason):
    path = tmp_path / name
    make(path)
    with pytest.raises(BadImageError, match=reason):
        load_image(path, 16, 3)


def test_truncated_png_raises(tmp_path):
    photo(64, 64).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImageError, match="truncated or corrupt PNG"):
        load_image(tmp_path / "cut.png", 16, 3)


def test_unreadable_file_is_reported_as_bad(tmp_path):
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    with pytest.raises(BadImageError, match="cannot read file: No such file"):
        load_image(tmp_path / "dangling.jpg", 16, 3)


def test_real_photos_match_torchvision_decoder(imagenette):
    for path in sorted((imagenette / "train").rglob("*.JPEG"))[::500]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ref = decode_jpeg(torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8), mode=ImageReadMode.RGB)
        ref = F.resize(ref, [112, 112], antialias=True)
        assert (load_image(path, 112, 3).float() - ref.float()).abs().mean() < 1.5, path
