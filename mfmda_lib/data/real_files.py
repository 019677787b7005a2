"""Reading a released dataset's folders: tolerant folder lookup (case, macOS litter, one level too deep), pairing
images with their masks by file stem, and the mask readers the loaders register (binary pair, soft maps, RIGA+ vote)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..io import DataError, read_mask
from .dataset import IMAGE_SUFFIXES, MASK_READERS, FundusDataset, SampleRef

__all__ = ["SOFT_MAP_THRESHOLD", "is_visible", "child_dir", "find_dir", "image_files", "index_by_stem",
           "canonical_split", "glaucoma_from_folder", "make_dataset", "check_values", "same_size", "read_binary_pair",
           "read_soft_pair", "read_riga_vote"]

#: Drishti-GS soft maps hold the fraction of experts marking a pixel; a pixel is in when >= this.
SOFT_MAP_THRESHOLD = 0.5
#: Grey levels within this distance of an expected value count as that value (JPEG / resize softening).
_TOLERANCE = 32
#: Largest share of pixels allowed to hold an unexpected value before a mask is rejected.
_MAX_UNKNOWN = 0.01


def is_visible(path: Path | str) -> bool:
    """False for macOS litter (``._x.jpg``, ``__MACOSX``) and other hidden entries."""
    name = Path(path).name
    return not name.startswith(".") and name != "__MACOSX"


def child_dir(folder: Path | None, *names: str) -> Path | None:
    """The sub-folder of ``folder`` named like one of ``names`` (case-insensitive), else None."""
    if folder is None or not folder.is_dir():
        return None
    children = {p.name.lower(): p for p in folder.iterdir() if p.is_dir() and is_visible(p)}
    return next((children[n.lower()] for n in names if n.lower() in children), None)


def find_dir(root: Path, names: Sequence[str], depth: int = 2) -> Path | None:
    """Breadth-first search for a folder named like one of ``names``, at most ``depth`` levels below ``root``."""
    level = [root] if root.is_dir() else []
    for step in range(depth):
        for folder in level:
            found = child_dir(folder, *names)
            if found is not None:
                return found
        if step + 1 < depth:
            level = [c for f in level for c in sorted(f.iterdir()) if c.is_dir() and is_visible(c)]
    return None


def image_files(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (and below it if ``recursive``), sorted by path."""
    pattern = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in pattern if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and all(is_visible(q) for q in p.relative_to(folder).parts))


def index_by_stem(folder: Path) -> dict[str, Path]:
    """Every image file below ``folder`` keyed by its lower-case stem; a stem found twice is an error."""
    index: dict[str, Path] = {}
    for path in image_files(folder, recursive=True):
        key = path.stem.lower()
        if key in index:
            raise DataError(f"two masks share the name {path.stem!r}: {index[key]} and {path}")
        index[key] = path
    return index


def canonical_split(split: str, aliases: dict[str, str], dataset: str) -> str:
    """Map ``split`` through ``aliases`` (``"training"`` -> ``"train"``); ValueError lists the valid names."""
    key = str(split).lower()
    if key not in aliases:
        raise ValueError(f"{dataset} has no split {split!r}; use one of {sorted(set(aliases.values()))}")
    return aliases[key]


def glaucoma_from_folder(*paths: Path) -> int | None:
    """1 / 0 when a parent folder says Glaucoma / Non-Glaucoma (G / N, glaucoma / normal), else None."""
    labels = {"glaucoma": 1, "g": 1, "non-glaucoma": 0, "n": 0, "normal": 0}
    for path in paths:
        label = labels.get(path.parent.name.lower())
        if label is not None:
            return label
    return None


def make_dataset(refs: list[SampleRef], name: str, image_dir: Path) -> FundusDataset:
    if not refs:
        raise DataError(f"no images found in {image_dir}")
    return FundusDataset(refs, name)


def check_values(mask: np.ndarray, expected: Sequence[int], source: Path, meaning: str) -> None:
    """DataError naming ``source`` if more than 1 % of pixels are far from every ``expected`` value."""
    known = np.zeros(mask.shape, dtype=bool)
    for value in expected:
        known |= np.abs(mask.astype(np.int16) - value) <= _TOLERANCE
    if (~known).mean() > _MAX_UNKNOWN:
        values = np.unique(mask[~known])[:8].tolist()
        raise DataError(f"mask {source} has unexpected values {values}: expected {meaning}")


def same_size(masks: Sequence[np.ndarray], paths: Sequence[Path]) -> None:
    for mask, path in zip(masks[1:], paths[1:]):
        if mask.shape != masks[0].shape:
            raise DataError(f"mask {path} has size {mask.shape} but mask {paths[0]} has size {masks[0].shape}")


def read_binary_pair(paths: Sequence[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Two strictly binary masks ``(disc, cup)`` stored as 0 / 255 (or 0 / 1); RIM-ONE DL."""
    masks = []
    for path in paths[:2]:
        m = read_mask(path)
        if m.max() <= 1:
            m = m * 255
        check_values(m, (0, 255), path, "0 (outside) and 255 (inside)")
        masks.append(m >= 128)
    same_size(masks, paths)
    disc, cup = masks
    return disc | cup, cup


def read_soft_pair(paths: Sequence[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Two soft maps ``(disc, cup)`` in 0..255 (share of experts); cut at :data:`SOFT_MAP_THRESHOLD`."""
    masks = [read_mask(path).astype(np.float32) / 255.0 >= SOFT_MAP_THRESHOLD for path in paths[:2]]
    same_size(masks, paths)
    disc, cup = masks
    return disc | cup, cup


def read_riga_vote(paths: Sequence[Path]) -> tuple[np.ndarray, np.ndarray]:
    """One RIGA+ map per rater (0 background, 128 cup, 255 rim); a pixel is in when at least half agree."""
    discs, cups = [], []
    for path in paths:
        m = read_mask(path)
        check_values(m, (0, 128, 255), path, "0 (background), 128 (cup), 255 (rim)")
        cup = np.abs(m.astype(np.int16) - 128) <= _TOLERANCE
        discs.append(cup | (m >= 255 - _TOLERANCE))
        cups.append(cup)
    same_size(discs, paths)
    n = len(paths)
    disc = np.sum(discs, axis=0) * 2 >= n   # (H, W) votes -> majority
    cup = np.sum(cups, axis=0) * 2 >= n
    return disc | cup, cup


MASK_READERS.update({
    "binary_pair": read_binary_pair,
    "soft_pair": read_soft_pair,
    "riga_vote": read_riga_vote,
})
