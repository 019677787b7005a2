"""Training the source DDPM (and its content-fusion block): one resumable step loop under Accelerate.

Diffusion models train by *steps*, not epochs: each step draws a batch, a timestep per image
and a noise image, and regresses the noise (Ho et al., Algorithm 1)::

    x_0 ~ data,  t ~ U{0, T-1},  eps ~ N(0, I)
    loss = | eps - eps_theta( sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t ) |      (L1 as in MFM-DA)

:func:`run_steps` is the loop every diffusion stage of the kit uses (source DDPM, fusion block,
stage-1 adaptation): a tqdm bar with the loss in its postfix, gradient clipping, an optional EMA
of the weights (``diffusers.training_utils.EMAModel``: ``step``, ``store``, ``copy_to``,
``restore``), and atomic checkpoints every ``checkpoint_every`` steps. All randomness of step
``k`` comes from a generator seeded by ``(seed, k, process)``, so a run killed and resumed from
its checkpoint ends with exactly the weights of an uninterrupted run.

It runs under HF Accelerate: one process by default; ``accelerate launch --num_processes N``
spreads the same code over N GPUs (each process draws its own batch; gradients are averaged).
Mixed precision only on CUDA (:mod:`mfmda_lib.precision`: bf16 where the GPU has it, else fp16 with
Accelerate's gradient scaler); a CPU run is plain float32.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from diffusers import UNet2DModel
from diffusers.training_utils import EMAModel
from torch import nn
from tqdm.auto import tqdm

from ..io import TORCH, save_artefact
from ..precision import accelerate_mixed_precision, autocast
from ..train import trainable_state
from .conditioned import ContentConditionedUNet
from .ddpm import q_sample

__all__ = ["DDPMTrainConfig", "StepHistory", "make_accelerator", "step_generator", "run_steps",
           "diffusion_loss", "train_ddpm", "train_fusion"]


# ---------------------------------------------------------------------------------------------
# config and helpers
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DDPMTrainConfig:
    """How to train a DDPM (or its fusion block) on a set of images.

    Attributes:
        steps: optimisation steps.
        batch_size: images per step (per process).
        lr: Adam learning rate (after a linear warm-up of ``warmup_steps``).
        ema_decay: decay of the exponential moving average of the weights (0 = no EMA).
        loss: ``"l1"`` (MFM-DA's code) or ``"mse"`` (Ho et al.) between true and predicted noise.
        seed: seeds step ``k``'s batch, timesteps and noise (with ``k``).
        checkpoint_every: steps between checkpoints (and at the last step).
        warmup_steps: linear learning-rate warm-up.
        grad_clip: max gradient norm (None: no clipping).
    """

    steps: int
    batch_size: int
    lr: float = 3e-4
    ema_decay: float = 0.995
    loss: str = "l1"
    seed: int = 0
    checkpoint_every: int = 100
    warmup_steps: int = 20
    grad_clip: float | None = 1.0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise ValueError("steps, batch_size and checkpoint_every must be >= 1")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.loss not in ("l1", "mse"):
            raise ValueError(f"loss must be 'l1' or 'mse', got {self.loss!r}")
        if self.lr <= 0 or self.warmup_steps < 0:
            raise ValueError("lr must be > 0 and warmup_steps >= 0")


@dataclass
class StepHistory:
    """Per-step logs of :func:`run_steps` (``loss`` and any other scalars the step returned)."""

    steps: list[dict] = field(default_factory=list)
    resumed_from: int = 0
    seconds: float = 0.0

    def series(self, key: str = "loss") -> list[float]:
        """One logged scalar over the steps."""
        return [s[key] for s in self.steps if key in s]


def make_accelerator(device: torch.device | None = None) -> Accelerator:
    """An ``Accelerator`` on ``device`` (default: whatever Accelerate picks); mixed precision only on CUDA."""
    cpu = device is not None and device.type == "cpu"
    cuda = not cpu and torch.cuda.is_available()
    return Accelerator(cpu=cpu, mixed_precision=accelerate_mixed_precision("cuda") if cuda else "no")


def step_generator(seed: int, step: int, process: int = 0) -> torch.Generator:
    """The CPU generator of one step: every random draw of step ``step`` comes from it."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step * 101 + process)


def diffusion_loss(eps: torch.Tensor, eps_hat: torch.Tensor, kind: str = "l1",
                   weight: torch.Tensor | None = None) -> torch.Tensor:
    """Noise-prediction loss, optionally weighted per image.

    Args:
        eps, eps_hat: ``(B, C, H, W)`` true and predicted noise.
        kind: ``"l1"`` or ``"mse"``.
        weight: ``(B,)`` per-image weights (e.g. the stage-1 ``20**0.9 - a(t)``), or None.

    Returns:
        scalar: the mean over images of the (weighted) per-image loss.
    """
    diff = (eps_hat.float() - eps.float())
    per_image = (diff.abs() if kind == "l1" else diff ** 2).mean(dim=(1, 2, 3))  # (B,)
    return (per_image if weight is None else per_image * weight).mean()


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------

def _save(path: Path, step: int, modules: dict[str, nn.Module], optimizer, extras: dict, history: StepHistory,
          accelerator: Accelerator, *, with_optimizer: bool = True) -> None:
    if not accelerator.is_main_process:
        return
    payload = {"step": step, "history": history.steps,
               "modules": {n: trainable_state(accelerator.unwrap_model(m)) for n, m in modules.items()},
               "extras": {n: e.state_dict() for n, e in extras.items()}}
    if with_optimizer:
        payload["optimizer"] = optimizer.state_dict()
    save_artefact(path, payload, TORCH)


def _load(path: Path, steps: int, modules: dict[str, nn.Module], optimizer, extras: dict, history: StepHistory,
          accelerator: Accelerator) -> None:
    """Resume from what :func:`_save` wrote; ``ValueError`` when the file belongs to another run or cannot go on."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing = sorted(set(modules) - set(state["modules"]))
    if missing:
        raise ValueError(f"checkpoint {path} has no state for {missing}: it belongs to another run; delete it")
    for name, module in modules.items():
        accelerator.unwrap_model(module).load_state_dict(state["modules"][name], strict=False)
    if "optimizer" in state:  # a finished run's checkpoint may drop it (see keep_optimizer)
        optimizer.load_state_dict(state["optimizer"])
    elif int(state["step"]) < steps:
        raise ValueError(f"checkpoint {path} stopped at step {state['step']} without optimizer state, so it "
                         f"cannot resume to {steps} steps; delete it to start over")
    for name, extra in extras.items():
        extra.load_state_dict(state["extras"][name])
    history.steps, history.resumed_from = list(state["history"]), int(state["step"])


def run_steps(step_fn: Callable[[int, torch.Generator], tuple[torch.Tensor, dict]], *, steps: int,
              modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer, accelerator: Accelerator,
              seed: int, checkpoint: str | Path | None = None, checkpoint_every: int = 100,
              ema: EMAModel | None = None, lr_scheduler=None, grad_clip: float | None = 1.0,
              callback: Callable[[int, dict], None] | None = None, desc: str = "train",
              keep_optimizer: bool = True, progress: bool = True, accumulate: int = 1) -> StepHistory:
    """Run ``steps`` optimisation steps, resuming from ``checkpoint`` when it exists.

    Args:
        step_fn: ``(step, generator) -> (loss, logs)``; draws every random number from ``generator``.
        steps: total steps (a resumed run does only the missing ones).
        modules: the modules whose trainable state is checkpointed (already ``accelerator.prepare``d).
        optimizer: prepared optimizer over their trainable parameters.
        accelerator: from :func:`make_accelerator`.
        seed: seeds :func:`step_generator`.
        checkpoint: file to resume from and save to (atomically) every ``checkpoint_every`` steps.
        ema: EMA of the trainable parameters, stepped after every optimiser step and checkpointed.
        lr_scheduler: stepped after every optimiser step and checkpointed.
        grad_clip: max gradient norm (None: none).
        callback: ``(step, logs)`` after each step (e.g. to record or to stop a demo).
        keep_optimizer: keep the optimizer state in the final checkpoint (False: a smaller file that
            can be reloaded but not continued to more steps).
        accumulate: the optimiser steps once every ``accumulate`` steps, on their summed gradients
            (MFM-DA stage 1: 2, an even and an odd iteration); ``checkpoint_every`` must be a multiple.
        desc, progress: the tqdm bar.

    Returns:
        the :class:`StepHistory` of all steps, resumed ones included.
    """
    if accumulate < 1 or checkpoint_every % accumulate:
        raise ValueError(f"run_steps: accumulate ({accumulate}) must be >= 1 and divide checkpoint_every "
                         f"({checkpoint_every}), so no checkpoint falls between accumulated steps")
    history = StepHistory()
    extras = {k: v for k, v in (("ema", ema), ("lr_scheduler", lr_scheduler)) if v is not None}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.is_file():
        _load(path, steps, modules, optimizer, extras, history, accelerator)
    for module in modules.values():
        module.train()
    start = time.perf_counter()
    bar = tqdm(range(history.resumed_from, steps), desc=desc, disable=not progress or not accelerator.is_main_process,
               unit="step", initial=history.resumed_from, total=steps)
    optimizer.zero_grad(set_to_none=True)
    for step in bar:
        loss, logs = step_fn(step, step_generator(seed, step, accelerator.process_index))
        accelerator.backward(loss)
        if (step + 1) % accumulate == 0 or step + 1 == steps:
            if grad_clip is not None:
                accelerator.clip_grad_norm_(params, grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if lr_scheduler is not None:
                lr_scheduler.step()
            if ema is not None:
                ema.step(params)
        record = {"step": step, "loss": float(loss.detach()), **{k: float(v) for k, v in logs.items()}}
        history.steps.append(record)
        bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.1e}")
        if path is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == steps):
            _save(path, step + 1, modules, optimizer, extras, history, accelerator,
                  with_optimizer=keep_optimizer or step + 1 < steps)
        if callback is not None:
            callback(step, record)
    bar.close()
    history.seconds = time.perf_counter() - start
    for module in modules.values():
        module.eval()
    return history


def _warmup(optimizer: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, warmup_steps)))


def _draw_batch(images: torch.Tensor, batch: int, g: torch.Generator, T: int):
    idx = torch.randint(0, len(images), (batch,), generator=g)
    t = torch.randint(0, T, (batch,), generator=g)
    noise = torch.randn((batch, *images.shape[1:]), generator=g)
    return images[idx], t, noise


# ---------------------------------------------------------------------------------------------
# the source DDPM and its fusion block
# ---------------------------------------------------------------------------------------------

def train_ddpm(unet: UNet2DModel, images: torch.Tensor, alpha_bar: torch.Tensor, config: DDPMTrainConfig, *,
               accelerator: Accelerator | None = None, checkpoint: str | Path | None = None,
               callback: Callable[[int, dict], None] | None = None, progress: bool = True) -> StepHistory:
    """Train an unconditional DDPM on ``images``; on return the U-Net holds the **EMA** weights.

    Args:
        unet: the U-Net (trained in place).
        images: ``(N, 3, S, S)`` training images in ``[-1, 1]`` (CPU; batches move to the device).
        alpha_bar: ``(T,)`` from :func:`~mfmda_lib.diffusion.ddpm.alphas_cumprod`.
        config: :class:`DDPMTrainConfig`.
        accelerator: default :func:`make_accelerator` ``()``.
        checkpoint: resumable checkpoint file (holds weights, EMA, optimizer, step).
        callback, progress: as in :func:`run_steps`.
    """
    accelerator = accelerator or make_accelerator()
    optimizer = torch.optim.Adam(unet.parameters(), lr=config.lr)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    plain = accelerator.unwrap_model(unet)
    ema = EMAModel(plain.parameters(), decay=config.ema_decay) if config.ema_decay > 0 else None
    lr_scheduler = _warmup(optimizer, config.warmup_steps)
    T = len(alpha_bar)

    def step_fn(step: int, g: torch.Generator):
        x0, t, noise = (v.to(accelerator.device) for v in _draw_batch(images, config.batch_size, g, T))
        x_t = q_sample(x0, t, noise, alpha_bar)  # (B, 3, S, S)
        with autocast(accelerator.device):
            eps_hat = unet(x_t, t).sample
        return diffusion_loss(noise, eps_hat, config.loss), {}

    history = run_steps(step_fn, steps=config.steps, modules={"unet": unet}, optimizer=optimizer,
                        accelerator=accelerator, seed=config.seed, checkpoint=checkpoint,
                        checkpoint_every=config.checkpoint_every, ema=ema, lr_scheduler=lr_scheduler,
                        grad_clip=config.grad_clip, callback=callback, desc="source DDPM", progress=progress)
    if ema is not None:
        ema.copy_to(plain.parameters())
    return history


def train_fusion(model: ContentConditionedUNet, images: torch.Tensor, alpha_bar: torch.Tensor,
                 config: DDPMTrainConfig, *, accelerator: Accelerator | None = None,
                 checkpoint: str | Path | None = None, progress: bool = True) -> StepHistory:
    """Pretrain only the fusion block on source reconstruction (the U-Net and content path stay frozen).

    Each step conditions on the *same* source image noised independently to the same ``t``, so
    the fusion learns to read layout from ``h_c``. No EMA (few parameters, short run).

    Args:
        model: the conditioned model; only ``model.fusion`` is trained.
        images, alpha_bar, config, accelerator, checkpoint, progress: as in :func:`train_ddpm`.
    """
    accelerator = accelerator or make_accelerator()
    model.unet.requires_grad_(False)
    model.fusion.requires_grad_(True)
    optimizer = torch.optim.Adam(model.fusion.parameters(), lr=config.lr)
    model, optimizer = accelerator.prepare(model, optimizer)
    plain = accelerator.unwrap_model(model)
    lr_scheduler = _warmup(optimizer, config.warmup_steps)
    T = len(alpha_bar)

    def step_fn(step: int, g: torch.Generator):
        x0, t, noise = _draw_batch(images, config.batch_size, g, T)
        content_noise = torch.randn(x0.shape, generator=g)
        gate_noise = torch.randn(plain.bottleneck_shape(len(x0)), generator=g)
        x0, t, noise, content_noise, gate_noise = (v.to(accelerator.device)
                                                   for v in (x0, t, noise, content_noise, gate_noise))
        with autocast(accelerator.device):
            eps_hat = model(q_sample(x0, t, noise, alpha_bar), t, q_sample(x0, t, content_noise, alpha_bar),
                            gate_noise)
        return diffusion_loss(noise, eps_hat, config.loss), {}

    history = run_steps(step_fn, steps=config.steps, modules={"fusion": plain.fusion}, optimizer=optimizer,
                        accelerator=accelerator, seed=config.seed, checkpoint=checkpoint,
                        checkpoint_every=config.checkpoint_every, lr_scheduler=lr_scheduler,
                        grad_clip=config.grad_clip, desc="fusion block", progress=progress)
    plain.unet.requires_grad_(True)
    return history
