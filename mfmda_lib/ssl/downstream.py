"""Downstream evaluation of a (pretrained or random) ViT encoder with few labels.

Two tasks, two protocols, one label-budget knob:

* **tasks**: ``"vcdr"`` regresses the vertical cup-to-disc ratio from the mean patch token (its
  threshold at 0.6 is the glaucoma-suspect label, scored by AUROC); ``"segmentation"`` predicts
  disc and cup logits with a light decoder on the patch tokens (one linear layer per token to
  its ``p x p`` pixels, as in SETR-naive, then a 3 x 3 convolution to smooth patch seams).
* **protocols**: ``"linear_probe"`` freezes the encoder and trains the head only;
  ``"finetune"`` trains both, the encoder with a smaller learning rate; ``"lora"`` (notebook 04)
  freezes the encoder and trains low-rank updates of its attention projections (``peft``) and the head.
* **label budget**: a fraction of the labelled source training images (:data:`LABEL_BUDGETS`).
  Every run takes the same number of optimisation steps, whatever its budget, so a budget
  changes the labels seen, not the compute.

Sections: constants and config, heads, tensors, training, scoring.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..adapt.tta_benchmark import score_logits
from ..data import normalised_tensors
from ..losses import dice_bce_loss
from ..data.sample import GLAUCOMA_SUSPECT_VCDR, FundusSample
from ..train import FitConfig, fit
from .vit import ViTEncoder, unpatchify

__all__ = ["LABEL_BUDGETS", "TASKS", "PROTOCOLS", "ALL_PROTOCOLS", "DownstreamConfig", "TokenVCDRHead",
           "TokenSegmentationHead",
           "DownstreamModel", "budget_subset", "encoder_param_groups", "train_downstream", "trainable_share",
           "evaluate"]

#: Fractions of the labelled source training images given to each downstream run.
LABEL_BUDGETS: tuple[float, ...] = (0.1, 0.3, 1.0)
TASKS = ("vcdr", "segmentation")
#: Notebook 02's protocols; :data:`ALL_PROTOCOLS` adds notebook 04's LoRA on the same encoder.
PROTOCOLS = ("linear_probe", "finetune")
ALL_PROTOCOLS = PROTOCOLS + ("lora",)


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DownstreamConfig:
    """Optimisation of one downstream run.

    Attributes:
        batch_size: labelled images per step.
        lr_head: AdamW learning rate of the head.
        lr_encoder: AdamW learning rate of the encoder's last block when fine-tuning.
        layer_decay: layer-wise learning-rate decay (BEiT, MAE fine-tuning): block ``i`` of ``L`` trains
            at ``lr_encoder * layer_decay ** (L - 1 - i)``, the patch embedding at ``layer_decay ** L``
            (1.0: every encoder layer at ``lr_encoder``).
        weight_decay: AdamW weight decay.
        min_images: a budget never gives fewer images than this.
        lora_rank: rank ``r`` of the ``"lora"`` protocol's updates ``B A`` of each block's ``qkv`` projection
            (scaled by ``alpha / r`` with ``alpha = 2 r``).
        lr_lora: AdamW learning rate of the LoRA factors (higher than full fine-tuning's, as usual for LoRA).
    """

    batch_size: int = 8
    lr_head: float = 3e-3
    lr_encoder: float = 3e-4
    layer_decay: float = 1.0
    weight_decay: float = 0.01
    min_images: int = 2
    lora_rank: int = 8
    lr_lora: float = 1e-3

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.min_images < 1 or self.lora_rank < 1:
            raise ValueError("batch_size, min_images and lora_rank must be >= 1")
        if self.lr_head <= 0 or self.lr_encoder <= 0 or self.lr_lora <= 0:
            raise ValueError("learning rates must be > 0")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}")


# ---------------------------------------------------------------------------------------------
# heads
# ---------------------------------------------------------------------------------------------

class TokenVCDRHead(nn.Module):
    """Linear regression of vCDR from the mean patch token: ``(B, N, D)`` -> ``(B,)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm, self.linear = nn.LayerNorm(dim), nn.Linear(dim, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(tokens.mean(dim=1))).squeeze(-1)  # (B,)


class TokenSegmentationHead(nn.Module):
    """Light decoder on ViT tokens: each patch token -> its ``p x p`` disc/cup logits, then a 3 x 3 conv
    (the feature-map heads of LiteMedSAM's encoder are in :mod:`mfmda_lib.finetune.heads`).

    ``(B, N, D)`` -> ``(B, 2, S, S)``.
    """

    def __init__(self, dim: int, patch_size: int, channels: int = 2) -> None:
        super().__init__()
        self.patch_size, self.channels = patch_size, channels
        self.norm = nn.LayerNorm(dim)
        self.to_pixels = nn.Linear(dim, patch_size ** 2 * channels)
        self.smooth = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pixels = self.to_pixels(self.norm(tokens))  # (B, N, p*p*2)
        logits = unpatchify(pixels, self.patch_size, self.channels)  # (B, 2, S, S)
        return logits + self.smooth(logits)


class DownstreamModel(nn.Module):
    """An encoder with a task head; the encoder is frozen for a linear probe and, apart from its LoRA
    factors (injected into ``encoder`` in place), for ``"lora"``."""

    def __init__(self, encoder: ViTEncoder, task: str, protocol: str, lora_rank: int = 8) -> None:
        super().__init__()
        if task not in TASKS or protocol not in ALL_PROTOCOLS:
            raise ValueError(f"task must be one of {TASKS} and protocol one of {ALL_PROTOCOLS}, "
                             f"got {task!r}, {protocol!r}")
        self.encoder, self.task, self.protocol = encoder, task, protocol
        cfg = encoder.config
        self.head = TokenVCDRHead(cfg.dim) if task == "vcdr" else TokenSegmentationHead(cfg.dim, cfg.patch_size)
        self.encoder.requires_grad_(protocol == "finetune")
        if protocol == "lora":
            from peft import LoraConfig, inject_adapter_in_model

            inject_adapter_in_model(LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, target_modules=["qkv"]),
                                    self.encoder)  # only the new lora_A / lora_B factors train

    def train(self, mode: bool = True) -> "DownstreamModel":
        super().train(mode)
        if self.protocol == "linear_probe":
            self.encoder.eval()  # a frozen encoder stays in eval mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, 3, S, S)`` -> vCDR ``(B,)`` or disc/cup logits ``(B, 2, S, S)``."""
        return self.head(self.encoder.patch_tokens(x))


# ---------------------------------------------------------------------------------------------
# tensors
# ---------------------------------------------------------------------------------------------

def budget_subset(samples: Sequence[FundusSample], fraction: float, *, min_images: int = 2,
                  seed: int = 0) -> list[FundusSample]:
    """A seeded random ``fraction`` of ``samples`` (at least ``min_images``); nested across fractions."""
    if not 0 < fraction <= 1:
        raise ValueError(f"label budget must be in (0, 1], got {fraction}")
    n = min(len(samples), max(min_images, round(fraction * len(samples))))
    order = np.random.default_rng(seed).permutation(len(samples))  # same order for every fraction: nested
    return [samples[i] for i in sorted(order[:n])]


def task_tensors(samples: Sequence[FundusSample], size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x (N, 3, S, S)``, masks ``(N, 2, S, S)`` and vCDR ``(N,)`` of ``samples`` at ``size`` px."""
    x, masks = normalised_tensors(samples, size)
    return x, masks, torch.tensor([s.vcdr for s in samples], dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------

def encoder_param_groups(encoder: ViTEncoder, lr: float, layer_decay: float) -> list[dict]:
    """Optimizer groups of ``encoder`` with layer-wise decay: the last block and final norm at ``lr``, each
    earlier block ``layer_decay`` times less, the patch embedding and class token least."""
    depth = len(encoder.blocks)
    groups = [{"params": [encoder.patch_embed.weight, encoder.patch_embed.bias, encoder.cls_token],
               "lr": lr * layer_decay ** depth}]
    groups += [{"params": list(block.parameters()), "lr": lr * layer_decay ** (depth - 1 - i)}
               for i, block in enumerate(encoder.blocks)]
    groups.append({"params": list(encoder.norm.parameters()), "lr": lr})
    n_grouped = sum(p.numel() for g in groups for p in g["params"])
    if n_grouped != sum(p.numel() for p in encoder.parameters()):
        raise ValueError("encoder_param_groups: the encoder has parameters outside patch_embed, cls_token, "
                         "blocks and norm; add them to a group")
    return groups


def train_downstream(encoder: ViTEncoder, task: str, protocol: str, train: Sequence[FundusSample], *,
                     epochs: int, steps_per_epoch: int, config: DownstreamConfig | None = None, seed: int = 0,
                     progress: bool = False) -> DownstreamModel:
    """Train a head (and, when fine-tuning, a copy of ``encoder``) on labelled ``train`` images.

    Args:
        encoder: left untouched; the run trains a deep copy.
        task: ``"vcdr"`` or ``"segmentation"``.
        protocol: ``"linear_probe"``, ``"finetune"`` or ``"lora"``.
        train: the labelled images of this budget.
        epochs, steps_per_epoch: the run takes ``epochs * steps_per_epoch`` steps of ``batch_size``
            images drawn with replacement from ``train`` (horizontal flips as augmentation).

    A linear probe's frozen encoder is run once per image and flip, outside the loop (the head then
    trains on the cached tokens: the same steps, a fraction of the compute).

    Returns:
        The trained :class:`DownstreamModel` in eval mode.
    """
    config = config or DownstreamConfig()
    torch.manual_seed(seed)
    model = DownstreamModel(copy.deepcopy(encoder), task, protocol, lora_rank=config.lora_rank)
    x, masks, vcdr = task_tensors(train, encoder.config.image_size)
    g = torch.Generator().manual_seed(seed)
    cached = None
    if protocol == "linear_probe":
        with torch.no_grad():
            cached = torch.stack([model.encoder.eval().patch_tokens(x),
                                  model.encoder.patch_tokens(x.flip(-1))])  # (2, n, N, D): as is, flipped

    def batches(epoch: int):
        for _ in range(steps_per_epoch):
            idx = torch.randint(len(x), (config.batch_size,), generator=g)
            flip = torch.rand(len(idx), generator=g) < 0.5
            by = masks[idx].clone()
            by[flip] = by[flip].flip(-1)  # vCDR is unchanged by a horizontal flip
            if cached is not None:
                yield cached[flip.long(), idx], by, vcdr[idx]  # (B, N, D) tokens
            else:
                bx = x[idx].clone()
                bx[flip] = bx[flip].flip(-1)
                yield bx, by, vcdr[idx]

    def loss_fn(m, batch):
        bx, by, bv = batch
        out = m.head(bx) if cached is not None else m(bx)
        if task == "vcdr":
            return F.mse_loss(out, bv)
        return dice_bce_loss(out, by)

    groups = [{"params": list(model.head.parameters()), "lr": config.lr_head}]
    if protocol == "finetune":
        groups += encoder_param_groups(model.encoder, config.lr_encoder, config.layer_decay)
    elif protocol == "lora":
        groups.append({"params": [p for p in model.encoder.parameters() if p.requires_grad], "lr": config.lr_lora})
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    fit(model, optimizer, batches, loss_fn, FitConfig(epochs=epochs), desc=f"{task} {protocol}", progress=progress)
    return model.eval()


def trainable_share(encoder: ViTEncoder, task: str, protocol: str, lora_rank: int = 8) -> tuple[int, float]:
    """``(trainable parameters, their share of the model's)`` of a run: encoder (with any LoRA factors) + head."""
    model = DownstreamModel(copy.deepcopy(encoder), task, protocol, lora_rank=lora_rank)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return n_train, n_train / sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(model: DownstreamModel, samples: Sequence[FundusSample], *, batch_size: int = 32, **tags) -> list[dict]:
    """One row per sample with ``tags`` and ``domain``: disc/cup Dice (segmentation) or vCDR error (vcdr).

    vCDR rows also carry the true and predicted vCDR and the glaucoma-suspect label, for AUROC.
    """
    model.eval()
    size = model.encoder.config.image_size
    rows = []
    for i in range(0, len(samples), batch_size):
        chunk = list(samples[i:i + batch_size])
        x, _, vcdr = task_tensors(chunk, size)
        out = model(x)
        if model.task == "segmentation":
            rows += [{k: r[k] for k in ("domain", "sample_id", "disc_dice", "cup_dice")} | tags
                     for r in score_logits(out, chunk)]
        else:
            rows += [{**tags, "domain": s.domain, "sample_id": s.sample_id, "vcdr_true": float(v),
                      "vcdr_pred": float(p), "vcdr_abs_err": abs(float(p) - float(v)),
                      "suspect": int(float(v) >= GLAUCOMA_SUSPECT_VCDR)}
                     for s, v, p in zip(chunk, vcdr, out)]
    return rows


