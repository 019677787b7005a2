"""Reporting for the clinic: what earlier notebooks measured, their intervals, and a checklist.

Notebook 10 reads the ``results/<name>_<profile>.json`` files that :func:`mfmda_lib.experiments.save_result`
wrote, says which are present and which are missing, re-summarises the per-image rows it finds
with bootstrap intervals (and screening AUC where a predicted vCDR was saved), and fills in a
reporting checklist from what it measured.

Sections: inventory -> re-summarising saved rows -> the checklist.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..data.domains import SOURCE_DOMAIN, TARGET_DOMAINS
from .clinical import ClinicalConfig
from .screening import ScreeningResult, glaucoma_screening
from .stats import compare, seed_image_bootstrap, seed_matrix
from .tables import _markdown

__all__ = ["KNOWN_RESULTS", "results_inventory", "load_result", "load_result_or_fallback", "setting_columns", "summarise_rows",
           "paired_difference", "reporting_checklist", "markdown_table"]

#: Result names the kit's notebooks save, and the notebook that writes each.
KNOWN_RESULTS: dict[str, str] = {
    "domain_probe_litemedsam": "00_setup_and_domain_shift",
    "zero_shot_litemedsam": "01_foundation_models",
    "box_prompt_sensitivity": "01_foundation_models",
    "self_supervised_pretraining": "02_self_supervised_pretraining",
    "fine_tuning_strategies": "03_fine_tuning_strategies",
    "sam_decoder_adapter": "05_sam_decoder_adapter",
    "test_time_adaptation": "06_test_time_adaptation",
    "sdedit_tradeoff": "07_diffusion_models",
    "mfmda_stage1": "08_mfmda_stage1_generative_adaptation",
    "mfmda_stage2": "09_mfmda_stage2_hierarchical_alignment",
}

#: Row keys that identify an image or describe it rather than the method setting that produced it.
IDENTITY_KEYS = ("domain", "sample_id", "step", "n_labels", "suspect", "n", "seed")

#: Suffixes / names of per-image metric keys and flags (never a setting).
_METRIC_TAGS = ("_dice", "_iou", "_hd95", "_err", "vcdr_true", "vcdr_pred", "_auroc", "_ece", "_empty")

#: A key with more distinct values than this is not treated as a setting column.
MAX_SETTING_VALUES = 12


# ---------------------------------------------------------------------------------------------
# inventory
# ---------------------------------------------------------------------------------------------

def load_result(folder: str | Path, name: str, profile_name: str) -> dict | None:
    """The saved ``{"meta", "table", "rows"}`` of ``<folder>/<name>_<profile>.json``, or ``None`` if absent."""
    path = Path(folder) / f"{name}_{profile_name}.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); delete it and re-run its notebook") from exc


def load_result_or_fallback(folder: str | Path, name: str, profile_name: str,
                            fallback: str = "cpu") -> tuple[str, dict] | None:
    """``(profile it was measured in, saved result)`` for ``profile_name``, else for ``fallback`` (the committed
    measurement a notebook can show when its own profile has not run the benchmark); ``None`` if neither exists."""
    for name_of_profile in dict.fromkeys((profile_name, fallback)):
        saved = load_result(folder, name, name_of_profile)
        if saved is not None:
            return name_of_profile, saved
    return None


def results_inventory(folder: str | Path, profile_name: str, known: dict[str, str] | None = None, *,
                      exclude: Sequence[str] = ()) -> pd.DataFrame:
    """Which results of ``profile_name`` exist under ``folder``: the known ones and any other found.

    Args:
        folder: the results folder (``paths().results``).
        profile_name: ``ci``, ``cpu`` or ``gpu``.
        known: result name -> notebook that writes it (default :data:`KNOWN_RESULTS`).
        exclude: result names to leave out (e.g. the caller's own).

    Returns:
        Index ``result``; columns ``notebook``, ``present`` (bool), ``rows`` (per-image rows saved),
        ``date`` and ``device`` (empty when absent). Known results first, then others by name.
    """
    known = dict(KNOWN_RESULTS if known is None else known)
    suffix = f"_{profile_name}.json"
    found = sorted(p.name[:-len(suffix)] for p in Path(folder).glob(f"*{suffix}"))
    names = [n for n in list(known) + [n for n in found if n not in known] if n not in exclude]
    out = []
    for name in names:
        data = load_result(folder, name, profile_name)
        meta = (data or {}).get("meta", {})
        out.append({"result": name, "notebook": known.get(name, "?"), "present": data is not None,
                    "rows": len((data or {}).get("rows", [])), "date": meta.get("date", ""),
                    "device": meta.get("device", "")})
    return pd.DataFrame(out).set_index("result")


# ---------------------------------------------------------------------------------------------
# re-summarising saved per-image rows
# ---------------------------------------------------------------------------------------------

def _is_metric(key: str) -> bool:
    return any(key.endswith(tag) or key == tag for tag in _METRIC_TAGS)


def setting_columns(rows: Sequence[dict]) -> list[str]:
    """The keys that describe *how* a row was produced (method, regime, budget, ...).

    A key is a setting when it is not an identity key (:data:`IDENTITY_KEYS`), not a metric, and
    takes at most :data:`MAX_SETTING_VALUES` distinct values.
    """
    keys = list(dict.fromkeys(k for r in rows for k in r))
    out = []
    for k in keys:
        if k in IDENTITY_KEYS or _is_metric(k):
            continue
        if len({repr(r.get(k)) for r in rows}) <= MAX_SETTING_VALUES:
            out.append(k)
    return out


def summarise_rows(rows: Sequence[dict], config: ClinicalConfig, *,
                   metrics: Sequence[str] = ("disc_dice", "cup_dice", "vcdr_abs_err"),
                   domains: Sequence[str] = TARGET_DOMAINS) -> pd.DataFrame:
    """Re-summarise another notebook's per-image rows on the ``domains``, one line per setting.

    Rows are grouped by :func:`setting_columns`; each group gets its number of rows (seeds x
    images), the mean of each metric with its interval (bootstrap over seeds and images,
    :func:`mfmda_lib.evaluation.stats.seed_image_bootstrap`; rows without a ``seed`` are one seed)
    and, when rows hold ``vcdr_true`` and ``vcdr_pred``, the glaucoma-screening AUC with its
    interval (every seed's predictions pooled).

    Returns:
        Index: the setting columns (or ``"all"``); columns ``n``, ``n_seeds``, ``<m>``, ``<m>_lo``,
        ``<m>_hi`` for each metric present, and ``auc``, ``auc_lo``, ``auc_hi`` when available.
        Empty when no row is on ``domains`` or no row holds a metric (e.g. a localisation benchmark's rows).
    """
    rows = [r for r in rows if r.get("domain") in set(domains)]
    if not any(r.get(m) is not None for r in rows for m in metrics) and not any("vcdr_pred" in r for r in rows):
        return pd.DataFrame()
    settings = setting_columns(rows)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in settings), []).append(r)
    out = []
    for key, members in groups.items():
        entry = dict(zip(settings, key)) if settings else {"setting": "all"}
        entry.update(n=len(members), n_seeds=len({r.get("seed", 0) for r in members}))
        for m in metrics:
            if any(r.get(m) is not None for r in members):
                values, _, _ = seed_matrix(members, m)  # (seeds, images)
                est, lo, hi = seed_image_bootstrap(values, n_resamples=config.n_resamples,
                                                   confidence=config.confidence, seed=config.seed)
                entry.update({m: est, f"{m}_lo": lo, f"{m}_hi": hi})
        pairs = [(r["vcdr_true"], r["vcdr_pred"]) for r in members
                 if r.get("vcdr_true") is not None and r.get("vcdr_pred") is not None]
        if pairs:
            s = glaucoma_screening(*zip(*pairs), config)
            entry.update(auc=s.auc, auc_lo=s.auc_lo, auc_hi=s.auc_hi)
        out.append(entry)
    return pd.DataFrame(out).set_index(settings or ["setting"])


def paired_difference(rows: Sequence[dict], metric: str, baseline: str, *, config: ClinicalConfig,
                      by: str = "method", domains: Sequence[str] = TARGET_DOMAINS,
                      higher_is_better: bool = True) -> pd.DataFrame:
    """Mean per-image difference ``method - baseline`` on the same images, with its interval and verdict.

    Images are matched by seed, ``(domain, sample_id)`` and every other setting column, so the
    interval reflects only how the *difference* varies between images and seeds (a paired
    comparison: much narrower than comparing two independent intervals). Each method is one
    :func:`mfmda_lib.evaluation.stats.compare`.

    Returns:
        Index ``by`` (every value but ``baseline``); columns ``n`` (images), ``n_seeds``, ``diff``,
        ``diff_lo``, ``diff_hi`` and ``verdict`` (``better`` / ``worse`` only when the interval excludes 0).
    """
    rows = [r for r in rows if r.get("domain") in set(domains) and r.get(metric) is not None]
    if not any(r.get(by) == baseline for r in rows):
        raise ValueError(f"paired_difference: no rows with {by} == {baseline!r}; "
                         f"values: {sorted({str(r.get(by)) for r in rows})}")
    match = ("domain", "sample_id", *(k for k in setting_columns(rows) if k != by))
    out = []
    for method in dict.fromkeys(r[by] for r in rows if r.get(by) != baseline):
        c = compare(rows, metric, method, baseline, by=by, match=match, higher_is_better=higher_is_better,
                    n_resamples=config.n_resamples, confidence=config.confidence, seed=config.seed)
        out.append({by: method, "n": c.n_images, "n_seeds": c.n_seeds, "diff": c.diff, "diff_lo": c.low,
                    "diff_hi": c.high, "verdict": c.verdict})
    return pd.DataFrame(out).set_index(by)


# ---------------------------------------------------------------------------------------------
# the reporting checklist
# ---------------------------------------------------------------------------------------------

def markdown_table(df: pd.DataFrame) -> str:
    """A DataFrame of strings (or anything printable) as a Markdown table, index included."""
    keys = list(df.index.names) if df.index.name or isinstance(df.index, pd.MultiIndex) else []
    header = [str(k) for k in keys] + [str(c) for c in df.columns]
    body = []
    for key, row in df.iterrows():
        cells = [str(k) for k in (key if isinstance(key, tuple) else (key,))] if keys else []
        body.append(cells + [str(v).replace("|", "\\|") for v in row])
    return _markdown(header, body)


def _ci(v: float, lo: float, hi: float, digits: int = 3) -> str:
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]" if np.isfinite(v) else "n/a"


def reporting_checklist(*, domain_table: pd.DataFrame, screening: ScreeningResult, ece: pd.DataFrame,
                        subgroups: pd.DataFrame, inventory: pd.DataFrame, failures_shown: int, prompt: str,
                        config: ClinicalConfig, min_per_domain: int = 30) -> pd.DataFrame:
    """A reporting checklist (in the spirit of CLAIM / TRIPOD-AI) filled in from measured values.

    Args:
        domain_table: :func:`~mfmda_lib.evaluation.clinical.ci_table` by domain with ``disc_dice``,
            ``cup_dice`` and ``vcdr_abs_err``.
        screening: the glaucoma-screening result on the target domains.
        ece: :func:`~mfmda_lib.evaluation.calibration.calibration_by_domain` output.
        subgroups: ``ci_table`` by disc-size subgroup with ``cup_dice``.
        inventory: :func:`results_inventory` output.
        failures_shown: worst cases per domain shown to a reader.
        prompt: where the box prompts came from (a limitation when it is the ground truth).
        config: the interval settings.
        min_per_domain: images per site below which the intervals are flagged as wide.

    Returns:
        Index ``item``; columns ``status`` (``reported``, ``caveat`` or ``missing``) and ``evidence``.
    """
    items = []

    def add(item: str, status: str, evidence: str) -> None:
        items.append({"item": item, "status": status, "evidence": evidence})

    sites = [d for d in domain_table.index if d in (SOURCE_DOMAIN, *TARGET_DOMAINS)]
    counts = {d: int(domain_table.loc[d, "n"]) for d in sites}
    add("sites and images per site", "reported" if min(counts.values()) >= min_per_domain else "caveat",
        ", ".join(f"{d}: {n}" for d, n in counts.items())
        + ("" if min(counts.values()) >= min_per_domain else f" (< {min_per_domain} per site: wide intervals)"))
    add("uncertainty of every estimate", "reported",
        f"{config.level} percentile bootstrap over images, {config.n_resamples} resamples")
    targets = [d for d in sites if d in TARGET_DOMAINS]
    if targets:
        worst = min(targets, key=lambda d: domain_table.loc[d, "disc_dice"])
        row = domain_table.loc[worst]
        add("performance per site, worst site named", "reported",
            f"worst disc Dice: {worst} {_ci(row.disc_dice, row.disc_dice_lo, row.disc_dice_hi)}")
    if SOURCE_DOMAIN in sites and targets:
        gap = domain_table.loc[SOURCE_DOMAIN, "cup_dice"] - min(domain_table.loc[d, "cup_dice"] for d in targets)
        add("shift: source vs. worst target", "reported", f"cup Dice drop {gap:+.3f} (source minus worst target)")
    if np.isfinite(screening.auc):
        add("clinical endpoint: glaucoma screening", "reported",
            f"AUC {_ci(screening.auc, screening.auc_lo, screening.auc_hi)} "
            f"({screening.n_positive} suspects, {screening.n_negative} not)")
        add(f"sensitivity at {100 * screening.target_specificity:g}% specificity", "caveat",
            f"{screening.sensitivity_at_specificity:.3f} (threshold {screening.threshold_at_specificity:.3f} "
            "chosen on the same images: optimistic)")
    else:
        add("clinical endpoint: glaucoma screening", "missing", screening.note)
    add(f"operating rule: refer at predicted vCDR >= {screening.rule_threshold:g}",
        "reported" if screening.n_positive and screening.n_negative else "missing",
        f"sensitivity {_ci(screening.sensitivity, screening.sensitivity_lo, screening.sensitivity_hi)}, "
        f"specificity {_ci(screening.specificity, screening.specificity_lo, screening.specificity_hi)}")
    worst_ece = ece["cup_ece"].idxmax()
    add("calibration", "reported",
        f"ECE disc {ece['disc_ece'].mean():.3f}, cup {ece['cup_ece'].mean():.3f} (mean over sites); "
        f"worst cup ECE {worst_ece} {ece.loc[worst_ece, 'cup_ece']:.3f}")
    if len(subgroups) >= 2 and "cup_dice" in subgroups:
        gap = subgroups["cup_dice"].max() - subgroups["cup_dice"].min()
        add("subgroups (disc size)", "reported",
            "; ".join(f"{g}: n={int(r.n)}, cup Dice {_ci(r.cup_dice, r.cup_dice_lo, r.cup_dice_hi)}"
                      for g, r in subgroups.iterrows()) + f"; gap {gap:.3f}")
    else:
        add("subgroups (disc size)", "missing", "fewer than two subgroups")
    add("failure cases shown", "reported" if failures_shown else "missing", f"{failures_shown} worst per site")
    present = inventory[inventory["present"]]
    absent = inventory[~inventory["present"]]
    add("results of the other notebooks", "reported" if absent.empty else "caveat",
        f"{len(present)} of {len(inventory)} results present"
        + (f"; missing: {', '.join(f'{n} (notebook {r.notebook})' for n, r in absent.iterrows())}"
           if len(absent) else ""))
    add("prompts and intended use", "caveat",
        f"boxes from {prompt}; synthetic images; a teaching result, not a clinical validation")
    return pd.DataFrame(items).set_index("item")
