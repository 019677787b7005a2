"""Small, safe file helpers: atomic writes, checksums, image and mask reading with clear errors.

Every file the kit writes goes through :func:`atomic_write` (write to a temporary file in the
same folder, then ``os.replace``), so an interrupted run never leaves a half-written image,
cache entry or checkpoint behind.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "DataError",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "save_png",
    "sha256_file",
    "sha256_bytes",
    "read_image",
    "read_mask",
]


class DataError(ValueError):
    """A data file or folder is missing, unreadable or malformed; the message names it."""


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[io.IOBase]:
    """Open a temporary file beside ``path``; on success move it into place, on error delete it.

    Args:
        path: final destination. Its parent folder is created if missing.
        mode: ``"wb"`` or ``"w"``.

    Yields:
        The open temporary file handle.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    with atomic_write(path, "w") as handle:
        json.dump(obj, handle, indent=2, sort_keys=True, default=float)
        handle.write("\n")


def save_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save a ``(H, W)`` or ``(H, W, 3)`` uint8 array as PNG, atomically."""
    if array.dtype != np.uint8:
        raise ValueError(f"save_png expects uint8, got {array.dtype} for {path}")
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of a bytes object."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _open_image(path: Path) -> Image.Image:
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    try:
        img = Image.open(path)
        img.load()  # force a full decode so truncated files fail here, not later
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"cannot read image {path}: the file is corrupt or truncated ({exc})") from exc
    return img


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a colour image as ``(H, W, 3)`` uint8 RGB; raise :class:`DataError` naming the file."""
    img = _open_image(Path(path))
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a label image as ``(H, W)`` uint8 (first channel if it is colour)."""
    img = _open_image(Path(path))
    arr = np.asarray(img)
    if arr.ndim == 3:
        arr = arr[..., 0]
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return arr.copy()
