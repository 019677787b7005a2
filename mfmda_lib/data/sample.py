"""One sample format for every fundus dataset, synthetic or real.

A :class:`FundusSample` holds an RGB image, the optic disc mask (the whole disc, cup included)
and the optic cup mask, plus the domain it came from. Every loader returns these, so every
comparison in the kit is one loop over domains.

Mask encoding on disk (the REFUGE / multi-site fundus convention, also written by the
synthetic generator): a single-channel label image with 0 = cup, 128 = neuroretinal rim
(disc minus cup), 255 = background.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io import DataError

__all__ = [
    "FundusSample",
    "GLAUCOMA_SUSPECT_VCDR",
    "vertical_cdr",
    "encode_label_map",
    "decode_label_map",
    "mask_box",
]

#: Vertical cup-to-disc ratio at or above which the kit calls an eye "glaucoma suspect".
GLAUCOMA_SUSPECT_VCDR = 0.6

CUP_VALUE, RIM_VALUE, BACKGROUND_VALUE = 0, 128, 255


def vertical_cdr(disc: np.ndarray, cup: np.ndarray) -> float:
    """Vertical cup-to-disc ratio: cup height / disc height in rows; 0.0 for an empty disc.

    Args:
        disc: ``(H, W)`` bool disc mask (cup included).
        cup: ``(H, W)`` bool cup mask.
    """
    disc_rows = np.flatnonzero(disc.any(axis=1))
    if disc_rows.size == 0:
        return 0.0
    cup_rows = np.flatnonzero(cup.any(axis=1))
    cup_h = 0 if cup_rows.size == 0 else cup_rows[-1] - cup_rows[0] + 1
    return float(cup_h / (disc_rows[-1] - disc_rows[0] + 1))


def mask_box(mask: np.ndarray, margin: int = 0) -> np.ndarray:
    """Tight ``[x0, y0, x1, y1]`` box (pixel coordinates, inclusive) around a mask, grown by ``margin``.

    Args:
        mask: ``(H, W)`` bool.
        margin: pixels added on each side, clipped to the image.

    Returns:
        ``(4,)`` float32 array. Raises ``ValueError`` for an empty mask.
    """
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        raise ValueError("mask_box: the mask is empty, there is no object to put a box around")
    h, w = mask.shape
    return np.array(
        [max(xs.min() - margin, 0), max(ys.min() - margin, 0),
         min(xs.max() + margin, w - 1), min(ys.max() + margin, h - 1)],
        dtype=np.float32,
    )


def encode_label_map(disc: np.ndarray, cup: np.ndarray) -> np.ndarray:
    """Encode disc and cup masks as one ``(H, W)`` uint8 map: 0 cup, 128 rim, 255 background."""
    label = np.full(disc.shape, BACKGROUND_VALUE, dtype=np.uint8)
    label[disc] = RIM_VALUE
    label[cup] = CUP_VALUE
    return label


def decode_label_map(label: np.ndarray, source: str | Path = "<array>") -> tuple[np.ndarray, np.ndarray]:
    """Decode a 0/128/255 label map into ``(disc, cup)`` bool masks.

    Grey values within 32 of 0, 128 and 255 are accepted (JPEG- or resize-softened masks);
    anything else raises :class:`DataError` naming ``source``.
    """
    label = np.asarray(label)
    if label.ndim != 2:
        raise DataError(f"mask {source} must be a single-channel image, got shape {label.shape}")
    cup = label <= 32
    rim = (label >= 96) & (label <= 160)
    bg = label >= 223
    unknown = ~(cup | rim | bg)
    if unknown.mean() > 0.01:
        values = np.unique(label[unknown])[:8].tolist()
        raise DataError(
            f"mask {source} has unexpected values {values}: expected 0 (cup), 128 (rim), 255 (background)"
        )
    disc = cup | rim
    return disc, cup


@dataclass
class FundusSample:
    """A fundus photograph with its optic disc and cup masks.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB.
        disc: ``(H, W)`` bool, the whole optic disc (cup included).
        cup: ``(H, W)`` bool, the optic cup (inside the disc).
        domain: name of the site / camera / synthetic domain.
        sample_id: identifier unique within the domain.
        glaucoma: 1 glaucoma (or suspect), 0 not, None unknown.
        path: where the image was read from, if it came from disk.
        meta: anything else a loader knows (severity, camera, ...).
    """

    image: np.ndarray
    disc: np.ndarray
    cup: np.ndarray
    domain: str
    sample_id: str
    glaucoma: int | None = None
    path: str | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = self.path or f"{self.domain}/{self.sample_id}"
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise DataError(f"{where}: image must be (H, W, 3) uint8, got {self.image.shape} {self.image.dtype}")
        for name in ("disc", "cup"):
            m = getattr(self, name)
            if m.shape != self.image.shape[:2]:
                raise DataError(
                    f"{where}: {name} mask size {m.shape} differs from image size {self.image.shape[:2]}"
                )
            if m.dtype != bool:
                setattr(self, name, m.astype(bool))

    @property
    def vcdr(self) -> float:
        """Vertical cup-to-disc ratio from the masks."""
        return vertical_cdr(self.disc, self.cup)

    def box(self, structure: str = "disc", margin: int = 0) -> np.ndarray:
        """``[x0, y0, x1, y1]`` box around ``"disc"`` or ``"cup"``, grown by ``margin`` pixels."""
        if structure not in ("disc", "cup"):
            raise ValueError(f"structure must be 'disc' or 'cup', got {structure!r}")
        return mask_box(getattr(self, structure), margin)
