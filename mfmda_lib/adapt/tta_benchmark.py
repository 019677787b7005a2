"""The test-time adaptation benchmark of notebook 06: three regimes, forgetting, seeds.

1. :mod:`mfmda_lib.adapt.tta_source` trains the source models (one per seed).
2. :func:`run_regime` streams target batches through one :class:`~mfmda_lib.adapt.tta_base.TTAMethod`:

   - ``episodic``: ``reset()`` before every batch (each batch adapted from the source model);
   - ``online``: ``reset()`` at the start of each domain, then keep adapting within it;
   - ``continual``: ``reset()`` once, then one stream over every target domain in turn.

3. :func:`forgetting` scores the method back on the source test set, before and after the stream.
4. :func:`run_tta_benchmark` runs every method in every regime plus the failure settings
   (batch size 1, severity 2), once per seed (a source model trained with that seed, and the
   method's own random draws seeded with it), and returns the tables the notebook shows and
   saves. :mod:`mfmda_lib.adapt.tta_verdicts` turns its rows into paired comparisons with intervals.

Sections: tensors and scoring -> regimes -> benchmark.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping, Sequence, Union

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from ..data import SOURCE_DOMAIN, TARGET_DOMAINS, FundusSample, benchmark_samples, normalised_tensors
from ..evaluation import dice, per_domain_table, vcdr_error
from ..profiles import Profile
from .tta_base import TTAConfig, TTAMethod

__all__ = ["masks_from_logits", "score_logits", "REGIMES", "run_regime", "forgetting", "TTAData",
           "tta_data", "TTAResult", "run_tta_benchmark", "settings_table"]

REGIMES = ("episodic", "online", "continual")
METRICS = ("disc_dice", "cup_dice")


# ---------------------------------------------------------------------------------------------
# tensors and scoring
# ---------------------------------------------------------------------------------------------

def masks_from_logits(logits: torch.Tensor, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Upsample ``(N, 2, h, w)`` logits to ``size`` and threshold: disc and cup ``(N, size, size)`` bool.

    The cup is clipped to the disc (it lies inside it by definition).
    """
    up = F.interpolate(logits.detach().float().cpu(), size=(size, size), mode="bilinear", align_corners=False)
    disc, cup = (up[:, 0] > 0).numpy(), (up[:, 1] > 0).numpy()
    return disc, cup & disc


def score_logits(logits: torch.Tensor, samples: Sequence[FundusSample], **tags) -> list[dict]:
    """One row per sample: ``tags`` (method, regime, ...), ``domain``, ``sample_id``, disc and cup Dice.

    Predictions are upsampled to the sample's size and scored against its full-resolution masks.
    Only Dice, the vCDR error and the empty-prediction flags are computed (``segmentation_scores``
    also computes HD95, which costs more than the adaptation itself over the thousands of
    predictions of the benchmark).
    """
    disc, cup = masks_from_logits(logits, samples[0].disc.shape[0])
    return [{**tags, "domain": s.domain, "sample_id": s.sample_id, "disc_dice": dice(disc[i], s.disc),
             "cup_dice": dice(cup[i], s.cup), "vcdr_abs_err": vcdr_error(disc[i], cup[i], s.disc, s.cup),
             "disc_empty": not disc[i].any(), "cup_empty": not cup[i].any()}
            for i, s in enumerate(samples)]


# ---------------------------------------------------------------------------------------------
# regimes
# ---------------------------------------------------------------------------------------------

def _batches(samples: Sequence[FundusSample], batch_size: int):
    for i in range(0, len(samples), batch_size):
        yield list(samples[i:i + batch_size])


def run_regime(method: TTAMethod, stream: Sequence[tuple[str, Sequence[FundusSample]]], regime: str, /, *,
               batch_size: int, size: int, **tags) -> list[dict]:
    """Adapt ``method`` along ``stream`` (``[(domain, samples), ...]``) in one regime; score every image.

    Args:
        method: a wrapped model; it is ``reset()`` per batch (episodic), per domain (online) or
            once at the start (continual).
        stream: the target domains in order, each with its test images.
        regime: one of :data:`REGIMES`.
        batch_size: test images per ``adapt`` call.
        size: model input side.
        tags: extra keys for every row (e.g. ``method="tent"``).

    Returns:
        Per-image rows with ``regime``, ``step`` (batch number along the stream) and the scores.
    """
    if regime not in REGIMES:
        raise ValueError(f"run_regime: regime must be one of {REGIMES}, got {regime!r}")
    rows, step = [], 0
    method.reset()
    for domain, samples in stream:
        if regime == "online":
            method.reset()
        for batch in _batches(samples, batch_size):
            if regime == "episodic":
                method.reset()
            x, _ = normalised_tensors(batch, size)
            rows += score_logits(method.adapt(x), batch, regime=regime, step=step, **tags)
            step += 1
    return rows


def _source_scores(method: TTAMethod, samples: Sequence[FundusSample], batch_size: int, size: int, /, **tags) -> list[dict]:
    rows = []
    for batch in _batches(samples, batch_size):
        rows += score_logits(method.predict(normalised_tensors(batch, size)[0]), batch, **tags)
    return rows


def forgetting(method: TTAMethod, stream: Sequence[tuple[str, Sequence[FundusSample]]],
               source: Sequence[FundusSample], /, *, batch_size: int, size: int, **tags) -> tuple[list[dict], list[dict]]:
    """Continual stream, then the source test set scored with ``predict`` (no update) before and after.

    Returns:
        ``(stream_rows, source_rows)``; ``source_rows`` carry ``when`` = ``"before"`` / ``"after"``.
    """
    method.reset()
    before = _source_scores(method, source, batch_size, size, when="before", **tags)
    rows = run_regime(method, stream, "continual", batch_size=batch_size, size=size, **tags)
    after = _source_scores(method, source, batch_size, size, when="after", **tags)
    return rows, before + after


# ---------------------------------------------------------------------------------------------
# benchmark
# ---------------------------------------------------------------------------------------------

#: How the benchmark builds a method: a class and its config (the seed is set per run), or
#: ``(model, seed) -> TTAMethod``.
MethodSpec = Union[tuple[type[TTAMethod], TTAConfig], Callable[[torch.nn.Module, int], TTAMethod]]
Stream = list[tuple[str, list[FundusSample]]]


@dataclass
class TTAData:
    """The images of one benchmark run.

    Attributes:
        stream: the target domains in order, each with its test images (default severity).
        severe: the same domains at ``failure_severity``.
        source: source-domain test images (forgetting).
        failure_severity: the severe-shift setting.
    """

    stream: Stream
    severe: Stream
    source: list[FundusSample]
    failure_severity: float


def tta_data(profile: Profile, failure_severity: float = 2.0) -> TTAData:
    """``eval_per_domain`` test images of every target domain (at the profile's severity and at
    ``failure_severity``) and of the source domain."""
    def stream_at(severity: float | None) -> Stream:
        test = benchmark_samples(profile, "test", profile.eval_per_domain, severity=severity)
        return [(d, [s for s in test if s.domain == d]) for d in TARGET_DOMAINS]

    source = benchmark_samples(profile, "test", profile.eval_per_domain, domains=[SOURCE_DOMAIN])
    return TTAData(stream_at(None), stream_at(failure_severity), source, failure_severity)


@dataclass
class TTAResult:
    """Everything notebook 06 shows.

    Attributes:
        table: the headline table: method x target domain (online regime, default severity),
            disc and cup Dice over every seed and image, with a mean row per method.
        settings: index ``(setting, method)``: mean target Dice and its change over source-only
            in each regime and failure setting.
        forgetting: per method, source Dice before and after the continual stream, and the drop.
        rows: every scored image (keys: seed, setting, method, regime, step, domain, scores).
        source_rows: the forgetting evaluation's rows (key ``when``: before / after).
        meta: sizes, seeds and timings.
    """

    table: pd.DataFrame
    settings: pd.DataFrame
    forgetting: pd.DataFrame
    rows: list[dict]
    source_rows: list[dict]
    meta: dict = field(default_factory=dict)


def _settings_table(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    # mean over domains of the per-domain means (every domain weighs the same)
    per_domain = frame.groupby(["setting", "method", "domain"], sort=False)[list(METRICS)].mean()
    table = per_domain.groupby(level=["setting", "method"], sort=False).mean()
    for m in METRICS:
        base = table[m].xs("source_only", level="method")
        table[f"delta_{m}"] = table[m] - base.reindex(table.index.get_level_values("setting")).to_numpy()
    return table


#: :attr:`TTAResult.settings` from saved per-image rows (``make figures`` redraws the settings figure with it).
settings_table = _settings_table


def _forgetting_table(source_rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(source_rows)
    table = frame.pivot_table(index="method", columns="when", values=list(METRICS), aggfunc="mean", sort=False)
    out = pd.DataFrame(index=table.index)
    for m in METRICS:
        out[f"{m}_before"], out[f"{m}_after"] = table[(m, "before")], table[(m, "after")]
        out[f"{m}_drop"] = out[f"{m}_before"] - out[f"{m}_after"]
    return out


def _build(spec: MethodSpec, model: torch.nn.Module, seed: int) -> TTAMethod:
    if isinstance(spec, tuple):
        cls, config = spec
        return cls(model, replace(config, seed=seed))
    return spec(model, seed)


def _run_method(method: TTAMethod, data: TTAData, settings: list[tuple], /, *, batch_size: int, size: int,
                **tags) -> tuple[list[dict], list[dict]]:
    """One method, one seed: every setting, then the continual stream with forgetting.

    A method that restores the source after every image (``episodic_per_image``, MEMO) predicts
    the same whatever the regime and batch size, so it runs once per image set: its rows of the
    other settings on that set are those of the first run (relabelled; ``step`` numbers are the
    first run's), and forgetting is its source scores before and after that run.
    """
    rows, done = [], {}
    for setting, stream, regime, bs in settings:
        key = id(stream) if method.episodic_per_image else (setting,)
        if key in done:
            rows += [dict(r, setting=setting, regime=regime) for r in done[key]]
            continue
        done[key] = run_regime(method, stream, regime, batch_size=bs, size=size, setting=setting, **tags)
        rows += done[key]
    if method.episodic_per_image:
        before = _source_scores(method, data.source, batch_size, size, when="before", setting="continual", **tags)
        continual = [dict(r, setting="continual", regime="continual") for r in done[id(data.stream)]]
        after = _source_scores(method, data.source, batch_size, size, when="after", setting="continual", **tags)
        return rows + continual, before + after
    continual, src = forgetting(method, data.stream, data.source, batch_size=batch_size, size=size,
                                setting="continual", **tags)
    return rows + continual, src


def run_tta_benchmark(profile: Profile, models: torch.nn.Module | Mapping[int, torch.nn.Module],
                      methods: Mapping[str, MethodSpec], *, data: TTAData | None = None,
                      progress: bool = True) -> TTAResult:
    """Every method in every regime, plus the failure settings, for each seed's source model.

    Settings (``setting`` key of the rows): ``episodic``, ``online``, ``continual`` at the
    profile's severity and ``tta_batch_size``; ``batch size 1`` (online, one image per batch);
    ``severity <failure_severity>`` (online). Forgetting is measured on the source test images
    after the continual stream.

    Args:
        profile: sizes (``tta_batch_size``, ``small_model_size``; ``eval_per_domain`` and the
            severity through :func:`tta_data`).
        models: ``{seed: trained source model}`` (e.g. from :func:`source_models`), or one model
            (seed ``profile.seed``). Each seed's methods draw their randomness from that seed.
        methods: name -> ``(TTAMethod subclass, TTAConfig)`` or ``(model, seed) -> TTAMethod``.
        data: the images (default :func:`tta_data` of ``profile``).

    Returns:
        A :class:`TTAResult`; every row carries its ``seed``.
    """
    from tqdm.auto import tqdm

    models = models if isinstance(models, Mapping) else {profile.seed: models}
    data = data or tta_data(profile)
    size, bs = profile.small_model_size, profile.tta_batch_size
    settings = [(regime, data.stream, regime, bs) for regime in ("episodic", "online")]
    settings += [("batch size 1", data.stream, "online", 1),
                 (f"severity {data.failure_severity:g}", data.severe, "online", bs)]
    rows, source_rows, seconds, reused = [], [], {}, []
    runs = [(seed, name) for seed in models for name in methods]
    for seed, name in tqdm(runs, desc="TTA seeds x methods", disable=not progress):
        start = time.perf_counter()
        method = _build(methods[name], models[seed], seed)
        if method.episodic_per_image and name not in reused:
            reused.append(name)
        new_rows, new_source = _run_method(method, data, settings, batch_size=bs, size=size, method=name, seed=seed)
        rows += new_rows
        source_rows += new_source
        seconds[name] = round(seconds.get(name, 0.0) + time.perf_counter() - start, 1)
    online = [r for r in rows if r["setting"] == "online"]
    table = per_domain_table(online, METRICS, list(TARGET_DOMAINS))
    forgot = _forgetting_table(source_rows)
    meta = {"severity": profile.severity, "failure_severity": data.failure_severity, "batch_size": bs,
            "n_per_domain": len(data.stream[0][1]), "size": size, "seeds": list(models),
            "seconds_per_method": seconds,
            "source_dice_drop_after_continual": {m: [round(float(r[f"{k}_drop"]), 3) for k in METRICS]
                                                 for m, r in forgot.iterrows()}}
    if reused:
        meta["run_once_per_image_set"] = reused
    return TTAResult(table, _settings_table(rows), forgot, rows, source_rows, meta)
