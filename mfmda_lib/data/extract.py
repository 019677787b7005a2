"""Unpack a downloaded ``.zip`` / ``.tar(.gz|.bz2|.xz)`` archive safely: every member must land inside the target
(no ``../``, no absolute path, no link pointing out), and the archive is unpacked into a temporary folder first, so a
failed extraction leaves nothing half-written."""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath, PureWindowsPath

from ..io import DataError

__all__ = ["safe_extract"]


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
