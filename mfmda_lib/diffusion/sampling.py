"""Sampling from a DDPM: ancestral (DDPM) and DDIM generation, and SDEdit image-to-image translation.

- **Ancestral sampling** (Ho et al., Algorithm 2) walks ``x_T -> x_0`` drawing fresh noise at
  every step: stochastic, needs many steps.
- **DDIM** (Song et al., 2021) with ``eta = 0`` is a deterministic walk over a subsequence of the
  timesteps: the same noise gives the same image, and 25-50 steps suffice.
- **SDEdit** (Meng et al., 2022) translates an *existing* image: noise it to an intermediate
  ``t_0`` with q(x_t | x_0), then denoise back with the model. The noise erases the details
  (colour, texture) up to a scale set by ``t_0``; the model redraws them in the style it learned.
  Small ``t_0``: faithful to the input but little changed; large ``t_0``: fully in the model's
  style but the anatomy may be lost. This is the *realism / faithfulness* trade-off.

A denoiser is any ``eps_model(x_t, t) -> eps`` callable: :func:`unconditional` wraps a U-Net.
The schedulers are diffusers' (``set_timesteps``, ``step``, ``add_noise``).
"""
from __future__ import annotations

from typing import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from tqdm.auto import tqdm

__all__ = ["EpsModel", "unconditional", "sample", "timesteps_from", "denoise", "sdedit", "forward_trajectory"]

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def unconditional(unet: UNet2DModel) -> EpsModel:
    """``(x_t, t) -> unet(x_t, t).sample`` as an :data:`EpsModel`."""
    return lambda x, t: unet(x, t).sample


@torch.no_grad()
def sample(eps_model: EpsModel, scheduler: DDPMScheduler | DDIMScheduler, n: int, size: int, *, steps: int,
           generator: torch.Generator | None = None, device: torch.device | None = None,
           progress: bool = True) -> torch.Tensor:
    """Generate ``n`` images from pure noise.

    Args:
        eps_model: the denoiser.
        scheduler: a ``DDPMScheduler`` (ancestral) or ``DDIMScheduler`` (deterministic, eta = 0).
        n, size: how many ``size x size`` images.
        steps: sampling steps (a subsequence of the ``T`` training steps).
        generator: CPU generator for the initial noise (and ancestral noise).
        device: where the denoiser runs (default CPU).

    Returns:
        ``(n, 3, size, size)`` images in ``[-1, 1]`` on the CPU.
    """
    device = device or torch.device("cpu")
    scheduler.set_timesteps(steps)
    x = torch.randn((n, 3, size, size), generator=generator).to(device)  # x_T
    kind = "DDIM" if isinstance(scheduler, DDIMScheduler) else "DDPM"
    for t in tqdm(scheduler.timesteps, desc=f"{kind} sampling", disable=not progress, leave=False):
        eps = eps_model(x, t.expand(n).to(device))
        if isinstance(scheduler, DDPMScheduler):
            x = scheduler.step(eps, t, x, generator=generator).prev_sample  # draws the ancestral noise
        else:
            x = scheduler.step(eps, t, x, eta=0.0).prev_sample
    return x.clamp(-1, 1).cpu()


def timesteps_from(scheduler: DDIMScheduler, t_start: int, steps: int) -> torch.Tensor:
    """About ``steps`` evenly spaced DDIM timesteps from ``<= t_start`` down to 0 (descending, ``(n,)``).

    DDIM's update computes the previous step as ``t - T // num_inference_steps``, so we set the
    scheduler's spacing such that ``steps`` of its steps cover ``[0, t_start]`` and keep those.
    """
    T = scheduler.config.num_train_timesteps
    if not 0 < t_start < T:
        raise ValueError(f"t_start must be in (0, {T}), got {t_start}")
    scheduler.set_timesteps(max(1, min(T, round(steps * T / (t_start + 1)))))
    return scheduler.timesteps[scheduler.timesteps <= t_start]


@torch.no_grad()
def denoise(eps_model: EpsModel, scheduler: DDIMScheduler, x_t: torch.Tensor, timesteps: torch.Tensor, *,
            after_step: Callable[[torch.Tensor, int, int], torch.Tensor] | None = None, eta: float = 0.0,
            generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
    """DDIM walk from ``x_t`` (at ``timesteps[0]``) to ``x_0``.

    Args:
        eps_model: the denoiser.
        scheduler: the DDIM scheduler whose ``set_timesteps`` produced ``timesteps``.
        x_t: ``(B, 3, S, S)`` noisy images at ``timesteps[0]``.
        timesteps: ``(n,)`` descending.
        after_step: ``(x_prev, t, t_prev) -> x_prev`` applied after each step (e.g. structure guidance).
        eta: 0 = deterministic DDIM; 1 = as stochastic as ancestral sampling (fresh noise each step).
        generator: CPU generator of that noise (``eta > 0``).

    Returns:
        ``(B, 3, S, S)`` denoised images (not clipped).
    """
    x = x_t
    step_ratio = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    for t in tqdm(timesteps, desc="DDIM", disable=not progress, leave=False):
        eps = eps_model(x, t.expand(len(x)).to(x.device))
        if eta > 0:
            noise = torch.randn(x.shape, generator=generator).to(x.device)
            x = scheduler.step(eps, t, x, eta=eta, variance_noise=noise).prev_sample
        else:
            x = scheduler.step(eps, t, x, eta=0.0).prev_sample
        if after_step is not None:
            x = after_step(x, int(t), int(t) - step_ratio)
    return x


@torch.no_grad()
def sdedit(eps_model: EpsModel, scheduler: DDIMScheduler, x0: torch.Tensor, t_start: int, *, steps: int,
           eta: float = 1.0, generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
    """SDEdit: noise ``x0`` to ``t_start`` with q(x_t | x_0), then denoise it back.

    Meng et al. run the *stochastic* reverse process; ``eta = 1`` (the default) is its DDIM
    equivalent (fresh noise at every step), ``eta = 0`` the deterministic DDIM path. With a small,
    briefly trained model the deterministic path keeps visible noise when started from a large
    ``t_start``; the stochastic one corrects it.

    Args:
        eps_model: the denoiser.
        scheduler: a ``DDIMScheduler``.
        x0: ``(B, 3, S, S)`` images in ``[-1, 1]`` (on the denoiser's device).
        t_start: how far to noise, ``0 <= t_start < T``; ``0`` returns ``x0`` unchanged.
        steps: DDIM steps spread over ``[0, t_start]``.
        eta: stochasticity of the reverse steps (see above).
        generator: CPU generator for the noise.

    Returns:
        ``(B, 3, S, S)`` translated images in ``[-1, 1]``.
    """
    if t_start == 0:
        return x0.clone()
    timesteps = timesteps_from(scheduler, t_start, steps)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    x_t = scheduler.add_noise(x0, noise, timesteps[:1].expand(len(x0)).to(x0.device))
    return denoise(eps_model, scheduler, x_t, timesteps, eta=eta, generator=generator, progress=progress).clamp(-1, 1)


@torch.no_grad()
def forward_trajectory(x0: torch.Tensor, scheduler: DDPMScheduler | DDIMScheduler, ts: list[int], *,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """``x_t ~ q(x_t | x_0)`` of one image at several ``t`` with one shared noise (for plots).

    Args:
        x0: ``(3, S, S)`` or ``(1, 3, S, S)`` image in ``[-1, 1]``.
        ts: timesteps in ``[0, T)``.

    Returns:
        ``(len(ts), 3, S, S)``.
    """
    x0 = x0.reshape(1, *x0.shape[-3:])
    noise = torch.randn(x0.shape, generator=generator)
    t = torch.tensor(ts, dtype=torch.long)
    return scheduler.add_noise(x0.expand(len(ts), -1, -1, -1), noise.expand(len(ts), -1, -1, -1), t)
