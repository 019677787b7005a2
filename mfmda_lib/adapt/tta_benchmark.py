"""The test-time adaptation benchmark of notebook 06: a source model, three regimes, forgetting.

1. :func:`source_model` trains a small :class:`~mfmda_lib.models.unet.UNet` on the source
   domain only (through :func:`mfmda_lib.train.fit`), or loads it when its checkpoint exists.
2. :func:`run_regime` streams target batches through one :class:`~mfmda_lib.adapt.tta.TTAMethod`:

   - ``episodic``: ``reset()`` before every batch (each batch adapted from the source model);
   - ``online``: ``reset()`` at the start of each domain, then keep adapting within it;
   - ``continual``: ``reset()`` once, then one stream over every target domain in turn.

3. :func:`forgetting` scores the method back on the source test set, before and after the stream.
4. :func:`run_tta_benchmark` runs every method in every regime plus the failure settings
   (batch size 1, severity 2) and returns the tables the notebook shows and saves.

Sections: tensors and scoring -> source model -> regimes -> benchmark.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from ..data import SOURCE_DOMAIN, TARGET_DOMAINS, FundusSample
from ..evaluation import dice, per_domain_table, vcdr_error
from ..io import atomic_write
from ..models.unet import UNet, UNetConfig
from ..profiles import Profile, paths, seed_everything
from ..train import FitConfig, fit
from .tta import TTAMethod

__all__ = ["SourceTrainConfig", "to_tensor", "masks_from_logits", "score_logits", "train_source_model",
           "source_model", "REGIMES", "run_regime", "forgetting", "TTAResult", "run_tta_benchmark", "settings_table"]

#: Fixed input normalisation (the same for every domain: no per-image standardisation, which would
#: hide the colour shift that test-time methods are meant to handle).
PIXEL_MEAN, PIXEL_STD = 0.5, 0.25

REGIMES = ("episodic", "online", "continual")
METRICS = ("disc_dice", "cup_dice")


# ---------------------------------------------------------------------------------------------
# tensors and scoring
# ---------------------------------------------------------------------------------------------

def to_tensor(samples: Sequence[FundusSample], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and masks resized to ``size``: ``x (N, 3, size, size)`` normalised, ``y (N, 2, size, size)`` in [0, 1].

    ``y`` holds the area-averaged disc and cup masks (soft at the edges).
    """
    if not samples:
        raise ValueError("to_tensor: no samples")
    images = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).float() / 255  # (N, 3, H, W)
    masks = torch.from_numpy(np.stack([np.stack([s.disc, s.cup]) for s in samples])).float()  # (N, 2, H, W)
    x = F.interpolate(images, size=(size, size), mode="area")
    y = F.interpolate(masks, size=(size, size), mode="area")
    return (x - PIXEL_MEAN) / PIXEL_STD, y


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
    Only Dice and the vCDR error are computed (``segmentation_scores`` also computes HD95, which
    costs more than the adaptation itself over the thousands of predictions of the benchmark).
    """
    disc, cup = masks_from_logits(logits, samples[0].disc.shape[0])
    return [{**tags, "domain": s.domain, "sample_id": s.sample_id, "disc_dice": dice(disc[i], s.disc),
             "cup_dice": dice(cup[i], s.cup), "vcdr_abs_err": vcdr_error(disc[i], cup[i], s.disc, s.cup)}
            for i, s in enumerate(samples)]


def _soft_dice(logits: torch.Tensor, y: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Mean soft Dice over batch and channels: ``(B, C, H, W)`` logits and targets -> scalar."""
    p = torch.sigmoid(logits)
    inter = (p * y).sum(dim=(2, 3))
    return ((2 * inter + eps) / (p.sum(dim=(2, 3)) + y.sum(dim=(2, 3)) + eps)).mean()


# ---------------------------------------------------------------------------------------------
# source model
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SourceTrainConfig:
    """How the source model is trained (epochs and image size come from the profile).

    Attributes:
        unet: the model's shape.
        lr: Adam learning rate.
        batch_size: images per step.
        val_fraction: share of the source training images held out for early stopping.
        patience: early-stopping patience in epochs (None: never stop early).
        jitter: relative brightness/contrast augmentation; kept mild so the source model does not
            learn the target cameras' colours by accident (that is the test-time methods' job).
    """

    unet: UNetConfig = UNetConfig()
    lr: float = 3e-3
    batch_size: int = 8
    val_fraction: float = 0.2
    patience: int | None = 8
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.batch_size < 1:
            raise ValueError(f"SourceTrainConfig: lr must be > 0 and batch_size >= 1, got {self.lr}, {self.batch_size}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"SourceTrainConfig.val_fraction must be in (0, 1), got {self.val_fraction}")


def _augment_batch(x: torch.Tensor, y: torch.Tensor, jitter: float, g: torch.Generator):
    """Random flips (image and masks) and brightness/contrast jitter: same shapes out."""
    if torch.rand(1, generator=g) < 0.5:
        x, y = x.flip(-1), y.flip(-1)
    if torch.rand(1, generator=g) < 0.5:
        x, y = x.flip(-2), y.flip(-2)
    shape = (x.shape[0], 1, 1, 1)
    scale = 1 + jitter * (2 * torch.rand(shape, generator=g) - 1)
    shift = jitter * (2 * torch.rand(shape, generator=g) - 1) / PIXEL_STD
    return x * scale + shift, y


def train_source_model(train: Sequence[FundusSample], val: Sequence[FundusSample], *, size: int, epochs: int,
                       config: SourceTrainConfig | None = None, checkpoint: str | Path | None = None,
                       seed: int = 0, progress: bool = True) -> tuple[UNet, dict]:
    """Train a :class:`UNet` on labelled source images, or load it from ``checkpoint`` if that file exists.

    Args:
        train: labelled source images to fit.
        val: held-out source images; early stopping keeps the epoch with the best mean Dice.
        size: model input side (images are resized).
        epochs: maximum epochs.
        config: :class:`SourceTrainConfig`.
        checkpoint: final weights file; ``<checkpoint>.partial`` holds the resumable run.
        seed: seed of initialisation, shuffling and augmentation.

    Returns:
        ``(model in eval mode, info)`` where ``info`` has ``trained`` (False when loaded), the
        best validation Dice, the number of epochs run and the seconds spent.
    """
    config = config or SourceTrainConfig()
    seed_everything(seed)
    model = UNet(config.unet)
    final = Path(checkpoint) if checkpoint is not None else None
    if final is not None and final.is_file():
        payload = torch.load(final, map_location="cpu", weights_only=True)
        model.load_state_dict(payload["model"])
        return model.eval(), {**payload["info"], "trained": False}

    x, y = to_tensor(train, size)  # (N, 3, S, S), (N, 2, S, S)
    vx, vy = to_tensor(val, size)
    g = torch.Generator().manual_seed(seed)

    def batches(epoch: int):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(order), config.batch_size):
            idx = order[i:i + config.batch_size]
            yield _augment_batch(x[idx], y[idx], config.jitter, g)

    def loss_fn(m, batch):
        bx, by = batch
        logits = m(bx)
        return F.binary_cross_entropy_with_logits(logits, by) + 1 - _soft_dice(logits, by)

    def validate(m) -> float:
        logits = torch.cat([m(vx[i:i + config.batch_size]) for i in range(0, len(vx), config.batch_size)])
        return float(_soft_dice(logits.sign() * 1e3, (vy > 0.5).float()))  # hard Dice of thresholded masks

    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    start = time.perf_counter()
    partial = final.with_name(final.name + ".partial") if final is not None else None
    history = fit(model, optimizer, batches, loss_fn, FitConfig(epochs=epochs, patience=config.patience),
                  validate=validate, checkpoint=partial, desc="source U-Net", progress=progress)
    info = {"trained": True, "val_dice": history.best_score, "best_epoch": history.best_epoch,
            "epochs_run": len(history.epochs), "seconds": round(time.perf_counter() - start, 1),
            "n_train": len(train), "n_val": len(val)}
    if final is not None:
        with atomic_write(final) as handle:
            torch.save({"model": model.state_dict(), "info": info}, handle)
        partial.unlink(missing_ok=True)
    return model.eval(), info


def _checkpoint_path(profile: Profile, config: SourceTrainConfig) -> Path:
    """``<cache>/checkpoints/unet_source_<profile>_<hash>.pt``, the hash over everything that shapes the model."""
    key = {"profile": profile.name, "n": profile.train_per_domain, "size": profile.small_model_size,
           "epochs": profile.small_model_epochs, "seed": profile.seed, "severity": profile.severity,
           "config": asdict(config), "version": 1}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    return paths().cache / "checkpoints" / f"unet_source_{profile.name}_{digest}.pt"


def source_model(profile: Profile, config: SourceTrainConfig | None = None, *,
                 progress: bool = True) -> tuple[UNet, dict]:
    """The source-only U-Net of ``profile``: loaded from the cache if present, else trained and saved.

    Trains on the first ``(1 - val_fraction)`` of the profile's ``train_per_domain`` source
    images and early-stops on the rest; image size and epochs come from the profile.
    """
    from ..experiments import benchmark_samples  # experiments sits above adapt in the layering

    config = config or SourceTrainConfig()
    samples = benchmark_samples(profile, "train", profile.train_per_domain, domains=[SOURCE_DOMAIN])
    n_val = max(1, round(config.val_fraction * len(samples)))
    if len(samples) - n_val < 1:
        raise ValueError(f"source_model: {len(samples)} source images cannot be split into train and validation; "
                         f"raise train_per_domain of profile {profile.name}")
    model, info = train_source_model(samples[:-n_val], samples[-n_val:], size=profile.small_model_size,
                                     epochs=profile.small_model_epochs, config=config,
                                     checkpoint=_checkpoint_path(profile, config), seed=profile.seed,
                                     progress=progress)
    return model, {**info, "checkpoint": str(_checkpoint_path(profile, config))}


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
            x, _ = to_tensor(batch, size)
            rows += score_logits(method.adapt(x), batch, regime=regime, step=step, **tags)
            step += 1
    return rows


def _source_scores(method: TTAMethod, samples: Sequence[FundusSample], batch_size: int, size: int, /, **tags) -> list[dict]:
    rows = []
    for batch in _batches(samples, batch_size):
        rows += score_logits(method.predict(to_tensor(batch, size)[0]), batch, **tags)
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

@dataclass
class TTAResult:
    """Everything notebook 06 shows.

    Attributes:
        table: the headline table: method x target domain (online regime, default severity),
            disc and cup Dice, with a mean row per method.
        settings: index ``(setting, method)``: mean target Dice and its change over source-only
            in each regime and failure setting.
        forgetting: per method, source Dice before and after the continual stream, and the drop.
        rows: every scored image (keys: setting, method, regime, step, domain, scores).
        source_rows: the forgetting evaluation's rows.
        meta: sizes and timings.
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


def run_tta_benchmark(profile: Profile, model: torch.nn.Module, methods: dict[str, Callable[[torch.nn.Module], TTAMethod]],
                      *, failure_severity: float = 2.0, progress: bool = True) -> TTAResult:
    """Every method in every regime, plus the failure settings, on the profile's target test images.

    Settings (``setting`` key of the rows): ``episodic``, ``online``, ``continual`` at the
    profile's severity and ``tta_batch_size``; ``batch size 1`` (online, one image per batch);
    ``severity <failure_severity>`` (online). Forgetting is measured on ``eval_per_domain``
    source test images after the continual stream.

    Args:
        profile: sizes (``eval_per_domain``, ``tta_batch_size``, ``small_model_size``, severity).
        model: the trained source model.
        methods: name -> ``model -> TTAMethod`` (e.g. ``lambda m: Tent(m, config)``).
        failure_severity: the severe-shift setting.

    Returns:
        A :class:`TTAResult`.
    """
    from tqdm.auto import tqdm

    from ..experiments import benchmark_samples

    def stream_at(severity: float | None):
        test = benchmark_samples(profile, "test", profile.eval_per_domain, severity=severity)
        return [(d, [s for s in test if s.domain == d]) for d in TARGET_DOMAINS]

    stream = stream_at(None)
    severe = stream_at(failure_severity)
    source = benchmark_samples(profile, "test", profile.eval_per_domain, domains=[SOURCE_DOMAIN])
    size, bs = profile.small_model_size, profile.tta_batch_size
    settings = [(regime, stream, regime, bs) for regime in ("episodic", "online")]
    settings += [("batch size 1", stream, "online", 1), (f"severity {failure_severity:g}", severe, "online", bs)]
    rows, source_rows, seconds = [], [], {}
    for name, factory in tqdm(methods.items(), desc="TTA methods", disable=not progress):
        start = time.perf_counter()
        method = factory(model)
        for setting, target_stream, regime, batch_size in settings:
            rows += run_regime(method, target_stream, regime, batch_size=batch_size, size=size,
                               method=name, setting=setting)
        continual, src = forgetting(method, stream, source, batch_size=bs, size=size, method=name,
                                    setting="continual")
        rows += continual
        source_rows += src
        seconds[name] = round(time.perf_counter() - start, 1)
    online = [r for r in rows if r["setting"] == "online"]
    table = per_domain_table(online, METRICS, list(TARGET_DOMAINS))
    forgot = _forgetting_table(source_rows)
    meta = {"severity": profile.severity, "failure_severity": failure_severity, "batch_size": bs,
            "n_per_domain": profile.eval_per_domain, "size": size, "seconds_per_method": seconds,
            "source_dice_drop_after_continual": {m: [round(float(r[f"{k}_drop"]), 3) for k in METRICS]
                                                 for m, r in forgot.iterrows()}}
    return TTAResult(table, _settings_table(rows), forgot, rows, source_rows, meta)
