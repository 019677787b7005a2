"""``f``: the frozen image encoder whose feature space defines MFM-DA's domain *directions*.

MFM-DA measures "how target-like" an image is in the feature space of a frozen pretrained
encoder (CLIP ViT-B/32 in the authors' code). Offline, the kit uses the medical foundation
model it already has: **LiteMedSAM's TinyViT image encoder**, frozen, pooled to a vector.

Because the distribution-consistency loss back-propagates through ``f`` into the diffusion
model, ``f`` is called as a module (never through the no-grad embedding cache), with
``requires_grad=False`` on its own parameters but gradients flowing to its *input*.

Cost on a CPU decides how much of the encoder we use (``units``; the encoder is split into
units by :func:`mfmda_lib.models.prefix.encoder_units`):

- ``units = 1`` (the patch embedding: two 1x1 convolutions, 64 channels, learned by LiteMedSAM
  as its per-pixel colour code): runs at any size, milliseconds per image. Pooled, it describes
  colour balance, brightness and contrast: most of what a camera changes. The ``ci`` and ``cpu`` choice.
- ``units = 2`` (+ the first conv stage, 128 channels): about 0.1 s per 64 px image forward +
  backward on one core; texture-aware.
- ``units = 15`` (the whole encoder and its neck, 256 channels): TinyViT's attention windows
  fix the input at 256 px; about 10 s per image forward + backward on a CPU: GPU profile only.

The input is first **low-pass filtered** (``low_pass``, a factor 4 by default). The reason is
measured, not aesthetic: the DDPM's one-step estimate ``x0_hat`` keeps a little residual noise,
and deeper units react to that noise far more than to a change of hospital (with the first conv
stage at 64 px, a reconstruction with 1% pixel MSE moved the pooled features further than the
whole source-to-target gap). Blurred, the features see the image's low-frequency appearance,
which is what a 64 px translation can change anyway.

Features are centred on the source images' mean and divided by one scale, the root mean square
of the channels' standard deviations over the source images (:meth:`FrozenFeatureEncoder.calibrate`):
``L_DC`` and the Frechet distance then have a fixed unit, and no near-constant channel is
blown up by a tiny standard deviation.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..models.prefix import encoder_units
from .ddpm import low_pass, resize, to_signed_tensor

__all__ = ["FrozenFeatureEncoder"]


class FrozenFeatureEncoder(nn.Module):
    """The first ``units`` units of a frozen image encoder, on ``[-1, 1]`` images, pooled and standardised.

    Args:
        image_encoder: e.g. ``load_model("litemedsam").image_encoder`` (parameters are shared, frozen here).
        units: how many encoder units to run (2 = up to TinyViT's first stage; all = the full encoder).
        input_size: side the images are resized to before the encoder (256 is required past unit 2).
        low_pass: blur factor applied to the input first (1 = none; see the module docstring).
    """

    def __init__(self, image_encoder: nn.Module, *, units: int = 1, input_size: int = 64, low_pass: int = 4) -> None:
        super().__init__()
        all_units = encoder_units(image_encoder)
        if not 1 <= units <= len(all_units):
            raise ValueError(f"units must be in [1, {len(all_units)}], got {units}")
        if units > 2 and input_size != 256 and hasattr(image_encoder, "layers"):  # TinyViT
            raise ValueError(f"encoder units past the first conv stage need 256 px inputs (TinyViT attention "
                             f"windows are fixed); got input_size={input_size} with units={units}")
        self.names = [name for name, _ in all_units[:units]]
        self.blocks = nn.ModuleList(module for _, module in all_units[:units])
        self.requires_grad_(False).eval()
        if low_pass < 1:
            raise ValueError(f"low_pass must be >= 1, got {low_pass}")
        self.input_size, self.low_pass = input_size, low_pass
        self.register_buffer("mean", torch.zeros(0))
        self.register_buffer("std", torch.ones(0))

    def train(self, mode: bool = True) -> "FrozenFeatureEncoder":
        return super().train(False)  # frozen: BatchNorm statistics never update

    def feature_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every unit's output for images in ``[-1, 1]``: ``(B, 3, H, W)`` -> ``[(B, C_l, N_l)]``, shallow to deep.

        These are the layers of the Gram (style) loss, each at the resolution the unit computes it.
        """
        h = resize((low_pass(x, self.low_pass) + 1) / 2, self.input_size)  # LiteMedSAM's input: RGB in [0, 1]
        out = []
        for block in self.blocks:
            h = block(h)
            out.append(h.transpose(1, 2) if h.ndim == 3 else h.flatten(2))  # tokens (B, N, C) or maps -> (B, C, N)
        return out

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The deepest unit's features: ``(B, 3, H, W)`` -> ``(B, C, N)`` (N positions); ``f`` pools them."""
        return self.feature_pyramid(x)[-1]

    def standardise(self, pooled: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` raw pooled features -> centred and scaled with the calibration statistics."""
        if self.mean.numel() == 0:
            raise ValueError("FrozenFeatureEncoder is not calibrated: call calibrate(source_images) first")
        return (pooled - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``f(x)``: ``(B, 3, H, W)`` in ``[-1, 1]`` -> ``(B, C)`` standardised pooled features."""
        return self.standardise(self.feature_maps(x).mean(dim=2))

    @torch.no_grad()
    def calibrate(self, images: torch.Tensor, batch_size: int = 16) -> "FrozenFeatureEncoder":
        """Set the standardisation from ``(N, 3, H, W)`` source images in ``[-1, 1]`` (N >= 2)."""
        if len(images) < 2:
            raise ValueError("calibrate needs at least 2 images to estimate a standard deviation")
        device = next(self.parameters()).device
        pooled = torch.cat([self.feature_maps(images[i:i + batch_size].to(device)).mean(dim=2)
                            for i in range(0, len(images), batch_size)])  # (N, C)
        self.mean = pooled.mean(dim=0)  # (C,)
        # one scale for all channels (the RMS of their standard deviations): channels that barely vary
        # over the source (e.g. the black border) are not blown up, and distances keep their geometry
        self.std = pooled.var(dim=0).mean().sqrt().clamp_min(1e-6).reshape(1)
        return self

    @torch.no_grad()
    def encode(self, images: torch.Tensor | Sequence[np.ndarray], size: int | None = None,
               batch_size: int = 16) -> torch.Tensor:
        """``f`` of many images without gradients, in batches.

        Args:
            images: ``(N, 3, H, W)`` in ``[-1, 1]``, or ``N`` uint8 ``(H, W, 3)`` arrays.
            size: first resize uint8 images to this side (e.g. the DDPM's), so every image is seen
                at the same resolution whatever its source.

        Returns:
            ``(N, C)`` float32 on the CPU.
        """
        x = images if isinstance(images, torch.Tensor) else to_signed_tensor(images, size)
        if isinstance(images, torch.Tensor) and size is not None:
            x = resize(x, size)
        device = next(self.parameters()).device
        return torch.cat([self(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)])
