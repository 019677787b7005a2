"""An overlay a clinician can look at: the photograph with the predicted disc and cup outlined, and the ROI enlarged.

Drawn with numpy and PIL (no matplotlib), so the pipeline writes one per image quickly, whatever
the photograph's size: the left panel is the whole photograph scaled to at most ``max_side``
pixels, with the ROI box; the right panel is the ROI crop at the same height, with the outlines.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from .box import RoiBox

__all__ = ["overlay_image", "DISC_COLOUR", "CUP_COLOUR", "BOX_COLOUR"]

DISC_COLOUR = (40, 230, 90)
CUP_COLOUR = (70, 170, 255)
BOX_COLOUR = (255, 220, 0)


def _resize(array: np.ndarray, size: tuple[int, int], mask: bool = False) -> np.ndarray:
    if mask:
        soft = Image.fromarray(array.astype(np.float32)).resize(size, Image.BILINEAR)
        return np.asarray(soft) >= 0.5
    return np.asarray(Image.fromarray(array).resize(size, Image.BILINEAR))


def _outline(canvas: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], width: int) -> None:
    """Paint the boundary of ``mask`` ``(H, W)`` onto ``canvas`` ``(H, W, 3)``, ``width`` pixels thick, in place."""
    if not mask.any():
        return
    edge = mask & ~ndimage.binary_erosion(mask)
    if width > 1:
        edge = ndimage.binary_dilation(edge, iterations=width - 1)
    canvas[edge] = colour


def overlay_image(image: np.ndarray, disc: np.ndarray | None, cup: np.ndarray | None, box: RoiBox | None = None, *,
                  max_side: int = 1024, note: str = "") -> np.ndarray:
    """The photograph with disc and cup outlines (and the ROI, enlarged, beside it).

    Args:
        image: ``(H, W, 3)`` uint8, the full photograph.
        disc, cup: ``(H, W)`` bool masks on the photograph, or ``None`` (no mask: e.g. no disc found).
        box: the ROI the masks were predicted on; draws its outline and an enlarged panel.
        max_side: longer side of the photograph's panel, pixels.
        note: a line of text written in the top-left corner (e.g. the file name, or why there is no mask).

    Returns:
        ``(h, w, 3)`` uint8.
    """
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    size = (max(int(round(w * scale)), 1), max(int(round(h * scale)), 1))
    panel = _resize(image, size).copy() if scale < 1 else image.copy()
    thick = max(2, int(round(max(size) / 400)))
    for mask, colour in ((disc, DISC_COLOUR), (cup, CUP_COLOUR)):
        if mask is not None:
            _outline(panel, _resize(mask, size, mask=True) if scale < 1 else mask, colour, thick)
    panels = [panel]
    if box is not None:
        x0, y0 = box.left * scale, box.top * scale
        pil = Image.fromarray(panel)
        ImageDraw.Draw(pil).rectangle([x0, y0, x0 + box.side * scale, y0 + box.side * scale], outline=BOX_COLOUR,
                                      width=thick)
        panels[0] = np.asarray(pil)
        side = size[1]
        zoom = box.crop(image, side).copy()
        for mask, colour in ((disc, DISC_COLOUR), (cup, CUP_COLOUR)):
            if mask is not None:
                _outline(zoom, box.crop_mask(mask, side), colour, thick)
        panels.append(zoom)
    out = np.concatenate(panels, axis=1) if len(panels) > 1 else panels[0]
    if note:
        pil = Image.fromarray(np.ascontiguousarray(out))
        ImageDraw.Draw(pil).text((8, 6), note, fill=(255, 255, 255))
        out = np.asarray(pil)
    return np.ascontiguousarray(out)
