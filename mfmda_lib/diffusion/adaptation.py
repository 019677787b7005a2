"""MFM-DA stage 1, the method: adapt the source DDPM to a target domain from K unlabelled images.

Inputs: the content-conditioned source DDPM, the source images ``x_S`` (the ones to translate),
K target images ``x_T``, and the frozen encoder ``f``. Each iteration (losses in :mod:`.losses`)::

    even: x_S, t ~ U[300, 800) -> x_t = q(x_t | x_S),  x_c = q(x_t | x_S) with independent noise
          x0_hat = (x_t - sqrt(1 - abar_t) eps_theta(x_t, t | x_c)) / sqrt(abar_t)
          L = a(t) [ L_DC(f(x0_hat), f(x_S) + Delta) + L_style(x0_hat, x_T) ] + (20**0.9 - a(t)) L_diff(x_T, t)
    odd:  t ~ U[0, 300):  L = (20**0.9 - a(t)) L_diff(x_T, t) / 5

The U-Net, the fusion block and the DIAA train (Adam 1e-4, betas (0.9, 0.99)); the content path
and ``f`` stay frozen. Variants, for the comparison in notebook 08:

- ``"mfmda"``: as above, ``Delta`` from the DIAA (:mod:`.diaa`);
- ``"static"``: the same with ``Delta = Delta_static = c_T - c_S`` for every image (no DIAA);
- ``"naive"``: plain fine-tuning on the K target images (``L_diff`` at every ``t``): the classic
  few-shot failure, the model memorises the K images.

``L_diff`` on the target images is the *unconditional* noise-prediction loss (no content
condition), as in the authors' code (``few_shot_forward(image, t=t, x_self_cond=None)``): the
condition is used only for the source image's ``x0_hat``. (Conditioning it on the target image
itself would teach the fusion block to copy its condition, pulling translations back to the
source.) As in the authors' code the optimiser steps every other iteration, on the gradients of an
even and an odd iteration together. The loop is :func:`~.training.run_steps`: resumable and
deterministic per step. Each step logs its weighted terms (``l_dc``, ``l_style``, ``l_diff``) and
``l_target``, the unweighted noise-prediction loss on the target batch (comparable across variants).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator

from ..precision import autocast
from .conditioned import ContentConditionedUNet
from .diaa import DIAA
from .ddpm import predict_x0, q_sample
from .features import FrozenFeatureEncoder
from .losses import EVEN_T_RANGE, ODD_T_RANGE, distribution_consistency_loss, gram_matrix, stage1_weights, style_loss
from .training import StepHistory, diffusion_loss, make_accelerator, run_steps

__all__ = ["VARIANTS", "Variant", "VARIANT_STRATEGIES", "Stage1Config", "Stage1State", "adapt"]

#: stage-1 variants; ``"none"`` means no adaptation (translate with the source DDPM).
VARIANTS = ("none", "naive", "static", "mfmda")


@dataclass(frozen=True)
class Stage1Config:
    """How to adapt.

    Attributes:
        variant: ``"mfmda"``, ``"static"`` or ``"naive"`` (``"none"`` needs no adaptation).
        steps: iterations (half of them even, half odd).
        batch_size: source images and target images per iteration.
        lr: Adam learning rate (MFM-DA: 1e-4).
        betas: Adam betas (MFM-DA: (0.9, 0.99)).
        dc_weight, style_weight: multipliers of ``L_DC`` and ``L_style`` inside ``a(t) (...)``.
        diffusion_loss: ``"l1"`` or ``"mse"`` for ``L_diff``.
        seed: seeds step ``k`` with ``k``.
        checkpoint_every: steps between resumable checkpoints (a multiple of ``accumulate``).
        grad_clip: max gradient norm (the authors: none).
        accumulate: iterations per optimiser step (the authors: 2, an even and an odd iteration).
    """

    variant: str = "mfmda"
    steps: int = 100
    batch_size: int = 4
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    dc_weight: float = 1.0
    style_weight: float = 1.0
    diffusion_loss: str = "l1"
    seed: int = 0
    checkpoint_every: int = 20
    grad_clip: float | None = None
    accumulate: int = 2

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS[1:]:
            raise ValueError(f"Stage1Config.variant must be one of {VARIANTS[1:]} ('none' needs no "
                             f"adaptation), got {self.variant!r}")
        if self.steps < 1 or self.batch_size < 1 or self.checkpoint_every < 1 or self.lr <= 0:
            raise ValueError("steps, batch_size, checkpoint_every must be >= 1 and lr > 0")
        if self.accumulate < 1 or self.checkpoint_every % self.accumulate:
            raise ValueError(f"Stage1Config: accumulate ({self.accumulate}) must be >= 1 and divide checkpoint_every "
                             f"({self.checkpoint_every})")
        if self.diffusion_loss not in ("l1", "mse"):
            raise ValueError(f"diffusion_loss must be 'l1' or 'mse', got {self.diffusion_loss!r}")


@dataclass
class Stage1State:
    """What :func:`adapt` returns: the adapted model (in place), the DIAA (None unless ``mfmda``), the log."""

    model: ContentConditionedUNet
    diaa: DIAA | None
    history: StepHistory
    delta_static: torch.Tensor


def _uniform_t(lo: int, hi: int, n: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(lo, hi, (n,), generator=g)


@torch.no_grad()
def _encoded(encoder: FrozenFeatureEncoder, x_source: torch.Tensor, x_target: torch.Tensor, device: torch.device
             ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """``f`` of the source ``(N, D)`` and target images ``(K, D)``, and the target's mean Gram matrix per layer."""
    f_source = encoder.encode(x_source)  # (N, D)
    f_target = encoder.encode(x_target)  # (K, D)
    pyramids = [encoder.feature_pyramid(x_target[i:i + 8].to(device)) for i in range(0, len(x_target), 8)]
    target_gram = [gram_matrix(torch.cat(layer)).mean(0) for layer in zip(*pyramids)]  # per layer (C_l, C_l)
    return f_source, f_target, target_gram


def _prepared(model: ContentConditionedUNet, diaa: DIAA | None, config: Stage1Config, accelerator: Accelerator
              ) -> tuple[ContentConditionedUNet, DIAA | None, torch.optim.Optimizer]:
    """The U-Net, fusion and DIAA made trainable, one Adam over them, all prepared by ``accelerator``."""
    model.unet.requires_grad_(True)
    model.fusion.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad] + (list(diaa.parameters()) if diaa else [])
    optimizer = torch.optim.Adam(params, lr=config.lr, betas=config.betas)
    if diaa is not None:
        return accelerator.prepare(model, diaa, optimizer)
    model, optimizer = accelerator.prepare(model, optimizer)
    return model, None, optimizer


# ---------------------------------------------------------------------------------------------
# one iteration of each variant
# ---------------------------------------------------------------------------------------------

@dataclass
class _Run:
    """What an iteration reads: the prepared model, the data, ``f`` and its targets, all on ``device``."""

    model: torch.nn.Module  # the prepared ContentConditionedUNet
    plain: ContentConditionedUNet  # the same, unwrapped
    encoder: FrozenFeatureEncoder
    x_source: torch.Tensor  # (N, 3, S, S), CPU
    x_target: torch.Tensor  # (K, 3, S, S), CPU
    alpha_bar: torch.Tensor  # (T,)
    f_source: torch.Tensor  # (N, D)
    target_gram: list[torch.Tensor]  # per layer (C_l, C_l)
    direction: Callable[[torch.Tensor], torch.Tensor]  # f(x_S) (B, D) -> Delta, (B, D) or (D,)
    config: Stage1Config
    device: torch.device

    def target_diffusion_loss(self, t: torch.Tensor, weight: torch.Tensor, g: torch.Generator
                              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(weighted L_diff, unweighted L_diff) on a batch of target images at timesteps t."""
        idx = torch.randint(0, len(self.x_target), (len(t),), generator=g)
        noise = torch.randn((len(t), *self.x_target.shape[1:]), generator=g)
        x0, t, noise, weight = (v.to(self.device) for v in (self.x_target[idx], t, noise, weight))
        with autocast(self.device):
            eps_hat = self.model(q_sample(x0, t, noise, self.alpha_bar), t)  # unconditional: no x_c (the authors' code)
        return (diffusion_loss(noise, eps_hat, self.config.diffusion_loss, weight),
                diffusion_loss(noise, eps_hat.detach(), self.config.diffusion_loss))


def _naive_iteration(run: _Run, step: int, g: torch.Generator) -> tuple[torch.Tensor, dict]:
    """``naive``: plain fine-tuning, ``L_diff`` on the K target images at ``t ~ U[0, T)``."""
    B = run.config.batch_size
    t = _uniform_t(0, len(run.alpha_bar), B, g)
    l_diff, l_target = run.target_diffusion_loss(t, torch.ones(B), g)
    return l_diff, {"l_target": l_target}


def _guided_iteration(run: _Run, step: int, g: torch.Generator) -> tuple[torch.Tensor, dict]:
    """``mfmda`` / ``static``: the even/odd iteration of the module docstring, ``Delta`` from ``run.direction``."""
    B, T, alpha_bar, device = run.config.batch_size, len(run.alpha_bar), run.alpha_bar, run.device
    even = step % 2 == 0
    t = _uniform_t(*(EVEN_T_RANGE if even else ODD_T_RANGE), B, g)
    w_dir, w_diff = stage1_weights(t, even, T)
    l_diff, l_target = run.target_diffusion_loss(t, w_diff, g)
    if not even:
        return l_diff, {"l_diff": l_diff.detach(), "l_target": l_target}
    idx = torch.randint(0, len(run.x_source), (B,), generator=g)
    noise, content_noise = torch.randn((2, B, *run.x_source.shape[1:]), generator=g)
    gate_noise = torch.randn(run.plain.bottleneck_shape(B), generator=g)
    x_s, t, noise, content_noise, gate_noise, w_dir = (v.to(device) for v in (
        run.x_source[idx], t, noise, content_noise, gate_noise, w_dir))
    x_t = q_sample(x_s, t, noise, alpha_bar)  # (B, 3, S, S)
    with autocast(device):
        eps_hat = run.model(x_t, t, q_sample(x_s, t, content_noise, alpha_bar), gate_noise)
    x0_hat = predict_x0(x_t, t, eps_hat.float(), alpha_bar)  # (B, 3, S, S) x0_hat^{S->T}
    maps = run.encoder.feature_pyramid(x0_hat)  # [(B, C_l, N_l)]: gradients flow to x0_hat, f itself is frozen
    f_hat = run.encoder.standardise(maps[-1].mean(dim=2))  # (B, D): the deepest unit, pooled
    f_s = run.f_source[idx.to(device)]
    l_dc = distribution_consistency_loss(f_hat, f_s, run.direction(f_s), w_dir)
    l_style = style_loss(maps, run.target_gram, w_dir)
    loss = run.config.dc_weight * l_dc + run.config.style_weight * l_style + l_diff
    return loss, {"l_dc": l_dc.detach(), "l_style": l_style.detach(), "l_diff": l_diff.detach(),
                  "l_target": l_target}


@dataclass(frozen=True)
class Variant:
    """A stage-1 variant as a strategy: whether a DIAA learns ``Delta``, and one iteration's loss.

    Attributes:
        learns_direction: ``Delta`` from a trained DIAA (else ``Delta_static`` for every image).
        iteration: ``(run, step, generator) -> (loss, logs)``.
    """

    learns_direction: bool
    iteration: Callable[[_Run, int, torch.Generator], tuple[torch.Tensor, dict]]


#: the adapted variants (``"none"`` adapts nothing)
VARIANT_STRATEGIES: dict[str, Variant] = {
    "naive": Variant(learns_direction=False, iteration=_naive_iteration),
    "static": Variant(learns_direction=False, iteration=_guided_iteration),
    "mfmda": Variant(learns_direction=True, iteration=_guided_iteration),
}


def adapt(model: ContentConditionedUNet, x_source: torch.Tensor, x_target: torch.Tensor,
          encoder: FrozenFeatureEncoder, alpha_bar: torch.Tensor, config: Stage1Config, *,
          accelerator: Accelerator | None = None, checkpoint: str | Path | None = None,
          callback: Callable[[int, dict], None] | None = None, progress: bool = True) -> Stage1State:
    """Adapt ``model`` (in place) to the domain of ``x_target``.

    Args:
        model: the source conditioned DDPM (a fresh copy: it is modified).
        x_source: ``(N, 3, S, S)`` source images in ``[-1, 1]`` (CPU).
        x_target: ``(K, 3, S, S)`` unlabelled target images in ``[-1, 1]`` (CPU).
        encoder: the frozen, calibrated ``f``.
        alpha_bar: ``(T,)`` cumulative alphas of the model's schedule.
        config: :class:`Stage1Config` (its ``variant`` picks the :data:`VARIANT_STRATEGIES` entry).
        accelerator: default :func:`~.training.make_accelerator` ``()``.
        checkpoint: resumable checkpoint (weights of U-Net, fusion and DIAA; optimizer; step).
        callback: ``(step, logs)`` after each step.

    Returns:
        :class:`Stage1State`; the model is in eval mode.
    """
    variant = VARIANT_STRATEGIES[config.variant]
    accelerator = accelerator or make_accelerator()
    device = accelerator.device
    encoder = encoder.to(device)
    f_source, f_target, target_gram = _encoded(encoder, x_source, x_target, device)
    c_source, c_target = f_source.mean(0), f_target.mean(0)  # (D,)
    diaa = DIAA(c_source, c_target) if variant.learns_direction else None
    delta_static = (c_target - c_source).to(device)
    f_source, target_gram = f_source.to(device), [g.to(device) for g in target_gram]
    model, diaa, optimizer = _prepared(model, diaa, config, accelerator)
    plain = accelerator.unwrap_model(model)
    run = _Run(model, plain, encoder, x_source, x_target, alpha_bar, f_source, target_gram,
               diaa if diaa is not None else lambda f_s: delta_static, config, device)
    modules = {"model": model} | ({"diaa": diaa} if diaa is not None else {})
    history = run_steps(functools.partial(variant.iteration, run), steps=config.steps, modules=modules,
                        optimizer=optimizer, accelerator=accelerator, seed=config.seed, checkpoint=checkpoint,
                        checkpoint_every=config.checkpoint_every, grad_clip=config.grad_clip, callback=callback,
                        desc=f"stage 1 ({config.variant})", keep_optimizer=False, progress=progress,
                        accumulate=config.accumulate)
    return Stage1State(plain.eval(), accelerator.unwrap_model(diaa).eval() if diaa is not None else None,
                       history, delta_static.cpu())
