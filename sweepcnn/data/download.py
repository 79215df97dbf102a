"""Download and unpack the iNaturalist-12K archive used by the course (nature_12K.zip, ~3.7 GB).

No checksum or exact size of nature_12K.zip is published anywhere we could find (course repos,
dataset pages, issue trackers), so none is pinned here. Instead the download is checked against
the server's Content-Length, its SHA-256 is computed and written next to it as
`nature_12K.zip.sha256`, and later runs re-verify the cached zip against that file before
extracting (a mismatch means it is downloaded again). Set INATURALIST_SHA256 to insist on a known
hash, and INATURALIST_URL to download from a mirror.

Cache layout (under `default_cache_dir()` unless told otherwise):
    nature_12K.zip, nature_12K.zip.sha256   the archive and its hash (the zip may be deleted)
    nature_12K/inaturalist_12K/{train,val}/  the dataset; nature_12K/.complete is written last
"""
import hashlib
import http.client
import os
import re
import shutil
import stat
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path

from tqdm import tqdm

from sweepcnn.errors import UserError
from sweepcnn.io import atomic_write, file_lock
from sweepcnn.paths import default_cache_dir

URL = "https://storage.googleapis.com/wandb_datasets/nature_12K.zip"
SHA256: str | None = None  # not published anywhere we could find; see module docstring
TIMEOUT = 30  # seconds, for connecting and for each read
CHUNK = 1 << 20
# The real archive unpacks to about its own size (JPEGs don't compress); 16 GiB is a generous
# cap that still stops a zip bomb before it fills the disk.
MAX_UNPACKED_BYTES = 16 << 30
MANUAL = "Or download {url} yourself, unzip it and pass --data path/to/inaturalist_12K."


def download_inaturalist(cache_dir: Path | None = None, url: str | None = None, progress: bool = True) -> Path:
    """Return the iNaturalist-12K root (the folder holding train/ and val/), downloading it if needed."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out = cache_dir / "nature_12K"
    if root := _complete_root(out):
        return root
    url = url or os.environ.get("INATURALIST_URL") or URL
    sha256 = (os.environ.get("INATURALIST_SHA256") or SHA256 or "").strip().lower() or None
    # sweep agents on one machine may all start here at once: let one download, the rest wait
    with file_lock(cache_dir / ".nature_12K.lock"):
        if root := _complete_root(out):
            return root
        for stale in cache_dir.glob(".nature_12K.*.tmp"):  # left by a killed extraction
            shutil.rmtree(stale, ignore_errors=True)
        if out.exists():  # extracted but never marked complete
            shutil.rmtree(out)
        try:
            zip_path = fetch(url, cache_dir / "nature_12K.zip", None, sha256, progress)
        except UserError as e:
            raise UserError(f"{e} {MANUAL.format(url=url)}") from None
        safe_extract_zip(zip_path, out, progress=progress)
        root = _find_root(out)
        atomic_write(out / ".complete", root.relative_to(out).as_posix())
    return root


def fetch(url: str, dest: Path, expected_size: int | None = None, sha256: str | None = None,
          progress: bool = True) -> Path:
    """Download url to dest, resuming a partial `dest.part`, verifying size and SHA-256; return dest.

    The SHA-256 of the result is stored in `dest.sha256`. An existing dest is kept only if it
    matches sha256 (or, without one, that sidecar); otherwise it is downloaded again.
    """
    dest = Path(dest)
    part = dest.with_suffix(dest.suffix + ".part")
    sidecar = dest.with_name(dest.name + ".sha256")
    if dest.exists():
        recorded = sidecar.read_text().split()[:1] if sidecar.exists() else []
        want = sha256 or (recorded[0] if recorded else None)
        if want and _sha256(dest) == want.lower():
            return dest
        print(f"{dest} cannot be verified, downloading it again", file=sys.stderr)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        total = _download(url, part, progress)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = e if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", e)
        raise UserError(f"Downloading {url} failed ({reason}). Check your connection and run again "
                        "(a partial download resumes).") from None
    got = part.stat().st_size
    if total is not None and got < total:  # the server hung up early
        raise UserError(f"Downloading {url} stopped at {got} of {total} bytes. Run again to resume.")
    want_size = expected_size if expected_size is not None else total
    if want_size is not None and got != want_size:
        part.unlink()
        raise UserError(f"{dest.name} from {url} is {got} bytes, expected {want_size}; the file was "
                        "deleted. Run again to download it afresh.")
    digest = _sha256(part)
    if sha256 and digest != sha256.lower():
        part.unlink()
        raise UserError(f"SHA-256 of {dest.name} from {url} is {digest}, expected {sha256}; the file "
                        "was deleted. Run again to download it afresh.")
    atomic_write(sidecar, f"{digest}  {dest.name}\n")
    os.replace(part, dest)
    return dest


def safe_extract_zip(zip_path: Path, dest_dir: Path, progress: bool = False) -> Path:
    """Extract zip_path to dest_dir (which must not exist) all at once or not at all; return dest_dir.

    Refuses absolute paths, drive letters, `..` components, symlinks and archives unpacking to
    more than MAX_UNPACKED_BYTES. Extracts into a hidden sibling folder renamed into place at the
    end, so an interrupted extraction never looks finished.
    """
    zip_path, dest_dir = Path(zip_path), Path(dest_dir)
    if dest_dir.exists():
        raise UserError(f"Cannot extract {zip_path}: {dest_dir} already exists; delete it first.")
    try:
        with zipfile.ZipFile(zip_path) as zf:
            members = zf.infolist()
            for m in members:
                _check_member(zip_path, m)
            # ZipExtFile stops at the declared size and checks the CRC, so declared sizes are a real bound
            size = sum(m.file_size for m in members)
            if size > MAX_UNPACKED_BYTES:
                raise UserError(f"Refusing to extract {zip_path}: it would unpack to {size / 2**30:.1f} GiB, "
                                f"more than the {MAX_UNPACKED_BYTES / 2**30:.0f} GiB limit.")
            dest_dir.parent.mkdir(parents=True, exist_ok=True)
            if size > shutil.disk_usage(dest_dir.parent).free:
                raise UserError(f"Not enough disk space to extract {zip_path} into {dest_dir.parent} "
                                f"({size / 2**30:.1f} GiB needed).")
            tmp = Path(tempfile.mkdtemp(prefix=f".{dest_dir.name}.", suffix=".tmp", dir=dest_dir.parent))
            try:
                for m in tqdm(members, desc=f"extracting {zip_path.name}", unit="file",
                              disable=None if progress else True):
                    zf.extract(m, tmp)
                os.replace(tmp, dest_dir)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise UserError(f"{zip_path} is not a valid zip archive ({e}). Delete it and run again.") from None
    return dest_dir


# ----------------------------------------------------------------------------- helpers

def _download(url: str, part: Path, progress: bool) -> int | None:
    """Append the rest of url to part (Range request if part exists); return the full size, if announced."""
    start = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "sweepcnn-download"} | ({"Range": f"bytes={start}-"} if start else {})
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT)
    except urllib.error.HTTPError as e:
        if e.code != 416 or not start:
            raise
        m = re.fullmatch(r"bytes \*/(\d+)", e.headers.get("Content-Range", ""))
        e.close()
        if m and int(m[1]) == start:  # part already holds the whole file (killed before the rename)
            return start
        part.unlink()
        return _download(url, part, progress)
    with resp:
        total = None
        if start and resp.status == 206:
            m = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", resp.headers.get("Content-Range", ""))
            if not m or int(m[1]) != start:  # not the range we asked for: start over
                resp.close()
                part.unlink()
                return _download(url, part, progress)
            total = int(m[2]) if m[2] != "*" else None
        else:
            start = 0  # a fresh download, or a server that ignored Range and sent it all again
            if n := resp.headers.get("Content-Length"):
                total = int(n)
        with open(part, "ab" if start else "wb") as f, \
                tqdm(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                     desc=part.name.removesuffix(".part"), disable=None if progress else True) as bar:
            while chunk := resp.read(CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
    return total


def _check_member(zip_path: Path, m: zipfile.ZipInfo) -> None:
    name = m.filename
    parts = re.split(r"[/\\]", name)
    why = ("has an absolute path" if name.startswith(("/", "\\")) else
           "has a drive letter" if re.match(r"[A-Za-z]:", name) else
           "has a '..' component" if ".." in parts else
           "is a symlink" if stat.S_ISLNK(m.external_attr >> 16) else None)
    if why:
        raise UserError(f"Refusing to extract {zip_path}: member {name!r} {why}.")


def _complete_root(out: Path) -> Path | None:
    marker = out / ".complete"
    if not marker.is_file():
        return None
    root = out / marker.read_text().strip()
    return root if (root / "train").is_dir() and (root / "val").is_dir() else None


def _find_root(top: Path) -> Path:
    for d in [top, *sorted(top.glob("*")), *sorted(top.glob("*/*"))]:
        if (d / "train").is_dir() and (d / "val").is_dir():
            return d
    raise UserError(f"The archive extracted to {top} has no folder with train/ and val/ in it; "
                    "it is not the iNaturalist-12K archive.")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()
