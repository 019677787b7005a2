"""The source models of notebook 06: a small U-Net trained on the source hospital only, once per seed.

:func:`train_source_model` trains a :class:`~mfmda_lib.models.unet.UNet` (through
:func:`mfmda_lib.train.fit`, early stopping on held-out source images) or loads it when its
checkpoint exists; :func:`source_model` does that for a profile and a seed, :func:`source_models`
for each of the profile's :func:`seeds_of`. The test-time methods of :mod:`mfmda_lib.adapt.tta`
then adapt these models in :func:`mfmda_lib.adapt.tta_benchmark.run_tta_benchmark`.

Sections: losses -> source model.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..data import PIXEL_STD, SOURCE_DOMAIN, FundusSample, benchmark_samples, normalised_tensors
from ..environment import paths, seed_everything
from ..io import cached
from ..losses import dice_bce_loss, soft_dice
from ..models.unet import UNet, UNetConfig
from ..profiles import Profile
from ..train import FitConfig, fit

__all__ = ["SourceTrainConfig", "train_source_model", "source_model", "seeds_of", "source_models"]


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
    partial = final.with_name(final.name + ".partial") if final is not None else None
    payload, trained = cached(final, lambda: _train(model, train, val, size, epochs, config, partial, seed, progress))
    if not trained:
        model.load_state_dict(payload["model"])
    if partial is not None:
        partial.unlink(missing_ok=True)
    return model.eval(), {**payload["info"], "trained": trained}


def _train(model: UNet, train: Sequence[FundusSample], val: Sequence[FundusSample], size: int, epochs: int,
           config: SourceTrainConfig, partial: Path | None, seed: int, progress: bool) -> dict:
    """Fit ``model`` in place (resumable from ``partial``); the checkpoint payload ``{"model", "info"}``."""
    x, y = normalised_tensors(train, size)  # (N, 3, S, S), (N, 2, S, S)
    vx, vy = normalised_tensors(val, size)
    g = torch.Generator().manual_seed(seed)

    def batches(epoch: int):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(order), config.batch_size):
            idx = order[i:i + config.batch_size]
            yield _augment_batch(x[idx], y[idx], config.jitter, g)

    def loss_fn(m, batch):
        bx, by = batch
        logits = m(bx)
        return dice_bce_loss(logits, by)

    def validate(m) -> float:
        logits = torch.cat([m(vx[i:i + config.batch_size]) for i in range(0, len(vx), config.batch_size)])
        return float(soft_dice(logits.sign() * 1e3, (vy > 0.5).float()).mean())  # hard Dice of thresholded masks

    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    start = time.perf_counter()
    history = fit(model, optimizer, batches, loss_fn, FitConfig(epochs=epochs, patience=config.patience),
                  validate=validate, checkpoint=partial, desc="source U-Net", progress=progress)
    info = {"trained": True, "val_dice": history.best_score, "best_epoch": history.best_epoch,
            "epochs_run": len(history.epochs), "seconds": round(time.perf_counter() - start, 1),
            "n_train": len(train), "n_val": len(val)}
    return {"model": model.state_dict(), "info": info}


def _checkpoint_path(profile: Profile, config: SourceTrainConfig, seed: int) -> Path:
    """``<cache>/checkpoints/unet_source_<profile>_<hash>.pt``, the hash over everything that shapes the model."""
    key = {"profile": profile.name, "n": profile.train_per_domain, "size": profile.small_model_size,
           "epochs": profile.small_model_epochs, "seed": seed, "severity": profile.severity,
           "config": asdict(config), "version": 1}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    return paths().cache / "checkpoints" / f"unet_source_{profile.name}_{digest}.pt"


def source_model(profile: Profile, config: SourceTrainConfig | None = None, *, seed: int | None = None,
                 progress: bool = True) -> tuple[UNet, dict]:
    """The source-only U-Net of ``profile``: loaded from the cache if present, else trained and saved.

    Trains on the first ``(1 - val_fraction)`` of the profile's ``train_per_domain`` source
    images and early-stops on the rest; image size and epochs come from the profile. ``seed``
    (default ``profile.seed``) seeds initialisation, batch order and augmentation; the images are
    the same for every seed.
    """
    config = config or SourceTrainConfig()
    seed = profile.seed if seed is None else seed
    samples = benchmark_samples(profile, "train", profile.train_per_domain, domains=[SOURCE_DOMAIN])
    n_val = max(1, round(config.val_fraction * len(samples)))
    if len(samples) - n_val < 1:
        raise ValueError(f"source_model: {len(samples)} source images cannot be split into train and validation; "
                         f"raise train_per_domain of profile {profile.name}")
    checkpoint = _checkpoint_path(profile, config, seed)
    model, info = train_source_model(samples[:-n_val], samples[-n_val:], size=profile.small_model_size,
                                     epochs=profile.small_model_epochs, config=config, checkpoint=checkpoint,
                                     seed=seed, progress=progress)
    return model, {**info, "seed": seed, "checkpoint": str(checkpoint)}


def seeds_of(profile: Profile) -> list[int]:
    """The seeds a verdict rests on: ``profile.seed, profile.seed + 1, ...`` (``profile.verdict_seeds`` of them)."""
    return [profile.seed + i for i in range(profile.verdict_seeds)]


def source_models(profile: Profile, seeds: Sequence[int] | None = None, config: SourceTrainConfig | None = None, *,
                  progress: bool = True) -> dict[int, tuple[UNet, dict]]:
    """:func:`source_model` for each seed (default :func:`seeds_of`): ``{seed: (model, info)}``."""
    return {s: source_model(profile, config, seed=s, progress=progress) for s in (seeds or seeds_of(profile))}
