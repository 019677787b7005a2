"""The kit's one segmentation loss: binary cross-entropy plus soft Dice, on sigmoid logits.

Every family trains its mask predictors with :func:`dice_bce_loss`: the fine-tuning and PEFT heads
(notebooks 03-04), MedSAM-style decoder tuning (05, one Dice per mask: ``dims=(1, 2, 3)``), the TTA
source U-Net (06), the SSL downstream heads (02) and MFM-DA's stage 2 (09: BCE summed over the disc
and cup channels, ``bce="channel_sum"``, and a ``dice_weight``).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch.nn import functional as F

__all__ = ["BCE_REDUCTIONS", "soft_dice", "dice_bce_loss"]

#: ``"mean"``: BCE averaged over every element; ``"channel_sum"``: averaged per channel, summed over channels.
BCE_REDUCTIONS = ("mean", "channel_sum")


def soft_dice(logits: torch.Tensor, target: torch.Tensor, *, eps: float = 1.0,
              dims: Sequence[int] = (2, 3)) -> torch.Tensor:
    """Soft Dice of ``sigmoid(logits)`` and ``target``, ``(2 * |p t| + eps) / (|p| + |t| + eps)``, summed over ``dims``.

    ``(B, C, H, W)`` each -> ``(B, C)`` with the default ``dims=(2, 3)`` (one Dice per image and channel),
    ``(B,)`` with ``dims=(1, 2, 3)``.
    """
    p = torch.sigmoid(logits)
    inter = (p * target).sum(dim=dims)
    return (2 * inter + eps) / (p.sum(dim=dims) + target.sum(dim=dims) + eps)


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor, *, eps: float = 1.0, dims: Sequence[int] = (2, 3),
                  bce: str = "mean", dice_weight: float = 1.0) -> torch.Tensor:
    """``BCE + dice_weight * mean(1 - soft Dice)`` for logits and soft or {0, 1} targets of one shape -> scalar.

    Args:
        eps: smoothing of the soft Dice (:func:`soft_dice`).
        dims: the dimensions each Dice sums over; the ``1 - Dice`` values are averaged.
        bce: one of :data:`BCE_REDUCTIONS`.
        dice_weight: weight of the Dice term (0: BCE only).
    """
    if bce == "mean":
        loss = F.binary_cross_entropy_with_logits(logits, target)
    elif bce == "channel_sum":
        loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=(0, 2, 3)).sum()
    else:
        raise ValueError(f"dice_bce_loss: bce must be one of {BCE_REDUCTIONS}, got {bce!r}")
    if dice_weight:
        loss = loss + dice_weight * (1 - soft_dice(logits, target, eps=eps, dims=dims)).mean()
    return loss
