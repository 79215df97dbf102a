"""What the tests share besides fixtures: the repository root, running its scripts, tiny real image folders."""
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGENETTE = ROOT.parent / "shared" / "data" / "imagenette"
# A CNN small enough for end-to-end tests of part_a/train.py
FAST = ["--input_size=32", "--base_filters=8", "--dense_neurons=32", "--batch_size=64"]


def run_script(script: str, *args: str, env: dict | None = None, check: bool = True, timeout: float = 600
               ) -> subprocess.CompletedProcess:
    """Run a repository script (e.g. part_a/train.py) from the repository root; fail with its output if check."""
    proc = subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def write_class_folders(root: Path, classes=("cat", "dog", "owl"), per_class: int = 10, size=(40, 30)) -> Path:
    """Tiny real JPEGs, one colour tint per class (learnable), in `root/<class>/`."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(abs(hash(str(root))) % 2**32)
    tints = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40), (40, 200, 200)]
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.integers(0, 60, (size[1], size[0], 3))
            pixels = np.clip(np.array(tints[c % len(tints)]) + noise, 0, 255).astype("uint8")
            Image.fromarray(pixels).save(root / name / f"img_{i:03d}.jpg", quality=90)
    return root


def train(*args, env=None, check=True, timeout=300):
    return run_script("part_a/train.py", *args, env=env, check=check, timeout=timeout)


def write_png(path: Path, w: int, h: int, depth: int, color_type: int, rows: bytes) -> Path:
    """A PNG written by hand, for what Pillow cannot save (16-bit RGB) or should not allocate (a huge IHDR)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0)
    chunks = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)
    return path


def photo(w: int, h: int):
    """Smooth, photo-like content (JPEG-friendly), as a PIL image."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    a = np.stack([np.sin(6 * x) * 0.5 + 0.5, np.cos(4 * y) * 0.5 + 0.5, x * y], -1)
    return Image.fromarray((a * 255).astype(np.uint8))
