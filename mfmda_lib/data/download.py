"""Download one file safely: :func:`download` streams a URL to disk with urllib, resumes a partial ``<dest>.part``
with an HTTP ``Range`` request, verifies the SHA-256, and moves the file into place only when it is whole and
verified, so ``dest`` existing always means "complete". A web page where a file was expected is refused.

Unpacking is :mod:`.extract`'s job; which datasets can be fetched, and how, is :mod:`.sources`'.
"""
from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from http.client import HTTPException
from pathlib import Path

from tqdm.auto import tqdm

from ..io import DataError, sha256_file

__all__ = ["DownloadError", "download", "ARCHIVE_SUFFIXES"]

USER_AGENT = "mfmda-kit/0.1 (python-urllib)"
_CHUNK = 1 << 20
#: file names ending so are archives (unpacked by :func:`~mfmda_lib.data.extract.safe_extract`)
ARCHIVE_SUFFIXES = (".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz")


class DownloadError(DataError):
    """A download failed: the host is unreachable, answered with an error, or sent a web page."""


def _open(url: str, offset: int, timeout: float):
    """Open ``url`` (from byte ``offset`` if > 0); None when the server says the range is past the end."""
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            return None
        raise DownloadError(f"download of {url} failed: the server answered HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError, HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"cannot reach {url} ({reason}); this machine may be offline, "
                            f"or the host may be down or blocked") from exc


def _resumes_at(response, offset: int) -> bool:
    """True when ``response`` is a 206 whose Content-Range starts exactly at ``offset``."""
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return response.status == 206 and match is not None and int(match.group(1)) == offset


def _stream(response, part: Path, offset: int, url: str, progress: bool) -> int | None:
    """Append (``offset`` > 0) or write the body of ``response`` to ``part``; return the expected total size."""
    length = response.headers.get("Content-Length")
    total = offset + int(length) if length and length.isdigit() else None
    with open(part, "ab" if offset else "wb") as handle, \
            tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                 desc=part.name.removesuffix(".part"), disable=not progress, leave=False) as bar:
        try:
            for block in iter(lambda: response.read(_CHUNK), b""):
                handle.write(block)
                bar.update(len(block))
        except (OSError, HTTPException) as exc:
            raise DownloadError(f"download of {url} was interrupted ({exc}); the partial file {part} "
                                f"is kept and a rerun resumes from it") from exc
        handle.flush()
        os.fsync(handle.fileno())
    return total


def _refuse_web_page(part: Path, url: str, dest: Path) -> None:
    """A login or confirmation page saved under an archive's name: delete it and say what happened."""
    if not dest.name.lower().endswith(ARCHIVE_SUFFIXES):
        return
    with open(part, "rb") as handle:
        head = handle.read(512).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        part.unlink()
        raise DownloadError(f"{url} sent a web page instead of {dest.name} (the host wants a browser: a login "
                            f"or a confirmation); open the URL in a browser, save the file as {dest}, and run again")


def download(url: str, dest: str | os.PathLike, sha256: str | None = None, *, resume: bool = True,
             progress: bool = True, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest``, resuming and verifying; ``dest`` appears only when complete.

    Args:
        url: http(s) URL of the file.
        dest: final path. The partial download lives beside it as ``<dest>.part``.
        sha256: expected hex SHA-256, or None to skip verification. On a mismatch the download
            is deleted and :class:`DataError` is raised.
        resume: continue an existing ``.part`` with an HTTP Range request (the download
            restarts from zero if the server ignores the range).
        progress: show a tqdm bar.
        timeout: seconds to wait for the server at each step.

    Returns:
        ``dest`` as a Path. An existing ``dest`` (with the right checksum, if one is given) is
        returned without any network access.
    """
    dest = Path(dest)
    if dest.is_file():
        if sha256 is None or sha256_file(dest) == sha256.lower():
            return dest
        dest.unlink()  # a stale or damaged copy: fetch it again
    part = dest.with_name(dest.name + ".part")
    if not resume:
        part.unlink(missing_ok=True)
    offset = part.stat().st_size if part.is_file() else 0

    response = _open(url, offset, timeout)
    if response is None:  # 416: the .part is as long as the file already
        if sha256 is not None and sha256_file(part) == sha256.lower():
            os.replace(part, dest)
            return dest
        offset, response = 0, _open(url, 0, timeout)
    elif offset and response.status == 200:  # the server ignored Range and sends it all: start again
        offset = 0
    elif offset and not _resumes_at(response, offset):  # a range we did not ask for: ask for everything
        response.close()
        offset, response = 0, _open(url, 0, timeout)
    dest.parent.mkdir(parents=True, exist_ok=True)  # only once the host has answered
    with response:
        total = _stream(response, part, offset, url, progress)

    size = part.stat().st_size
    if total is not None and size != total:
        raise DownloadError(f"download of {url} stopped at {size} of {total} bytes; "
                            f"the partial file {part} is kept and a rerun resumes from it")
    _refuse_web_page(part, url, dest)
    if sha256 is not None:
        actual = sha256_file(part)
        if actual != sha256.lower():
            part.unlink()
            raise DataError(f"checksum mismatch for {url}: expected sha256 {sha256}, got {actual}; "
                            f"the download was deleted")
    os.replace(part, dest)
    return dest
