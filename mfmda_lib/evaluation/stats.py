"""Comparisons that survive a re-run: means and paired differences over seeds *and* images.

A verdict such as "method A beats method B" rests on two sources of chance: which test images
were drawn, and the seed of the training run (initialisation, batch order, augmentation). A
single-seed table on a few test images moves by more than the differences it reports, so every
verdict in the kit goes through this module:

- :func:`seed_image_bootstrap` resamples seeds with replacement, then images with replacement
  (the same images for every drawn seed, so a paired difference stays paired), and returns the
  percentile interval of the grand mean;
- :func:`compare` matches two methods' per-image rows by ``(seed, domain, sample_id)``, computes
  the difference ``A - B`` per seed and image, and says ``"better"`` or ``"worse"`` only when the
  95% interval of that difference excludes 0, else ``"no difference measured"``;
- :func:`seed_table` gives each method's mean with its interval, for a table;
- :func:`gap_closed` gives the share of the gap between a baseline and an oracle that a method
  closes, ``(A - B) / (O - B)``, with the same two-stage interval;
- :func:`comparison_table` runs many :func:`compare` calls, each on a subset of the rows (one
  setting, one domain, ...), and returns one line per comparison: what a notebook's verdict reads;
- :func:`group_difference` compares two *different* sets of images (e.g. two hospitals, small vs
  large discs), where nothing pairs: each group is resampled on its own;
- :func:`compare_table` runs :func:`compare` for several (method, baseline) pairs and metrics;
- :func:`compare_statistic` does the same for a statistic that is not a mean over images, such as
  the AUROC of a screen (:func:`~.metrics.auroc_rows`, :func:`compare_auroc`), recomputed on every resample.

The last four and the AUROC helpers are in :mod:`.comparisons`; this module holds the resampling,
:func:`compare` and the per-method tables.

Rows are the flat dicts every notebook collects (one per image and seed): they need ``seed``,
``domain``, ``sample_id``, the method key and the metric.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import pandas as pd

__all__ = [
    "NO_DIFFERENCE", "seed_image_bootstrap", "verdict_word", "Comparison", "compare", "seed_table", "seed_matrix",
    "gap_closed", "verdict_seeds",
]

#: What a verdict says when the interval of the paired difference contains 0.
NO_DIFFERENCE = "no difference measured"


def verdict_seeds(profile) -> list[int]:
    """The training seeds of every run a verdict rests on: ``profile.seed``, ``+ 1``, ... (``profile.verdict_seeds``)."""
    return [profile.seed + k for k in range(profile.verdict_seeds)]


def seed_image_bootstrap(values: np.ndarray, *, n_resamples: int = 2000, confidence: float = 0.95,
                         seed: int = 0) -> tuple[float, float, float]:
    """Grand mean of a ``(S, N)`` seeds x images array and its two-stage percentile bootstrap interval.

    Each resample draws ``S`` seeds with replacement and ``N`` images with replacement (one image
    draw shared by all seeds, so rows that pair images stay paired), and takes the mean. Images
    with a non-finite value in any seed are dropped first. With one seed only images are resampled.

    Args:
        values: ``(S, N)`` (or ``(N,)``, one seed) numbers, e.g. per-image Dice differences.
        n_resamples: bootstrap resamples.
        confidence: two-sided level of the interval.
        seed: seed of the resampling.

    Returns:
        ``(mean, low, high)``; all ``nan`` when no finite column is left; ``low == high == mean``
        for a single value.
    """
    x = np.asarray(values, dtype=np.float64)
    x = x[None, :] if x.ndim == 1 else x
    if x.ndim != 2:
        raise ValueError(f"seed_image_bootstrap: values must be (S, N) or (N,), got shape {x.shape}")
    x = x[:, np.isfinite(x).all(axis=0)]  # (S, N'): images scored in every seed
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    estimate = float(x.mean())
    s, n = x.shape
    if s * n == 1:
        return estimate, estimate, estimate
    seeds, images = _resample_indices(s, n, n_resamples, seed)
    stats = x[seeds[:, :, None], images[:, None, :]].mean(axis=(1, 2))  # (B,)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])
    return estimate, float(lo), float(hi)


def _resample_indices(s: int, n: int, n_resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, s, size=(n_resamples, s)), rng.integers(0, n, size=(n_resamples, n))  # (B, S), (B, N)


def verdict_word(low: float, high: float, *, higher_is_better: bool = True) -> str:
    """``"better"`` / ``"worse"`` when the interval of ``A - B`` excludes 0, else :data:`NO_DIFFERENCE`."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return NO_DIFFERENCE
    if low > 0 or high < 0:
        return "better" if (low > 0) == higher_is_better else "worse"
    return NO_DIFFERENCE


def row_key(row: dict, match: Sequence[str]) -> tuple:
    return tuple(row.get(k) for k in match)


def seed_matrix(rows: Sequence[dict], metric: str, *, match: Sequence[str] = ("domain", "sample_id"),
                seed_key: str = "seed") -> tuple[np.ndarray, list, list]:
    """One method's rows as a ``(S, N)`` seeds x images array (``nan`` where an image is missing).

    Returns:
        ``(values, seeds, images)`` with the seed values and the image keys in the array's order.
    """
    seeds = sorted({r.get(seed_key, 0) for r in rows})
    images = list(dict.fromkeys(row_key(r, match) for r in rows))
    out = np.full((len(seeds), len(images)), np.nan)
    col = {k: j for j, k in enumerate(images)}
    for r in rows:
        value = r.get(metric)
        out[seeds.index(r.get(seed_key, 0)), col[row_key(r, match)]] = np.nan if value is None else value
    return out, seeds, images


@dataclass(frozen=True)
class Comparison:
    """``A - B`` on one metric, over the seeds and images both were scored on."""

    method: str
    baseline: str
    metric: str
    n_seeds: int
    n_images: int
    diff: float
    low: float
    high: float
    verdict: str

    def sentence(self, digits: int = 3) -> str:
        """E.g. ``"mfmda vs source_only, disc_dice: +0.052 [0.031, 0.074] over 3 seeds x 48 images: better"``."""
        return (f"{self.method} vs {self.baseline}, {self.metric}: {self.diff:+.{digits}f} "
                f"[{self.low:+.{digits}f}, {self.high:+.{digits}f}] over {self.n_seeds} seed(s) x "
                f"{self.n_images} images: {self.verdict}")

    def as_dict(self) -> dict:
        return asdict(self)


def compare(rows: Sequence[dict], metric: str, method: str, baseline: str, *, by: str = "method",
            match: Sequence[str] = ("domain", "sample_id"), seed_key: str = "seed", higher_is_better: bool = True,
            n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> Comparison:
    """Paired difference ``method - baseline`` of ``metric``, bootstrapped over seeds and images.

    Args:
        rows: per-image dicts of both methods (``by`` names the method; rows without ``seed_key``
            count as seed 0).
        metric: e.g. ``"disc_dice"``.
        match: keys that identify an image across methods.
        higher_is_better: ``False`` for errors and distances.

    Returns:
        A :class:`Comparison`; only (seed, image) pairs present for both methods enter it.
    """
    a = {(r.get(seed_key, 0), *row_key(r, match)): r.get(metric) for r in rows if r.get(by) == method}
    b = {(r.get(seed_key, 0), *row_key(r, match)): r.get(metric) for r in rows if r.get(by) == baseline}
    if not a or not b:
        raise ValueError(f"compare: no rows for {by} == {method!r} or {baseline!r}; "
                         f"values: {sorted({str(r.get(by)) for r in rows})}")
    both = [k for k in a if k in b]
    if not both:
        raise ValueError(f"compare: {method!r} and {baseline!r} share no (seed, {', '.join(match)}) pairs")
    diffs = [{seed_key: k[0], **dict(zip(match, k[1:])), "d": (np.nan if a[k] is None or b[k] is None
                                                               else a[k] - b[k])} for k in both]
    values, seeds, images = seed_matrix(diffs, "d", match=match, seed_key=seed_key)
    d, lo, hi = seed_image_bootstrap(values, n_resamples=n_resamples, confidence=confidence, seed=seed)
    return Comparison(method, baseline, metric, len(seeds), int(np.isfinite(values).all(axis=0).sum()), d, lo, hi,
                      verdict_word(lo, hi, higher_is_better=higher_is_better))


def seed_table(rows: Sequence[dict], metrics: Sequence[str], *, by: str = "method",
               match: Sequence[str] = ("domain", "sample_id"), seed_key: str = "seed", n_resamples: int = 2000,
               confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Each method's mean of each metric with its seeds x images interval.

    Returns:
        Index ``by`` (first-appearance order); columns ``n_seeds``, ``n_images`` and, per metric
        ``m``, ``m``, ``m_lo``, ``m_hi``.
    """
    out = []
    for name in dict.fromkeys(r[by] for r in rows):
        mine = [r for r in rows if r[by] == name]
        entry = {by: name}
        for m in metrics:
            values, seeds, images = seed_matrix(mine, m, match=match, seed_key=seed_key)
            est, lo, hi = seed_image_bootstrap(values, n_resamples=n_resamples, confidence=confidence, seed=seed)
            entry.update({"n_seeds": len(seeds), "n_images": len(images), m: est, f"{m}_lo": lo, f"{m}_hi": hi})
        out.append(entry)
    return pd.DataFrame(out).set_index(by)


def gap_closed(rows: Sequence[dict], metric: str, method: str, baseline: str, oracle: str, *, by: str = "method",
               match: Sequence[str] = ("domain", "sample_id"), seed_key: str = "seed", n_resamples: int = 2000,
               confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Share of the ``baseline -> oracle`` gap that ``method`` closes: ``mean(A - B) / mean(O - B)``.

    The three methods are matched on ``(seed, image)``; numerator and denominator are resampled
    together (same seeds, same images) for the percentile interval. 1 = as good as the oracle,
    0 = no better than the baseline, < 0 = worse. ``nan`` when the oracle does not beat the baseline
    on average (there is no gap to close).

    Returns:
        ``(share, low, high)``.
    """
    tables = {}
    for name in (method, baseline, oracle):
        mine = [r for r in rows if r.get(by) == name]
        if not mine:
            raise ValueError(f"gap_closed: no rows for {by} == {name!r}")
        tables[name] = {(r.get(seed_key, 0), *row_key(r, match)): r.get(metric) for r in mine}
    keys = [k for k in tables[method] if k in tables[baseline] and k in tables[oracle]]
    if not keys:
        raise ValueError(f"gap_closed: {method!r}, {baseline!r} and {oracle!r} share no (seed, image) pairs")
    pairs = [{seed_key: k[0], **dict(zip(match, k[1:])),
              "num": tables[method][k] - tables[baseline][k], "den": tables[oracle][k] - tables[baseline][k]}
             for k in keys if None not in (tables[method][k], tables[baseline][k], tables[oracle][k])]
    num, _, _ = seed_matrix(pairs, "num", match=match, seed_key=seed_key)
    den, _, _ = seed_matrix(pairs, "den", match=match, seed_key=seed_key)
    keep = np.isfinite(num).all(axis=0) & np.isfinite(den).all(axis=0)
    num, den = num[:, keep], den[:, keep]
    if num.size == 0 or den.mean() <= 0:
        return float("nan"), float("nan"), float("nan")
    share = float(num.mean() / den.mean())
    s, n = num.shape
    seeds, images = _resample_indices(s, n, n_resamples, seed)
    pick = (seeds[:, :, None], images[:, None, :])
    d = den[pick].mean(axis=(1, 2))
    ratios = np.where(d > 0, num[pick].mean(axis=(1, 2)) / np.where(d > 0, d, 1), np.nan)
    ratios = ratios[np.isfinite(ratios)]
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(ratios, [alpha, 1 - alpha]) if ratios.size else (np.nan, np.nan)
    return share, float(lo), float(hi)


