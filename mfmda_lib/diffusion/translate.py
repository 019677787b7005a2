"""Translating source images with a (target-adapted) content-conditioned DDPM, structure kept.

MFM-DA's translation is SDEdit with two safeguards for the anatomy:

1. **content conditioning**: every denoising step sees the source image noised to the current
   ``t`` (:class:`~.conditioned.ContentConditionedUNet`);
2. **low-frequency structure guidance** (as in ILVR, Choi et al., 2021): while ``t > t_guide_stop``,
   after each DDIM step the low frequencies of the sample are replaced by those of the source
   image noised to the same level::

       x <- x - up(down(x)) + up(down(x_guide)),      x_guide ~ q(x_{t-1} | x_S),  down/up by ``guide_factor``

   so the coarse layout (field of view, disc position) follows the source while the model is
   still deciding it, and is left free at the end when only appearance is decided.

**The kit's CPU choice: translate small, apply the change at full size.** The DDPM works at
``S`` = 64 px on a CPU, but the benchmark's images are 256 px. We translate at ``S`` and bring
the *change* back to full size, low-pass filtered::

    x_256' = x_256 + up( low_pass( translated_S - down(x_256), k ) )        (k = change_low_pass, 4)

A camera's style (colour balance, illumination, contrast, vignetting) is low-frequency, so the
upsampled change carries it, while the full-resolution anatomy (vessels, disc and cup edges) of
the source, and so its labels, stays sharp. The low-pass matters: the DDPM redraws fine
structures (a vessel here and there) in its own way, and without it those redraws would appear
as blurred "ghost" vessels on the full-resolution image. Fine-grained style (noise, blur, JPEG
artefacts) is lost at 64 px: on a GPU, set a larger ``ddpm_image_size``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from diffusers import DDIMScheduler
from tqdm.auto import tqdm

from .conditioned import ContentConditionedUNet
from .ddpm import low_pass, q_sample, resize, to_signed_tensor, to_uint8
from .sampling import denoise, timesteps_from

__all__ = ["TranslateConfig", "low_pass", "translate", "to_full_resolution"]


@dataclass(frozen=True)
class TranslateConfig:
    """How to translate.

    Attributes:
        t_start: noise level the source is taken to (MFM-DA: 600 of 1000).
        steps: DDIM steps from ``t_start`` to 0 (MFM-DA: 25).
        guide_stop: structure guidance acts while ``t > guide_stop`` (MFM-DA: 400).
        guide_factor: down-sampling factor of the low-pass filter (MFM-DA: 8 at 224 px).
        conditioned: feed the content condition (False: plain SDEdit with guidance).
        seed: image ``i``'s noises come from a generator seeded by ``(seed, i)``.
        batch_size: images per denoiser call.
        change_low_pass: low-pass factor of the change applied at full resolution
            (:func:`to_full_resolution`; 1 = the whole change).
    """

    t_start: int = 600
    steps: int = 25
    guide_stop: int = 400
    guide_factor: int = 8
    conditioned: bool = True
    seed: int = 0
    batch_size: int = 16
    change_low_pass: int = 4

    def __post_init__(self) -> None:
        if not 0 <= self.guide_stop <= self.t_start:
            raise ValueError(f"need 0 <= guide_stop <= t_start, got {self.guide_stop} and {self.t_start}")
        if min(self.steps, self.guide_factor, self.batch_size, self.change_low_pass) < 1:
            raise ValueError("steps, guide_factor, batch_size and change_low_pass must be >= 1")


def _noises(index: int, seed: int, n_steps: int, image_shape: tuple, gate_shape: tuple) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)
    return {"start": torch.randn(image_shape, generator=g), "content": torch.randn(image_shape, generator=g),
            "gate": torch.randn((n_steps, *gate_shape), generator=g),
            "guide": torch.randn((n_steps, *image_shape), generator=g)}


@torch.no_grad()
def translate(model: ContentConditionedUNet, scheduler: DDIMScheduler, x_source: torch.Tensor,
              alpha_bar: torch.Tensor, config: TranslateConfig, *, device: torch.device | None = None,
              progress: bool = True) -> torch.Tensor:
    """Translate source images with the model's learned style, keeping their structure.

    Args:
        model: the (adapted) conditioned DDPM, in eval mode.
        scheduler: a ``DDIMScheduler`` of the model's schedule.
        x_source: ``(N, 3, S, S)`` source images in ``[-1, 1]`` at the DDPM's size.
        alpha_bar: ``(T,)`` cumulative alphas.
        config: :class:`TranslateConfig`.
        device: where the model runs (default: its parameters' device).

    Returns:
        ``(N, 3, S, S)`` translated images in ``[-1, 1]`` on the CPU. Image ``i`` depends only on
        ``x_source[i]``, the model and ``(config.seed, i)``, not on the batch it ran in.
    """
    device = device or next(model.parameters()).device
    model.eval()
    timesteps = timesteps_from(scheduler, config.t_start, config.steps)
    out = []
    bar = tqdm(total=len(x_source), desc="translate", unit="img", disable=not progress)
    for lo in range(0, len(x_source), config.batch_size):
        x_s = x_source[lo:lo + config.batch_size].to(device)  # (b, 3, S, S)
        b = len(x_s)
        noise = [_noises(lo + i, config.seed, len(timesteps), tuple(x_s.shape[1:]), model.bottleneck_shape(1)[1:])
                 for i in range(b)]
        stack = {k: torch.stack([n[k] for n in noise]).to(device) for k in noise[0]}  # per-image noises
        step_of = {int(t): i for i, t in enumerate(timesteps)}

        def eps_model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if not config.conditioned:
                return model(x_t, t)
            x_c = q_sample(x_s, t, stack["content"], alpha_bar)  # the source noised to t
            return model(x_t, t, x_c, stack["gate"][:, step_of[int(t[0])]])

        def guide(x: torch.Tensor, t: int, t_prev: int) -> torch.Tensor:
            if t <= config.guide_stop:
                return x
            target = x_s if t_prev < 0 else q_sample(x_s, torch.full((b,), t_prev), stack["guide"][:, step_of[t]],
                                                     alpha_bar)
            return x - low_pass(x, config.guide_factor) + low_pass(target, config.guide_factor)

        t0 = timesteps[:1].expand(b)
        x_t = q_sample(x_s, t0, stack["start"], alpha_bar)  # SDEdit: noise the source to t_start
        out.append(denoise(eps_model, scheduler, x_t, timesteps, after_step=guide).clamp(-1, 1).cpu())
        bar.update(b)
    bar.close()
    return torch.cat(out)


def to_full_resolution(images: Sequence[np.ndarray], translated: torch.Tensor, low_pass_factor: int = 1
                       ) -> list[np.ndarray]:
    """Apply the low-resolution change to full-resolution images: ``x + up(low_pass(translated - down(x)))``.

    Args:
        images: ``N`` uint8 ``(H_i, W_i, 3)`` source images (any sizes).
        translated: ``(N, 3, S, S)`` their translations at the DDPM's size, in ``[-1, 1]``.
        low_pass_factor: blur the change by this factor at the DDPM's size first (1 = no blur).

    Returns:
        ``N`` uint8 ``(H_i, W_i, 3)`` translated images at full resolution.
    """
    if len(images) != len(translated):
        raise ValueError(f"{len(images)} images but {len(translated)} translations")
    out = []
    for image, lo in zip(images, translated):
        x = to_signed_tensor([image])  # (1, 3, H, W)
        h, w = x.shape[-2:]
        if h != w:
            raise ValueError(f"to_full_resolution expects square images, got {image.shape}")
        change = low_pass(lo[None] - resize(x, lo.shape[-1]), low_pass_factor)  # (1, 3, S, S)
        out.append(to_uint8(x + resize(change, h))[0])
    return out
