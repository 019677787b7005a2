"""Scoring: per-image segmentation metrics and the per-domain results table."""
from .metrics import (
    SCORE_KEYS,
    dice,
    format_table,
    hd95,
    iou,
    per_domain_table,
    segmentation_scores,
    vcdr_error,
)

__all__ = [
    "dice",
    "iou",
    "hd95",
    "vcdr_error",
    "segmentation_scores",
    "SCORE_KEYS",
    "per_domain_table",
    "format_table",
]
