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
- :func:`comparison_table` runs many :func:`compare` calls, each on a subset of the rows (one
  setting, one domain, ...), and returns one line per comparison: what a notebook's verdict reads;
- :func:`group_difference` compares two *different* sets of images (e.g. two hospitals, small vs
  large discs), where nothing pairs: each group is resampled on its own.

Rows are the flat dicts every notebook collects (one per image and seed): they need ``seed``,
``domain``, ``sample_id``, the method key and the metric.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import pandas as pd

__all__ = ["NO_DIFFERENCE", "seed_image_bootstrap", "verdict_word", "Comparison", "compare", "seed_table",
           "seed_matrix", "comparison_table", "group_difference"]

#: What a verdict says when the interval of the paired difference contains 0.
NO_DIFFERENCE = "no difference measured"


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
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, s, size=(n_resamples, s))                  # (B, S)
    images = rng.integers(0, n, size=(n_resamples, n))                 # (B, N)
    stats = x[seeds[:, :, None], images[:, None, :]].mean(axis=(1, 2))  # (B,)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])
    return estimate, float(lo), float(hi)


def verdict_word(low: float, high: float, *, higher_is_better: bool = True) -> str:
    """``"better"`` / ``"worse"`` when the interval of ``A - B`` excludes 0, else :data:`NO_DIFFERENCE`."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return NO_DIFFERENCE
    if low > 0 or high < 0:
        return "better" if (low > 0) == higher_is_better else "worse"
    return NO_DIFFERENCE


def _key(row: dict, match: Sequence[str]) -> tuple:
    return tuple(row.get(k) for k in match)


def seed_matrix(rows: Sequence[dict], metric: str, *, match: Sequence[str] = ("domain", "sample_id"),
                seed_key: str = "seed") -> tuple[np.ndarray, list, list]:
    """One method's rows as a ``(S, N)`` seeds x images array (``nan`` where an image is missing).

    Returns:
        ``(values, seeds, images)`` with the seed values and the image keys in the array's order.
    """
    seeds = sorted({r.get(seed_key, 0) for r in rows})
    images = list(dict.fromkeys(_key(r, match) for r in rows))
    out = np.full((len(seeds), len(images)), np.nan)
    col = {k: j for j, k in enumerate(images)}
    for r in rows:
        value = r.get(metric)
        out[seeds.index(r.get(seed_key, 0)), col[_key(r, match)]] = np.nan if value is None else value
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
    a = {(r.get(seed_key, 0), *_key(r, match)): r.get(metric) for r in rows if r.get(by) == method}
    b = {(r.get(seed_key, 0), *_key(r, match)): r.get(metric) for r in rows if r.get(by) == baseline}
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


#: Keys of a :func:`comparison_table` spec that go to :func:`compare` (the rest are labels).
_COMPARE_KEYS = ("metric", "method", "baseline", "by", "match", "higher_is_better")


def comparison_table(rows: Sequence[dict], specs: Sequence[dict], *, seed_key: str = "seed",
                     n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """One :func:`compare` per spec, on the rows that match the spec's ``where``.

    Args:
        rows: per-image dicts (every seed, setting and method).
        specs: dicts with ``metric``, ``method``, ``baseline`` and optionally ``by`` (default
            ``"method"``), ``match``, ``higher_is_better``, and ``where`` (``{key: value}``: only
            rows with these values enter, e.g. ``{"setting": "online"}``). Every other key (e.g. a
            ``question`` label) is copied into the spec's line.

    Returns:
        One line per spec: its label keys, ``where``'s keys and values (``where_<key>`` for a key
        that is also a :class:`Comparison` field, e.g. ``where_method``), then the
        :class:`Comparison` fields (``method``, ``baseline``, ``metric``, ``n_seeds``, ``n_images``,
        ``diff``, ``low``, ``high``, ``verdict``).
    """
    out = []
    for spec in specs:
        where = spec.get("where", {})
        subset = [r for r in rows if all(r.get(k) == v for k, v in where.items())]
        args = {k: spec[k] for k in _COMPARE_KEYS if k in spec}
        c = compare(subset, seed_key=seed_key, n_resamples=n_resamples, confidence=confidence, seed=seed, **args)
        labels = {k: v for k, v in spec.items() if k not in _COMPARE_KEYS and k != "where"}
        fields = c.as_dict()
        out.append({**labels, **{(f"where_{k}" if k in fields else k): v for k, v in where.items()}, **fields})
    return pd.DataFrame(out)


def group_difference(a: Sequence[float], b: Sequence[float], *, n_resamples: int = 2000, confidence: float = 0.95,
                     seed: int = 0) -> tuple[float, float, float]:
    """``mean(a) - mean(b)`` for two independent groups of images, with a percentile bootstrap interval.

    Each resample draws ``len(a)`` images of ``a`` and ``len(b)`` of ``b`` with replacement, on
    their own (nothing pairs an image of one group with one of the other). Non-finite values are
    dropped first. Read the interval with :func:`verdict_word`.

    Returns:
        ``(diff, low, high)``; all ``nan`` when a group has no finite value.
    """
    x, y = (np.asarray(v, dtype=np.float64).ravel() for v in (a, b))
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if not x.size or not y.size:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    stats = (x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(axis=1)
             - y[rng.integers(0, y.size, size=(n_resamples, y.size))].mean(axis=1))  # (B,)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])
    return float(x.mean() - y.mean()), float(lo), float(hi)
