"""Evaluation as a clinician needs it: intervals, glaucoma screening, calibration and subgroups.

A mean Dice per domain says which model is better on average. A clinic asks four more questions:

1. How sure are we of that number? Percentile **bootstrap confidence intervals** over images.
2. Does the segmentation support the decision it is made for? **Glaucoma screening** from the
   predicted vertical cup-to-disc ratio (vCDR): ROC curve, AUC, sensitivity at a fixed specificity,
   and sensitivity / specificity of the usual rule "vCDR >= 0.6 means glaucoma suspect".
3. Does the model know when it is unsure? Pixel-level **calibration** of the mask decoder's
   sigmoid probabilities: reliability table and expected calibration error (ECE).
4. Does it fail more for some patients? **Subgroups**, here small vs. large optic discs.

This module: config -> bootstrap intervals -> subgroups. Screening is in :mod:`.screening`, calibration in
:mod:`.calibration`.
What the notebook reports from these (results of earlier notebooks, the checklist) is in
:mod:`mfmda_lib.evaluation.reporting`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ..data.domains import TARGET_DOMAINS
from ..data.sample import GLAUCOMA_SUSPECT_VCDR, FundusSample

__all__ = ["ClinicalConfig", "percentile_interval", "bootstrap_ci", "ci_table", "format_ci", "SubgroupSplit",
           "disc_size_groups", "POOLED_TARGETS"]

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

def percentile_interval(stats: np.ndarray, confidence: float) -> tuple[float, float]:
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
    lo, hi = percentile_interval(np.asarray(statistic(x[idx], axis=1)), confidence)  # stats: (B,)
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
