"""The one small training loop of the kit.

Every method that trains something (a decoder adapter, a LoRA, a segmentation head, a source
model for test-time adaptation) calls :func:`fit`. The caller builds the model, the optimizer
and the batches (dependencies are passed in); :func:`fit` runs epochs with a tqdm bar, keeps a
history, stops early on a validation score, restores the best weights, and checkpoints the
trainable state atomically after every epoch so an interrupted run resumes where it stopped.
On CUDA the forward pass and loss run in mixed precision (:mod:`mfmda_lib.precision`); on a CPU
the loop is exactly the plain float32 one. :func:`ema_update` is the kit's teacher average (mean
teacher / CoTTA, DINO); the diffusion loop keeps diffusers' ``EMAModel`` (its own decay schedule).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from .io import TORCH, save_artefact
from .precision import autocast, grad_scaler

__all__ = ["FitConfig", "History", "fit", "trainable_state", "count_parameters", "ema_update"]


@dataclass(frozen=True)
class FitConfig:
    """How long and how carefully to train.

    Attributes:
        epochs: passes over ``batches``.
        patience: stop after this many epochs without a better validation score (None: never).
        grad_clip: clip the gradient norm of the trainable parameters (None: no clipping).
        higher_is_better: direction of the validation score (Dice: True; a loss: False).
    """

    epochs: int
    patience: int | None = None
    grad_clip: float | None = 1.0
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 or None, got {self.patience}")


@dataclass
class History:
    """What happened in :func:`fit`: one dict per epoch, and the best epoch."""

    epochs: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    best_score: float | None = None
    stopped_early: bool = False
    resumed_from: int = 0

    @property
    def train_loss(self) -> list[float]:
        return [e["train_loss"] for e in self.epochs]

    @property
    def val_score(self) -> list[float]:
        return [e["val_score"] for e in self.epochs if e.get("val_score") is not None]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the parameters that require grad (and every buffer: norm statistics)."""
    keep = {n for n, p in model.named_parameters() if p.requires_grad}
    keep |= {n for n, _ in model.named_buffers()}
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k in keep}


def _save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, history: History,
                     best_state: dict | None) -> None:
    payload = {"model": trainable_state(model), "optimizer": optimizer.state_dict(),
               "epochs": history.epochs, "best_epoch": history.best_epoch, "best_score": history.best_score,
               "best_state": best_state}
    save_artefact(path, payload, TORCH)


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Callable[[int], Iterable],
        loss_fn: Callable[[nn.Module, object], torch.Tensor], config: FitConfig, *,
        validate: Callable[[nn.Module], float] | None = None, checkpoint: str | Path | None = None,
        desc: str = "train", progress: bool = True) -> History:
    """Train ``model`` and return its :class:`History`.

    Args:
        model: the module; only parameters with ``requires_grad`` should be in ``optimizer``.
        optimizer: built by the caller over the trainable parameters.
        batches: ``epoch -> iterable of batches`` (so the caller controls shuffling per epoch).
        loss_fn: ``(model, batch) -> scalar loss``.
        config: :class:`FitConfig`.
        validate: ``model -> score`` on held-out data, called after each epoch (model in eval mode).
        checkpoint: file to resume from and to save to after every epoch (atomic).
        desc: label of the progress bar.

    Returns:
        The history. With ``validate``, the best epoch's weights are restored before returning.
    """
    history, best_state = History(), None
    params = [p for group in optimizer.param_groups for p in group["params"]]
    device = params[0].device if params else torch.device("cpu")
    scaler = grad_scaler(device)  # enabled only for float16 autocast on CUDA
    if checkpoint is not None and Path(checkpoint).is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        history.epochs, history.best_epoch, history.best_score = state["epochs"], state["best_epoch"], state["best_score"]
        best_state, history.resumed_from = state["best_state"], len(state["epochs"])
    bar = tqdm(range(history.resumed_from, config.epochs), desc=desc, disable=not progress, unit="epoch")
    for epoch in bar:
        model.train()
        start, total, count = time.perf_counter(), 0.0, 0
        for batch in batches(epoch):
            with autocast(device):
                loss = loss_fn(model, batch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.grad_clip is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            total, count = total + float(loss.detach()), count + 1
        if count == 0:
            raise ValueError(f"{desc}: epoch {epoch} produced no batches")
        record = {"epoch": epoch, "train_loss": total / count, "seconds": time.perf_counter() - start}
        if validate is not None:
            model.eval()
            with torch.no_grad():
                score = float(validate(model))
            record["val_score"] = score
            better = history.best_score is None or (score > history.best_score if config.higher_is_better
                                                    else score < history.best_score)
            if better:
                history.best_epoch, history.best_score = epoch, score
                best_state = copy.deepcopy(trainable_state(model))
        history.epochs.append(record)
        bar.set_postfix({k: f"{v:.4f}" for k, v in record.items() if k in ("train_loss", "val_score")})
        if checkpoint is not None:
            _save_checkpoint(Path(checkpoint), model, optimizer, history, best_state)
        if (validate is not None and config.patience is not None
                and epoch - history.best_epoch >= config.patience):
            history.stopped_early = True
            break
    if best_state is not None:
        model.load_state_dict(best_state, strict=False)
    model.eval()
    return history


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """``theta_teacher <- decay * theta_teacher + (1 - decay) * theta_student`` for every parameter, in place.

    The mean teacher of test-time adaptation (``decay`` = CoTTA's ``alpha``) and DINO's teacher
    (``decay`` = its momentum ``lambda``, Sec. 3.1). The DDPM keeps diffusers' ``EMAModel`` instead: it holds
    shadow weights (no teacher module to run), warms its decay up as ``min(decay, (1 + t) / (10 + t))`` from
    0 at the first step, is checkpointed by its own ``state_dict`` and updates ``s -= (1 - d) (s - p)``, which
    differs from this update in the last float bit; one EMA for both would change the DDPM's numbers.
    """
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(decay).add_(s.detach(), alpha=1 - decay)
