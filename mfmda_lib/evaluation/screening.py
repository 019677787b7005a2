"""Glaucoma screening from the predicted vertical cup-to-disc ratio: ROC curve and AUC with bootstrap intervals,
sensitivity at a fixed specificity, the usual rule "vCDR >= 0.6 means glaucoma suspect", and the screen's errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from ..data.sample import GLAUCOMA_SUSPECT_VCDR
from .clinical import ClinicalConfig, percentile_interval
from .metrics import auroc, auroc_rows

__all__ = ["ScreeningResult", "sensitivity_at_specificity", "glaucoma_screening", "screening_errors"]


@dataclass
class ScreeningResult:
    """Glaucoma-suspect screening with the predicted vCDR as the score.

    Attributes:
        n_positive, n_negative: eyes whose *true* vCDR is / is not at least the threshold.
        auc, auc_lo, auc_hi: area under the ROC curve and its bootstrap interval (``nan`` with one class).
        fpr, tpr, thresholds: the ROC curve (scikit-learn, every threshold kept).
        target_specificity: the fixed specificity of the next two fields.
        sensitivity_at_specificity: best sensitivity among thresholds with specificity >= target.
        threshold_at_specificity: the predicted-vCDR threshold that achieves it (chosen on these
            same images, so optimistic).
        rule_threshold: the clinical rule's threshold (predicted vCDR >= it means "refer").
        sensitivity, sensitivity_lo, sensitivity_hi: of the rule, with its interval.
        specificity, specificity_lo, specificity_hi: of the rule, with its interval.
        note: why something is undefined, else empty.
    """

    n_positive: int
    n_negative: int
    auc: float
    auc_lo: float
    auc_hi: float
    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    target_specificity: float
    sensitivity_at_specificity: float
    threshold_at_specificity: float
    rule_threshold: float
    sensitivity: float
    sensitivity_lo: float
    sensitivity_hi: float
    specificity: float
    specificity_lo: float
    specificity_hi: float
    note: str = ""

    def summary(self) -> dict:
        """The scalar fields as one flat dict (a table row)."""
        return {k: v for k, v in self.__dict__.items() if not isinstance(v, np.ndarray)}


def sensitivity_at_specificity(fpr: np.ndarray, tpr: np.ndarray, thresholds: np.ndarray,
                               specificity: float) -> tuple[float, float]:
    """Best sensitivity on a ROC curve among points with specificity ``>= specificity``.

    Returns:
        ``(sensitivity, threshold)``; ``(nan, nan)`` for an empty curve.
    """
    fpr, tpr = np.asarray(fpr), np.asarray(tpr)
    ok = (1 - fpr) >= specificity - 1e-12
    if fpr.size == 0 or not ok.any():
        return float("nan"), float("nan")
    best = np.flatnonzero(ok)[np.argmax(tpr[ok])]
    return float(tpr[best]), float(thresholds[best])


def glaucoma_screening(vcdr_true: Sequence[float], vcdr_pred: Sequence[float],
                       config: ClinicalConfig) -> ScreeningResult:
    """Screen for glaucoma suspects with the predicted vCDR; the reference is the true vCDR.

    Args:
        vcdr_true: ``(n,)`` vCDR of the reference masks; label = ``vcdr_true >= config.vcdr_threshold``.
        vcdr_pred: ``(n,)`` vCDR of the predicted masks (the score).
        config: threshold, fixed specificity, resamples.

    Returns:
        A :class:`ScreeningResult`. With a single class (no suspect, or only suspects) AUC and the
        ROC are undefined: they are ``nan`` / empty and ``note`` says why.
    """
    y_true = np.asarray(vcdr_true, dtype=np.float64) >= config.vcdr_threshold  # (n,)
    score = np.asarray(vcdr_pred, dtype=np.float64)  # (n,)
    if y_true.shape != score.shape or y_true.ndim != 1:
        raise ValueError(f"glaucoma_screening: need two (n,) arrays, got {y_true.shape} and {score.shape}")
    n_pos, n_neg = int(y_true.sum()), int((~y_true).sum())
    nan = float("nan")
    rng = np.random.default_rng(config.seed)
    idx = rng.integers(0, y_true.size, size=(config.n_resamples, y_true.size))  # (B, n)
    y_b, s_b = y_true[idx], score[idx]  # (B, n)
    refer_b = s_b >= config.vcdr_threshold  # (B, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        sens_b = (refer_b & y_b).sum(1) / y_b.sum(1)  # (B,), nan without positives
        spec_b = (~refer_b & ~y_b).sum(1) / (~y_b).sum(1)
    refer = score >= config.vcdr_threshold
    sens = float((refer & y_true).sum() / n_pos) if n_pos else nan
    spec = float((~refer & ~y_true).sum() / n_neg) if n_neg else nan
    common = dict(n_positive=n_pos, n_negative=n_neg, target_specificity=config.target_specificity,
                  rule_threshold=config.vcdr_threshold, sensitivity=sens, specificity=spec)
    common.update(zip(("sensitivity_lo", "sensitivity_hi"), percentile_interval(sens_b, config.confidence) if n_pos
                      else (nan, nan)))
    common.update(zip(("specificity_lo", "specificity_hi"), percentile_interval(spec_b, config.confidence) if n_neg
                      else (nan, nan)))
    if n_pos == 0 or n_neg == 0:
        empty = np.array([])
        return ScreeningResult(auc=nan, auc_lo=nan, auc_hi=nan, fpr=empty, tpr=empty, thresholds=empty,
                               sensitivity_at_specificity=nan, threshold_at_specificity=nan,
                               note=f"only one class among {y_true.size} eyes ({n_pos} suspects): "
                                    "ROC and AUC are undefined", **common)
    fpr, tpr, thresholds = roc_curve(y_true, score, drop_intermediate=False)
    sens_at, thr_at = sensitivity_at_specificity(fpr, tpr, thresholds, config.target_specificity)
    auc_lo, auc_hi = percentile_interval(auroc_rows(y_b, s_b), config.confidence)
    return ScreeningResult(auc=auroc(y_true, score), auc_lo=auc_lo, auc_hi=auc_hi, fpr=fpr,
                           tpr=tpr, thresholds=thresholds, sensitivity_at_specificity=sens_at,
                           threshold_at_specificity=thr_at, **common)


def screening_errors(rows: Sequence[dict], threshold: float = GLAUCOMA_SUSPECT_VCDR) -> pd.DataFrame:
    """Eyes whose screening decision from the predicted vCDR differs from the reference's.

    Args:
        rows: per-image dicts with ``domain``, ``sample_id``, ``vcdr_true`` and ``vcdr_pred``.
        threshold: the referral threshold on vCDR.

    Returns:
        One row per wrong decision, columns ``domain``, ``sample_id``, ``vcdr_true``, ``vcdr_pred``
        and ``error`` (``"missed suspect"`` or ``"false referral"``), worst vCDR error first.
    """
    out = []
    for r in rows:
        truth, refer = r["vcdr_true"] >= threshold, r["vcdr_pred"] >= threshold
        if truth != refer:
            out.append({"domain": r["domain"], "sample_id": r["sample_id"], "vcdr_true": r["vcdr_true"],
                        "vcdr_pred": r["vcdr_pred"], "error": "missed suspect" if truth else "false referral"})
    df = pd.DataFrame(out, columns=["domain", "sample_id", "vcdr_true", "vcdr_pred", "error"])
    order = (df["vcdr_pred"] - df["vcdr_true"]).abs().sort_values(ascending=False).index
    return df.loc[order].reset_index(drop=True)
