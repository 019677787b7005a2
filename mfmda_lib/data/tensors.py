"""Samples as tensors for the kit's small from-scratch models (notebooks 02 and 06): one fixed normalisation.

The same ``PIXEL_MEAN`` / ``PIXEL_STD`` for every domain: no per-image standardisation, which would hide
the colour shift that test-time methods are meant to handle. (The diffusion models use their own
``[-1, 1]`` scaling, :func:`mfmda_lib.diffusion.ddpm.to_signed_tensor`; LiteMedSAM its own, in
:mod:`mfmda_lib.models.base`.)
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from .sample import FundusSample

__all__ = ["PIXEL_MEAN", "PIXEL_STD", "normalised_tensors"]

#: Fixed input normalisation of the small models: ``x = (pixels / 255 - PIXEL_MEAN) / PIXEL_STD``.
PIXEL_MEAN, PIXEL_STD = 0.5, 0.25


def normalised_tensors(samples: Sequence[FundusSample], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and masks resized to ``size``: ``x (N, 3, size, size)`` normalised, ``y (N, 2, size, size)`` in [0, 1].

    ``y`` holds the area-averaged disc and cup masks (soft at the edges).
    """
    if not samples:
        raise ValueError("normalised_tensors: no samples")
    images = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).float() / 255  # (N, 3, H, W)
    masks = torch.from_numpy(np.stack([np.stack([s.disc, s.cup]) for s in samples])).float()  # (N, 2, H, W)
    x = F.interpolate(images, size=(size, size), mode="area")
    y = F.interpolate(masks, size=(size, size), mode="area")
    return (x - PIXEL_MEAN) / PIXEL_STD, y
