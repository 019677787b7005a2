"""Notebook 02 as a few calls: pretrain (load if present, else train) and compare with random init.

:func:`pretrained_encoder` returns a small ViT pretrained by MAE or DINO on the unlabelled
``train`` images of *every* domain (labels unused), cached under
``<cache>/checkpoints/ssl_<method>_<profile>_<hash>.pt`` so later notebooks reuse it.
:func:`run_label_budgets` trains every downstream head on each label budget of the source
hospital's labelled images, from each encoder, and scores it on every hospital's test split.
Every size comes from the :class:`~mfmda_lib.profiles.Profile`.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..adapt.tta_benchmark import PIXEL_MEAN, PIXEL_STD, to_tensor
from ..data import SOURCE_DOMAIN
from ..profiles import Profile, paths, seed_everything
from ..train import FitConfig, fit
from .dino import DINO, DINOConfig, random_view
from .downstream import (LABEL_BUDGETS, PROTOCOLS, TASKS, DownstreamConfig, auroc, budget_subset, evaluate,
                         train_downstream)
from .mae import MAE, MAEConfig
from .vit import ViTConfig, ViTEncoder, load_encoder, save_encoder

__all__ = ["METHODS", "vit_config", "unlabelled_pool", "checkpoint_path", "pretrained_encoder",
           "to_uint8", "SSLBenchmark", "run_label_budgets"]

#: Self-supervised methods and their config classes.
METHODS = {"mae": MAEConfig, "dino": DINOConfig}
#: Reconstructions kept for the figure: this many images, at this many points of training.
N_SNAPSHOT_IMAGES, N_SNAPSHOTS = 4, 4
#: MAE's own augmentation: random resized crops over this area range, flips, no colour jitter.
MAE_CROP_SCALE = (0.5, 1.0)


def vit_config(profile: Profile) -> ViTConfig:
    """The encoder of the kit's SSL notebooks at the profile's ``ssl_image_size``."""
    return ViTConfig(image_size=profile.ssl_image_size)


def unlabelled_pool(profile: Profile) -> torch.Tensor:
    """The ``train`` images of every domain at ``ssl_image_size``, labels dropped: ``(N, 3, S, S)``."""
    from ..experiments import benchmark_samples  # experiments sits above ssl in the layering

    samples = benchmark_samples(profile, "train", profile.train_per_domain)
    return to_tensor(samples, profile.ssl_image_size)[0]


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Normalised images ``(..., 3, S, S)`` back to displayable ``(..., S, S, 3)`` uint8."""
    pixels = (x * PIXEL_STD + PIXEL_MEAN).clamp(0, 1) * 255
    return pixels.movedim(-3, -1).round().to(torch.uint8).numpy()


def checkpoint_path(profile: Profile, method: str, vit: ViTConfig, config) -> Path:
    """``<cache>/checkpoints/ssl_<method>_<profile>_<hash>.pt``, the hash over all that shapes the weights."""
    key = {"method": method, "profile": profile.name, "n": profile.train_per_domain, "epochs": profile.ssl_epochs,
           "batch": profile.ssl_batch_size, "seed": profile.seed, "severity": profile.severity,
           "vit": asdict(vit), "config": asdict(config), "version": 1}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    return paths().cache / "checkpoints" / f"ssl_{method}_{profile.name}_{digest}.pt"


def _snapshot_epochs(epochs: int) -> list[int]:
    """Epochs (0-based, counted before the epoch runs; ``epochs`` = after training) with a reconstruction."""
    return sorted({round(i * epochs / (N_SNAPSHOTS - 1)) for i in range(N_SNAPSHOTS)})


def pretrained_encoder(profile: Profile, method: str, config=None, *, progress: bool = True
                       ) -> tuple[ViTEncoder, dict, dict[str, torch.Tensor]]:
    """A ViT pretrained by ``method`` (``"mae"`` or ``"dino"``): loaded if its checkpoint exists, else trained.

    Returns:
        ``(encoder in eval mode, info, extras)``: ``info`` has ``trained`` (False when loaded),
        ``loss`` per epoch, ``seconds`` and ``checkpoint``; for MAE ``extras`` holds
        ``snapshot_epochs (T,)``, ``visible`` and ``reconstruction`` ``(T, n, 3, S, S)``: fixed
        images as the encoder saw them and as the model rebuilt them at ``T`` points of training.
    """
    if method not in METHODS:
        raise ValueError(f"unknown SSL method {method!r}: choose one of {sorted(METHODS)}")
    config = config or METHODS[method]()
    vit = vit_config(profile)
    path = checkpoint_path(profile, method, vit, config)
    loaded = load_encoder(path, vit)
    if loaded is not None:
        encoder, info, extras = loaded
        return encoder, {**info, "trained": False, "checkpoint": str(path)}, extras

    seed_everything(profile.seed)
    pool = unlabelled_pool(profile)  # (N, 3, S, S)
    encoder = ViTEncoder(vit)
    steps_per_epoch = math.ceil(len(pool) / profile.ssl_batch_size)
    g = torch.Generator().manual_seed(profile.seed)
    if method == "mae":
        model = MAE(encoder, config)
        probe = pool[torch.linspace(0, len(pool) - 1, N_SNAPSHOT_IMAGES).long()]  # one image per domain
        shots: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

        def snapshot(epoch: int) -> None:
            if epoch in _snapshot_epochs(profile.ssl_epochs) and epoch not in shots:
                shots[epoch] = model.reconstruct(probe, torch.Generator().manual_seed(profile.seed))

        def loss_fn(m, batch):
            return m(batch, g)[0]
    else:
        model = DINO(encoder, config, total_steps=profile.ssl_epochs * steps_per_epoch)

        def snapshot(epoch: int) -> None:
            return None

        def loss_fn(m, batch):
            return m(batch, g)

    def batches(epoch: int):
        snapshot(epoch)
        order = torch.randperm(len(pool), generator=g)
        for i in range(0, len(order), profile.ssl_batch_size):
            batch = pool[order[i:i + profile.ssl_batch_size]]
            yield random_view(batch, MAE_CROP_SCALE, 0.0, g) if method == "mae" else batch

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.95))
    start = time.perf_counter()
    history = fit(model, optimizer, batches, loss_fn, FitConfig(epochs=profile.ssl_epochs),
                  desc=f"{method} pretraining", progress=progress)
    extras: dict[str, torch.Tensor] = {}
    if method == "mae":
        snapshot(profile.ssl_epochs)
        epochs = sorted(shots)
        extras = {"snapshot_epochs": torch.tensor(epochs), "visible": torch.stack([shots[e][0] for e in epochs]),
                  "reconstruction": torch.stack([shots[e][1] for e in epochs])}
    else:
        model.update_teacher()  # the last optimizer step's EMA update
        encoder = model.teacher_encoder  # DINO keeps (and evaluates) the teacher
    info = {"loss": history.train_loss, "seconds": round(time.perf_counter() - start, 1), "n_images": len(pool),
            "steps": profile.ssl_epochs * steps_per_epoch}
    save_encoder(path, encoder, info, extras)
    return encoder.eval(), {**info, "trained": True, "checkpoint": str(path)}, extras


@dataclass
class SSLBenchmark:
    """Downstream scores of each encoder.

    Attributes:
        rows: one dict per (task, protocol, init, budget, test image).
        table: one row per (protocol, budget, init): source and target scores of both tasks.
        gain: pretrained minus random init, per (protocol, budget, init) (error rows: random minus pretrained,
            so that a positive number is always an improvement).
        meta: sizes and seconds.
    """

    rows: list[dict]
    table: pd.DataFrame
    gain: pd.DataFrame
    meta: dict


def _summarise(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    df["group"] = np.where(df["domain"] == SOURCE_DOMAIN, "source", "target")
    keys = ["protocol", "budget", "init"]
    seg = df[df["task"] == "segmentation"]
    seg_means = seg.groupby(keys + ["group", "domain"])[["disc_dice", "cup_dice"]].mean()  # per domain first
    seg_means = seg_means.groupby(keys + ["group"]).mean().unstack("group")  # then macro over domains
    seg_means.columns = [f"{g}_{m}" for m, g in seg_means.columns]
    vc = df[df["task"] == "vcdr"]
    err = vc.groupby(keys + ["group", "domain"])["vcdr_abs_err"].mean().groupby(keys + ["group"]).mean().unstack()
    err.columns = [f"{g}_vcdr_abs_err" for g in err.columns]
    auc = vc.groupby(keys).apply(lambda d: auroc(d["suspect"], d["vcdr_pred"]), include_groups=False)
    table = seg_means.join(err).join(auc.rename("suspect_auroc"))
    return table[sorted(table.columns, key=lambda c: (not c.startswith("source"), c))]


def _gain(table: pd.DataFrame, baseline: str = "random") -> pd.DataFrame:
    out = []
    for (protocol, budget), block in table.groupby(level=["protocol", "budget"]):
        base = block.xs(baseline, level="init").iloc[0]
        for init, row in block.xs((protocol, budget), level=["protocol", "budget"]).iterrows():
            if init == baseline:
                continue
            delta = row - base
            for c in delta.index:
                if c.endswith("err"):
                    delta[c] = -delta[c]  # positive = better for every column
            out.append({"protocol": protocol, "budget": budget, "init": init, **delta.to_dict()})
    return pd.DataFrame(out).set_index(["protocol", "budget", "init"])


def run_label_budgets(profile: Profile, encoders: dict[str, ViTEncoder], *,
                      budgets: Sequence[float] = LABEL_BUDGETS, tasks: Sequence[str] = TASKS,
                      protocols: Sequence[str] = PROTOCOLS, config: DownstreamConfig | None = None,
                      progress: bool = True) -> SSLBenchmark:
    """Train and score every (task, protocol, encoder, budget) on the profile's benchmark.

    Labelled training images: a ``budget`` fraction of the source hospital's ``train_per_domain``
    images (nested subsets). Every run takes ``finetune_epochs`` epochs of as many steps as the
    *full* labelled set would need, so budgets differ in labels, not compute. Test: the first
    ``eval_per_domain`` test images of every hospital. ``encoders`` must include ``"random"``.
    """
    from tqdm.auto import tqdm

    from ..experiments import benchmark_samples

    if "random" not in encoders:
        raise ValueError("run_label_budgets: pass a randomly initialised encoder as encoders['random'] (the baseline)")
    config = config or DownstreamConfig()
    source = benchmark_samples(profile, "train", profile.train_per_domain, domains=[SOURCE_DOMAIN])
    test = benchmark_samples(profile, "test", profile.eval_per_domain)
    steps_per_epoch = math.ceil(len(source) / config.batch_size)
    runs = [(t, p, i, b) for t in tasks for p in protocols for i in encoders for b in budgets]
    rows, start = [], time.perf_counter()
    for task, protocol, init, budget in tqdm(runs, desc="downstream runs", disable=not progress):
        train = budget_subset(source, budget, min_images=config.min_images, seed=profile.seed)
        model = train_downstream(encoders[init], task, protocol, train, epochs=profile.finetune_epochs,
                                 steps_per_epoch=steps_per_epoch, config=config, seed=profile.seed)
        rows += evaluate(model, test, task=task, protocol=protocol, init=init, budget=budget, n_labels=len(train))
    table = _summarise(rows)
    meta = {"n_source_labels": len(source), "n_test_per_domain": profile.eval_per_domain,
            "budgets": list(budgets), "steps_per_run": profile.finetune_epochs * steps_per_epoch,
            "downstream_config": asdict(config), "seconds": round(time.perf_counter() - start, 1)}
    return SSLBenchmark(rows, table, _gain(table), meta)
