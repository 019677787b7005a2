"""MFM-DA stage-1 losses and their time-dependent weights.

Stage 1 fine-tunes the content-conditioned DDPM with three terms:

- ``L_DC``, **distribution consistency**: the model's one-step clean estimate of a noised source
  image, ``x0_hat^{S->T}``, should sit where the DIAA says the translated image belongs::

      L_DC = MSE( f(x0_hat^{S->T}), f(x_S) + Delta )

- ``L_style``: Gram matrices (channel correlations) of ``f``'s feature maps of ``x0_hat`` should
  match those of the K target images (Gatys et al.'s style loss), relative to the target's scale;
- ``L_diff``: the ordinary noise-prediction loss on the K target images (the model must still
  denoise target images).

The weights depend on the timestep through ``a(t) = 20 ** (t / 1000)`` (from 1 at t = 0 to
20**0.9 ~ 14.8 at t = 900), and iterations alternate (MFM-DA's code)::

    even iteration, t in [300, 800):  L = a(t) (L_DC + L_style) + (20**0.9 - a(t)) L_diff
    odd  iteration, t in [0, 300):    L = (20**0.9 - a(t)) L_diff / 5

At large ``t`` the image is mostly noise, so the *direction* losses dominate (the coarse, domain
level appearance is decided there); at small ``t`` only fine detail is left and plain denoising
of target images dominates.
"""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["A_MAX", "a_weight", "stage1_weights", "distribution_consistency_loss", "gram_matrix",
           "style_loss", "EVEN_T_RANGE", "ODD_T_RANGE"]

#: ``20 ** 0.9``: the total weight shared between the direction losses and L_diff.
A_MAX = 20 ** 0.9
#: timestep ranges of even (direction) and odd (denoising-only) iterations.
EVEN_T_RANGE = (300, 800)
ODD_T_RANGE = (0, 300)


def a_weight(t: torch.Tensor, T: int = 1000) -> torch.Tensor:
    """``a(t) = 20 ** (t / T)``: ``(B,)`` timesteps -> ``(B,)`` float weights."""
    return 20.0 ** (t.float() / T)


def stage1_weights(t: torch.Tensor, even: bool, T: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image weights ``(w_direction, w_diff)`` of one iteration, each ``(B,)``.

    Even iterations: ``(a(t), 20**0.9 - a(t))``; odd iterations: ``(0, (20**0.9 - a(t)) / 5)``.
    """
    a = a_weight(t, T)
    if even:
        return a, A_MAX - a
    return torch.zeros_like(a), (A_MAX - a) / 5


def distribution_consistency_loss(f_x0_hat: torch.Tensor, f_source: torch.Tensor, delta: torch.Tensor,
                                  weight: torch.Tensor | None = None) -> torch.Tensor:
    """``L_DC = MSE(f(x0_hat), f(x_S) + Delta)``, optionally weighted per image.

    Args:
        f_x0_hat: ``(B, D)`` features of the model's clean estimates (carries gradients).
        f_source: ``(B, D)`` features of the source images (constant).
        delta: ``(B, D)`` DIAA directions (or ``(D,)`` a static direction).
        weight: ``(B,)`` per-image weights such as ``a(t)``.

    Returns:
        scalar.
    """
    per_image = ((f_x0_hat - (f_source + delta)) ** 2).mean(dim=1)  # (B,)
    return (per_image if weight is None else per_image * weight).mean()


def gram_matrix(maps: torch.Tensor) -> torch.Tensor:
    """``(B, C, N)`` feature maps -> ``(B, C, C)`` Gram matrices ``F F^T / N``."""
    return maps @ maps.transpose(1, 2) / maps.shape[2]


def style_loss(maps: torch.Tensor | Sequence[torch.Tensor], target_gram: torch.Tensor | Sequence[torch.Tensor],
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """Relative Gram (style) loss ``||G(x) - G_T||^2 / ||G_T||^2``, averaged over layers.

    The authors sum ``||G(x) - G(x_T^k)||^2`` over four VGG16 layers and average it over the K target
    images; against the *mean* target Gram ``G_T`` the gradient is the same (the two differ by a
    constant), and dividing by ``||G_T||^2`` gives every layer the same scale.

    Args:
        maps: ``(B, C, N)`` feature maps of the generated images, or one per layer ``[(B, C_l, N_l)]``.
        target_gram: ``(C, C)`` mean Gram matrix of the K target images, or one per layer.
        weight: ``(B,)`` per-image weights.

    Returns:
        scalar.
    """
    if isinstance(maps, torch.Tensor):
        maps, target_gram = [maps], [target_gram]
    if len(maps) != len(target_gram):
        raise ValueError(f"style_loss: {len(maps)} layers of maps but {len(target_gram)} target Gram matrices")
    per_image = 0
    for m, g_t in zip(maps, target_gram):
        g = gram_matrix(m)  # (B, C, C)
        per_image = per_image + ((g - g_t) ** 2).flatten(1).sum(1) / (g_t ** 2).sum().clamp_min(1e-12)  # (B,)
    per_image = per_image / len(maps)
    return (per_image if weight is None else per_image * weight).mean()

