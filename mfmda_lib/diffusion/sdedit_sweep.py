"""Notebook 07's SDEdit experiment: translate target-hospital images with the *source* DDPM at several t_0.

SDEdit with a model trained on the source hospital pulls any input towards the source's look.
Sweeping the noise level ``t_0`` shows the trade-off between

- **faithfulness**: PSNR between output and input (high = the input's content survives), and
- **realism** (for the model's domain): the distance of the output's features ``f`` (the frozen
  LiteMedSAM encoder, standardised on source images) to the source centroid, relative to the
  input's own distance (1 = as far as the input, 0 = at the source centroid).

This is also why stage 1 of MFM-DA exists: SDEdit alone can only translate *into the domain the
DDPM knows*. To translate source images into a target hospital's style, the DDPM must first be
adapted to the target (notebook 08).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pandas as pd
import torch
from diffusers import DDIMScheduler

from .features import FrozenFeatureEncoder
from .sampling import EpsModel, sdedit

__all__ = ["SDEditSweep", "psnr", "sdedit_sweep"]


@dataclass
class SDEditSweep:
    """Inputs, outputs per ``t_0`` and the per-``t_0`` table (``psnr``, ``relative_distance``)."""

    ts: list[int]
    inputs: torch.Tensor
    outputs: dict[int, torch.Tensor]
    table: pd.DataFrame


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of ``(B, C, H, W)`` images in ``[-1, 1]``: ``(B,)``."""
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(4.0 / mse)  # peak-to-peak range 2 -> peak^2 = 4


@torch.no_grad()
def sdedit_sweep(eps_model: EpsModel, scheduler: DDIMScheduler, x: torch.Tensor, ts: Sequence[int], *, steps: int,
                 encoder: FrozenFeatureEncoder, seed: int = 0, progress: bool = True) -> SDEditSweep:
    """SDEdit every image of ``x`` at every ``t_0`` in ``ts`` (same noise for every ``t_0``).

    Args:
        eps_model: the source DDPM's denoiser.
        scheduler: a ``DDIMScheduler``.
        x: ``(B, 3, S, S)`` inputs in ``[-1, 1]``.
        ts: noise levels (``0`` = the input itself).
        steps: DDIM steps per translation (spread over ``[0, t_0]``).
        encoder: ``f``, calibrated on source images (so the source centroid is ~0).
        seed: the noise seed.

    Returns:
        :class:`SDEditSweep`.
    """
    from tqdm.auto import tqdm

    centre = torch.zeros(encoder.mean.numel())  # standardised source centroid
    d_input = (encoder.encode(x) - centre).norm(dim=1)  # (B,)
    outputs, rows = {}, []
    for t0 in tqdm(list(ts), desc="SDEdit sweep", disable=not progress):
        out = sdedit(eps_model, scheduler, x, int(t0), steps=steps, generator=torch.Generator().manual_seed(seed))
        outputs[int(t0)] = out
        rel = (encoder.encode(out) - centre).norm(dim=1) / d_input  # (B,)
        rows.append({"t0": int(t0), "psnr": float(psnr(out, x).mean()) if t0 else float("inf"),  # t0 = 0: the input
                     "relative_distance": float(rel.mean())})
    return SDEditSweep(list(map(int, ts)), x, outputs, pd.DataFrame(rows).set_index("t0"))
