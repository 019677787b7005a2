"""Download (loopback HTTP server with Range support), safe extraction, source registry and CLI; all offline."""
from __future__ import annotations

import hashlib
import importlib.util
import io
import re
import socket
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mfmda_lib.data.download import DownloadError, download
from mfmda_lib.data.extract import safe_extract
from mfmda_lib.data.sources import SOURCES, RemoteFile, Source, fetch_source, registration_steps
from mfmda_lib.io import DataError

PAYLOAD = bytes(np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8))
SHA = hashlib.sha256(PAYLOAD).hexdigest()


# ---------------------------------------------------------------------------------------------
# a loopback server that honours (or ignores) Range requests and records what it was asked
# ---------------------------------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server API)
        server = self.server
        server.seen.append({"path": self.path, "range": self.headers.get("Range")})
        body = server.files.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and server.honour_range:
            start = int(match.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            body = body[start:]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.cut_after is not None:  # announce everything, send part of it, hang up
            body = body[:server.cut_after]
        self.wfile.write(body)
        server.sent += len(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.seen, httpd.sent = {"/data.bin": PAYLOAD}, [], 0
    httpd.honour_range, httpd.cut_after = True, None
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/data.bin"


# ---------------------------------------------------------------------------------------------
# download
# ---------------------------------------------------------------------------------------------

def test_full_download_verifies_and_moves_into_place(server, tmp_path):
    dest = tmp_path / "sub" / "data.bin"
    assert download(f"{server.url}/data.bin", dest, SHA, progress=False) == dest
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_name("data.bin.part").exists()
    assert server.seen[-1]["range"] is None
    requests = len(server.seen)
    download(f"{server.url}/data.bin", dest, SHA, progress=False)  # already there and verified
    assert len(server.seen) == requests


def test_checksum_mismatch_leaves_no_file(server, tmp_path):
    dest = tmp_path / "data.bin"
    with pytest.raises(DataError, match="checksum mismatch.*expected sha256 0000"):
        download(f"{server.url}/data.bin", dest, "0" * 64, progress=False)
    assert not dest.exists() and not (tmp_path / "data.bin.part").exists()
    assert list(tmp_path.iterdir()) == []


def test_resume_sends_range_and_appends_only_the_rest(server, tmp_path):
    dest = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD[:100_000])
    download(f"{server.url}/data.bin", dest, SHA, progress=False)
    assert server.seen[-1]["range"] == "bytes=100000-"
    assert server.sent == len(PAYLOAD) - 100_000
    assert dest.read_bytes() == PAYLOAD and not (tmp_path / "data.bin.part").exists()


def test_interrupted_download_keeps_the_part_and_a_rerun_resumes(server, tmp_path):
    dest, part = tmp_path / "data.bin", tmp_path / "data.bin.part"
    server.cut_after = 120_000
    with pytest.raises(DownloadError, match=r"stopped at 120000 of 300000 bytes.*rerun resumes"):
        download(f"{server.url}/data.bin", dest, SHA, progress=False)
    assert not dest.exists() and part.read_bytes() == PAYLOAD[:120_000]
    server.cut_after = None
    download(f"{server.url}/data.bin", dest, SHA, progress=False)
    assert server.seen[-1]["range"] == "bytes=120000-" and dest.read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.honour_range = False
    dest = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(b"stale partial bytes that must not be kept")
    download(f"{server.url}/data.bin", dest, SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert len(server.seen) == 1 and server.seen[0]["range"] == "bytes=41-"  # the full answer was used as is


def test_complete_part_answered_416_is_verified_and_kept(server, tmp_path):
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD)
    download(f"{server.url}/data.bin", tmp_path / "data.bin", SHA, progress=False)
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD and server.sent == 0


def test_unreachable_host_names_the_url_and_says_offline(tmp_path):
    url = closed_port_url()
    with pytest.raises(DownloadError, match=re.escape(url) + ".*offline"):
        download(url, tmp_path / "data.bin", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_http_error_and_web_page_instead_of_archive(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(f"{server.url}/missing.zip", tmp_path / "missing.zip", progress=False)
    server.files["/login"] = b"<!DOCTYPE html><html><body>Sign in</body></html>"
    with pytest.raises(DownloadError, match="web page instead of data.zip"):
        download(f"{server.url}/login", tmp_path / "data.zip", progress=False)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# safe extraction
# ---------------------------------------------------------------------------------------------

def make_zip(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members:
            archive.writestr(zipfile.ZipInfo(name), data)
    return path


def make_tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                archive.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                archive.addfile(info, io.BytesIO(member[1]))
    return path


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".extract-" in p.name)


def test_good_zip_and_tar_extract_and_merge(tmp_path):
    target = tmp_path / "out"
    safe_extract(make_zip(tmp_path / "a.zip", [("top/a.txt", b"A"), ("top/deep/b.txt", b"B")]), target)
    safe_extract(make_tar(tmp_path / "b.tar.gz", [("top/c.txt", b"C")]), target)
    assert (target / "top" / "a.txt").read_bytes() == b"A"
    assert (target / "top" / "deep" / "b.txt").read_bytes() == b"B"
    assert (target / "top" / "c.txt").read_bytes() == b"C"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", ["zip", "tar"])
@pytest.mark.parametrize("bad_name", ["../evil.txt", "top/../../evil.txt", "/tmp/mfmda_evil.txt"])
def test_members_escaping_the_target_are_refused(tmp_path, kind, bad_name):
    members = [("good.txt", b"fine"), (bad_name, b"evil")]
    archive = make_zip(tmp_path / "x.zip", members) if kind == "zip" else make_tar(tmp_path / "x.tar.gz", members)
    target = tmp_path / "out"
    with pytest.raises(DataError, match=re.escape(repr(bad_name))):
        safe_extract(archive, target)
    assert not target.exists()  # not even the good member was written
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/mfmda_evil.txt").exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("link_type", [tarfile.SYMTYPE, tarfile.LNKTYPE])
@pytest.mark.parametrize("link", ["../../outside.txt", "/etc/passwd"])
def test_tar_links_pointing_outside_are_refused(tmp_path, link_type, link):
    info = tarfile.TarInfo("top/link")
    info.type, info.linkname = link_type, link
    archive = make_tar(tmp_path / "links.tar.gz", [("top/ok.txt", b"ok"), info])
    with pytest.raises(DataError, match=r"link 'top/link'.* (absolute|outside)"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_damaged_archive_leaves_nothing_half_written(tmp_path):
    archive = make_zip(tmp_path / "bad.zip", [("a.txt", b"first member is fine"), ("b.txt", b"hello world" * 50)])
    data = bytearray(archive.read_bytes())
    data[data.index(b"hello world") + 3] ^= 0xFF  # break b.txt's CRC
    archive.write_bytes(bytes(data))
    with pytest.raises(DataError, match="damaged or truncated"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
    (tmp_path / "junk.zip").write_bytes(b"not an archive")
    with pytest.raises(DataError, match="neither a zip nor a tar"):
        safe_extract(tmp_path / "junk.zip", tmp_path / "out")


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------

def test_sources_registry_is_consistent():
    from mfmda_lib.data.real import LOADERS

    assert {"refuge", "riga_plus", "drishti_gs", "rim_one_dl"} <= set(SOURCES)
    assert SOURCES["riga_plus"].public and SOURCES["rim_one_dl"].public
    assert not SOURCES["refuge"].public and not SOURCES["drishti_gs"].public
    for source in SOURCES.values():
        assert source.loader in LOADERS
        for remote in source.files:
            assert remote.url.startswith("https://")
            assert remote.sha256 is not None or "no checksum" in remote.checksum_note
            assert remote.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", remote.sha256)
    assert "zenodo.org" in SOURCES["riga_plus"].files[0].url
    with pytest.raises(ValueError, match="either files"):
        Source("x", "x", "x", "x", "refuge", ("train",))


def test_registration_steps_for_gated_and_public_sets():
    refuge = registration_steps("refuge", "data")
    assert "grand-challenge.org" in refuge and "Annotation-Training400.zip" in refuge
    assert "--dest data --extract" in refuge and "load_dataset('refuge', 'data/refuge'" in refuge
    assert "cvit.iiit.ac.in" in registration_steps("drishti_gs")
    assert "No registration needed" in registration_steps("riga_plus")
    with pytest.raises(ValueError, match="known: .*refuge"):
        registration_steps("nope")


# ---------------------------------------------------------------------------------------------
# fetch + CLI
# ---------------------------------------------------------------------------------------------

def rim_one_zip() -> bytes:
    """A one-image RIM-ONE DL tree (both partitions, both splits) as zip bytes."""
    yy, xx = np.mgrid[0:24, 0:32]
    r = np.hypot(yy - 12, xx - 16)
    png = {}
    for key, array in {"img": np.zeros((24, 32, 3), np.uint8) + 90, "disc": ((r <= 8) * 255).astype(np.uint8),
                       "cup": ((r <= 4) * 255).astype(np.uint8)}.items():
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        png[key] = buffer.getvalue()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for split, stem in (("training_set", "r1_Im001"), ("test_set", "r2_Im002")):
            archive.writestr(f"RIM-ONE_DL_images/partitioned_by_hospital/{split}/glaucoma/{stem}.png", png["img"])
            archive.writestr(f"RIM-ONE_DL_reference_segmentations/glaucoma/{stem}-1-Disc-T.png", png["disc"])
            archive.writestr(f"RIM-ONE_DL_reference_segmentations/glaucoma/{stem}-1-Cup-T.png", png["cup"])
    return buffer.getvalue()


def load_cli():
    path = Path(__file__).resolve().parents[1] / "data_scripts" / "download_fundus.py"
    spec = importlib.util.spec_from_file_location("download_fundus", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def served_source(url: str, sha: str | None) -> Source:
    return Source(name="rim_one_dl", title="RIM-ONE DL (test copy)", homepage="http://127.0.0.1",
                  licence="test", loader="rim_one_dl", splits=("train", "test"),
                  files=(RemoteFile(url, "rim.zip", sha, "test"),))


def test_fetch_source_downloads_extracts_once(server, tmp_path, monkeypatch):
    data = rim_one_zip()
    server.files["/rim.zip"] = data
    monkeypatch.setitem(SOURCES, "rim_one_dl", served_source(f"{server.url}/rim.zip", hashlib.sha256(data).hexdigest()))
    root = fetch_source("rim_one_dl", tmp_path, progress=False)
    assert root == tmp_path / "rim_one_dl" and (tmp_path / "rim.zip").is_file()
    assert (root / "RIM-ONE_DL_images" / "partitioned_by_hospital" / "test_set" / "glaucoma" / "r2_Im002.png").is_file()
    requests = len(server.seen)
    fetch_source("rim_one_dl", tmp_path, progress=False)
    assert len(server.seen) == requests
    with pytest.raises(DataError, match="registration_steps"):
        fetch_source("refuge", tmp_path)


def test_cli_list_registration_download_and_errors(server, tmp_path, monkeypatch, capsys):
    cli = load_cli()
    assert cli.main(["--list"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in ("refuge", "riga_plus", "drishti_gs", "rim_one_dl"))
    assert cli.main(["--dataset", "refuge", "--dest", str(tmp_path)]) == 0
    assert "grand-challenge.org" in capsys.readouterr().out
    assert not (tmp_path / "refuge").exists()

    assert cli.main(["--dataset", "refugee", "--dest", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "known:" in err

    data = rim_one_zip()
    server.files["/rim.zip"] = data
    monkeypatch.setitem(SOURCES, "rim_one_dl", served_source(f"{server.url}/rim.zip", hashlib.sha256(data).hexdigest()))
    assert cli.main(["--dataset", "rim_one_dl", "--dest", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "rim_one_dl/train: 1 samples, domains ['rim_one_dl']" in out and "rim_one_dl/test: 1 samples" in out

    url = closed_port_url()
    monkeypatch.setitem(SOURCES, "rim_one_dl", served_source(url, None))
    assert cli.main(["--dataset", "rim_one_dl", "--dest", str(tmp_path / "other"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and url in err and "offline" in err and "Traceback" not in err


def test_cli_extracts_local_archives_and_checks(tmp_path, capsys):
    cli = load_cli()
    archive = tmp_path / "rim.zip"
    archive.write_bytes(rim_one_zip())
    assert cli.main(["--dataset", "rim_one_dl", "--dest", str(tmp_path / "data"), "--extract", str(archive)]) == 0
    assert cli.main(["--dataset", "rim_one_dl", "--dest", str(tmp_path / "data"), "--check"]) == 0
    assert "rim_one_dl/test: 1 samples" in capsys.readouterr().out
    assert cli.main(["--dataset", "refuge", "--dest", str(tmp_path / "data"), "--check"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "REFUGE train images not found" in err
