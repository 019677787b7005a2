"""Scoring: per-image segmentation metrics and the per-domain results table.

Modules, one job each: ``metrics`` (per-image Dice, IoU, HD95, vCDR error; ``auroc``, and ``auroc_rows``
for thousands of AUROCs per bootstrap call), ``tables`` (the per-domain table),
``stats`` (seeds x images bootstrap, paired comparisons), ``comparisons`` (many comparisons, unpaired groups,
AUROC), ``clinical`` (config, bootstrap intervals, subgroups), ``screening`` (glaucoma screening from vCDR),
``calibration`` (reliability, ECE), ``reporting`` (notebook 10's report), ``realism``, ``probe``, ``zero_shot``.
"""
from .metrics import SCORE_KEYS, dice, hd95, iou, segmentation_scores, vcdr_error
from .tables import format_table, per_domain_table

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
