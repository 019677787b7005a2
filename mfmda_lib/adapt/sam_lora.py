"""LoRA on the box-promptable segmenter's image encoder (the TinyViT ``qkv`` layers, through ``peft``), trained with
the decoder on live encoder passes (the encoder runs every step), BatchNorm statistics kept frozen."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..models import PromptableSegmenter
from ..train import FitConfig, History, fit
from .sam_tuning import STRUCTURES, PromptSet, jitter_boxes, medsam_loss

__all__ = ["LoraConfigLite", "inject_encoder_lora", "train_encoder_lora"]


@dataclass(frozen=True)
class LoraConfigLite:
    """Encoder LoRA (passed on to ``peft.LoraConfig``).

    Attributes:
        r: rank of the low-rank update ``B A``.
        alpha: scale ``alpha / r`` of the update.
        target_modules: regex (full match) of the encoder's ``Linear`` layers to adapt: TinyViT's attention ``qkv``.
        lr: AdamW learning rate.
        images_per_step: source images per optimisation step (each costs a full encoder forward + backward).
        box_jitter: as in :class:`TrainConfig`.
    """

    r: int = 4
    alpha: int = 8
    target_modules: str = r".*\.attn\.qkv"
    lr: float = 5e-4
    images_per_step: int = 2
    box_jitter: float = 4.0

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha <= 0 or self.lr <= 0 or self.images_per_step < 1:
            raise ValueError(f"LoraConfigLite needs r >= 1, alpha > 0, lr > 0, images_per_step >= 1: {self}")


def inject_encoder_lora(model: PromptableSegmenter, config: LoraConfigLite) -> PromptableSegmenter:
    """Wrap the encoder's ``target_modules`` with peft LoRA layers (in place); only ``lora_`` parameters train."""
    from peft import LoraConfig, inject_adapter_in_model

    lora = LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=0.0, target_modules=config.target_modules)
    inject_adapter_in_model(lora, model.image_encoder)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"target_modules {config.target_modules!r} matched no layer of {model.name}'s encoder")
    return model


class _FrozenNorms(nn.Module):
    """Holds a segmenter for :func:`fit` but keeps it in eval mode (BatchNorm statistics stay frozen)."""

    def __init__(self, segmenter: PromptableSegmenter) -> None:
        super().__init__()
        self.segmenter = segmenter

    def train(self, mode: bool = True) -> "_FrozenNorms":
        return super().train(False)  # LoRA trains weights, not norm statistics, from a few images


def train_encoder_lora(model: PromptableSegmenter, train: PromptSet, config: LoraConfigLite, *, epochs: int,
                       seed: int, checkpoint=None, progress: bool = True) -> History:
    """Train encoder LoRA (see :func:`inject_encoder_lora`) with Dice + BCE; every step re-encodes its images.

    No validation split: one more encoder pass per epoch would cost as much as training.
    """
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    size, step = model.input_size, config.images_per_step

    def batches(epoch: int):
        g = torch.Generator().manual_seed(seed + epoch)
        order = torch.randperm(len(train), generator=g)
        for start in range(0, len(order), step):
            idx = order[start:start + step]  # (b,)
            boxes = jitter_boxes(train.boxes[idx].reshape(-1, 4), config.box_jitter, size, g)  # (2b, 4)
            yield idx, boxes

    def loss_fn(holder: _FrozenNorms, batch) -> torch.Tensor:
        idx, boxes = batch
        m = holder.segmenter
        z = m.encode(m.preprocess([train.samples[i].image for i in idx.tolist()]))  # (b, C, h, w)
        logits = m.decode(z.repeat_interleave(len(STRUCTURES), dim=0), boxes)  # (2b, 1, S, S)
        return medsam_loss(logits, train.masks[idx].reshape(-1, 1, size, size).to(logits.device))

    return fit(_FrozenNorms(model), optimizer, batches, loss_fn, FitConfig(epochs=epochs), checkpoint=checkpoint,
               desc="encoder LoRA", progress=progress)
