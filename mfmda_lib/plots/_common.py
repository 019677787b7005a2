"""Helpers shared by the figure modules: atomic saving, image strips, colours, checks."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import seaborn as sns
from PIL import Image
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..io import atomic_write

DISC_COLOUR = "#F0E442"  # Okabe-Ito yellow
CUP_COLOUR = "#56B4E9"  # Okabe-Ito sky blue
BOX_COLOUR = "white"
TRUTH_STYLE, PRED_STYLE = "solid", "dashed"

#: Pixels whose brightest channel is at most this are "outside the camera's field" (black).
FIELD_THRESHOLD = 20

#: Metric names containing one of these are "lower is better" in :func:`metric_table_heatmap`.
LOWER_IS_BETTER = ("hd95", "err")

_SAVE_FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}

#: colours of a saved PNG (a palette image: the decks' figures must stay under 200 kB each)
PNG_COLOURS = 256


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 120) -> Path:
    """Save ``fig`` atomically (temporary file beside ``path``, then ``os.replace``).

    Args:
        fig: the figure to save.
        path: destination ending in ``.png`` (or ``.pdf`` / ``.svg``); parent folders are created.
        dpi: resolution of raster output. PNGs are written as 256-colour palette images (:data:`PNG_COLOURS`).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    fmt = _SAVE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"save_figure: {path} must end in one of {sorted(_SAVE_FORMATS)}")
    with atomic_write(path, "wb") as handle:
        if fmt != "png":
            fig.savefig(handle, format=fmt, dpi=dpi, bbox_inches="tight")
        else:  # a 256-colour palette PNG: plots lose nothing visible, and committed figures stay small
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
            with Image.open(buffer) as rgba:
                _write_palette_png(rgba, handle, dpi=dpi)
    return path


def save_palette_png(image: Image.Image, path: str | os.PathLike) -> Path:
    """Save a PIL image atomically as a :data:`PNG_COLOURS`-colour palette PNG (what :func:`save_figure` writes)."""
    path = Path(path)
    with atomic_write(path, "wb") as handle:
        _write_palette_png(image, handle)
    return path


def _write_palette_png(image: Image.Image, handle, dpi: int | None = None) -> None:
    small = image.convert("RGB").quantize(colors=PNG_COLOURS, method=Image.Quantize.MEDIANCUT)
    small.save(handle, format="PNG", optimize=True, **({"dpi": (dpi, dpi)} if dpi else {}))


def hstack_images(images: Sequence[np.ndarray], gap: int = 4, fill: int = 255) -> np.ndarray:
    """Join images of one height side by side with a ``gap``-pixel band of grey level ``fill``.

    Args:
        images: ``(H, W_i, 3)`` uint8 images, all of height ``H``.

    Returns:
        ``(H, sum(W_i) + gap * (len(images) - 1), 3)`` uint8.
    """
    images = [np.asarray(im) for im in images]
    if not images:
        raise ValueError("hstack_images: no images given")
    heights = {im.shape[0] for im in images}
    if len(heights) != 1 or any(im.ndim != 3 or im.shape[2] != 3 for im in images):
        raise ValueError(f"hstack_images: need (H, W, 3) images of one height, got {[im.shape for im in images]}")
    band = np.full((images[0].shape[0], gap, 3), fill, dtype=np.uint8)
    parts = [p for im in images for p in (band, im.astype(np.uint8, copy=False))][1:]
    return np.concatenate(parts, axis=1)  # (H, total W, 3)


def _root(ax: Axes) -> Figure:
    """The top-level figure of ``ax``, also when ``ax`` sits in a subfigure."""
    fig = ax.figure
    return fig if isinstance(fig, Figure) else fig.figure  # SubFigure.figure is the root


def _lower_is_better(metric: str) -> bool:
    return any(tag in metric for tag in LOWER_IS_BETTER)


def _finish(fig: Figure, save_path: str | os.PathLike | None) -> Figure:
    """Save the figure if a path was given; return it."""
    if save_path is not None:
        save_figure(fig, save_path)
    return fig


def _domain_colours(domains: Sequence[str]) -> dict[str, tuple]:
    """One colour per distinct domain, in order of first appearance."""
    names = list(dict.fromkeys(domains))
    return dict(zip(names, sns.color_palette("colorblind", n_colors=max(len(names), 1))))


def _bare(ax: Axes) -> None:
    """Hide ticks and spines but keep the axis labels (used as row labels)."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _check_mask(mask: np.ndarray | None, size: tuple[int, int], name: str) -> np.ndarray | None:
    """``None`` stays ``None``; else a bool ``(H, W)`` mask of the image's size."""
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.shape != size:
        raise ValueError(f"overlay: {name} has shape {mask.shape} but the image is {size}")
    return mask.astype(bool, copy=False)
