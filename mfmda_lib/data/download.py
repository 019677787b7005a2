"""Fetch the public fundus datasets safely, and say how to get the ones behind a registration.

Three pieces, top to bottom:

* :func:`download` streams a URL to disk with urllib, resumes a partial ``<dest>.part`` with an
  HTTP ``Range`` request, verifies the SHA-256, and moves the file into place only when it is
  whole and verified, so ``dest`` existing always means "complete".
* :func:`safe_extract` unpacks ``.zip`` / ``.tar(.gz|.bz2|.xz)`` archives, refusing any member
  that would land outside the target (``../``, absolute paths, links pointing out). It unpacks
  into a temporary folder first, so a failed extraction leaves nothing half-written.
* :data:`SOURCES` records, per dataset, whether a script may fetch it and from where;
  :func:`registration_steps` tells a person what to do for the others.
"""
from __future__ import annotations

import os
import re
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path, PurePosixPath, PureWindowsPath

from tqdm.auto import tqdm

from ..io import DataError, sha256_file

__all__ = [
    "DownloadError",
    "RemoteFile",
    "Source",
    "SOURCES",
    "download",
    "safe_extract",
    "registration_steps",
    "fetch_source",
]

USER_AGENT = "mfmda-kit/0.1 (python-urllib)"
_CHUNK = 1 << 20
_ARCHIVE_SUFFIXES = (".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz")


class DownloadError(DataError):
    """A download failed: the host is unreachable, answered with an error, or sent a web page."""


# ---------------------------------------------------------------------------------------------
# download
# ---------------------------------------------------------------------------------------------

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
    if not dest.name.lower().endswith(_ARCHIVE_SUFFIXES):
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


# ---------------------------------------------------------------------------------------------
# safe extraction
# ---------------------------------------------------------------------------------------------

def _landing(root: Path, name: str, archive: Path) -> Path:
    """Where member ``name`` would land below ``root``; DataError if absolute or outside ``root``."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or PureWindowsPath(name).drive:
        raise DataError(f"refusing to extract {archive}: member {name!r} has an absolute path")
    landing = (root / posix).resolve()
    if landing != root and root not in landing.parents:
        raise DataError(f"refusing to extract {archive}: member {name!r} would be written outside {root}")
    return landing


def _check_link(root: Path, member: str, link: str, archive: Path, *, hard: bool = False) -> None:
    """DataError if the link ``member -> link`` is absolute or points outside ``root``.

    A symlink's target is relative to the member's folder, a hard link's to the archive root.
    """
    if link.replace("\\", "/").startswith("/") or PureWindowsPath(link).drive:
        raise DataError(f"refusing to extract {archive}: link {member!r} points to the absolute path {link!r}")
    base = PurePosixPath() if hard else PurePosixPath(member.replace("\\", "/")).parent
    landing = (root / base / link.replace("\\", "/")).resolve()
    if landing != root and root not in landing.parents:
        raise DataError(f"refusing to extract {archive}: link {member!r} -> {link!r} points outside {root}")


def _check_zip(archive_file: zipfile.ZipFile, root: Path, archive: Path) -> None:
    for info in archive_file.infolist():
        _landing(root, info.filename, archive)
        if stat.S_ISLNK(info.external_attr >> 16):
            _check_link(root, info.filename, archive_file.read(info).decode("utf-8", "replace"), archive)


def _check_tar(archive_file: tarfile.TarFile, root: Path, archive: Path) -> list[tarfile.TarInfo]:
    members = archive_file.getmembers()
    for member in members:
        _landing(root, member.name, archive)
        if member.issym():
            _check_link(root, member.name, member.linkname, archive)
        elif member.islnk():
            _check_link(root, member.name, member.linkname, archive, hard=True)
        elif not (member.isfile() or member.isdir()):
            raise DataError(f"refusing to extract {archive}: member {member.name!r} is a device or pipe")
    return members


def _merge(source: Path, target: Path) -> None:
    """Move everything in ``source`` into ``target``, merging folders that already exist."""
    for entry in sorted(source.iterdir()):
        there = target / entry.name
        if entry.is_dir() and not entry.is_symlink() and there.is_dir():
            _merge(entry, there)
        elif there.is_dir() and not there.is_symlink():
            raise DataError(f"cannot extract {entry.name!r}: {there} is a folder in the way")
        else:
            os.replace(entry, there)


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Extract a ``.zip`` or ``.tar(.gz|.bz2|.xz)`` into ``target``, refusing members that escape it.

    Every member is checked before anything is written; the archive is unpacked into a
    temporary folder beside ``target`` and moved in only when complete.

    Args:
        archive: the archive file.
        target: folder to extract into (created if missing; existing folders are merged).

    Returns:
        ``target`` as a Path. Raises :class:`DataError` naming the archive and the bad member.
    """
    archive, target = Path(archive), Path(target)
    if not archive.is_file():
        raise DataError(f"archive not found: {archive}")
    target.parent.mkdir(parents=True, exist_ok=True)
    root = target.resolve()
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.extract-", dir=target.parent))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as archive_file:
                _check_zip(archive_file, root, archive)
                archive_file.extractall(staging)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as archive_file:
                members = _check_tar(archive_file, root, archive)
                safety = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                archive_file.extractall(staging, members=members, **safety)
        else:
            raise DataError(f"{archive} is neither a zip nor a tar archive")
        if target.exists():
            _merge(staging, target)
        else:
            os.replace(staging, target)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(f"cannot extract {archive}: it is damaged or truncated ({exc}); "
                        f"nothing was written to {target}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------------------------
# registry of sources
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RemoteFile:
    """One file a script may download.

    Attributes:
        url: where to get it.
        filename: name to save it under.
        sha256: expected hex SHA-256, or None where no checksum could be found.
        checksum_note: where the checksum comes from, or why there is none.
    """

    url: str
    filename: str
    sha256: str | None = None
    checksum_note: str = ""


@dataclass(frozen=True)
class Source:
    """Where one dataset comes from and how to get it.

    Attributes:
        name: key in :data:`SOURCES` and folder name under the data root.
        title: human-readable name.
        homepage: the publisher's page.
        licence: terms of use, in brief.
        loader: key in :data:`mfmda_lib.data.real.LOADERS`.
        splits: splits the loader accepts.
        files: files a script may fetch; empty when the data sits behind a registration.
        registration: steps for a person, for data a script may not fetch.
    """

    name: str
    title: str
    homepage: str
    licence: str
    loader: str
    splits: tuple[str, ...]
    files: tuple[RemoteFile, ...] = ()
    registration: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if bool(self.files) == bool(self.registration):
            raise ValueError(f"source {self.name!r} needs either files to download or registration steps, not both")

    @property
    def public(self) -> bool:
        """True when a script may download the data without an account."""
        return bool(self.files)


_UNPACK = ("Unpack the archives into DEST/{name}: python data_scripts/download_fundus.py "
           "--dataset {name} --dest DEST --extract <archive> [<archive> ...]")

SOURCES: dict[str, Source] = {
    "riga_plus": Source(
        name="riga_plus",
        title="RIGA+ (BinRushed, Magrabia, MESSIDOR Base1-3; six raters per image), Hu et al. 2022",
        homepage="https://zenodo.org/records/6325549",
        licence="CC BY 4.0 on the Zenodo record; the original RIGA is CC BY-NC 4.0, so treat it as non-commercial",
        loader="riga_plus",
        splits=("train", "test"),
        files=(RemoteFile(
            url="https://zenodo.org/api/records/6325549/files/RIGAPlus.zip/content",
            filename="RIGAPlus.zip",
            sha256="f9fa96df2faa70852ccd4c73d0e79ed6eb258b5a37e72292f5efa3f81f195d20",
            checksum_note="SHA-256 as used by torch-em's RIGA+ loader (constantinpape/torch-em); "
                          "Zenodo itself lists only an MD5; about 1.1 GB"),),
    ),
    "rim_one_dl": Source(
        name="rim_one_dl",
        title="RIM-ONE DL (HUC, HUMS, HCSC hospitals), Fumero Batista et al. 2020",
        homepage="https://github.com/miag-ull/rim-one-dl",
        licence="research and education only, free of charge; no redistribution",
        loader="rim_one_dl",
        splits=("train", "test"),
        files=(
            RemoteFile(url="https://bit.ly/rim-one-dl-images", filename="RIM-ONE_DL_images.zip",
                       checksum_note="no checksum is published; the short link from the official README "
                                     "may redirect to a host that wants a browser"),
            RemoteFile(url="https://bit.ly/rim-one-dl-reference-segmentations",
                       filename="RIM-ONE_DL_reference_segmentations.zip",
                       checksum_note="no checksum is published; short link from the official README"),
        ),
    ),
    "refuge": Source(
        name="refuge",
        title="REFUGE (MICCAI 2018 glaucoma challenge; Zeiss train, Canon val/test)",
        homepage="https://refuge.grand-challenge.org/",
        licence="challenge data: research use under the challenge's terms, no redistribution",
        loader="refuge",
        splits=("train", "val", "test"),
        registration=(
            "Create a free account at https://grand-challenge.org and sign in.",
            "Open https://refuge.grand-challenge.org/ and join the challenge; the download page "
            "(https://refuge.grand-challenge.org/REFUGE2Download/) lists the archives once its terms are accepted.",
            "Download REFUGE-Training400.zip, Annotation-Training400.zip, REFUGE-Validation400.zip, "
            "REFUGE-Validation400-GT.zip, REFUGE-Test400.zip and REFUGE-Test-GT.zip.",
            _UNPACK,
        ),
    ),
    "drishti_gs": Source(
        name="drishti_gs",
        title="Drishti-GS1 (Aravind Eye Hospital; soft maps of four experts)",
        homepage="https://cvit.iiit.ac.in/projects/mip/drishti-gs/mip-dataset2/Home.php",
        licence="research use under the publisher's terms, no redistribution",
        loader="drishti_gs",
        splits=("train", "test"),
        registration=(
            "Open https://cvit.iiit.ac.in/projects/mip/drishti-gs/mip-dataset2/Home.php and follow its Download link.",
            "Give the details the site asks for (name, institution, e-mail) and accept its terms; "
            "it then gives the link to Drishti-GS1_files.zip.",
            _UNPACK,
        ),
    ),
}


def _source(name: str) -> Source:
    if name not in SOURCES:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(SOURCES)}")
    return SOURCES[name]


def registration_steps(name: str, dest: str = "DEST") -> str:
    """Numbered steps, for a person, to get dataset ``name`` into ``<dest>/<name>`` and load it."""
    source = _source(name)
    if source.public:
        steps = [f"No registration needed: python data_scripts/download_fundus.py --dataset {name} --dest {dest}"]
    else:
        steps = [s.format(name=name).replace("DEST", dest) for s in source.registration]
    steps.append(f"Load it: load_dataset({source.loader!r}, {str(Path(dest) / name)!r}, split) "
                 f"with split in {list(source.splits)}.")
    lines = [f"{source.title}", f"  homepage: {source.homepage}", f"  licence:  {source.licence}"]
    lines += [f"  {i}. {step}" for i, step in enumerate(steps, 1)]
    return "\n".join(lines)


def fetch_source(name: str, dest: str | os.PathLike, *, progress: bool = True) -> Path:
    """Download the files of public dataset ``name`` into ``dest`` and unpack them into ``dest/name``.

    Archives are kept in ``dest`` (a rerun skips them), and each is unpacked once (a marker
    file ``dest/name/.<archive>.extracted`` records it). Returns ``dest/name``, the loader root.
    """
    source = _source(name)
    if not source.public:
        raise DataError(f"{name} cannot be downloaded by a script; see registration_steps({name!r})")
    dest = Path(dest)
    root = dest / name
    for remote in source.files:
        archive = download(remote.url, dest / remote.filename, remote.sha256, progress=progress)
        marker = root / f".{remote.filename}.extracted"
        if remote.filename.lower().endswith(_ARCHIVE_SUFFIXES) and not marker.is_file():
            safe_extract(archive, root)
            marker.write_text(f"{remote.url}\n")
    return root
