"""Notebook 02 as a few calls: compare pretrained encoders with random init on few labels.

The encoders come from :func:`~mfmda_lib.ssl.pretraining.pretrained_encoder` (:mod:`.pretraining`: a small ViT
pretrained by MAE or DINO on the unlabelled pool of *every* domain, load if present, else train).
:func:`run_label_budgets` trains every downstream head on each label budget of the source
hospital's labelled images, from each encoder, with the same recipe for every encoder, and
scores it on every hospital's test split; the smallest budget is repeated over several draws of
its few labelled images. :func:`select_encoder_lr` first gives each encoder its own fine-tuning
learning rate, chosen on validation images of another random stream, never on the test split.
:func:`label_mean_vcdr` is the constant predictor that every vCDR head must beat; :mod:`.verdict`
turns the smallest budget's numbers into sentences with intervals.
Every size comes from the :class:`~mfmda_lib.profiles.Profile`.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Sequence

import numpy as np
import pandas as pd

from ..data import DOMAINS, SOURCE_DOMAIN, FundusSample, benchmark_samples
from ..data.sample import GLAUCOMA_SUSPECT_VCDR
from ..data.synthetic import generate_sample
from ..environment import paths
from ..evaluation.metrics import auroc
from ..evaluation.reporting import load_result
from ..profiles import Profile
from .downstream import (LABEL_BUDGETS, PROTOCOLS, TASKS, DownstreamConfig, budget_subset, evaluate,
                         train_downstream)
from .vit import ViTEncoder

__all__ = [
    "SSLBenchmark", "TASK_SCORES", "ENCODER_LR_GRID", "validation_samples", "LRSelection",
    "select_encoder_lr", "LR_SELECTION_RESULT", "encoder_lr_configs", "run_label_budgets", "label_mean_vcdr",
    "label_mean_rows",
]

#: Encoder learning rates that :func:`select_encoder_lr` tries for each encoder before fine-tuning.
ENCODER_LR_GRID: tuple[float, ...] = (3e-4, 1e-3)
#: The result notebook 02 saves its selection under (``<results>/ssl_lr_selection_<profile>.json``, ``meta.chosen``);
#: :func:`encoder_lr_configs` reads it, so every notebook fine-tunes an encoder at the rate chosen for it.
LR_SELECTION_RESULT = "ssl_lr_selection"
#: Selection draws use seeds ``profile.seed + SELECTION_SEED_OFFSET + d``: never the seeds of the reported draws.
SELECTION_SEED_OFFSET = 100


@dataclass
class SSLBenchmark:
    """Downstream scores of each encoder.

    Attributes:
        rows: one dict per (task, protocol, init, budget, draw, test image).
        per_draw: one row per (protocol, budget, init, draw): the scores of one draw of labelled images.
        table: one row per (protocol, budget, init): ``per_draw`` averaged over the draws.
        gain: pretrained minus random init, per (protocol, budget, init) (error rows: random minus pretrained,
            so that a positive number is always an improvement).
        meta: sizes and seconds.
    """

    rows: list[dict]
    per_draw: pd.DataFrame
    table: pd.DataFrame
    gain: pd.DataFrame
    meta: dict


#: Scores of each task, as named in the tables; errors are lower-is-better.
TASK_SCORES = {"segmentation": ("source_disc_dice", "source_cup_dice", "target_disc_dice", "target_cup_dice"),
               "vcdr": ("source_vcdr_abs_err", "target_vcdr_abs_err", "suspect_auroc")}
_KEYS = ["protocol", "budget", "init", "draw"]


def _per_draw(rows: list[dict]) -> pd.DataFrame:
    """Scores of each (protocol, budget, init, draw): Dice and vCDR error macro-averaged over domains."""
    df = pd.DataFrame(rows)
    df["group"] = np.where(df["domain"] == SOURCE_DOMAIN, "source", "target")
    parts = []
    seg = df[df["task"] == "segmentation"]
    if len(seg):
        means = seg.groupby(_KEYS + ["group", "domain"])[["disc_dice", "cup_dice"]].mean()  # per domain first
        means = means.groupby(_KEYS + ["group"]).mean().unstack("group")  # then macro over domains
        means.columns = [f"{g}_{m}" for m, g in means.columns]
        parts.append(means)
    vc = df[df["task"] == "vcdr"]
    if len(vc):
        err = vc.groupby(_KEYS + ["group", "domain"])["vcdr_abs_err"].mean().groupby(_KEYS + ["group"]).mean()
        err = err.unstack("group")
        err.columns = [f"{g}_vcdr_abs_err" for g in err.columns]
        auc = vc.groupby(_KEYS).apply(lambda d: auroc(d["suspect"], d["vcdr_pred"]), include_groups=False)
        parts.append(err.join(auc.rename("suspect_auroc")))
    table = parts[0].join(parts[1:]) if len(parts) > 1 else parts[0]
    return table[sorted(table.columns, key=lambda c: (not c.startswith("source"), c))]


def _signed(delta: pd.Series | pd.DataFrame):
    """Flip error columns so that a positive difference always means an improvement."""
    delta = delta.copy()
    for c in (delta.index if isinstance(delta, pd.Series) else delta.columns):
        if c.endswith("err"):
            delta[c] = -delta[c]
    return delta


def _gain(table: pd.DataFrame, baseline: str = "random") -> pd.DataFrame:
    out = []
    for (protocol, budget), block in table.groupby(level=["protocol", "budget"]):
        base = block.xs(baseline, level="init").iloc[0]
        for init, row in block.xs((protocol, budget), level=["protocol", "budget"]).iterrows():
            if init != baseline:
                out.append({"protocol": protocol, "budget": budget, "init": init, **_signed(row - base).to_dict()})
    return pd.DataFrame(out).set_index(["protocol", "budget", "init"])


# ---------------------------------------------------------------------------------------------
# choosing each encoder's fine-tuning learning rate on validation images
# ---------------------------------------------------------------------------------------------

def _labelled_source(profile: Profile, config: DownstreamConfig) -> tuple[list[FundusSample], int, int]:
    """The source hospital's labelled ``train`` images and the ``(epochs, steps_per_epoch)`` of every run:
    an "epoch" is one pass over the full labelled set, and every run takes ``ssl_downstream_steps`` steps."""
    source = benchmark_samples(profile, "train", profile.train_per_domain, domains=[SOURCE_DOMAIN])
    steps_per_epoch = math.ceil(len(source) / config.batch_size)
    return source, math.ceil(profile.ssl_downstream_steps / steps_per_epoch), steps_per_epoch


def _drawn_labels(profile: Profile, source: Sequence[FundusSample], budget: float, draw: int,
                  config: DownstreamConfig, offset: int = 0) -> tuple[list[FundusSample], int]:
    """Draw ``draw`` of a ``budget`` of the labelled ``source`` images, and its seed ``profile.seed + offset + draw``
    (``offset`` 0: the reported draws; model selection uses :data:`SELECTION_SEED_OFFSET`, apart from them)."""
    seed = profile.seed + offset + draw
    return budget_subset(source, budget, min_images=config.min_images, seed=seed), seed


def validation_samples(profile: Profile, n_per_domain: int | None = None) -> list[FundusSample]:
    """Labelled images of every hospital for model selection: the generator's ``val`` stream.

    An independent random stream of the synthetic generator (:func:`~mfmda_lib.data.synthetic.generate_sample`
    with ``split="val"``): never in the unlabelled pool (``train``), the labelled source images (``train``)
    or the reported scores (``test``). ``n_per_domain`` defaults to ``profile.eval_per_domain``.
    """
    n = profile.eval_per_domain if n_per_domain is None else n_per_domain
    return [generate_sample(d, i, split="val", size=profile.image_size, severity=profile.severity, seed=profile.seed)
            for d in DOMAINS for i in range(n)]


@dataclass
class LRSelection:
    """Outcome of :func:`select_encoder_lr`.

    Attributes:
        table: one row per (init, lr_encoder): validation disc and cup Dice (target hospitals' mean, over the
            selection draws) and ``score``, their mean, which decides.
        best: the chosen ``lr_encoder`` of each init.
        configs: one :class:`DownstreamConfig` per init, the base config with the chosen ``lr_encoder``.
    """

    table: pd.DataFrame
    best: dict[str, float]
    configs: dict[str, DownstreamConfig]


def select_encoder_lr(profile: Profile, encoders: dict[str, ViTEncoder], *, grid: Sequence[float] = ENCODER_LR_GRID,
                      config: DownstreamConfig | None = None, draws: int | None = None,
                      validation: Sequence | None = None, progress: bool = True) -> LRSelection:
    """Each encoder's own fine-tuning learning rate, chosen on validation images, never on the test split.

    A pretrained encoder and a random one need not want the same step size (a random encoder has
    everything to learn; a pretrained one can be pushed off what it knows), so a fair comparison
    gives each its best. For every encoder and every ``lr_encoder`` in ``grid``, fine-tune the
    segmentation head at the smallest label budget on ``draws`` (default ``profile.ssl_select_draws``)
    draws of labelled source images, seeded apart from the reported draws, and score disc and cup
    Dice on ``validation`` (default :func:`validation_samples`) of the target hospitals. The
    highest mean Dice wins; the chosen rate is then used for both tasks.

    Note that this selection reads *labelled target-hospital* validation images, which a real
    deployment may not have ("oracle" selection in DomainBed's terms); it is the same for every encoder.
    """
    from tqdm.auto import tqdm

    config = config or DownstreamConfig()
    draws = profile.ssl_select_draws if draws is None else draws
    validation = list(validation) if validation is not None else validation_samples(profile)
    source, epochs, steps_per_epoch = _labelled_source(profile, config)
    runs = [(init, lr, d) for init in encoders for lr in grid for d in range(draws)]
    rows = []
    for init, lr, draw in tqdm(runs, desc="learning-rate selection", disable=not progress):
        train, seed = _drawn_labels(profile, source, min(LABEL_BUDGETS), draw, config, SELECTION_SEED_OFFSET)
        run_config = replace(config, lr_encoder=lr)
        model = train_downstream(encoders[init], "segmentation", "finetune", train, epochs=epochs,
                                 steps_per_epoch=steps_per_epoch, config=run_config, seed=seed)
        rows += [r for r in evaluate(model, validation, init=init, lr_encoder=lr, draw=draw)
                 if r["domain"] != SOURCE_DOMAIN]
    df = pd.DataFrame(rows)
    table = (df.groupby(["init", "lr_encoder", "draw", "domain"])[["disc_dice", "cup_dice"]].mean()
             .groupby(["init", "lr_encoder"]).mean())  # per draw and hospital, then averaged
    table["score"] = table[["disc_dice", "cup_dice"]].mean(axis=1)
    best = {init: float(table.loc[init, "score"].idxmax()) for init in encoders}
    return LRSelection(table, best, {init: replace(config, lr_encoder=lr) for init, lr in best.items()})


def encoder_lr_configs(profile: Profile, encoders: dict[str, ViTEncoder], *, config: DownstreamConfig | None = None,
                       progress: bool = True) -> tuple[dict[str, DownstreamConfig], str]:
    """Each encoder's fine-tuning config at the ``lr_encoder`` notebook 02's selection chose for it.

    Reads the selection notebook 02 saved for this profile (:data:`LR_SELECTION_RESULT` in
    ``paths().results``, its ``meta.chosen``) when it was made on :data:`ENCODER_LR_GRID` and covers every
    init of ``encoders``; otherwise selects now with :func:`select_encoder_lr` (same validation images,
    draws and grid). Every other field comes from ``config`` (default :class:`DownstreamConfig`).

    Returns:
        ``({init: config}, origin)``: origin names the file the rates were read from, or ``"selected now"``.
    """
    config = config or DownstreamConfig()
    saved = load_result(paths().results, LR_SELECTION_RESULT, profile.name)
    meta = (saved or {}).get("meta", {})
    chosen = meta.get("chosen") or {}
    grid = [float(lr) for lr in meta.get("grid", [])]
    if grid == [float(lr) for lr in ENCODER_LR_GRID] and all(chosen.get(init) in grid for init in encoders):
        origin = str(paths().results / f"{LR_SELECTION_RESULT}_{profile.name}.json")
        return {init: replace(config, lr_encoder=float(chosen[init])) for init in encoders}, origin
    selection = select_encoder_lr(profile, encoders, config=config, progress=progress)
    return {init: selection.configs[init] for init in encoders}, "selected now"


def run_label_budgets(profile: Profile, encoders: dict[str, ViTEncoder], *,
                      budgets: Sequence[float] = LABEL_BUDGETS, tasks: Sequence[str] = TASKS,
                      protocols: Sequence[str] = PROTOCOLS,
                      config: DownstreamConfig | dict[str, DownstreamConfig] | None = None,
                      draws: int | None = None, progress: bool = True) -> SSLBenchmark:
    """Train and score every (task, protocol, encoder, budget) on the profile's benchmark.

    Labelled training images: a ``budget`` fraction of the source hospital's ``train_per_domain``
    images (nested subsets). The smallest budget, where the few images drawn decide much, is run
    on ``draws`` (default ``profile.ssl_label_draws``) independent draws of its images, each with
    its own training seed and the same draw for every encoder; larger budgets on one. Every run
    takes ``ssl_downstream_steps`` steps, so budgets differ in labels, not compute, and every
    encoder gets the same recipe (:class:`~mfmda_lib.ssl.downstream.DownstreamConfig`), or, with a
    dict ``config`` (``init -> config``, e.g. :attr:`LRSelection.configs`), its own. Test: the first
    ``eval_per_domain`` test images of every hospital. ``encoders`` must include ``"random"``.
    """
    from tqdm.auto import tqdm

    if "random" not in encoders:
        raise ValueError("run_label_budgets: pass a randomly initialised encoder as encoders['random'] (the baseline)")
    configs = config if isinstance(config, dict) else {init: config or DownstreamConfig() for init in encoders}
    missing = set(encoders) - set(configs)
    if missing:
        raise ValueError(f"run_label_budgets: no DownstreamConfig for encoder(s) {sorted(missing)}")
    config = configs["random"]  # batch size and minimum images: shared by every encoder
    if any((c.batch_size, c.min_images) != (config.batch_size, config.min_images) for c in configs.values()):
        raise ValueError("run_label_budgets: every encoder's config must share batch_size and min_images "
                         "(the same labelled images and steps for all)")
    draws = profile.ssl_label_draws if draws is None else draws
    if draws < 1:
        raise ValueError(f"run_label_budgets: draws must be >= 1, got {draws}")
    source, epochs, steps_per_epoch = _labelled_source(profile, config)
    test = benchmark_samples(profile, "test", profile.eval_per_domain)
    runs = [(t, p, i, b, d) for t in tasks for p in protocols for i in encoders for b in budgets
            for d in range(draws if b == min(budgets) else 1)]
    rows, start = [], time.perf_counter()
    for task, protocol, init, budget, draw in tqdm(runs, desc="downstream runs", disable=not progress):
        train, seed = _drawn_labels(profile, source, budget, draw, config)
        model = train_downstream(encoders[init], task, protocol, train, epochs=epochs,
                                 steps_per_epoch=steps_per_epoch, config=configs[init], seed=seed)
        rows += evaluate(model, test, task=task, protocol=protocol, init=init, budget=budget, draw=draw,
                         n_labels=len(train))
    per_draw = _per_draw(rows)
    table = per_draw.groupby(level=["protocol", "budget", "init"]).mean()
    meta = {"n_source_labels": len(source), "n_test_per_domain": profile.eval_per_domain,
            "budgets": list(budgets), "draws_at_smallest_budget": draws,
            "steps_per_run": epochs * steps_per_epoch,
            "downstream_config": asdict(config), "lr_encoder": {init: configs[init].lr_encoder for init in encoders},
            "seconds": round(time.perf_counter() - start, 1)}
    return SSLBenchmark(rows, per_draw, table, _gain(table), meta)


def label_mean_vcdr(profile: Profile, *, draws: int | None = None, config: DownstreamConfig | None = None
                    ) -> pd.DataFrame:
    """The vCDR error of predicting one constant, the mean vCDR of the labelled images, at the smallest budget.

    No encoder, no training: the reference any vCDR head must beat to have learned something from
    its images. Same draws of labelled source images (seeds ``profile.seed + d``) and the same test
    images as :func:`run_label_budgets`. A constant ranks no one, so it has no AUROC.

    Returns:
        One row per draw: ``label_mean`` (the constant), ``source_vcdr_abs_err`` and
        ``target_vcdr_abs_err`` (macro-averaged over hospitals, as in :class:`SSLBenchmark`).
    """
    rows = label_mean_rows(profile, draws=draws, config=config)
    constants = {r["draw"]: r["vcdr_pred"] for r in rows}
    table = _per_draw(rows).droplevel(["protocol", "budget", "init"])  # averaged exactly as the heads' scores
    return table[["source_vcdr_abs_err", "target_vcdr_abs_err"]].assign(label_mean=pd.Series(constants))


def label_mean_rows(profile: Profile, *, draws: int | None = None, config: DownstreamConfig | None = None
                    ) -> list[dict]:
    """The per-image rows behind :func:`label_mean_vcdr` (``protocol="constant"``, ``init="label_mean"``),
    shaped like :attr:`SSLBenchmark.rows`, so that a head can be compared with the constant image by image."""
    config = config or DownstreamConfig()
    draws = profile.ssl_label_draws if draws is None else draws
    source, _, _ = _labelled_source(profile, config)
    test = benchmark_samples(profile, "test", profile.eval_per_domain)
    budget, rows = min(LABEL_BUDGETS), []
    for draw in range(draws):
        train, _ = _drawn_labels(profile, source, budget, draw, config)
        constant = float(np.mean([s.vcdr for s in train]))
        rows += [{"task": "vcdr", "protocol": "constant", "budget": budget, "init": "label_mean", "draw": draw,
                  "domain": s.domain, "sample_id": s.sample_id, "vcdr_abs_err": abs(s.vcdr - constant),
                  "vcdr_pred": constant, "suspect": int(s.vcdr >= GLAUCOMA_SUSPECT_VCDR)} for s in test]
    return rows
