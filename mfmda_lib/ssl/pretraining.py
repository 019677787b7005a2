"""Pretrain a small ViT by MAE or DINO on the unlabelled pool of every domain, or load it if present
(:func:`pretrained_encoder`, cached under ``<cache>/checkpoints/ssl_<method>_<profile>_<hash>.pt`` so later notebooks
reuse it): a fixed number of steps with a linear warm-up and a cosine decay of the learning rate, as both papers do."""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..data import PIXEL_MEAN, PIXEL_STD
from ..environment import paths, seed_everything
from ..profiles import Profile
from ..train import FitConfig, fit
from .dino import DINO, DINOConfig, random_view
from .mae import MAE, MAEConfig
from .pool import unlabelled_pool
from .vit import ViTConfig, ViTEncoder, load_encoder, save_encoder

__all__ = [
    "SSL_METHODS", "SSLMethod", "vit_config", "to_uint8", "pretraining_steps", "checkpoint_path", "warmup_cosine",
    "pretrained_encoder",
]

#: Reconstructions kept for the figure: this many images, at this many points of training.
N_SNAPSHOT_IMAGES, N_SNAPSHOTS = 4, 4
#: MAE's own augmentation: random resized crops over this area range and flips.
MAE_CROP_SCALE = (0.5, 1.0)
#: Share of the pretraining steps spent warming the learning rate up linearly from 0.
WARMUP_FRACTION = 0.05


def vit_config(profile: Profile) -> ViTConfig:
    """The encoder of the kit's SSL notebooks at the profile's ``ssl_image_size``."""
    return ViTConfig(image_size=profile.ssl_image_size)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Normalised images ``(..., 3, S, S)`` back to displayable ``(..., S, S, 3)`` uint8."""
    pixels = (x * PIXEL_STD + PIXEL_MEAN).clamp(0, 1) * 255
    return pixels.movedim(-3, -1).round().to(torch.uint8).numpy()


def pretraining_steps(profile: Profile, method: str) -> int:
    """Optimisation steps of ``method``'s pretraining in ``profile``."""
    return SSL_METHODS[method].steps(profile)


def checkpoint_path(profile: Profile, method: str, vit: ViTConfig, config) -> Path:
    """``<cache>/checkpoints/ssl_<method>_<profile>_<hash>.pt``, the hash over all that shapes the weights."""
    key = {"method": method, "profile": profile.name, "pool": profile.ssl_pool_per_domain,
           "image_size": profile.image_size, "steps": pretraining_steps(profile, method),
           "batch": profile.ssl_batch_size, "seed": profile.seed, "severity": profile.severity,
           "warmup": WARMUP_FRACTION, "vit": asdict(vit), "config": asdict(config), "version": 2}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    return paths().cache / "checkpoints" / f"ssl_{method}_{profile.name}_{digest}.pt"


def warmup_cosine(total_steps: int, warmup_fraction: float = WARMUP_FRACTION) -> Callable[[int], float]:
    """Learning-rate factor of step ``t``: linear warm-up to 1, then half a cosine down to 0."""
    warmup = max(1, round(warmup_fraction * total_steps))

    def factor(t: int) -> float:
        if t < warmup:
            return (t + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (t - warmup) / max(1, total_steps - warmup))))

    return factor


def _snapshot_epochs(epochs: int) -> list[int]:
    """Epochs (0-based, counted before the epoch runs; ``epochs`` = after training) with a reconstruction."""
    return sorted({round(i * epochs / (N_SNAPSHOTS - 1)) for i in range(N_SNAPSHOTS)})


def _optimizer(model: torch.nn.Module, config, steps: int
               ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the trainable parameters (betas 0.9, 0.95) and its warm-up + cosine schedule over ``steps``."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.95))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps))


def _snapshots(shots: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """MAE's ``(visible, reconstruction)`` snapshots by epoch as the stacked ``extras`` of its checkpoint."""
    shot_epochs = sorted(shots)
    return {"snapshot_epochs": torch.tensor(shot_epochs),
            "visible": torch.stack([shots[e][0] for e in shot_epochs]),
            "reconstruction": torch.stack([shots[e][1] for e in shot_epochs])}


def _teacher_entropy_per_epoch(entropy: list[tuple[float, float]], steps_per_epoch: int, out_dim: int) -> dict:
    """DINO's per-step teacher entropies ``(h_sample, h_mean)`` averaged per epoch, and ``log K`` (their ceiling)."""
    per_epoch = [entropy[i:i + steps_per_epoch] for i in range(0, len(entropy), steps_per_epoch)]
    return {"teacher_entropy": [[float(np.mean([h[k] for h in chunk])) for k in (0, 1)] for chunk in per_epoch],
            "log_k": math.log(out_dim)}


class _MAERun:
    """MAE's part of a pretraining run: random resized crops, the masked-reconstruction loss, and
    reconstructions of fixed images at :data:`N_SNAPSHOTS` points (the checkpoint's ``extras``)."""

    def __init__(self, encoder: ViTEncoder, config: MAEConfig, pool: torch.Tensor, steps: int, steps_per_epoch: int,
                 seed: int, g: torch.Generator) -> None:
        self.model = MAE(encoder, config)
        self.probe = pool[torch.linspace(0, len(pool) - 1, N_SNAPSHOT_IMAGES).long()]  # one image per domain
        self.epochs, self.seed, self.g = math.ceil(steps / steps_per_epoch), seed, g
        self.shots: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def start_epoch(self, epoch: int) -> None:
        if epoch in _snapshot_epochs(self.epochs) and epoch not in self.shots:
            self.shots[epoch] = self.model.reconstruct(self.probe, torch.Generator().manual_seed(self.seed))

    def view(self, batch: torch.Tensor) -> torch.Tensor:
        return random_view(batch, MAE_CROP_SCALE, self.g)

    def loss(self, model: MAE, batch: torch.Tensor) -> torch.Tensor:
        return model(batch, self.g)[0]

    def finish(self, encoder: ViTEncoder, info: dict) -> tuple[ViTEncoder, dict, dict[str, torch.Tensor]]:
        self.start_epoch(self.epochs)
        return encoder, info, _snapshots(self.shots)


class _DINORun:
    """DINO's part of a pretraining run: the pool's images as they are (DINO crops inside its loss), the
    self-distillation loss, the teacher's entropy per step; the teacher is the encoder kept."""

    def __init__(self, encoder: ViTEncoder, config: DINOConfig, pool: torch.Tensor, steps: int, steps_per_epoch: int,
                 seed: int, g: torch.Generator) -> None:
        self.model = DINO(encoder, config, total_steps=steps)
        self.out_dim, self.steps_per_epoch, self.g = config.out_dim, steps_per_epoch, g
        self.entropy: list[tuple[float, float]] = []

    def start_epoch(self, epoch: int) -> None:
        return None

    def view(self, batch: torch.Tensor) -> torch.Tensor:
        return batch

    def loss(self, model: DINO, batch: torch.Tensor) -> torch.Tensor:
        loss = model(batch, self.g)
        self.entropy.append(model.entropy)
        return loss

    def finish(self, encoder: ViTEncoder, info: dict) -> tuple[ViTEncoder, dict, dict[str, torch.Tensor]]:
        self.model.update_teacher()  # the last optimizer step's EMA update
        info |= _teacher_entropy_per_epoch(self.entropy, self.steps_per_epoch, self.out_dim)
        return self.model.teacher_encoder, info, {}  # DINO keeps (and evaluates) the teacher


@dataclass(frozen=True)
class SSLMethod:
    """A self-supervised method as a strategy: its config class, its step count in a profile, and its run
    (``_MAERun`` / ``_DINORun``: the model, the view of a batch, the loss, what is kept at the end)."""

    config: type
    steps: Callable[[Profile], int]
    run: type


#: Self-supervised methods: name -> :class:`SSLMethod`.
SSL_METHODS = {"mae": SSLMethod(MAEConfig, lambda p: p.ssl_mae_steps, _MAERun),
               "dino": SSLMethod(DINOConfig, lambda p: p.ssl_dino_steps, _DINORun)}


def pretrained_encoder(profile: Profile, method: str, config=None, *, progress: bool = True
                       ) -> tuple[ViTEncoder, dict, dict[str, torch.Tensor]]:
    """A ViT pretrained by ``method`` (``"mae"`` or ``"dino"``): loaded if its checkpoint exists, else trained.

    Returns:
        ``(encoder in eval mode, info, extras)``: ``info`` has ``trained`` (False when loaded),
        ``loss`` per epoch (one pass over the pool), ``seconds``, ``steps`` and ``checkpoint``; for
        DINO also ``teacher_entropy``, per epoch ``[h_sample, h_mean]`` (see
        :func:`~mfmda_lib.ssl.dino.teacher_entropy`) and ``log_k``; for MAE ``extras`` holds
        ``snapshot_epochs (T,)``, ``visible`` and ``reconstruction`` ``(T, n, 3, S, S)``: fixed
        images as the encoder saw them and as the model rebuilt them at ``T`` points of training.
    """
    if method not in SSL_METHODS:
        raise ValueError(f"unknown SSL method {method!r}: choose one of {sorted(SSL_METHODS)}")
    config = config or SSL_METHODS[method].config()
    vit = vit_config(profile)
    path = checkpoint_path(profile, method, vit, config)
    if (loaded := load_encoder(path, vit)) is not None:
        encoder, info, extras = loaded
        return encoder, {**info, "trained": False, "checkpoint": str(path)}, extras

    pool = unlabelled_pool(profile, progress=progress)  # (N, 3, S, S)
    seed_everything(profile.seed)
    encoder = ViTEncoder(vit)
    steps, batch_size = pretraining_steps(profile, method), min(profile.ssl_batch_size, len(pool))
    steps_per_epoch = len(pool) // batch_size  # full batches only
    epochs = math.ceil(steps / steps_per_epoch)
    g = torch.Generator().manual_seed(profile.seed)
    run = SSL_METHODS[method].run(encoder, config, pool, steps, steps_per_epoch, profile.seed, g)
    model = run.model
    optimizer, scheduler = _optimizer(model, config, steps)
    done = [0]

    def batches(epoch: int):
        run.start_epoch(epoch)
        order = torch.randperm(len(pool), generator=g)
        for i in range(steps_per_epoch):
            if done[0] >= steps:
                return
            yield run.view(pool[order[i * batch_size:(i + 1) * batch_size]])
            scheduler.step()  # resumed after fit's optimizer step on the batch just yielded
            done[0] += 1

    start = time.perf_counter()
    history = fit(model, optimizer, batches, run.loss, FitConfig(epochs=epochs),
                  desc=f"{method} pretraining", progress=progress)
    info = {"loss": history.train_loss, "seconds": round(time.perf_counter() - start, 1), "n_images": len(pool),
            "steps": steps, "batch_size": batch_size, "epochs": epochs}
    encoder, info, extras = run.finish(encoder, info)
    save_encoder(path, encoder, info, extras)
    return encoder.eval().requires_grad_(True), {**info, "trained": True, "checkpoint": str(path)}, extras
