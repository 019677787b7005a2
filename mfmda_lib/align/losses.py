"""Losses of MFM-DA stage 2: channel-spatial feature alignment, and BCE (+ Dice) for disc and cup.

Channel-spatial alignment (MFM-DA's hierarchical alignment). For pyramid level ``k`` with maps
``F_k(x_S)`` and ``F_k(x_{S->T})`` of shape ``(B, C, H, W)``:

    L_align^k = 1 - mean_{b, h, w} cos_c( F_k(x_S)[b, :, h, w], F_k(x_{S->T})[b, :, h, w] )
    L_align   = mean_k L_align^k

The cosine runs over channels at each position (so it compares *what* the model sees *where*),
and the mean over positions keeps the spatial layout: a translation that moved the disc would
not align. ``L_align`` is 0 for identical features and at most 2.

Segmentation: MFM-DA trains with ``BCE(disc) + BCE(cup)``; the kit adds a soft Dice term per
channel (``dice_weight``, default 1), as most fundus segmenters do, because with a handful of
images and epochs BCE alone under-segments the small cup. Set ``dice_weight=0`` for the paper's loss.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch.nn import functional as F

from ..losses import dice_bce_loss

__all__ = ["channel_spatial_alignment", "segmentation_loss"]


def channel_spatial_alignment(features_s: Sequence[torch.Tensor], features_t: Sequence[torch.Tensor],
                              eps: float = 1e-8) -> torch.Tensor:
    """``L_align``: one minus the channel cosine, averaged over batch and positions, then over levels.

    Args:
        features_s: pyramid of the source images, ``[(B, C_k, H_k, W_k)]``.
        features_t: pyramid of their translations, same shapes.
        eps: guards the cosine against zero vectors.

    Returns:
        A scalar in ``[0, 2]``; exactly 0 for identical (non-zero) features.
    """
    if len(features_s) != len(features_t) or not features_s:
        raise ValueError(f"channel_spatial_alignment: got {len(features_s)} and {len(features_t)} levels; "
                         "pass the same non-empty list of levels for both")
    losses = []
    for k, (fs, ft) in enumerate(zip(features_s, features_t)):
        if fs.shape != ft.shape or fs.ndim != 4:
            raise ValueError(f"channel_spatial_alignment: level {k} shapes {tuple(fs.shape)} and {tuple(ft.shape)} "
                             "must be equal (B, C, H, W)")
        cos = F.cosine_similarity(fs, ft, dim=1, eps=eps)  # (B, H, W)
        losses.append(1 - cos.mean())
    return torch.stack(losses).mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.0) -> torch.Tensor:
    """``BCE(disc) + BCE(cup)`` (+ ``dice_weight`` x soft Dice of both) for ``(B, 2, H, W)`` logits and masks."""
    if logits.shape != target.shape or logits.shape[1] != 2:
        raise ValueError(f"segmentation_loss: logits {tuple(logits.shape)} and target {tuple(target.shape)} "
                         "must both be (B, 2, H, W) (disc, cup)")
    return dice_bce_loss(logits, target, bce="channel_sum", dice_weight=dice_weight)
