"""Small, safe file helpers: atomic writes, checksums, the kit's one artefact cache, image and mask reading.

Every file the kit writes goes through :func:`atomic_write` (write to a temporary file in the
same folder, then ``os.replace``), so an interrupted run never leaves a half-written image,
cache entry or checkpoint behind.

Every expensive artefact (a trained model, a rendered image pool, translated images, an encoder
output) is load-if-present-else-compute through :func:`cached`: ``cached(path, compute, TORCH)``
loads ``path`` when it is present and valid, else runs ``compute()`` and writes its result
atomically. A :class:`Serializer` says how one kind of artefact goes to disk (:data:`TORCH`,
loaded with ``weights_only=True``; :data:`NUMPY`; :data:`NPZ`; :data:`JSON`). A file that does not
load, fails its ``valid`` check or its sidecar checksum is computed again, with a warning naming it.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

__all__ = [
    "DataError",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "Serializer",
    "TORCH",
    "NUMPY",
    "NPZ",
    "JSON",
    "cached",
    "load_artefact",
    "save_artefact",
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
    save_artefact(path, obj, JSON)


# ---------------------------------------------------------------------------------------------
# the artefact cache: load if present and valid, else compute and write atomically
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Serializer:
    """How one kind of artefact goes to a file (``dump(obj, binary handle)``) and back (``load(path)``)."""

    dump: Callable[[Any, IO[bytes]], None]
    load: Callable[[Path], Any]


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


#: a tensor dict (state dicts, payloads of plain values), read back with ``weights_only=True``
TORCH = Serializer(lambda obj, f: torch.save(obj, f), lambda p: torch.load(p, map_location="cpu", weights_only=True))
#: one array, ``.npy``
NUMPY = Serializer(lambda a, f: np.save(f, a, allow_pickle=False), lambda p: np.load(p, allow_pickle=False))
#: a dict of arrays, ``.npz`` (compressed)
NPZ = Serializer(lambda arrays, f: np.savez_compressed(f, **arrays), _load_npz)
#: plain values as indented, key-sorted JSON
JSON = Serializer(lambda obj, f: f.write((json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n").encode()),
                  lambda p: json.loads(p.read_text()))

#: what a truncated, corrupt or foreign file raises while it loads
_UNREADABLE = (OSError, ValueError, RuntimeError, EOFError, KeyError, zipfile.BadZipFile, pickle.UnpicklingError)


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def save_artefact(path: str | os.PathLike, obj: Any, serializer: Serializer = TORCH, *,
                  meta: dict | None = None) -> Path:
    """Write ``obj`` to ``path`` atomically; with ``meta``, then a sidecar ``<stem>.json`` = ``meta`` + ``sha256``."""
    path = Path(path)
    if meta is not None and _sidecar(path) == path:
        raise ValueError(f"{path}: a .json artefact cannot have a .json sidecar; pass meta=None or another suffix")
    with atomic_write(path, "wb") as handle:
        serializer.dump(obj, handle)
    if meta is not None:
        save_artefact(_sidecar(path), {**meta, "sha256": sha256_file(path)}, JSON)
    return path


def _problem(path: Path, serializer: Serializer, meta: dict | None, valid: Callable[[Any], bool] | None):
    """``(artefact, None)`` when ``path`` loads and passes its checks, else ``(None, why)``."""
    if meta is not None:
        side = _sidecar(path)
        try:
            record = json.loads(side.read_text())
        except (OSError, ValueError) as exc:
            return None, f"its sidecar {side.name} is unreadable ({exc})"
        if any(record.get(k) != v for k, v in meta.items()):
            return None, f"its sidecar {side.name} describes another artefact"
        if sha256_file(path) != record.get("sha256"):
            return None, f"its SHA-256 is not the one in {side.name}"
    try:
        obj = serializer.load(path)
    except _UNREADABLE as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        return None, f"it does not load ({type(exc).__name__}: {first})"
    try:
        if valid is not None and not valid(obj):
            return None, "it fails its validity check"
    except (KeyError, TypeError, AttributeError) as exc:  # another shape of artefact than the check expects
        return None, f"it fails its validity check ({type(exc).__name__}: {exc})"
    return obj, None


def load_artefact(path: str | os.PathLike, serializer: Serializer = TORCH, *, meta: dict | None = None,
                  valid: Callable[[Any], bool] | None = None) -> Any | None:
    """The artefact at ``path``, or ``None`` when it is absent or invalid (then with a warning naming the file).

    Args:
        path: the file.
        serializer: how it was written (:data:`TORCH`, :data:`NUMPY`, :data:`NPZ`, :data:`JSON`).
        meta: the sidecar's expected entries (JSON values: lists, not tuples); the file must also match the
            sidecar's ``sha256``. ``None``: no sidecar.
        valid: a last check of the loaded artefact (e.g. a checksum stored inside it).
    """
    path = Path(path)
    if not path.is_file():
        return None
    obj, why = _problem(path, serializer, meta, valid)
    if why is not None:
        warnings.warn(f"cached artefact {path} is not usable: {why}; computing it again", stacklevel=3)
    return obj


def cached(path: str | os.PathLike | None, compute: Callable[[], Any], serializer: Serializer = TORCH, *,
           meta: dict | None = None, valid: Callable[[Any], bool] | None = None) -> tuple[Any, bool]:
    """Load the artefact at ``path`` if present and valid, else ``compute()`` it and write it atomically.

    Args:
        path: the artefact's file; ``None``: no cache, always compute.
        compute: ``() -> artefact``; if it raises, nothing is written.
        serializer, meta, valid: as in :func:`load_artefact`.

    Returns:
        ``(artefact, computed)``: ``computed`` is False when it came from the file.
    """
    if path is not None and (found := load_artefact(path, serializer, meta=meta, valid=valid)) is not None:
        return found, False
    obj = compute()
    if path is not None:
        save_artefact(path, obj, serializer, meta=meta)
    return obj, True


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
