"""Notebook 02's verdicts, computed from the run's own numbers, each with a 95% interval.

At the smallest label budget every encoder is fine-tuned (or probed) on the same
``profile.ssl_label_draws`` draws of a few labelled source images, each draw with its own
training seed, and scored on the same test images. A pretrained encoder is compared with random
initialisation draw by draw and image by image (a paired difference), and the interval of that
difference is bootstrapped over the draws *and* the test images
(:mod:`mfmda_lib.evaluation.stats`). A score is called ``better`` or ``worse`` only when the
interval excludes 0; otherwise ``no difference measured``. One caveat stays: each encoder was
pretrained once (one pretraining seed), so the interval does not cover pretraining's own chance.

* :func:`smallest_budget_comparison`: pretrained vs random, per protocol, encoder and score;
* :func:`verdict`: the sentences, task by task;
* :func:`model_comparison`: any two runs (``protocol/init``) against each other, e.g. LoRA vs fine-tuning;
* :func:`vcdr_reference_comparison`: every vCDR head against the constant that predicts the labels' mean;
* :func:`collapse_check`: whether DINO's teacher ended collapsed, read from its entropies;
* :func:`takeaways`: the other numbers the notebook's take-aways quote.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..data import SOURCE_DOMAIN
from ..evaluation import comparisons, stats
from .experiment import TASK_SCORES, LRSelection, SSLBenchmark, _signed

__all__ = ["score_spec", "smallest_budget_comparison", "verdict", "model_comparison", "vcdr_reference_comparison",
           "collapse_check", "takeaways"]

#: Teacher entropies within this share of ``log K`` of a bound count as collapsed (uniform: near ``log K``;
#: one prototype: near 0).
COLLAPSE_MARGIN = 0.05

#: Resamples of every interval of this module.
N_RESAMPLES = 2000


def score_spec(score: str) -> tuple[str, str, str | None]:
    """``(task, per-image value, group)`` behind a score of :data:`TASK_SCORES`.

    ``group`` is ``"source"`` or ``"target"`` (the mean of the other hospitals), or ``None`` for the
    glaucoma-suspect AUROC, pooled over every hospital; its per-image value is the predicted vCDR.
    """
    if score == "suspect_auroc":
        return "vcdr", "vcdr_pred", None
    group, metric = score.split("_", 1)
    return ("vcdr" if metric.startswith("vcdr") else "segmentation"), metric, group


def _group(row: dict) -> str:
    return "source" if row["domain"] == SOURCE_DOMAIN else "target"


def _paired(rows: Sequence[dict], score: str, method: str, baseline: str, by: str) -> stats.Comparison:
    """:func:`stats.compare` (or :func:`comparisons.compare_auroc`) of one score, draws as seeds."""
    task, value, group = score_spec(score)
    chosen = [r for r in rows if r["task"] == task and (group is None or _group(r) == group)]
    if score == "suspect_auroc":
        return comparisons.compare_auroc(chosen, value, "suspect", method, baseline, by=by, seed_key="draw",
                                   n_resamples=N_RESAMPLES)
    return stats.compare(chosen, value, method, baseline, by=by, seed_key="draw",
                         higher_is_better=not score.endswith("err"), n_resamples=N_RESAMPLES)


def smallest_budget_comparison(result: SSLBenchmark, baseline: str = "random") -> pd.DataFrame:
    """Pretrained vs ``baseline`` init at the smallest budget, one row per (protocol, init, score).

    Columns: ``baseline`` and ``pretrained`` (means over draws and test images), ``gain``
    (pretrained minus baseline, error scores flipped so that positive always means pretraining
    helped), ``gain_lo`` / ``gain_hi`` (its 95% interval over draws and test images), ``verdict``
    (``better`` / ``worse`` / ``no difference measured``), ``wins`` (draws in which pretraining
    was better), ``draws`` and ``images``.
    """
    budget = min(result.per_draw.index.get_level_values("budget"))
    block = result.per_draw.xs(budget, level="budget")
    rows = [r for r in result.rows if r["budget"] == budget]
    out = []
    for protocol in block.index.get_level_values("protocol").unique():
        base = block.xs((protocol, baseline), level=["protocol", "init"])
        mine = [r for r in rows if r["protocol"] == protocol]
        for init in block.xs(protocol, level="protocol").index.get_level_values("init").unique():
            if init == baseline:
                continue
            other = block.xs((protocol, init), level=["protocol", "init"])
            delta = _signed(other - base)  # (draws, scores)
            for score in block.columns:
                c = _paired(mine, score, init, baseline, "init")
                sign = -1.0 if score.endswith("err") else 1.0
                low, high = sorted((sign * c.low, sign * c.high))
                out.append({"protocol": protocol, "init": init, "score": score, baseline: base[score].mean(),
                            "pretrained": other[score].mean(),
                            "gain": sign * c.diff, "gain_lo": low, "gain_hi": high, "verdict": c.verdict,
                            "wins": int((delta[score] > 0).sum()), "draws": c.n_seeds, "images": c.n_images})
    return pd.DataFrame(out).set_index(["protocol", "init", "score"])


def verdict(result: SSLBenchmark, baseline: str = "random",
            comparison: pd.DataFrame | None = None) -> list[str]:
    """Sentences, computed from the numbers, on whether pretraining beat ``baseline`` at the smallest budget.

    An (encoder, protocol) *beats* ``baseline`` on a task when every *target-hospital* score of the
    task (the point of pretraining on every hospital's images) is ``better``: the 95% interval of the
    paired gain excludes 0. Source scores are reported beside it.
    """
    cmp = smallest_budget_comparison(result, baseline) if comparison is None else comparison
    budget = min(result.per_draw.index.get_level_values("budget"))
    n_labels = sorted({r["n_labels"] for r in result.rows if r["budget"] == budget})
    draws = int(cmp["draws"].max())
    lines = [f"Smallest label budget: {budget:.0%} of the source labels ({'/'.join(map(str, n_labels))} images), "
             f"{draws} draw(s) of those images. 'a vs b, gain [95% interval] (k/n): word': pretrained vs {baseline} "
             "init, means over draws and test images; gain > 0 means pretraining helped (errors flipped); the "
             "interval is bootstrapped over draws and test images; k of n draws won. 'better' or 'worse' only "
             "when the interval excludes 0."]
    for task, scores in TASK_SCORES.items():
        present = [s for s in scores if s in cmp.index.get_level_values("score")]
        target = [s for s in present if not s.startswith("source")]
        if not target:
            continue
        winners = []
        for (protocol, init), block in cmp.groupby(level=["protocol", "init"], sort=False):
            block = block.droplevel(["protocol", "init"])
            detail = "; ".join(
                f"{s.replace('_', ' ')} {block.loc[s, 'pretrained']:.3f} vs {block.loc[s, baseline]:.3f}, "
                f"{block.loc[s, 'gain']:+.3f} [{block.loc[s, 'gain_lo']:+.3f}, {block.loc[s, 'gain_hi']:+.3f}] "
                f"({block.loc[s, 'wins']}/{block.loc[s, 'draws']}): {block.loc[s, 'verdict']}" for s in present)
            beats = all(block.loc[s, "verdict"] == "better" for s in target)
            lines.append(f"  {task} | {protocol} | {init}: {'BEATS' if beats else 'does not beat'} {baseline} "
                         f"init on the target hospitals. {detail}.")
            winners += [f"{init} ({protocol})"] if beats else []
        lines.append(f"=> {task}: " + (f"pretraining beats {baseline} initialisation at the smallest budget: "
                                       + ", ".join(winners) + "." if winners else
                                       f"no pretrained encoder beats {baseline} initialisation at the smallest "
                                       "budget on every target-hospital score."))
    return lines


def model_comparison(result: SSLBenchmark, pairs: Sequence[tuple[str, str]],
                     scores: Sequence[str] = ("target_disc_dice", "target_cup_dice"),
                     extra_rows: Sequence[dict] = ()) -> pd.DataFrame:
    """Paired comparisons of runs at the smallest budget named ``"<protocol>/<init>"`` (e.g. ``"lora/mae"`` vs
    ``"finetune/mae"``), score by score, draws as seeds; ``extra_rows`` adds references such as
    :func:`~mfmda_lib.ssl.experiment.label_mean_rows` (``"constant/label_mean"``).

    Returns:
        Index ``(method, baseline, score)``; columns ``method_mean``, ``baseline_mean``, ``diff`` (method minus
        baseline, as measured: for an error, negative = the method is better), ``low``, ``high``, ``verdict``,
        ``n_seeds`` (draws), ``n_images``.
    """
    budget = min(result.per_draw.index.get_level_values("budget"))
    rows = [{**r, "model": f"{r['protocol']}/{r['init']}"} for r in (*result.rows, *extra_rows) if r["budget"] == budget]
    out = []
    for method, baseline in pairs:
        for score in scores:
            c = _paired(rows, score, method, baseline, "model")
            means = [np.mean([_value(r, score) for r in rows if r["model"] == m and _keeps(r, score)])
                     for m in (method, baseline)] if score != "suspect_auroc" else [np.nan, np.nan]
            out.append({"method": method, "baseline": baseline, "score": score, "method_mean": means[0],
                        "baseline_mean": means[1], "diff": c.diff, "low": c.low, "high": c.high,
                        "verdict": c.verdict, "n_seeds": c.n_seeds, "n_images": c.n_images})
    return pd.DataFrame(out).set_index(["method", "baseline", "score"])


def _keeps(row: dict, score: str) -> bool:
    task, _, group = score_spec(score)
    return row["task"] == task and (group is None or _group(row) == group)


def _value(row: dict, score: str) -> float:
    return row[score_spec(score)[1]]


def vcdr_reference_comparison(result: SSLBenchmark, reference_rows: Sequence[dict]) -> pd.DataFrame:
    """Every vCDR head at the smallest budget against the constant of ``reference_rows``
    (:func:`~mfmda_lib.ssl.experiment.label_mean_rows`), on the target hospitals' vCDR error.

    Returns:
        Index ``head`` (``protocol/init``); columns ``head_err``, ``constant_err``, ``diff`` (head minus
        constant: negative = the head is closer), ``low``, ``high``, ``verdict`` (``better``: the head's
        error is lower, the interval of the difference excluding 0), ``n_seeds``, ``n_images``.
    """
    budget = min(result.per_draw.index.get_level_values("budget"))
    constant = "constant/label_mean"
    heads = list(dict.fromkeys(f"{r['protocol']}/{r['init']}" for r in result.rows
                               if r["task"] == "vcdr" and r["budget"] == budget))
    table = model_comparison(result, [(h, constant) for h in heads], ["target_vcdr_abs_err"], reference_rows)
    table = table.droplevel(["baseline", "score"]).rename(columns={"method_mean": "head_err",
                                                                   "baseline_mean": "constant_err"})
    table.index.name = "head"
    return table


def collapse_check(info: dict) -> str:
    """A sentence on DINO's last epoch, from ``info["teacher_entropy"]`` and ``info["log_k"]``
    (:func:`~mfmda_lib.ssl.pretraining.pretrained_encoder`): collapsed to a uniform output (every target
    near ``log K``), to one prototype (the batch's mean target near 0), or neither."""
    h_sample, h_mean = info["teacher_entropy"][-1]
    log_k = info["log_k"]
    said = (f"DINO's teacher targets in its last epoch: entropy per image {h_sample:.2f}, of the mean "
            f"{h_mean:.2f}, log K = {log_k:.2f}")
    if h_sample > (1 - COLLAPSE_MARGIN) * log_k:
        return said + ": collapsed to a uniform output (every image gets the same flat target)."
    if h_mean < COLLAPSE_MARGIN * log_k:
        return said + ": collapsed to one prototype (every image gets the same sharp target)."
    return said + ": no collapse (sharp per image, spread over the batch)."


def takeaways(result: SSLBenchmark, comparison: pd.DataFrame, reference: pd.DataFrame, selection: LRSelection,
              pretraining: dict[str, dict]) -> list[str]:
    """The numbers behind notebook 02's take-aways, as sentences computed from this run.

    Args:
        comparison: :func:`smallest_budget_comparison`; ``reference``: :func:`vcdr_reference_comparison`.
        selection: the learning-rate selection; ``pretraining``: method -> its ``info`` from
            :func:`~mfmda_lib.ssl.pretraining.pretrained_encoder` (steps, seconds).
    """
    lines = []
    src = comparison.xs("source_disc_dice", level="score")
    for (protocol, init), row in src.iterrows():
        lines.append(f"Source hospital, {protocol}, {init} vs random: disc Dice {row['pretrained']:.3f} vs "
                     f"{row['random']:.3f}, {row['gain']:+.3f} [{row['gain_lo']:+.3f}, {row['gain_hi']:+.3f}]: "
                     f"{row['verdict']}.")
    for head, row in reference.iterrows():
        closer = {"better": "closer than", "worse": "further off than"}.get(row["verdict"], "no difference from")
        lines.append(f"vCDR value on the target hospitals, {head}: error {row['head_err']:.3f} vs "
                     f"{row['constant_err']:.3f} for the labels' mean, {row['diff']:+.3f} "
                     f"[{row['low']:+.3f}, {row['high']:+.3f}]: {closer} the constant.")
    spread = selection.table["score"].groupby(level="init").agg(lambda s: s.max() - s.min())
    lines.append("Learning-rate selection: the candidate rates' validation scores differ by "
                 + ", ".join(f"{init} {spread[init]:.3f}" for init in spread.index) + "; chosen: "
                 + ", ".join(f"{init} {lr:g}" for init, lr in selection.best.items()) + ".")
    lines.append("Pretraining: " + ", ".join(
        f"{m} {info['steps']} steps in {info['seconds']:.0f} s" + ("" if info.get("trained") else " (when it was "
                                                                   "trained; loaded from the cache now)")
        for m, info in pretraining.items()) + ".")
    if "teacher_entropy" in pretraining.get("dino", {}):
        lines.append(collapse_check(pretraining["dino"]))
    return lines
