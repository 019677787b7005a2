"""Anatomically plausible masks: the standard post-processing of optic disc and cup segmentation.

A segmentation network labels pixels one by one, so on an unfamiliar photograph its "disc" can be a
handful of blobs (one on the disc, others on bright vessel reflexes or the field's edge) with holes
where vessels cross it. An eye has one optic disc, a solid oval, and one cup inside it. The
REFUGE-challenge pipelines therefore clean every prediction before it is scored or shown; BEAL
(Wang et al., MICCAI 2019, ``utils/Utils.py: postprocessing``) does, per structure: keep the largest
connected component, fill its holes. :func:`clean_disc_cup` does that for the disc, and for the cup
inside the cleaned disc (a cup outside the disc is anatomically impossible; BEAL cleans the cup on
its own).

Departure, named: BEAL also smooths each mask first (five 7 x 7 median filters, then an opening
with a radius-7 diamond, on 512 px ROIs). The kit keeps only the part every pipeline shares (the
largest component, holes filled), which changes no pixel of a mask that is already one solid blob.

The pipeline applies it to the masks it writes for a user (``mfmda run --target-folder``: ROI masks,
full-size masks, overlays); the benchmark tables score the raw predictions.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["clean_disc_cup", "largest_component", "count_components"]


def count_components(mask: np.ndarray) -> int:
    """Connected components (8-connected) of a ``(H, W)`` bool mask."""
    return int(ndimage.label(np.asarray(mask, bool), structure=np.ones((3, 3)))[1])


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a ``(H, W)`` bool mask, its holes filled; ``(H, W)`` bool.

    An empty mask stays empty.
    """
    mask = np.asarray(mask, bool)
    if mask.ndim != 2:
        raise ValueError(f"largest_component expects a (H, W) mask, got shape {mask.shape}")
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    if n == 0:
        return np.zeros_like(mask)
    sizes = np.bincount(labels.ravel())[1:]  # (n,) pixels per component
    return ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))


def clean_disc_cup(disc: np.ndarray, cup: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One solid disc, and one solid cup inside it.

    Args:
        disc, cup: ``(H, W)`` bool masks as predicted (the cup need not lie inside the disc).

    Returns:
        ``(disc, cup)``, ``(H, W)`` bool: the disc's largest component with its holes filled; the
        largest component of the predicted cup within that disc, holes filled. Empty stays empty.
    """
    disc, cup = np.asarray(disc, bool), np.asarray(cup, bool)
    if disc.shape != cup.shape:
        raise ValueError(f"clean_disc_cup: disc {disc.shape} and cup {cup.shape} masks differ in shape")
    disc = largest_component(disc)
    return disc, largest_component(cup & disc)
