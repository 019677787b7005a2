"""A lazily loaded list of fundus samples, and the reader for the kit's own folder layout.

Every loader (synthetic or real) produces a :class:`FundusDataset`: a sequence of
:class:`SampleRef` (paths plus how to decode the masks) that loads a :class:`FundusSample`
on indexing. Mask formats are decoded by small functions in :data:`MASK_READERS`.

The kit's folder layout (the multi-site fundus benchmark convention, written by the synthetic
generator and readable for any real dataset converted to it)::

    <root>/<domain>/<split>/ROIs/image/<id>.png     RGB fundus crop
    <root>/<domain>/<split>/ROIs/mask/<id>.png      0 cup, 128 rim, 255 background
    <root>/<domain>/<split>/meta.csv                optional: id, glaucoma, vcdr, ...
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ..io import DataError, read_image, read_mask
from .sample import FundusSample, decode_label_map

__all__ = ["SampleRef", "FundusDataset", "MASK_READERS", "load_folder_domain", "IMAGE_SUFFIXES", "group_by_domain"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


# ---------------------------------------------------------------------------------------------
# mask readers: (mask_paths) -> (disc, cup) bool masks
# ---------------------------------------------------------------------------------------------

def _read_labelmap(paths: Sequence[Path]) -> tuple[np.ndarray, np.ndarray]:
    """One 0/128/255 label map (REFUGE convention)."""
    return decode_label_map(read_mask(paths[0]), paths[0])


#: Mask decoders by format name. ``data.real`` registers the formats of the public datasets.
MASK_READERS: dict[str, Callable[[Sequence[Path]], tuple[np.ndarray, np.ndarray]]] = {
    "labelmap": _read_labelmap,
}


@dataclass(frozen=True)
class SampleRef:
    """Where one sample lives on disk and how to decode its masks."""

    image_path: Path
    mask_paths: tuple[Path, ...]
    domain: str
    sample_id: str
    mask_format: str = "labelmap"
    glaucoma: int | None = None
    meta: dict = field(default_factory=dict, hash=False, compare=False)

    def load(self) -> FundusSample:
        """Read the image and masks; errors name the file at fault."""
        if self.mask_format not in MASK_READERS:
            raise ValueError(f"unknown mask_format {self.mask_format!r}; known: {sorted(MASK_READERS)}")
        image = read_image(self.image_path)
        disc, cup = MASK_READERS[self.mask_format](self.mask_paths)
        if disc.shape != image.shape[:2]:
            raise DataError(f"mask {self.mask_paths[0]} has size {disc.shape} but image "
                            f"{self.image_path} has size {image.shape[:2]}")
        return FundusSample(image=image, disc=disc, cup=cup, domain=self.domain, sample_id=self.sample_id,
                            glaucoma=self.glaucoma, path=str(self.image_path), meta=dict(self.meta))


class FundusDataset(Sequence[FundusSample]):
    """A list of :class:`SampleRef`, loaded into :class:`FundusSample` on indexing."""

    def __init__(self, refs: Sequence[SampleRef], name: str = "") -> None:
        self.refs = list(refs)
        self.name = name

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return FundusDataset(self.refs[index], self.name)
        return self.refs[index].load()

    def __iter__(self) -> Iterator[FundusSample]:
        for ref in self.refs:
            yield ref.load()

    def __add__(self, other: "FundusDataset") -> "FundusDataset":
        return FundusDataset(self.refs + other.refs, f"{self.name}+{other.name}".strip("+"))

    def __repr__(self) -> str:
        domains = sorted({r.domain for r in self.refs})
        return f"FundusDataset({self.name!r}, {len(self)} samples, domains={domains})"

    @property
    def domains(self) -> list[str]:
        """Domain names in order of first appearance."""
        return list(dict.fromkeys(r.domain for r in self.refs))

    def by_domain(self, domain: str) -> "FundusDataset":
        """The samples of one domain."""
        return FundusDataset([r for r in self.refs if r.domain == domain], domain)

    def take(self, n: int) -> "FundusDataset":
        """The first ``n`` samples of each domain (order kept)."""
        counts: dict[str, int] = {}
        keep = []
        for r in self.refs:
            if counts.get(r.domain, 0) < n:
                keep.append(r)
                counts[r.domain] = counts.get(r.domain, 0) + 1
        return FundusDataset(keep, self.name)


def group_by_domain(samples) -> dict[str, list[FundusSample]]:
    """``{domain: [samples]}`` in order of first appearance."""
    groups: dict[str, list[FundusSample]] = {}
    for s in samples:
        groups.setdefault(s.domain, []).append(s)
    return groups


def _read_meta(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    with open(path, newline="") as handle:
        return {row["id"]: row for row in csv.DictReader(handle)}


def load_folder_domain(root: str | Path, domain: str, split: str) -> FundusDataset:
    """Load one domain and split from the kit's folder layout (see the module docstring).

    Raises :class:`DataError` naming the missing folder or the image without a mask.
    """
    base = Path(root) / domain / split
    image_dir, mask_dir = base / "ROIs" / "image", base / "ROIs" / "mask"
    if not base.is_dir():
        have = sorted(p.name for p in (Path(root) / domain).glob("*") if p.is_dir()) if (Path(root) / domain).is_dir() else []
        raise DataError(f"split folder not found: {base} (domain {domain!r} has splits {have})")
    if not image_dir.is_dir():
        raise DataError(f"image folder not found: {image_dir}")
    meta = _read_meta(base / "meta.csv")
    refs = []
    for image_path in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        candidates = [mask_dir / f"{image_path.stem}{s}" for s in (".png", ".bmp")]
        mask_path = next((c for c in candidates if c.is_file()), None)
        if mask_path is None:
            raise DataError(f"no mask for image {image_path}: expected {candidates[0]}")
        row = meta.get(image_path.stem, {})
        glaucoma = int(row["glaucoma"]) if row.get("glaucoma", "") not in ("", None) else None
        refs.append(SampleRef(image_path, (mask_path,), domain, image_path.stem, "labelmap", glaucoma, row))
    if not refs:
        raise DataError(f"no images in {image_dir}")
    return FundusDataset(refs, f"{domain}/{split}")
