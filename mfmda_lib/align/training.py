"""MFM-DA's three-step training loop: the two optimisers (SGD on everything for the segmentation steps,
SGD on the Rein tokens for the alignment), one batch's update, and the resumable loop under HF Accelerate."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..io import TORCH, save_artefact
from .features import FeatureBank, take_batch
from .losses import channel_spatial_alignment, segmentation_loss
from .rein import PREFIX
from .stage2 import STEPS, Stage2Config, Stage2Model, align_indices

__all__ = ["Stage2History", "poly_lr", "token_parameters", "make_optimizers", "three_step_update", "train_stage2"]


@dataclass
class Stage2History:
    """Per-epoch logs of each step, seconds, and where the run resumed.

    Each epoch's record holds ``loss_<step>`` (mean over its batches) and, with the ``align`` step:
    ``loss_align_before`` and ``loss_align_after`` (``L_align`` of the epoch's first batch just before
    and just after its step (1)), and the tokens' update sizes ``update_align`` (the summed norm of
    what step (1) changed over the epoch) and ``update_seg`` (the same for steps (2)-(3)), so a
    notebook can show whether the alignment acts.
    """

    epochs: list[dict] = field(default_factory=list)
    resumed_from: int = 0

    def seconds(self) -> float:
        return float(sum(e["seconds"] for e in self.epochs))


def poly_lr(lr: float, epoch: int, epochs: int, power: float = 0.9) -> float:
    """The authors' poly decay, applied at the start of each epoch: ``lr (1 - epoch / epochs)^power``."""
    return lr * (1 - min(epoch, epochs - 1) / epochs) ** power


def token_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable Rein parameters (tokens, scales, shared projections): what step (1) updates."""
    return [p for n, p in model.named_parameters() if PREFIX in n and p.requires_grad]


def make_optimizers(model: Stage2Model, config: Stage2Config
                    ) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer | None]:
    """The two optimisers of the authors' loop.

    Returns:
        ``(optimizer, align_optimizer)``: SGD (or AdamW, ``config.optimizer``) over every trainable
        parameter for steps (2)-(3), and SGD over the Rein parameters only for step (1) (``None``
        without an ``align`` step).
    """
    nesterov = config.momentum > 0
    params = model.trainable_parameters()
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=nesterov,
                                    weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    align_optimizer = None
    if "align" in config.steps:
        tokens = token_parameters(model)
        if not tokens:
            raise ValueError("make_optimizers: the 'align' step needs trainable Rein tokens (use_rein)")
        align_optimizer = torch.optim.SGD(tokens, lr=config.align_lr or config.lr, momentum=config.momentum,
                                          nesterov=nesterov)
    return optimizer, align_optimizer


def _snapshot(params: Sequence[nn.Parameter]) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def _moved(params: Sequence[nn.Parameter], before: Sequence[torch.Tensor]) -> float:
    """``||theta - theta_before||`` over a parameter list."""
    return float(torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(params, before))))


def three_step_update(model, source: dict[str, torch.Tensor], translated: dict[str, torch.Tensor] | None,
                      y: torch.Tensor, optimizer: torch.optim.Optimizer,
                      align_optimizer: torch.optim.Optimizer | None = None, *, steps: Sequence[str] = STEPS,
                      align_levels: Sequence[int] = (), dice_weight: float = 0.0,
                      backward: Callable[[torch.Tensor], None] | None = None,
                      clip: Callable[[], None] | None = None, log_after: bool = True) -> dict[str, float]:
    """MFM-DA's update for one batch of pairs: (1) align on the tokens, (2) source BCE, (3) translated BCE.

    Args:
        model: anything with ``encoder`` (cached prefix dict -> pyramid levels), ``head``, ``head_taps``
            and ``out_size``: a :class:`Stage2Model` (or its accelerator-prepared parts).
        source, translated: cached prefix outputs of the ``B`` source images and their translations.
        y: ``(B, 2, S, S)`` disc and cup masks (the translations share them).
        optimizer: steps (2)-(3), over every trainable parameter.
        align_optimizer: step (1), over the Rein parameters only (needed when ``"align" in steps``).
        steps: which of :data:`STEPS` run.
        align_levels: indices of the pyramid levels entering ``L_align``.
        dice_weight: soft Dice weight added to BCE (0: the authors' loss).
        backward: ``loss -> None`` (default ``loss.backward()``; pass ``accelerator.backward``).
        clip: called between backward and each optimizer step (gradient clipping), optional.
        log_after: also measure ``L_align`` on the batch right after step (1) (one more forward pass).

    Returns:
        ``loss_<step>`` for each step run; with ``align``: ``update_align`` and ``update_seg`` (how far
        step (1) and steps (2)-(3) moved the Rein parameters) and, with ``log_after``, ``loss_align_before``
        and ``loss_align_after`` (``L_align`` of this batch just before and just after step (1)).
    """
    backward = backward or (lambda loss: loss.backward())
    optimizers = [o for o in (optimizer, align_optimizer) if o is not None]
    tokens = [p for o in optimizers[1:] for g in o.param_groups for p in g["params"]]
    logs: dict[str, float] = {}

    def step(loss: torch.Tensor, opt: torch.optim.Optimizer) -> float:
        for o in optimizers:
            o.zero_grad(set_to_none=True)
        backward(loss)
        if clip is not None:
            clip()
        opt.step()
        return float(loss.detach())

    def logits(cached: dict[str, torch.Tensor]) -> torch.Tensor:
        levels = model.encoder(cached)
        return model.head([levels[i] for i in model.head_taps], model.out_size)

    def align_loss() -> torch.Tensor:
        levels = model.encoder({k: torch.cat([source[k], translated[k]]) for k in source})  # one pass, 2B images
        b = len(y)
        return channel_spatial_alignment([levels[i][:b] for i in align_levels], [levels[i][b:] for i in align_levels])

    if "align" in steps:  # (1) L_align, on the tokens only
        if align_optimizer is None or not align_levels:
            raise ValueError("three_step_update: the 'align' step needs an align_optimizer and align_levels")
        before = _snapshot(tokens)
        logs["loss_align"] = step(align_loss(), align_optimizer)
        logs["update_align"] = _moved(tokens, before)
        if log_after:
            with torch.no_grad():
                logs["loss_align_before"], logs["loss_align_after"] = logs["loss_align"], float(align_loss())
        before = _snapshot(tokens)
    if "source" in steps:  # (2) BCE on the source image
        logs["loss_source"] = step(segmentation_loss(logits(source), y, dice_weight), optimizer)
    if "translated" in steps:  # (3) the same on its translation, with the same label
        logs["loss_translated"] = step(segmentation_loss(logits(translated), y, dice_weight), optimizer)
    if "align" in steps and ("source" in steps or "translated" in steps):
        logs["update_seg"] = _moved(tokens, before)
    return logs


def _save(path: Path, model: Stage2Model, optimizers: Sequence[torch.optim.Optimizer | None],
          history: Stage2History) -> None:
    payload = {"model": model.trainable_state(), "epochs": history.epochs,
               "optimizers": [o.state_dict() if o is not None else None for o in optimizers]}
    save_artefact(path, payload, TORCH)


def _load(path: Path, model: Stage2Model, optimizers: Sequence[torch.optim.Optimizer | None],
          history: Stage2History) -> None:
    """Resume from what :func:`_save` wrote: the trainable weights, the optimisers' states, the epochs run."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_trainable_state(state["model"])
    for opt, saved in zip(optimizers, state.get("optimizers", [])):
        if opt is not None and saved is not None:
            opt.load_state_dict(saved)
    history.epochs, history.resumed_from = list(state["epochs"]), len(state["epochs"])


def _needs_pairs(source: FeatureBank, labels: torch.Tensor, config: Stage2Config, translated: FeatureBank | None,
                 align_optimizer: torch.optim.Optimizer | None) -> bool:
    """Whether the steps use the translations; ``ValueError`` naming what does not fit :func:`train_stage2`."""
    n = len(labels)
    if any(len(v) != n for v in source.values()):
        raise ValueError(f"train_stage2: source features and labels differ in length ({n} labels)")
    needs_pairs = "align" in config.steps or "translated" in config.steps
    if needs_pairs and (translated is None or any(len(v) != n for v in translated.values())):
        raise ValueError("train_stage2: the 'align' and 'translated' steps need `translated` features, "
                         f"one per source image ({n})")
    if ("align" in config.steps) != (align_optimizer is not None):
        raise ValueError("train_stage2: pass align_optimizer exactly when config.steps has 'align' "
                         "(build both with make_optimizers)")
    return needs_pairs


def _epoch(parts: SimpleNamespace, accelerator, source: FeatureBank, pairs: FeatureBank | None, labels: torch.Tensor,
           optimizer: torch.optim.Optimizer, align_optimizer: torch.optim.Optimizer | None, config: Stage2Config,
           epoch: int, *, per_process: int, align_idx: Sequence[int], clip: Callable[[], None] | None) -> dict:
    """One epoch of the three-step loop on this process's share of a seeded permutation; the epoch's record."""
    device, world, rank = accelerator.device, accelerator.num_processes, accelerator.process_index
    parts.encoder.train()
    parts.head.train()
    start = time.perf_counter()
    for group in optimizer.param_groups:  # steps (2)-(3) decay per epoch; step (1) keeps its rate
        group["lr"] = poly_lr(group["initial_lr"], epoch, config.epochs)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(config.seed * 100003 + epoch))
    mine = order[:per_process * world][rank::world]
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for b in range(-(-per_process // config.batch_size)):
        idx = mine[b * config.batch_size:(b + 1) * config.batch_size]
        with accelerator.autocast():
            logs = three_step_update(parts, take_batch(source, idx, device),
                                     take_batch(pairs, idx, device) if pairs is not None else None,
                                     labels[idx].to(device), optimizer, align_optimizer, steps=config.steps,
                                     align_levels=align_idx, dice_weight=config.dice_weight,
                                     backward=accelerator.backward, clip=clip, log_after=b == 0)
        for k, v in logs.items():
            sums[k], counts[k] = sums.get(k, 0.0) + v, counts.get(k, 0) + 1
    return {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"],
            **{k: (v if k.startswith("update_") else v / counts[k]) for k, v in sums.items()},
            "seconds": time.perf_counter() - start}


def train_stage2(model: Stage2Model, optimizer: torch.optim.Optimizer, source: FeatureBank, labels: torch.Tensor,
                 config: Stage2Config, *, align_optimizer: torch.optim.Optimizer | None = None,
                 translated: FeatureBank | None = None, accelerator=None, checkpoint: str | Path | None = None,
                 progress: bool = True, desc: str = "stage 2",
                 on_epoch_end: Callable[[int], None] | None = None) -> Stage2History:
    """Train the Rein tokens and the head with the three-step loop; resumable.

    Args:
        model: from :func:`build_model`.
        optimizer, align_optimizer: from :func:`make_optimizers` (the caller builds them);
            ``align_optimizer`` is required when ``config.steps`` has ``"align"``.
        source: cached prefix outputs of the ``N`` source images (:func:`encode_prefix`).
        labels: ``(N, 2, S, S)`` disc and cup masks of the source images (:func:`mask_targets`).
        config: what runs.
        translated: the prefix outputs of the ``N`` translated images, paired by position
            (needed by the ``align`` and ``translated`` steps).
        accelerator: an ``accelerate.Accelerator`` (default: a new one-process accelerator).
        checkpoint: file saved atomically after every epoch and resumed from when present
            (a finished run's file is simply loaded: no step is repeated).
        on_epoch_end: called with the finished epoch's index after its checkpoint is written.

    Returns:
        The :class:`Stage2History`; ``model`` holds the trained weights, in eval mode.
    """
    n = len(labels)
    pairs = translated if _needs_pairs(source, labels, config, translated, align_optimizer) else None
    if accelerator is None:
        from accelerate import Accelerator

        accelerator = Accelerator()
    align_idx = align_indices(model, config) if "align" in config.steps else []

    history = Stage2History()
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.is_file():
        _load(path, model, (optimizer, align_optimizer), history)

    # Only modules with trainable parameters go through prepare (DDP rejects a fully frozen module).
    has_rein = any(p.requires_grad for p in model.encoder.parameters())
    encoder = accelerator.prepare(model.encoder) if has_rein else model.encoder.to(accelerator.device)
    head, optimizer = accelerator.prepare(model.head, optimizer)
    if align_optimizer is not None:
        align_optimizer = accelerator.prepare(align_optimizer)
    parts = SimpleNamespace(encoder=encoder, head=head, head_taps=model.head_taps, out_size=model.out_size)
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    params = model.trainable_parameters()
    clip = (lambda: accelerator.clip_grad_norm_(params, config.grad_clip)) if config.grad_clip is not None else None
    world = accelerator.num_processes
    per_process = (n // world) if world > 1 else n
    if per_process < 1:
        raise ValueError(f"train_stage2: {n} pairs cannot be shared by {world} processes")

    bar = tqdm(range(history.resumed_from, config.epochs), desc=desc, unit="epoch",
               disable=not progress or not accelerator.is_main_process)
    for epoch in bar:
        record = _epoch(parts, accelerator, source, pairs, labels, optimizer, align_optimizer, config, epoch,
                        per_process=per_process, align_idx=align_idx, clip=clip)
        history.epochs.append(record)
        bar.set_postfix({k: f"{v:.4f}" for k, v in record.items() if k.startswith("loss_")})
        if path is not None:
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                _save(path, model, (optimizer, align_optimizer), history)
        if on_epoch_end is not None:
            on_epoch_end(epoch)
    model.eval()
    return history
