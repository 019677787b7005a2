"""Notebook 06's verdicts: paired comparisons over seeds and images, and the sentences they support.

Every statement notebook 06 makes about a test-time method is one line of :func:`tta_verdicts`:
a paired difference ``A - B`` of per-image Dice (same seed, same image), its 95% interval from
:func:`mfmda_lib.evaluation.comparisons.comparison_table` (seeds and images resampled), and the word
``better`` / ``worse`` only when that interval excludes 0 (else ``no difference measured``).

==================  ===========================================================================
question            comparison (rows of the :class:`~mfmda_lib.adapt.tta_benchmark.TTAResult`)
==================  ===========================================================================
``vs source``       each method vs ``source_only``, online regime, default severity
``vs norm stats``   each gradient method vs ``norm_stats`` (does the gradient add to the statistics?)
``per hospital``    ``norm_stats`` vs ``source_only`` on each target hospital
``batch size 1``    each method vs ``source_only``, one image per batch
``severe shift``    each method vs ``source_only`` at the failure severity
``continual``       each method, continual stream vs online (drift across hospitals)
``forgetting``      each method, source test images after vs before the continual stream
``ablation``        each extra variant (e.g. multi-step Tent) vs the method it varies
==================  ===========================================================================

Sections: the comparisons -> the table -> sentences.
"""
from __future__ import annotations

from typing import Sequence

import pandas as pd

from ..data import TARGET_DOMAINS
from ..evaluation.comparisons import comparison_table
from ..evaluation.stats import NO_DIFFERENCE
from .tta import TTA_METHODS

__all__ = ["QUESTIONS", "tta_comparisons", "tta_verdicts", "verdict_lines", "headline_verdict", "verdict_frame"]

METRICS = ("disc_dice", "cup_dice")
SOURCE, NORM = "source_only", "norm_stats"

#: Question label -> what it asks (the order notebook 06 prints them in).
QUESTIONS: dict[str, str] = {
    "vs source": "does the method beat the unadapted source model? (online, default severity)",
    "vs norm stats": "does a gradient step add anything to the batch statistics it adapts on? (online)",
    "per hospital": "norm statistics vs source-only on each target hospital (online)",
    "batch size 1": "does the method still beat source-only with one image per batch?",
    "severe shift": "does the method beat source-only under the severe shift?",
    "continual": "continual stream minus online, per method: does drift across hospitals cost Dice?",
    "forgetting": "source test images after minus before the continual stream: did the method forget?",
    "ablation": "a variant minus the method it varies (online)",
}


# ---------------------------------------------------------------------------------------------
# the comparisons
# ---------------------------------------------------------------------------------------------

def _gradient_on_batch_stats(name: str) -> bool:
    """A registered method that takes gradient steps on top of the batch statistics (Tent, ...)."""
    cls = TTA_METHODS.get(name)
    return cls is not None and cls.use_batch_stats and cls.default_params is not None


def tta_comparisons(methods: Sequence[str], settings: Sequence[str], *, variants: dict[str, str] | None = None,
                    metrics: Sequence[str] = METRICS, domains: Sequence[str] = TARGET_DOMAINS) -> list[dict]:
    """The comparison specs of :data:`QUESTIONS` for the methods and settings a benchmark ran.

    Args:
        methods: the benchmark's method names (``source_only`` and ``norm_stats`` among them).
        settings: the benchmark's setting names (``online``, ``batch size 1``, ``severity <s>``, ...).
        variants: ablation name -> the method it varies (e.g. ``{"tent (5 steps)": "tent"}``); a
            variant enters only the ``ablation`` question.
        metrics: per-image keys to compare.
        domains: the target hospitals of the ``per hospital`` question.

    Returns:
        Specs for :func:`mfmda_lib.evaluation.comparisons.comparison_table` (label keys ``question`` and
        ``method_of``, the method a line is about).
    """
    variants = dict(variants or {})
    base = [m for m in methods if m not in variants]
    if SOURCE not in base:
        raise ValueError(f"tta_comparisons: the verdict needs {SOURCE!r} among the methods, got {list(methods)}")
    adapted = [m for m in base if m != SOURCE]
    gradient = [m for m in adapted if _gradient_on_batch_stats(m)]
    severe = [s for s in settings if s.startswith("severity")]
    specs = []

    def add(question: str, method_of: str, where: dict, method: str, baseline: str, by: str = "method") -> None:
        specs.extend({"question": question, "method_of": method_of, "where": where, "by": by, "metric": m,
                      "method": method, "baseline": baseline} for m in metrics)

    for m in adapted:
        add("vs source", m, {"setting": "online"}, m, SOURCE)
    if NORM in base:
        for m in gradient:
            add("vs norm stats", m, {"setting": "online"}, m, NORM)
        for d in domains:
            add("per hospital", NORM, {"setting": "online", "domain": d}, NORM, SOURCE)
    for m in adapted:
        if "batch size 1" in settings:
            add("batch size 1", m, {"setting": "batch size 1"}, m, SOURCE)
        for s in severe:
            add("severe shift", m, {"setting": s}, m, SOURCE)
    for m in adapted:
        if "continual" in settings:
            add("continual", m, {"method": m}, "continual", "online", by="setting")
    for m in adapted:
        add("forgetting", m, {"method": m}, "after", "before", by="when")
    for v, of in variants.items():
        add("ablation", v, {"setting": "online"}, v, of)
    return specs


# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------

def tta_verdicts(result, *, variants: dict[str, str] | None = None, n_resamples: int = 2000,
                 confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Every comparison of :func:`tta_comparisons` on a benchmark result, one line each.

    Args:
        result: a :class:`~mfmda_lib.adapt.tta_benchmark.TTAResult` (``rows`` and ``source_rows``
            carry ``seed``; the forgetting rows are tagged ``when``).
        variants: ablation name -> the method it varies.
        n_resamples, confidence, seed: of the seeds x images bootstrap.

    Returns:
        Columns ``question``, ``method_of`` (the method the line is about), ``setting``, ``domain``
        (where they apply), ``metric``, ``method``, ``baseline``, ``n_seeds``, ``n_images``,
        ``diff``, ``low``, ``high``, ``verdict``.
    """
    rows = result.rows + result.source_rows  # source rows are told apart by their "when" key
    methods = list(dict.fromkeys(r["method"] for r in result.rows))
    settings = list(dict.fromkeys(r["setting"] for r in result.rows))
    present = {r["domain"] for r in result.rows}
    specs = tta_comparisons(methods, settings, variants=variants, domains=[d for d in TARGET_DOMAINS if d in present])
    table = comparison_table(rows, specs, n_resamples=n_resamples, confidence=confidence, seed=seed)
    table = table.drop(columns=["by", "where_method"], errors="ignore")
    columns = ["question", "method_of", "setting", "domain", "metric", "method", "baseline", "n_seeds", "n_images",
               "diff", "low", "high", "verdict"]
    return table.reindex(columns=columns)


# ---------------------------------------------------------------------------------------------
# sentences
# ---------------------------------------------------------------------------------------------

def _short(line: pd.Series) -> str:
    return f"{line.metric} {line['diff']:+.3f} [{line.low:+.3f}, {line.high:+.3f}] {line.verdict}"


def verdict_lines(table: pd.DataFrame) -> list[str]:
    """One line per (question, method, setting/domain): each metric's difference, interval and verdict."""
    out = []
    for question, part in table.groupby("question", sort=False):
        n = part.iloc[0]
        out.append(f"{question}: {QUESTIONS.get(question, '')} [{n.n_seeds} seed(s) x {n.n_images} images per line]")
        keys = ["method_of"] + [k for k in ("domain",) if part[k].notna().any()]
        for key, group in part.groupby(keys, sort=False, dropna=False):
            label = " on ".join(str(k) for k in (key if isinstance(key, tuple) else (key,)))
            out.append(f"  {label}: " + "; ".join(_short(r) for _, r in group.iterrows()))
    return out


def _by_method(table: pd.DataFrame, question: str, word: str) -> tuple[list[str], list[str]]:
    """Methods whose every line of ``question`` says ``word``, and ``"method (metrics)"`` for those with some."""
    every, some = [], []
    for m, g in table[table.question == question].groupby("method_of", sort=False):
        hits = g[g.verdict == word]
        if len(hits) == len(g):
            every.append(m)
        elif len(hits):
            some.append(f"{m} ({', '.join(hits.metric)})")
    return every, some


def _listing(every: list[str], some: list[str], what: str) -> str:
    text = f"{what} on both structures: {', '.join(every) if every else 'none'}"
    return text + (f"; on one only: {', '.join(some)}." if some else ".")


def headline_verdict(table: pd.DataFrame) -> str:
    """The notebook's verdict in a few sentences, every claim taken from ``table``'s verdict words."""
    seeds, images = int(table.n_seeds.max()), int(table[table.question == "vs source"].n_images.max())
    parts = [f"Over {seeds} seeds x {images} target images (online, default severity):",
             _listing(*_by_method(table, "vs source", "better"), "better than source-only")]
    hurt = _by_method(table, "vs source", "worse")
    if hurt[0] or hurt[1]:
        parts.append(_listing(*hurt, "Worse than source-only"))
    if (table.question == "vs norm stats").any():
        every, some = _by_method(table, "vs norm stats", "better")
        parts.append(_listing(every, some, "Gradient methods better than the batch statistics alone")
                     + ("" if every or some else " The gain is the normalisation statistics'."))
    for question, what in (("batch size 1", "with one image per batch"), ("severe shift", "under the severe shift")):
        if (table.question == question).any():
            parts.append(_listing(*_by_method(table, question, "better"), f"Still better than source-only {what}"))
    if (table.question == "forgetting").any():
        every, some = _by_method(table, "forgetting", "worse")
        parts.append(_listing(every, some, "Forgot part of the source after the continual stream")
                     if every or some else f"No method measurably forgot the source after the continual stream "
                                           f"(every line: {NO_DIFFERENCE} or better).")
    return " ".join(parts)


def verdict_frame(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`tta_verdicts` as a table to save: index ``(question, comparison, where, metric, verdict)``.

    ``comparison`` is ``"<method> - <baseline>"``, ``where`` the setting, hospital or method the
    line is restricted to; columns ``n`` (images per seed), ``diff``, ``low``, ``high``.
    """
    where = table["domain"].fillna(table["setting"]).fillna(table["method_of"])
    frame = pd.DataFrame({"question": table.question, "comparison": table.method + " - " + table.baseline,
                          "where": where, "metric": table.metric, "verdict": table.verdict, "n": table.n_images,
                          "diff": table["diff"], "low": table.low, "high": table.high})
    return frame.set_index(["question", "comparison", "where", "metric", "verdict"])
