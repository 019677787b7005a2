"""The denoising diffusion model itself: a small ``diffusers`` U-Net, its noise schedules, q(x_t | x_0).

A DDPM (Ho et al., 2020) learns to undo a fixed *forward process* that adds Gaussian noise in
``T`` steps. In closed form (Ho et al., eq. 4)::

    q(x_t | x_0) = N( sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I )
    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,       eps ~ N(0, I)

The network ``eps_theta(x_t, t)`` predicts ``eps``; from it the one-step estimate of the clean
image is (Ho et al., eq. 15)::

    x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps_theta) / sqrt(alpha_bar_t)

Sections: config -> builders (U-Net, schedulers) -> forward process -> image <-> tensor helpers.
Images inside the diffusion code are ``(B, 3, H, W)`` float tensors in ``[-1, 1]``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

__all__ = ["DDPMConfig", "build_unet", "build_scheduler", "alphas_cumprod", "q_sample", "predict_x0",
           "to_signed_tensor", "to_uint8", "resize", "low_pass"]


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DDPMConfig:
    """Architecture and noise schedule of the source DDPM.

    Attributes:
        image_size: side of the images the DDPM models (pixels); a multiple of ``2 ** (levels - 1)``.
        block_out_channels: channels of each U-Net level, from the highest resolution down.
        layers_per_block: ResNet blocks per level on the way down (one more on the way up).
        attention_levels: how many of the lowest-resolution levels get self-attention (0 = none).
        norm_num_groups: GroupNorm groups; must divide every entry of ``block_out_channels``.
        num_train_timesteps: ``T``, the length of the forward process.
        beta_schedule: ``"squaredcos_cap_v2"`` (the cosine schedule of Nichol & Dhariwal, as in
            MFM-DA's code) or ``"linear"`` (Ho et al.).
    """

    image_size: int = 64
    block_out_channels: tuple[int, ...] = (32, 64, 128, 128)
    layers_per_block: int = 1
    attention_levels: int = 1
    norm_num_groups: int = 8
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"

    def __post_init__(self) -> None:
        object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))
        levels = len(self.block_out_channels)
        if levels < 2:
            raise ValueError(f"block_out_channels needs >= 2 levels, got {self.block_out_channels}")
        if self.image_size < 8 or self.image_size % 2 ** (levels - 1):
            raise ValueError(f"image_size ({self.image_size}) must be divisible by 2 ** {levels - 1} "
                             f"for {levels} U-Net levels")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(f"norm_num_groups ({self.norm_num_groups}) must divide every entry of "
                             f"block_out_channels {self.block_out_channels}")
        if not 0 <= self.attention_levels <= levels:
            raise ValueError(f"attention_levels must be in [0, {levels}], got {self.attention_levels}")
        if self.layers_per_block < 1 or self.num_train_timesteps < 2:
            raise ValueError("layers_per_block must be >= 1 and num_train_timesteps >= 2")
        if self.beta_schedule not in ("squaredcos_cap_v2", "linear"):
            raise ValueError(f"beta_schedule must be 'squaredcos_cap_v2' or 'linear', got {self.beta_schedule!r}")

    def to_dict(self) -> dict:
        """Plain types only (stored inside checkpoints, loadable with ``weights_only=True``)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> "DDPMConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise a ``ValueError`` naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"DDPMConfig: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


# ---------------------------------------------------------------------------------------------
# builders
# ---------------------------------------------------------------------------------------------

def build_unet(config: DDPMConfig) -> UNet2DModel:
    """A fresh ``diffusers.UNet2DModel`` predicting the noise of ``(B, 3, S, S)`` images, ``S = image_size``."""
    levels = len(config.block_out_channels)
    attn = [i >= levels - config.attention_levels for i in range(levels)]  # attention at the lowest levels
    return UNet2DModel(
        sample_size=config.image_size, in_channels=3, out_channels=3,
        block_out_channels=config.block_out_channels, layers_per_block=config.layers_per_block,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        norm_num_groups=config.norm_num_groups,
    )


def build_scheduler(config: DDPMConfig, kind: str = "ddpm") -> DDPMScheduler | DDIMScheduler:
    """The noise schedule with one of two samplers.

    Args:
        config: the DDPM's config (``T`` and the beta schedule).
        kind: ``"ddpm"`` for ancestral sampling (Ho et al., eq. 11, stochastic) or ``"ddim"``
            (Song et al., 2021, eq. 12 with eta = 0: deterministic, few steps).
    """
    common = dict(num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
                  clip_sample=True, prediction_type="epsilon")
    if kind == "ddpm":
        return DDPMScheduler(**common)
    if kind == "ddim":
        return DDIMScheduler(**common, set_alpha_to_one=True)
    raise ValueError(f"scheduler kind must be 'ddpm' or 'ddim', got {kind!r}")


# ---------------------------------------------------------------------------------------------
# the forward process
# ---------------------------------------------------------------------------------------------

def alphas_cumprod(config: DDPMConfig) -> torch.Tensor:
    """``alpha_bar_t`` for ``t = 0 .. T-1``: ``(T,)`` float32 (the signal fraction left at step t)."""
    return build_scheduler(config).alphas_cumprod.clone()


def _gather(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values[t]`` shaped ``(B, 1, 1, 1)`` on ``like``'s device and dtype."""
    return values.to(like.device)[t.to(like.device).long()].to(like.dtype).view(-1, 1, 1, 1)


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """Sample ``x_t ~ q(x_t | x_0)`` (Ho et al., eq. 4).

    Args:
        x0: ``(B, C, H, W)`` clean images in ``[-1, 1]``.
        t: ``(B,)`` integer timesteps in ``[0, T)``.
        noise: ``(B, C, H, W)`` standard normal noise.
        alpha_bar: ``(T,)`` from :func:`alphas_cumprod`.

    Returns:
        ``(B, C, H, W)`` noisy images.
    """
    a = _gather(alpha_bar, t, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def predict_x0(x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """One-step estimate of the clean image from a noise prediction (Ho et al., eq. 15).

    Args:
        x_t: ``(B, C, H, W)`` noisy images; t: ``(B,)`` timesteps; eps: ``(B, C, H, W)`` predicted noise.

    Returns:
        ``(B, C, H, W)`` ``x0_hat`` (not clipped: gradients flow through it).
    """
    a = _gather(alpha_bar, t, x_t)
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()


# ---------------------------------------------------------------------------------------------
# images <-> tensors
# ---------------------------------------------------------------------------------------------

def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``(B, C, H, W)`` to ``(B, C, size, size)``: area averaging down, bilinear up."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    if x.shape[-1] > size:
        return F.interpolate(x, size=(size, size), mode="area")
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def low_pass(x: torch.Tensor, factor: int) -> torch.Tensor:
    """``up(down(x))``: ``(B, C, S, S)`` blurred by area down-sampling ``factor`` times and bilinear up-sampling."""
    if factor <= 1:
        return x
    side = x.shape[-1]
    return resize(resize(x, max(1, side // factor)), side)


def to_signed_tensor(images: Sequence[np.ndarray] | np.ndarray, size: int | None = None) -> torch.Tensor:
    """``B`` uint8 ``(H, W, 3)`` images -> ``(B, 3, size, size)`` float32 in ``[-1, 1]`` (area-downsampled)."""
    arrays = [np.asarray(img) for img in images]
    if not arrays or any(a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8 for a in arrays):
        raise ValueError("to_signed_tensor expects a non-empty list of (H, W, 3) uint8 RGB images")
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"to_signed_tensor: all images must share one size, got {sorted({a.shape for a in arrays})}")
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B, 3, H, W)
    return resize(x, size) if size is not None else x


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """``(B, 3, H, W)`` in ``[-1, 1]`` -> ``(B, H, W, 3)`` uint8 (clipped, rounded)."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round()
    return x.permute(0, 2, 3, 1).numpy().astype(np.uint8)  # (B, H, W, 3)
