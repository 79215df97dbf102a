"""sweepcnn.data.download against a loopback HTTP server serving a tiny nature_12K.zip look-alike."""
import hashlib
import io
import re
import socket
import stat
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sweepcnn.data import download as dl
from sweepcnn.errors import UserError

CLASSES = ["Amphibia", "Aves", "Fungi"]


def make_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for split, n in [("train", 3), ("val", 1)]:
            for c in CLASSES:
                for i in range(n):
                    zf.writestr(f"inaturalist_12K/{split}/{c}/{i}.jpg", f"{split}-{c}-{i}".encode() * 200)
    return buf.getvalue()


PAYLOAD = make_zip()


class Handler(BaseHTTPRequestHandler):
    """Serves server.payload, honouring `Range: bytes=N-` unless told not to (see `serve`)."""

    def do_GET(self):
        srv, data = self.server, self.server.payload
        srv.requests.append(dict(self.headers))
        rng = self.headers.get("Range")
        if rng and srv.honor_range:
            start = 0 if srv.bad_206 else int(re.fullmatch(r"bytes=(\d+)-", rng)[1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            body = data[start:]
        else:
            self.send_response(200)
            body = data
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut is not None:  # promise the whole body, send part of it, hang up
            body = body[:srv.cut]
            self.close_connection = True
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    servers = []

    def start(payload=PAYLOAD, honor_range=True, cut=None, bad_206=False):
        srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        srv.payload, srv.honor_range, srv.cut, srv.bad_206 = payload, honor_range, cut, bad_206
        srv.requests = []
        threading.Thread(target=srv.serve_forever, args=(0.01,), daemon=True).start()
        servers.append(srv)
        return srv, f"http://127.0.0.1:{srv.server_port}/nature_12K.zip"

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.delenv("INATURALIST_URL", raising=False)
    monkeypatch.delenv("INATURALIST_SHA256", raising=False)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/nature_12K.zip"


def files_under(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------- download_inaturalist

def test_fresh_download_extracts_root_with_train_and_val(serve, tmp_path, monkeypatch):
    srv, url = serve()
    monkeypatch.setenv("INATURALIST_URL", url)
    root = dl.download_inaturalist(tmp_path, progress=False)
    assert root == tmp_path / "nature_12K" / "inaturalist_12K"
    assert sorted(p.name for p in (root / "train").iterdir()) == CLASSES
    assert (root / "val" / "Aves" / "0.jpg").read_bytes() == b"val-Aves-0" * 200
    sidecar = (tmp_path / "nature_12K.zip.sha256").read_text().split()[0]
    assert sidecar == hashlib.sha256(PAYLOAD).hexdigest()
    assert len(srv.requests) == 1


def test_second_call_does_not_touch_network(serve, tmp_path):
    srv, url = serve()
    first = dl.download_inaturalist(tmp_path, url=url, progress=False)
    srv.shutdown()  # anything that tries the network now fails
    assert dl.download_inaturalist(tmp_path, url=url, progress=False) == first
    assert len(srv.requests) == 1


def test_killed_extraction_reextracts_cached_zip_without_network(serve, tmp_path):
    srv, url = serve()
    root = dl.download_inaturalist(tmp_path, url=url, progress=False)
    (root.parent / ".complete").unlink()  # as if killed just before the marker
    assert dl.download_inaturalist(tmp_path, url=url, progress=False) == root
    assert len(srv.requests) == 1


def test_cached_zip_that_fails_its_sidecar_is_downloaded_again(serve, tmp_path):
    srv, url = serve()
    root = dl.download_inaturalist(tmp_path, url=url, progress=False)
    (root.parent / ".complete").unlink()
    with open(tmp_path / "nature_12K.zip", "r+b") as f:
        f.write(b"garbage")
    assert dl.download_inaturalist(tmp_path, url=url, progress=False) == root
    assert len(srv.requests) == 2
    assert (tmp_path / "nature_12K.zip").read_bytes() == PAYLOAD


def test_pinned_sha256_mismatch_via_env(serve, tmp_path, monkeypatch):
    _, url = serve()
    monkeypatch.setenv("INATURALIST_SHA256", "0" * 64)
    with pytest.raises(UserError, match=r"SHA-256.*--data"):
        dl.download_inaturalist(tmp_path, url=url, progress=False)
    assert not (tmp_path / "nature_12K").exists()
    assert not (tmp_path / "nature_12K.zip").exists()


def test_unreachable_url_is_a_quick_user_error(tmp_path):
    t = time.monotonic()
    with pytest.raises(UserError, match=r"failed.*--data path/to/inaturalist_12K"):
        dl.download_inaturalist(tmp_path, url=closed_port_url(), progress=False)
    assert time.monotonic() - t < 5
    assert not (tmp_path / "nature_12K").exists()


# ----------------------------------------------------------------------------- fetch

def test_resume_sends_range_and_completes_file(serve, tmp_path):
    srv, url = serve()
    dest = tmp_path / "nature_12K.zip"
    n = len(PAYLOAD) // 3
    (tmp_path / "nature_12K.zip.part").write_bytes(PAYLOAD[:n])
    assert dl.fetch(url, dest, progress=False) == dest
    assert srv.requests[0]["Range"] == f"bytes={n}-"
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "nature_12K.zip.part").exists()


def test_server_ignoring_range_still_yields_correct_file(serve, tmp_path):
    srv, url = serve(honor_range=False)
    dest = tmp_path / "nature_12K.zip"
    (tmp_path / "nature_12K.zip.part").write_bytes(b"x" * 100)  # must be discarded, not kept
    dl.fetch(url, dest, sha256=hashlib.sha256(PAYLOAD).hexdigest(), progress=False)
    assert "Range" in srv.requests[0]
    assert dest.read_bytes() == PAYLOAD


def test_206_from_the_wrong_offset_restarts_cleanly(serve, tmp_path):
    srv, url = serve(bad_206=True)  # answers every Range with bytes 0-...
    dest = tmp_path / "nature_12K.zip"
    (tmp_path / "nature_12K.zip.part").write_bytes(PAYLOAD[:500])
    dl.fetch(url, dest, progress=False)
    assert [r.get("Range") for r in srv.requests] == ["bytes=500-", None]
    assert dest.read_bytes() == PAYLOAD


def test_416_on_complete_part_finishes_without_redownload(serve, tmp_path):
    srv, url = serve()
    dest = tmp_path / "nature_12K.zip"
    (tmp_path / "nature_12K.zip.part").write_bytes(PAYLOAD)
    dl.fetch(url, dest, expected_size=len(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert [r.get("Range") for r in srv.requests] == [f"bytes={len(PAYLOAD)}-"]


def test_dropped_connection_keeps_part_and_next_run_resumes(serve, tmp_path):
    _, url = serve(cut=1000)
    dest = tmp_path / "nature_12K.zip"
    with pytest.raises(UserError, match="resume"):
        dl.fetch(url, dest, progress=False)
    assert not dest.exists()
    assert (tmp_path / "nature_12K.zip.part").read_bytes() == PAYLOAD[:1000]
    srv, url = serve()
    dl.fetch(url, dest, progress=False)
    assert srv.requests[0]["Range"] == "bytes=1000-"
    assert dest.read_bytes() == PAYLOAD


@pytest.mark.parametrize("kwargs, msg", [
    ({"expected_size": len(PAYLOAD) + 1}, "expected"),
    ({"sha256": "ab" * 32}, "SHA-256"),
])
def test_mismatch_deletes_file_and_raises(serve, tmp_path, kwargs, msg):
    _, url = serve()
    dest = tmp_path / "nature_12K.zip"
    with pytest.raises(UserError, match=msg):
        dl.fetch(url, dest, progress=False, **kwargs)
    assert files_under(tmp_path) == []


def test_http_error_is_a_user_error(serve, tmp_path):
    srv, url = serve()
    srv.RequestHandlerClass = type("NotFound", (Handler,), {"do_GET": lambda self: self.send_error(404)})
    with pytest.raises(UserError, match="404"):
        dl.fetch(url, tmp_path / "nature_12K.zip", progress=False)


def test_unreachable_fetch_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="failed"):
        dl.fetch(closed_port_url(), tmp_path / "nature_12K.zip", progress=False)


# ----------------------------------------------------------------------------- safe_extract_zip

def write_zip(path, entries):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ok/fine.jpg", b"fine")
        for info, data in entries:
            zf.writestr(info, data)
    return path


def symlink_info(name):
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize("make_entry, why", [
    (lambda tmp: (zipfile.ZipInfo(f"{tmp}/evil.txt"), b"evil"), "absolute"),
    (lambda tmp: (zipfile.ZipInfo("../../evil.txt"), b"evil"), r"'\.\.'"),
    (lambda tmp: (zipfile.ZipInfo("ok/../../../evil.txt"), b"evil"), r"'\.\.'"),
    (lambda tmp: (zipfile.ZipInfo("C:/evil.txt"), b"evil"), "drive letter"),
    (lambda tmp: (symlink_info("ok/link"), str(tmp / "evil.txt").encode()), "symlink"),
])
def test_malicious_members_are_refused(tmp_path, make_entry, why):
    info, data = make_entry(tmp_path)
    zip_path = write_zip(tmp_path / "evil.zip", [(info, data)])
    dest = tmp_path / "a" / "out"
    with pytest.raises(UserError, match=f"evil.zip.*{re.escape(info.filename)}.*{why}"):
        dl.safe_extract_zip(zip_path, dest)
    assert files_under(tmp_path) == ["evil.zip"]
    assert not any(p.is_symlink() for p in tmp_path.rglob("*"))


def test_corrupt_zip_is_a_user_error(tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(UserError, match="not a valid zip"):
        dl.safe_extract_zip(bad, tmp_path / "out")


def test_failed_extraction_leaves_nothing_behind(tmp_path):
    data = bytearray(PAYLOAD)
    at = data.index(b"train-Fungi-2")  # stored uncompressed: flip a byte so its CRC check fails
    data[at] ^= 0xFF
    zip_path = tmp_path / "crc.zip"
    zip_path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="not a valid zip"):
        dl.safe_extract_zip(zip_path, tmp_path / "out")
    assert [p.name for p in tmp_path.iterdir()] == ["crc.zip"]


def test_zip_bomb_cap(tmp_path, monkeypatch):
    zip_path = tmp_path / "n.zip"
    zip_path.write_bytes(PAYLOAD)
    monkeypatch.setattr(dl, "MAX_UNPACKED_BYTES", 1000)
    with pytest.raises(UserError, match="limit"):
        dl.safe_extract_zip(zip_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_extract_refuses_existing_dest(tmp_path):
    zip_path = tmp_path / "n.zip"
    zip_path.write_bytes(PAYLOAD)
    (tmp_path / "out").mkdir()
    with pytest.raises(UserError, match="already exists"):
        dl.safe_extract_zip(zip_path, tmp_path / "out")
