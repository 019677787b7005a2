"""Evaluation as a clinician needs it: intervals, glaucoma screening, calibration and subgroups.

A mean Dice per domain says which model is better on average. A clinic asks four more questions:

1. How sure are we of that number? Percentile **bootstrap confidence intervals** over images.
2. Does the segmentation support the decision it is made for? **Glaucoma screening** from the
   predicted vertical cup-to-disc ratio (vCDR): ROC curve, AUC, sensitivity at a fixed specificity,
   and sensitivity / specificity of the usual rule "vCDR >= 0.6 means glaucoma suspect".
3. Does the model know when it is unsure? Pixel-level **calibration** of the mask decoder's
   sigmoid probabilities: reliability table and expected calibration error (ECE).
4. Does it fail more for some patients? **Subgroups**, here small vs. large optic discs.

Sections: config -> bootstrap -> screening -> calibration -> subgroups and failures.
What the notebook reports from these (results of earlier notebooks, the checklist) is in
:mod:`mfmda_lib.evaluation.reporting`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score, roc_curve

from ..data.domains import TARGET_DOMAINS
from ..data.sample import GLAUCOMA_SUSPECT_VCDR, FundusSample
from ..models import EmbeddingCache, PromptableSegmenter, segment

__all__ = [
    "ClinicalConfig", "bootstrap_ci", "ci_table", "format_ci",
    "ScreeningResult", "glaucoma_screening", "sensitivity_at_specificity", "screening_errors",
    "zero_shot_probabilities", "calibration_pixels", "reliability_table", "expected_calibration_error",
    "calibration_by_domain", "SubgroupSplit", "disc_size_groups", "POOLED_TARGETS",
]

#: Label of the row that pools every target domain's images in :func:`ci_table`.
POOLED_TARGETS = "all targets"


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClinicalConfig:
    """Settings of the clinical evaluation. Sizes (resamples) come from the profile.

    Attributes:
        n_resamples: bootstrap resamples behind each interval (``profile.bootstrap_resamples``).
        confidence: two-sided level of every interval, e.g. 0.95.
        vcdr_threshold: vCDR at or above which an eye is glaucoma suspect, both for the reference
            label (true vCDR) and for the screening rule (predicted vCDR).
        target_specificity: the specificity at which sensitivity is reported (a screening programme
            fixes it to bound the number of healthy people it refers).
        calibration_bins: equal-width probability bins of the reliability table.
        calibration_margin: pixels around each prompt box whose probabilities are scored for
            calibration (outside the box the decoder is trivially sure of background).
        seed: seed of every bootstrap.
    """

    n_resamples: int = 1000
    confidence: float = 0.95
    vcdr_threshold: float = GLAUCOMA_SUSPECT_VCDR
    target_specificity: float = 0.9
    calibration_bins: int = 10
    calibration_margin: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_resamples < 10:
            raise ValueError(f"n_resamples must be >= 10 for a percentile interval, got {self.n_resamples}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), e.g. 0.95, got {self.confidence}")
        if not 0 < self.vcdr_threshold < 1:
            raise ValueError(f"vcdr_threshold must be in (0, 1), got {self.vcdr_threshold}")
        if not 0 < self.target_specificity < 1:
            raise ValueError(f"target_specificity must be in (0, 1), got {self.target_specificity}")
        if self.calibration_bins < 2:
            raise ValueError(f"calibration_bins must be >= 2, got {self.calibration_bins}")
        if self.calibration_margin < 0:
            raise ValueError(f"calibration_margin must be >= 0 pixels, got {self.calibration_margin}")

    @classmethod
    def from_profile(cls, profile, **changes) -> "ClinicalConfig":
        """The config with the profile's resamples and seed (``changes`` override any field)."""
        return cls(**{"n_resamples": profile.bootstrap_resamples, "seed": profile.seed, **changes})

    @property
    def level(self) -> str:
        """The interval's level as text, e.g. ``"95%"``."""
        return f"{100 * self.confidence:g}%"


# ---------------------------------------------------------------------------------------------
# bootstrap
# ---------------------------------------------------------------------------------------------

def _percentiles(stats: np.ndarray, confidence: float) -> tuple[float, float]:
    """Lower and upper percentile of the finite bootstrap statistics."""
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return float("nan"), float("nan")
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])
    return float(lo), float(hi)


def bootstrap_ci(values: Sequence[float], statistic: Callable = np.mean, *, n_resamples: int = 1000,
                 confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Percentile bootstrap confidence interval of a statistic of one sample of images.

    ``nan`` values are dropped first.

    Args:
        values: ``(n,)`` one number per image.
        statistic: a reducer taking ``axis=`` (``np.mean``, ``np.median``); applied to ``(B, n)``.
        n_resamples: ``B``, resamples drawn with replacement.
        confidence: two-sided level.
        seed: seed of the resampling.

    Returns:
        ``(estimate, low, high)``; ``low == high == estimate`` for one value, all ``nan`` for none.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    estimate = float(statistic(x))
    if x.size == 1:
        return estimate, estimate, estimate
    idx = np.random.default_rng(seed).integers(0, x.size, size=(n_resamples, x.size))  # (B, n)
    lo, hi = _percentiles(np.asarray(statistic(x[idx], axis=1)), confidence)  # stats: (B,)
    return estimate, lo, hi


def ci_table(rows: Sequence[dict], metrics: Sequence[str], config: ClinicalConfig, *, by: str = "domain",
             order: Sequence[str] | None = None, pooled: Sequence[str] | None = TARGET_DOMAINS,
             pooled_label: str = POOLED_TARGETS) -> pd.DataFrame:
    """Mean of each metric with its bootstrap interval, per group, plus a pooled row.

    Args:
        rows: one dict per image with the key ``by`` and the ``metrics``.
        metrics: keys to summarise, e.g. ``("disc_dice", "cup_dice", "vcdr_abs_err")``.
        config: resamples, level and seed.
        by: the grouping key.
        order: order of the group rows (default: first appearance); groups not listed are left out.
        pooled: groups whose images are pooled into one extra row (default: the target domains);
            ``None`` for no pooled row. Groups absent from ``rows`` are ignored.
        pooled_label: index label of the pooled row.

    Returns:
        Index ``by``; columns ``n`` and, per metric ``m``, ``m``, ``m_lo``, ``m_hi`` (floats).
    """
    if not rows:
        raise ValueError("ci_table: no rows given")
    missing = [m for m in (by, *metrics) if m not in rows[0]]
    if missing:
        raise ValueError(f"ci_table: rows have no {missing}; available: {sorted(rows[0])}")
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row[by], []).append(row)
    keys = list(order) if order is not None else list(groups)
    selected = [(k, groups[k]) for k in keys if k in groups]
    if pooled is not None:
        pool = [r for k in pooled if k in groups for r in groups[k]]
        if pool and len({r[by] for r in pool}) > 1:
            selected.append((pooled_label, pool))
    out = []
    for key, members in selected:
        entry = {by: key, "n": len(members)}
        for m in metrics:
            est, lo, hi = bootstrap_ci([r[m] for r in members], n_resamples=config.n_resamples,
                                       confidence=config.confidence, seed=config.seed)
            entry.update({m: est, f"{m}_lo": lo, f"{m}_hi": hi})
        out.append(entry)
    return pd.DataFrame(out).set_index(by)


def format_ci(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """A printable copy of a :func:`ci_table`: one ``"mean [lo, hi]"`` string column per metric."""
    metrics = [c for c in table.columns if f"{c}_lo" in table.columns and f"{c}_hi" in table.columns]
    if not metrics:
        raise ValueError(f"format_ci: no metric with _lo/_hi columns in {list(table.columns)}")
    out = pd.DataFrame(index=table.index)
    if "n" in table.columns:
        out["n"] = table["n"].astype(int)
    for m in metrics:
        out[m] = [f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]" if np.isfinite(v) else "n/a"
                  for v, lo, hi in zip(table[m], table[f"{m}_lo"], table[f"{m}_hi"])]
    return out


# ---------------------------------------------------------------------------------------------
# glaucoma screening from the predicted vCDR
# ---------------------------------------------------------------------------------------------

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


def _auc_per_row(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC AUC of each row by the Mann-Whitney rank formula (ties count one half).

    Args:
        labels: ``(B, n)`` bool.
        scores: ``(B, n)`` float.

    Returns:
        ``(B,)``; ``nan`` for rows with a single class.
    """
    ranks = rankdata(scores, axis=1)  # (B, n), average ranks for ties
    n_pos = labels.sum(axis=1)
    n_neg = labels.shape[1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (np.where(labels, ranks, 0.0).sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


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
    common.update(zip(("sensitivity_lo", "sensitivity_hi"), _percentiles(sens_b, config.confidence) if n_pos
                      else (nan, nan)))
    common.update(zip(("specificity_lo", "specificity_hi"), _percentiles(spec_b, config.confidence) if n_neg
                      else (nan, nan)))
    if n_pos == 0 or n_neg == 0:
        empty = np.array([])
        return ScreeningResult(auc=nan, auc_lo=nan, auc_hi=nan, fpr=empty, tpr=empty, thresholds=empty,
                               sensitivity_at_specificity=nan, threshold_at_specificity=nan,
                               note=f"only one class among {y_true.size} eyes ({n_pos} suspects): "
                                    "ROC and AUC are undefined", **common)
    fpr, tpr, thresholds = roc_curve(y_true, score, drop_intermediate=False)
    sens_at, thr_at = sensitivity_at_specificity(fpr, tpr, thresholds, config.target_specificity)
    auc_lo, auc_hi = _percentiles(_auc_per_row(y_b, s_b), config.confidence)
    return ScreeningResult(auc=float(roc_auc_score(y_true, score)), auc_lo=auc_lo, auc_hi=auc_hi, fpr=fpr,
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


# ---------------------------------------------------------------------------------------------
# calibration of the mask decoder's probabilities
# ---------------------------------------------------------------------------------------------

def zero_shot_probabilities(model: PromptableSegmenter, samples: Sequence[FundusSample],
                            cache: EmbeddingCache | None = None, *, box_margin: int = 0, batch_size: int = 4,
                            progress: bool = False) -> np.ndarray:
    """Sigmoid probabilities of the disc and cup prompts, as in the zero-shot evaluation.

    Same boxes as :func:`mfmda_lib.evaluation.zero_shot.zero_shot_segmentation` (its masks are
    these probabilities ``> 0.5``); embeddings come from ``cache``, so only the decoder runs.

    Returns:
        ``(N, 2, H, W)`` float32: channel 0 disc, channel 1 cup (all images one size).
    """
    boxes = np.stack([np.stack([s.box("disc", box_margin), s.box("cup", box_margin)]) for s in samples])  # (N, 2, 4)
    probs = segment(model, [s.image for s in samples], boxes, cache=cache, batch_size=batch_size,
                    progress=progress)
    if isinstance(probs, list):
        raise ValueError("zero_shot_probabilities: images of different sizes; evaluate one size at a time")
    return probs  # (N, 2, H, W)


def calibration_pixels(probs: np.ndarray, samples: Sequence[FundusSample], margin: int = 8,
                       structures: Sequence[str] = ("disc", "cup")) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and truths of the pixels inside each prompt box grown by ``margin``.

    Args:
        probs: ``(N, 2, H, W)`` disc and cup probabilities (see :func:`zero_shot_probabilities`).
        samples: the ``N`` samples (their masks are the truth; their boxes the regions).
        margin: pixels added around the tight box.
        structures: which channels to score (``"disc"`` is channel 0, ``"cup"`` channel 1).

    Returns:
        ``(p, y)``: two ``(P,)`` arrays, float32 probabilities and bool truths, image by image.
    """
    probs = np.asarray(probs)
    if probs.ndim != 4 or probs.shape[:2] != (len(samples), 2):
        raise ValueError(f"calibration_pixels: probs must be (N={len(samples)}, 2, H, W), got {probs.shape}")
    p_all, y_all = [], []
    for prob, s in zip(probs, samples):
        for structure in structures:
            k = ("disc", "cup").index(structure)
            x0, y0, x1, y1 = s.box(structure, margin).astype(int)
            p_all.append(prob[k, y0:y1 + 1, x0:x1 + 1].ravel())
            y_all.append(getattr(s, structure)[y0:y1 + 1, x0:x1 + 1].ravel())
    return np.concatenate(p_all).astype(np.float32), np.concatenate(y_all).astype(bool)


def reliability_table(p: np.ndarray, y: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Reliability diagram data: mean predicted probability vs. observed frequency per bin.

    Args:
        p: ``(P,)`` predicted foreground probabilities in ``[0, 1]``.
        y: ``(P,)`` bool truths.
        n_bins: equal-width bins on ``[0, 1]`` (the last one closed).

    Returns:
        One row per bin: ``lower``, ``upper``, ``count``, ``confidence`` (mean ``p``) and ``frequency``
        (mean ``y``); the last two are ``nan`` for empty bins.
    """
    p, y = np.asarray(p, dtype=np.float64).ravel(), np.asarray(y, dtype=bool).ravel()
    if p.shape != y.shape:
        raise ValueError(f"reliability_table: p and y differ in length ({p.size} vs {y.size})")
    if p.size and (p.min() < 0 or p.max() > 1):
        raise ValueError("reliability_table: probabilities must lie in [0, 1]")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)  # (P,) bin of each pixel
    count = np.bincount(which, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(which, weights=p, minlength=n_bins) / count
        frequency = np.bincount(which, weights=y.astype(np.float64), minlength=n_bins) / count
    return pd.DataFrame({"lower": edges[:-1], "upper": edges[1:], "count": count,
                         "confidence": confidence, "frequency": frequency})


def expected_calibration_error(p: np.ndarray, y: np.ndarray, n_bins: int = 10) -> float:
    """ECE: the count-weighted mean of ``|confidence - frequency|`` over the bins of :func:`reliability_table`.

    0 is perfectly calibrated; 0.1 means the stated probability is off by 0.1 on average.
    """
    table = reliability_table(p, y, n_bins)
    filled = table[table["count"] > 0]
    if filled.empty:
        return float("nan")
    gap = (filled["confidence"] - filled["frequency"]).abs()
    return float((gap * filled["count"]).sum() / filled["count"].sum())


def calibration_by_domain(probs: np.ndarray, samples: Sequence[FundusSample],
                          config: ClinicalConfig) -> pd.DataFrame:
    """ECE of disc and cup probabilities per domain (pixels inside the grown prompt boxes).

    Args:
        probs: ``(N, 2, H, W)`` disc and cup probabilities.
        samples: the ``N`` samples.
        config: bins and box margin.

    Returns:
        Index ``domain`` (in order of appearance); columns ``disc_ece``, ``cup_ece``, ``pixels``.
    """
    probs = np.asarray(probs)
    out = []
    for domain in dict.fromkeys(s.domain for s in samples):
        idx = [i for i, s in enumerate(samples) if s.domain == domain]
        entry = {"domain": domain, "pixels": 0}
        for structure in ("disc", "cup"):
            p, y = calibration_pixels(probs[idx], [samples[i] for i in idx], config.calibration_margin,
                                      structures=(structure,))
            entry[f"{structure}_ece"] = expected_calibration_error(p, y, config.calibration_bins)
            entry["pixels"] += int(p.size)
        out.append(entry)
    return pd.DataFrame(out).set_index("domain")


# ---------------------------------------------------------------------------------------------
# subgroups and failures
# ---------------------------------------------------------------------------------------------

@dataclass
class SubgroupSplit:
    """A split of images into two subgroups by a measured quantity.

    Attributes:
        labels: one subgroup name per image.
        threshold: the value that separates them (here the median disc area, pixels).
        values: the quantity per image.
    """

    labels: list[str]
    threshold: float
    values: np.ndarray = field(repr=False)


def disc_size_groups(samples: Sequence[FundusSample], threshold: float | None = None) -> SubgroupSplit:
    """Label each image ``"small disc"`` or ``"large disc"`` by its true disc area.

    Args:
        samples: the evaluated samples.
        threshold: area (pixels) separating the groups; default the median over ``samples``.
            Areas at or above it are "large".
    """
    if not samples:
        raise ValueError("disc_size_groups: no samples given")
    areas = np.array([float(s.disc.sum()) for s in samples])  # (N,)
    threshold = float(np.median(areas)) if threshold is None else float(threshold)
    labels = ["large disc" if a >= threshold else "small disc" for a in areas]
    return SubgroupSplit(labels=labels, threshold=threshold, values=areas)
