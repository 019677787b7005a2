"""The kit's ROI convention: a square, disc-centred crop, and the way back to the full photograph.

Every public fundus benchmark the kit loads (the ROI layouts of REFUGE, RIGA+, Drishti-GS and
RIM-ONE) and MFM-DA's own preprocessing work on square crops centred on the optic disc. The kit's
models were trained on the synthetic ROI benchmark, whose discs are 50-75 px wide in 256 px
crops (a quarter of the side, give or take). So the kit crops a whole-fundus photograph to a square
of side :data:`ROI_SIDE_PER_DISC` = 4 disc diameters around the disc: resized to 256 px, the disc
is 64 px wide, in the middle of that range, whatever the photo's resolution.

A :class:`RoiBox` remembers where a crop came from; :meth:`RoiBox.paste` maps a mask predicted on
the crop back onto the full photograph (same ``H x W``). Parts of a box outside the photograph
(a disc near its edge) are padded with black, like the background outside the field of view.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

__all__ = ["ROI_SIDE_PER_DISC", "RoiBox", "roi_box", "centre_box"]

#: Side of the ROI crop in disc diameters (the disc fills a quarter of the crop's width).
ROI_SIDE_PER_DISC = 4.0


@dataclass(frozen=True)
class RoiBox:
    """A square region of a photograph, in its pixels; it may reach past the photograph's edges.

    Attributes:
        top, left: the box's first row and column (may be negative).
        side: its side in pixels.
        height, width: the photograph's size.
    """

    top: int
    left: int
    side: int
    height: int
    width: int

    def __post_init__(self) -> None:
        if self.side < 1 or self.height < 1 or self.width < 1:
            raise ValueError(f"RoiBox needs a positive side and image size, got {self}")

    def as_dict(self) -> dict:
        return asdict(self)

    def _window(self) -> tuple[slice, slice, slice, slice]:
        """(rows, cols) of the photograph inside the box, and where they land in the box."""
        y0, x0 = max(self.top, 0), max(self.left, 0)
        y1, x1 = min(self.top + self.side, self.height), min(self.left + self.side, self.width)
        if y1 <= y0 or x1 <= x0:
            raise ValueError(f"RoiBox {self} lies entirely outside the {self.height} x {self.width} photograph")
        return (slice(y0, y1), slice(x0, x1), slice(y0 - self.top, y1 - self.top), slice(x0 - self.left, x1 - self.left))

    def _cut(self, array: np.ndarray) -> np.ndarray:
        if array.shape[:2] != (self.height, self.width):
            raise ValueError(f"RoiBox for a {self.height} x {self.width} photograph got an array of shape {array.shape}")
        rows, cols, in_rows, in_cols = self._window()
        out = np.zeros((self.side, self.side) + array.shape[2:], array.dtype)
        out[in_rows, in_cols] = array[rows, cols]
        return out

    def crop(self, image: np.ndarray, size: int) -> np.ndarray:
        """The box's pixels of ``image`` ``(H, W, 3)`` uint8, resized (bicubic) to ``(size, size, 3)``."""
        patch = self._cut(image)
        if self.side != size:
            patch = np.array(Image.fromarray(patch).resize((size, size), Image.BICUBIC))  # writable
        return patch

    def crop_mask(self, mask: np.ndarray, size: int) -> np.ndarray:
        """The box's part of a ``(H, W)`` bool mask, resized to ``(size, size)`` (area-weighted, >= 0.5)."""
        return _resize_mask(self._cut(mask.astype(bool)), size)

    def paste(self, mask: np.ndarray) -> np.ndarray:
        """Map a ``(S, S)`` mask (bool, or probabilities in [0, 1]) predicted on the crop onto the photograph.

        Returns:
            ``(H, W)`` bool, the photograph's size; nothing outside the box.
        """
        mask = np.asarray(mask)
        if mask.ndim != 2 or mask.shape[0] != mask.shape[1]:
            raise ValueError(f"RoiBox.paste expects a square (S, S) mask, got shape {mask.shape}")
        full = np.zeros((self.height, self.width), bool)
        rows, cols, in_rows, in_cols = self._window()
        full[rows, cols] = _resize_mask(mask, self.side)[in_rows, in_cols]
        return full


def _resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Resize a square bool / probability mask to ``(size, size)`` bool (bilinear on [0, 1], threshold 0.5)."""
    if mask.shape[0] == size:
        return mask >= 0.5 if mask.dtype != bool else mask.copy()
    soft = Image.fromarray(mask.astype(np.float32))
    return np.asarray(soft.resize((size, size), Image.BILINEAR)) >= 0.5


def roi_box(shape: tuple[int, ...], center: tuple[float, float], diameter: float,
            side_per_disc: float = ROI_SIDE_PER_DISC) -> RoiBox:
    """The kit's ROI around a disc: a square of ``side_per_disc`` disc diameters centred on it.

    Args:
        shape: the photograph's ``(H, W, ...)``.
        center: the disc centre ``(x, y)`` in pixels (pixel centres at ``i + 0.5``).
        diameter: the disc diameter in pixels.
    """
    if not diameter > 0:
        raise ValueError(f"roi_box: the disc diameter must be positive, got {diameter}")
    side = max(int(round(side_per_disc * diameter)), 8)
    return RoiBox(top=int(round(center[1] - side / 2)), left=int(round(center[0] - side / 2)), side=side,
                  height=int(shape[0]), width=int(shape[1]))


def centre_box(shape: tuple[int, ...]) -> RoiBox:
    """The largest centred square of a photograph (how an image that is already an ROI is read)."""
    h, w = int(shape[0]), int(shape[1])
    s = min(h, w)
    return RoiBox(top=(h - s) // 2, left=(w - s) // 2, side=s, height=h, width=w)
