"""Segmentation metrics for optic disc and cup (the per-domain results table is in :mod:`.tables`).

Every method in the kit is scored the same way: :func:`segmentation_scores` turns one predicted
disc/cup pair into a flat dict of numbers, a notebook collects one dict per image (adding
``"domain"`` and, when several methods are compared, ``"method"``), and
:func:`per_domain_table` / :func:`format_table` turn the list into the table that goes on a
slide.

Edge cases (a model that predicts nothing is a real outcome, not a crash):

============================  ========  ==============  =======================================
case                          Dice/IoU  HD95            why
============================  ========  ==============  =======================================
both masks empty              1.0       0.0             nothing to find and nothing found: perfect
exactly one mask empty        0.0       the diagonal    no surface to measure to: the largest
                                                        distance the image allows (a penalty)
============================  ========  ==============  =======================================

The penalty keeps an empty prediction from *improving* a mean HD95: if empty predictions were
left out (``nan``), a method that predicts no cup would look better than one that predicts a poor
cup. :func:`segmentation_scores` also records ``disc_empty`` / ``cup_empty`` per image, and
:func:`per_domain_table` / :func:`format_table` put the count of empty predictions beside each
structure's means.
"""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import torch

from ..data.sample import FundusSample, vertical_cdr

__all__ = ["dice", "iou", "hd95", "vcdr_error", "auroc", "auroc_rows", "segmentation_scores", "SCORE_KEYS", "hd95_penalty"]

#: Keys of the dict returned by :func:`segmentation_scores`, in order.
SCORE_KEYS = (
    "disc_dice", "disc_iou", "disc_hd95",
    "cup_dice", "cup_iou", "cup_hd95",
    "vcdr_true", "vcdr_pred", "vcdr_abs_err",
    "disc_empty", "cup_empty",
)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def _as_mask_pair(pred: np.ndarray, target: np.ndarray, fn: str) -> tuple[np.ndarray, np.ndarray]:
    """Check two masks are 2-D with one shape and return them as bool arrays."""
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.ndim != 2 or target.ndim != 2:
        raise ValueError(f"{fn}: expected (H, W) masks, got shapes {pred.shape} and {target.shape}")
    if pred.shape != target.shape:
        raise ValueError(
            f"{fn}: prediction {pred.shape} and target {target.shape} differ in size; "
            "resize the prediction to the target's size first"
        )
    return pred.astype(bool, copy=False), target.astype(bool, copy=False)


# ---------------------------------------------------------------------------------------------
# overlap and distance metrics
# ---------------------------------------------------------------------------------------------

def dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice coefficient ``2|P ∩ T| / (|P| + |T|)`` of two masks.

    Same value as ``monai.metrics.compute_dice(..., ignore_empty=False)``.

    Args:
        pred: ``(H, W)`` bool (or 0/1) predicted mask.
        target: ``(H, W)`` bool (or 0/1) reference mask.

    Returns:
        Dice in ``[0, 1]``; 1.0 when both masks are empty, 0.0 when exactly one is.
    """
    pred, target = _as_mask_pair(pred, target, "dice")
    total = int(pred.sum()) + int(target.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, target).sum()) / total


def iou(pred: np.ndarray, target: np.ndarray) -> float:
    """Intersection over union (Jaccard index) ``|P ∩ T| / |P ∪ T|`` of two masks.

    Args:
        pred: ``(H, W)`` bool (or 0/1) predicted mask.
        target: ``(H, W)`` bool (or 0/1) reference mask.

    Returns:
        IoU in ``[0, 1]``; 1.0 when both masks are empty, 0.0 when exactly one is.
    """
    pred, target = _as_mask_pair(pred, target, "iou")
    union = int(np.logical_or(pred, target).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(pred, target).sum()) / union


def hd95_penalty(shape: Sequence[int], spacing: float | Sequence[float] = 1.0) -> float:
    """HD95 charged when exactly one mask is empty: the image diagonal, ``sqrt((H sy)^2 + (W sx)^2)``.

    No two pixels of the image are further apart, so an empty prediction never scores better than
    any real one.
    """
    scale = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (2,))
    return float(np.hypot(shape[0] * scale[0], shape[1] * scale[1]))


def hd95(pred: np.ndarray, target: np.ndarray, spacing: float | Sequence[float] = 1.0) -> float:
    """95th-percentile symmetric Hausdorff distance between the two mask boundaries.

    The definition of ``monai.metrics.compute_hausdorff_distance(..., percentile=95)``:

    1. boundary pixels of each mask = the mask minus its binary erosion (4-connected);
    2. for every boundary pixel of ``pred`` the Euclidean distance to the nearest boundary
       pixel of ``target``, and the other way round;
    3. the 95th percentile (linear interpolation) of each of the two sets, and the larger one.

    Computed by MONAI (imported on first use: the import takes a few seconds); the edge cases
    below are handled here, before MONAI sees the masks.

    Args:
        pred: ``(H, W)`` bool (or 0/1) predicted mask.
        target: ``(H, W)`` bool (or 0/1) reference mask.
        spacing: pixel size, one number or ``(row, col)``; 1.0 gives the distance in pixels.

    Returns:
        HD95 in units of ``spacing``; 0.0 when both masks are empty; :func:`hd95_penalty` (the
        image diagonal) when exactly one is empty (there is no boundary to measure to).
    """
    pred, target = _as_mask_pair(pred, target, "hd95")
    scale = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (2,))
    if not np.all(scale > 0):
        raise ValueError(f"hd95: spacing must be positive, got {spacing!r}")
    has_pred, has_target = bool(pred.any()), bool(target.any())
    if not has_pred and not has_target:
        return 0.0
    if has_pred != has_target:
        return hd95_penalty(pred.shape, scale)
    from monai.metrics import compute_hausdorff_distance  # lazy: MONAI's import costs seconds

    y_pred = torch.from_numpy(pred)[None, None]  # (1, 1, H, W)
    y = torch.from_numpy(target)[None, None]  # (1, 1, H, W)
    with warnings.catch_warnings():  # MONAI 1.5-1.6 warns about its own internal argument
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        distance = compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95,
                                              spacing=[float(v) for v in scale])  # (1, 1)
    return float(distance.item())


# ---------------------------------------------------------------------------------------------
# clinical measure and per-sample scores
# ---------------------------------------------------------------------------------------------

def vcdr_error(pred_disc: np.ndarray, pred_cup: np.ndarray,
               true_disc: np.ndarray, true_cup: np.ndarray) -> float:
    """Absolute error of the vertical cup-to-disc ratio, ``|vCDR(pred) - vCDR(true)|``.

    Uses :func:`mfmda_lib.data.sample.vertical_cdr`, which gives 0.0 for an empty disc, so a
    model that predicts no disc is charged the whole true vCDR.

    Args:
        pred_disc, pred_cup: ``(H, W)`` bool predicted masks.
        true_disc, true_cup: ``(H, W)`` bool reference masks.

    Returns:
        The absolute difference, a float in ``[0, 1]`` for masks whose cup lies inside the disc.
    """
    pred_disc, true_disc = _as_mask_pair(pred_disc, true_disc, "vcdr_error")
    pred_cup, true_cup = _as_mask_pair(pred_cup, true_cup, "vcdr_error")
    return abs(vertical_cdr(pred_disc, pred_cup) - vertical_cdr(true_disc, true_cup))


def auroc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels``; ``nan`` when empty or only one class is present."""
    labels = np.asarray(labels)
    if len(labels) == 0 or labels.min() == labels.max():
        return math.nan
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, np.asarray(scores, dtype=float)))


def auroc_rows(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUROC of each row of ``scores (B, n)`` for binary ``labels`` ``(n,)`` or ``(B, n)``: ``(B,)``, ``nan`` for a
    row with one class.

    The Mann-Whitney rank form (average ranks for ties, as :func:`sklearn.metrics.roc_auc_score`), for the
    bootstraps that need thousands of AUROCs at once (one vectorised call; sklearn's takes one row per call).
    A single AUROC is :func:`auroc`.
    """
    from scipy.stats import rankdata

    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    labels = np.broadcast_to(np.asarray(labels).astype(bool), scores.shape)
    ranks = rankdata(scores, axis=1)  # (B, n), average ranks for ties
    n_pos = labels.sum(axis=1)
    n_neg = labels.shape[1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (np.where(labels, ranks, 0.0).sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def segmentation_scores(pred_disc: np.ndarray, pred_cup: np.ndarray, sample: FundusSample) -> dict:
    """Every per-image number the kit reports, for one predicted disc/cup pair.

    Args:
        pred_disc: ``(H, W)`` bool predicted disc, at the size of ``sample.image``.
        pred_cup: ``(H, W)`` bool predicted cup, same size.
        sample: the :class:`FundusSample` holding the reference masks.

    Returns:
        ``{key: value}`` with the keys of :data:`SCORE_KEYS`: Dice, IoU and HD95 (pixels; the image
        diagonal for an empty mask) for disc and cup, the true and predicted vCDR, their absolute
        difference, and ``disc_empty`` / ``cup_empty`` (bool: the predicted mask is empty).
    """
    size = sample.disc.shape
    for name, mask in (("pred_disc", pred_disc), ("pred_cup", pred_cup)):
        if np.shape(mask) != size:
            raise ValueError(
                f"segmentation_scores: {name} has shape {np.shape(mask)} but sample "
                f"{sample.domain}/{sample.sample_id} is {size}; resize predictions to the sample's size"
            )
    pred_disc, pred_cup = np.asarray(pred_disc, bool), np.asarray(pred_cup, bool)
    vcdr_true = vertical_cdr(sample.disc, sample.cup)
    vcdr_pred = vertical_cdr(pred_disc, pred_cup)
    return {
        "disc_dice": dice(pred_disc, sample.disc),
        "disc_iou": iou(pred_disc, sample.disc),
        "disc_hd95": hd95(pred_disc, sample.disc),
        "cup_dice": dice(pred_cup, sample.cup),
        "cup_iou": iou(pred_cup, sample.cup),
        "cup_hd95": hd95(pred_cup, sample.cup),
        "vcdr_true": vcdr_true,
        "vcdr_pred": vcdr_pred,
        "vcdr_abs_err": abs(vcdr_pred - vcdr_true),
        "disc_empty": not pred_disc.any(),
        "cup_empty": not pred_cup.any(),
    }


