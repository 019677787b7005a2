"""``f``: the frozen image encoder whose feature space defines MFM-DA's domain *directions*.

MFM-DA measures "how target-like" an image is in the feature space of a frozen pretrained
encoder (CLIP ViT-B/32 in the authors' code). Offline, the kit uses the medical foundation
model it already has: **LiteMedSAM's TinyViT image encoder**, frozen, pooled to a vector.

Because the distribution-consistency loss back-propagates through ``f`` into the diffusion
model, ``f`` is called as a module (never through the no-grad embedding cache), with
``requires_grad=False`` on its own parameters but gradients flowing to its *input*.

Cost on a CPU decides how much of the encoder we use (``units``; the encoder is split into
units by :func:`mfmda_lib.models.prefix.encoder_units`):

- ``units = 2`` (patch embedding + the first conv stage, 128 channels): fully convolutional, so
  it runs at any input size; at 64 px about 0.1 s per image forward + backward on one core.
  These early features describe colour, contrast and texture: what a camera changes.
- ``units = 15`` (the whole encoder and its neck, 256 channels): TinyViT's attention windows
  fix the input at 256 px; about 10 s per image forward + backward on a CPU: GPU profile only.

Features are standardised channel-wise with the mean and standard deviation of the source
images (:meth:`FrozenFeatureEncoder.calibrate`), so every channel counts alike in ``L_DC`` and
in the Frechet distance.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..models.prefix import encoder_units
from .ddpm import resize, to_tensor

__all__ = ["FrozenFeatureEncoder"]


class FrozenFeatureEncoder(nn.Module):
    """The first ``units`` units of a frozen image encoder, on ``[-1, 1]`` images, pooled and standardised.

    Args:
        image_encoder: e.g. ``load_model("litemedsam").image_encoder`` (parameters are shared, frozen here).
        units: how many encoder units to run (2 = up to TinyViT's first stage; all = the full encoder).
        input_size: side the images are resized to before the encoder (256 is required past unit 2).
    """

    def __init__(self, image_encoder: nn.Module, *, units: int = 2, input_size: int = 64) -> None:
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
        self.input_size = input_size
        self.register_buffer("mean", torch.zeros(0))
        self.register_buffer("std", torch.ones(0))

    def train(self, mode: bool = True) -> "FrozenFeatureEncoder":
        return super().train(False)  # frozen: BatchNorm statistics never update

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder features of images in ``[-1, 1]``: ``(B, 3, H, W)`` -> ``(B, C, N)`` (N positions)."""
        h = resize((x + 1) / 2, self.input_size)  # LiteMedSAM's input: RGB in [0, 1]
        for block in self.blocks:
            h = block(h)
        if h.ndim == 3:  # TinyViT tokens (B, N, C)
            return h.transpose(1, 2)  # (B, C, N)
        return h.flatten(2)  # (B, C, h * w)

    def standardise(self, pooled: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` raw pooled features -> standardised with the calibration statistics."""
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
        self.mean = pooled.mean(dim=0)
        self.std = pooled.std(dim=0).clamp_min(1e-6)
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
        x = images if isinstance(images, torch.Tensor) else to_tensor(images, size)
        if isinstance(images, torch.Tensor) and size is not None:
            x = resize(x, size)
        device = next(self.parameters()).device
        return torch.cat([self(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)])
