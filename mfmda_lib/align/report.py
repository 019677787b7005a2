"""What stage 2 measured, in words computed from the numbers: the headline table and the verdict.

Notebook 09 and the ``mfmda`` pipeline report print the same things:

- :func:`headline_markdown`: each method's mean target Dice with its 95% interval over seeds and
  images, and the share of the source-only -> oracle gap it closes;
- :func:`verdict_lines`: MFM-DA against every unsupervised baseline (paired over seeds and images;
  "better" only when the interval of the difference excludes 0), the 50% gap goal, and, where MFM-DA
  falls short, which component does: the translations (``translation_only`` vs ``source_only``) or
  the alignment (``mfmda`` vs ``translation_only``), each with its own paired interval.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..evaluation.reporting import load_result_or_fallback
from ..evaluation.stats import NO_DIFFERENCE, compare
from ..evaluation.tables import _markdown

__all__ = ["GAP_GOAL", "ALIGN_LR_RESULTS", "headline_markdown", "verdict_lines", "alignment_log", "saved_align_lr"]

#: the share of the source-only -> oracle gap MFM-DA is meant to close (issue goal, not the paper's claim)
GAP_GOAL = 0.5


def _ci(v: float, lo: float, hi: float, digits: int = 3, sign: str = "") -> str:
    if not np.isfinite(v):
        return "n/a"
    return f"{v:{sign}.{digits}f} [{lo:{sign}.{digits}f}, {hi:{sign}.{digits}f}]"


def headline_markdown(table: pd.DataFrame, labels: dict[str, str] | None = None) -> str:
    """The :meth:`~mfmda_lib.align.result.Stage2Result.headline` table as Markdown."""
    header = ["method", "seeds", "disc Dice", "cup Dice", "mean Dice", "gap closed"]
    body = []
    for m, r in table.iterrows():
        body.append([f"{m}" + (f" ({labels[m]})" if labels and m in labels else ""), str(int(r["n_seeds"])),
                     *[_ci(r[c], r[f"{c}_lo"], r[f"{c}_hi"]) for c in ("disc_dice", "cup_dice", "dice")],
                     _ci(r["gap_closed"], r["gap_closed_lo"], r["gap_closed_hi"], 2, "+")])
    return _markdown(header, body)


def verdict_lines(result, method: str = "mfmda", baselines: Sequence[str] | None = None, *,
                  n_resamples: int = 2000) -> list[str]:
    """Sentences computed from a :class:`~mfmda_lib.align.result.Stage2Result`.

    Args:
        result: the stage-2 result (rows with ``dice``, ``seed``, ``method``).
        method: the method under test.
        baselines: what it must beat (default: the unsupervised baselines present).
    """
    from .methods import UNSUPERVISED_BASELINES

    rows = [r for r in result.rows if r["domain"] in result.targets and "dice" in r]
    present = {r["method"] for r in rows}
    if method not in present:
        return [f"{method} was not run: no verdict."]
    baselines = [b for b in (baselines or UNSUPERVISED_BASELINES) if b in present and b != method]
    lines = []
    comparisons = [compare(rows, "dice", method, b, n_resamples=n_resamples) for b in baselines]
    for c in comparisons:
        lines.append(c.sentence())
    beaten = [c.baseline for c in comparisons if c.verdict == "better"]
    lost = [c.baseline for c in comparisons if c.verdict == "worse"]
    if comparisons and len(beaten) == len(comparisons):
        lines.append(f"=> {method} beats every unsupervised baseline (95% intervals of the paired differences exclude 0).")
    else:
        tie = [c.baseline for c in comparisons if c.verdict == NO_DIFFERENCE]
        lines.append(f"=> {method} does not beat every unsupervised baseline: better than {beaten or 'none'}, "
                     f"{NO_DIFFERENCE} against {tie or 'none'}, worse than {lost or 'none'}.")
    table = result.headline(n_resamples=n_resamples)
    if "oracle" in table.index and method in table.index:
        g, lo, hi = table.loc[method, ["gap_closed", "gap_closed_lo", "gap_closed_hi"]]
        if np.isfinite(g):
            reached = "reaches" if lo >= GAP_GOAL else ("may reach" if hi >= GAP_GOAL else "does not reach")
            lines.append(f"=> {method} closes {g:.0%} [{lo:.0%}, {hi:.0%}] of the source-only -> oracle gap in mean "
                         f"target Dice: it {reached} the {GAP_GOAL:.0%} goal.")
        else:
            lines.append("=> the oracle does not beat source-only here: no gap to close.")
    parts = []
    if {"translation_only", "source_only"} <= present:
        parts.append(("the translations (stage 1)", compare(rows, "dice", "translation_only", "source_only",
                                                           n_resamples=n_resamples)))
    if {"translation_only"} <= present:
        parts.append(("the alignment (stage 2's step 1)", compare(rows, "dice", method, "translation_only",
                                                                  n_resamples=n_resamples)))
    short = [name for name, c in parts if c.verdict != "better"]
    for name, c in parts:
        lines.append(f"component {name}: {c.sentence()}")
    if short and len(beaten) < len(comparisons):
        lines.append(f"=> the component(s) that fall short: {', '.join(short)} (no measured gain in the rows above).")
    return lines


def alignment_log(histories: dict, method: str = "mfmda") -> pd.DataFrame:
    """Per epoch of every ``method`` model: the tokens' update from step (1) and from steps (2)-(3),
    their ratio, and ``L_align`` of the epoch's first batch before and after its step (1).

    Returns:
        Columns ``target``, ``seed``, ``epoch``, ``update_align``, ``update_seg``, ``ratio``,
        ``loss_align_before``, ``loss_align_after`` (the epoch's first batch; empty when no model logged
        an ``align`` step).
    """
    out = []
    for key, history in histories.items():
        if key[0] != method:
            continue
        for e in history.epochs:
            if "update_align" in e:
                out.append({"target": key[1], "seed": key[2] if len(key) > 2 else 0, "epoch": e["epoch"],
                            "update_align": e["update_align"], "update_seg": e.get("update_seg", np.nan),
                            "ratio": e["update_align"] / e["update_seg"] if e.get("update_seg") else np.nan,
                            "loss_align_before": e.get("loss_align_before", np.nan),
                            "loss_align_after": e.get("loss_align_after", np.nan)})
    return pd.DataFrame(out)


#: the saved results of ``benchmarks/stage2_align_lr.py``: step (1)'s rate raised alone, and both rates raised
ALIGN_LR_RESULTS = {"step (1) only": "stage2_align_lr", "both optimisers": "stage2_align_lr_both"}


def saved_align_lr(results_dir, profile_name: str, fallback: str = "cpu") -> list[tuple[str, str, pd.DataFrame, list]]:
    """The saved learning-rate benchmarks of stage 2, for a notebook to show.

    Each result is read for ``profile_name``, else for ``fallback`` (the committed cpu measurement).

    Returns:
        ``[(mode, profile it was measured in, table, paired-difference sentences)]`` for each result found.
    """
    found = []
    for mode, name in ALIGN_LR_RESULTS.items():
        if (saved := load_result_or_fallback(results_dir, name, profile_name, fallback)) is not None:
            measured_in, result = saved
            table = pd.DataFrame(result["table"]).set_index(["target", "align_lr"])
            found.append((mode, measured_in, table, list(result["meta"].get("paired_differences", []))))
    return found
