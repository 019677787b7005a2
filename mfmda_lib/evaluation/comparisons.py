"""Many comparisons at once, and comparisons that are not a paired mean: :func:`comparison_table` (one
:func:`~mfmda_lib.evaluation.stats.compare` per spec), :func:`compare_table` / :func:`compare_within` (per method pair
and metric, per group), :func:`group_difference` (two unpaired groups of images) and :func:`compare_statistic` /
:func:`compare_auroc` (a statistic over a set of images, such as the AUROC of a screen, recomputed per resample)."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd

from .metrics import auroc_rows
from .stats import Comparison, row_key, compare, seed_matrix, verdict_word

__all__ = [
    "comparison_table", "group_difference", "compare_table", "compare_within", "compare_statistic",
    "compare_auroc",
]


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


def compare_table(rows: Sequence[dict], metrics: Sequence[str], pairs: Sequence[tuple[str, str]], *,
                  by: str = "method", match: Sequence[str] = ("domain", "sample_id"), seed_key: str = "seed",
                  lower_is_better: Sequence[str] = (), n_resamples: int = 2000, confidence: float = 0.95,
                  seed: int = 0) -> pd.DataFrame:
    """:func:`compare` for every ``(method, baseline)`` of ``pairs`` and every metric, as a table.

    Args:
        lower_is_better: the metrics (errors, distances) for which a negative difference is "better".

    Returns:
        Index ``(method, baseline, metric)``; columns ``diff``, ``low``, ``high``, ``verdict``,
        ``n_seeds``, ``n_images`` (``diff = method - baseline``, as measured: not sign-flipped).
    """
    out = [compare(rows, m, method, baseline, by=by, match=match, seed_key=seed_key,
                   higher_is_better=m not in lower_is_better, n_resamples=n_resamples, confidence=confidence,
                   seed=seed).as_dict() for method, baseline in pairs for m in metrics]
    columns = ["method", "baseline", "metric", "diff", "low", "high", "verdict", "n_seeds", "n_images"]
    return pd.DataFrame(out, columns=columns).set_index(["method", "baseline", "metric"])


def compare_within(rows: Sequence[dict], metrics: Sequence[str], pairs: Sequence[tuple[str, str]], *,
                   key: str = "domain", values: Sequence | None = None, **options) -> pd.DataFrame:
    """:func:`compare_table` separately within each value of ``key`` (e.g. each hospital: a mean over
    hospitals can hide one that got worse).

    Args:
        values: the values of ``key`` to compare within, in order (default: as they first appear).
        options: passed on to :func:`compare_table` (``by``, ``seed_key``, ``lower_is_better``, ...).

    Returns:
        Index ``(method, key, baseline, metric)``; columns as :func:`compare_table`.
    """
    values = list(dict.fromkeys(r[key] for r in rows)) if values is None else list(values)
    tables = [compare_table([r for r in rows if r.get(key) == v], metrics, pairs, **options).assign(**{key: v})
              for v in values]
    return pd.concat(tables).set_index(key, append=True).reorder_levels(["method", key, "baseline", "metric"])


def compare_statistic(a: np.ndarray, b: np.ndarray, statistic: Callable[[np.ndarray, np.ndarray], np.ndarray], *,
                      n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Paired difference of a statistic computed over a set of images (e.g. AUROC), seeds x images bootstrap.

    Args:
        a, b: ``(S, N)`` per-seed, per-image values of the two methods (e.g. predicted scores), the
            same seeds and images in the same order.
        statistic: ``(values (S, n), images (n,)) -> (S,)``, one number per seed from the images
            drawn (``images`` indexes the ``N`` columns, e.g. to pick their labels).

    Returns:
        ``(mean over seeds of statistic(a) - statistic(b), low, high)``; each resample draws seeds and
        images with replacement, as :func:`seed_image_bootstrap` does, and resamples on which the
        statistic is undefined (``nan``) are left out.
    """
    a, b = np.atleast_2d(np.asarray(a, dtype=np.float64)), np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a.shape != b.shape:
        raise ValueError(f"compare_statistic: a {a.shape} and b {b.shape} must have the same (S, N) shape")
    s, n = a.shape
    every = np.arange(n)
    estimate = float(np.mean(statistic(a, every) - statistic(b, every)))
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, s, size=(n_resamples, s))
    images = rng.integers(0, n, size=(n_resamples, n))
    stats = np.array([np.mean(statistic(a[sd][:, im], im) - statistic(b[sd][:, im], im))
                      for sd, im in zip(seeds, images)])
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return estimate, float("nan"), float("nan")
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])
    return estimate, float(lo), float(hi)


def compare_auroc(rows: Sequence[dict], score: str, label: str, method: str, baseline: str, *, by: str = "method",
                  match: Sequence[str] = ("domain", "sample_id"), seed_key: str = "seed", n_resamples: int = 2000,
                  confidence: float = 0.95, seed: int = 0) -> Comparison:
    """Paired difference ``method - baseline`` of the AUROC of ``score`` for the binary ``label``, per seed.

    Each seed's AUROC is computed over its images; seeds and images are resampled together
    (:func:`compare_statistic`), so the interval covers both. Only (seed, image) pairs scored by both
    methods enter. Returns a :class:`Comparison` with ``metric = "<score> auroc"``.
    """
    a_rows = [r for r in rows if r.get(by) == method]
    b_rows = [r for r in rows if r.get(by) == baseline]
    if not a_rows or not b_rows:
        raise ValueError(f"compare_auroc: no rows for {by} == {method!r} or {baseline!r}")
    a, seeds, images = seed_matrix(a_rows, score, match=match, seed_key=seed_key)
    b, b_seeds, b_images = seed_matrix(b_rows, score, match=match, seed_key=seed_key)
    common_seeds = [sd for sd in seeds if sd in b_seeds]
    common = [im for im in images if im in set(b_images)]
    a = a[np.ix_([seeds.index(sd) for sd in common_seeds], [images.index(im) for im in common])]
    b = b[np.ix_([b_seeds.index(sd) for sd in common_seeds], [b_images.index(im) for im in common])]
    keep = np.isfinite(a).all(axis=0) & np.isfinite(b).all(axis=0)
    truth = {row_key(r, match): r[label] for r in a_rows}
    labels = np.array([truth[im] for im in common])[keep]
    d, lo, hi = compare_statistic(a[:, keep], b[:, keep], lambda v, im: auroc_rows(labels[im], v),
                                  n_resamples=n_resamples, confidence=confidence, seed=seed)
    return Comparison(method, baseline, f"{score} auroc", len(common_seeds), int(keep.sum()), d, lo, hi,
                      verdict_word(lo, hi))
