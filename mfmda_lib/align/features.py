"""The frozen prefix's outputs, computed once per image and cached on disk (a :data:`FeatureBank` per image set),
the pyramid levels' shapes, the disc and cup targets in the model's frame, and batches taken from a bank."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..models.base import PromptableSegmenter
from ..models.cache import EmbeddingCache
from .pyramid import PyramidEncoder

__all__ = ["FeatureBank", "encode_prefix", "level_shapes", "mask_targets", "take_batch"]


FeatureBank = dict  # name -> (N, ...) float16 CPU tensor: the cached prefix outputs of N images


def _prefix_cache(segmenter: PromptableSegmenter, encoder: PyramidEncoder, root: str | Path) -> EmbeddingCache:
    signature = hashlib.sha256(encoder.cache_signature().encode()).hexdigest()[:8]
    return EmbeddingCache(root, f"{segmenter.cache_key}-prefix-{signature}")


def _prefix_names(encoder: PyramidEncoder) -> list[str]:
    return list(encoder.frozen_taps) + (["h"] if encoder.boundary is not None else [])


def encode_prefix(segmenter: PromptableSegmenter, encoder: PyramidEncoder, images: Sequence[np.ndarray], *,
                  cache_root: str | Path | None = None, batch_size: int = 4, progress: bool = True,
                  desc: str = "frozen prefix") -> FeatureBank:
    """Run the frozen prefix once per image (cache misses only) and stack its outputs.

    Args:
        segmenter: gives ``preprocess`` (resizing, normalisation) and ``cache_key``.
        encoder: the :class:`PyramidEncoder` around ``segmenter.image_encoder``.
        images: ``N`` arrays ``(H, W, 3)`` uint8.
        cache_root: folder of an on-disk :class:`EmbeddingCache` (float16, atomic); ``None``: no cache.
        batch_size: images per forward pass.

    Returns:
        ``{name: (N, ...) float16}`` on the CPU: each frozen tap as a map ``(N, C, H, W)`` and,
        with Rein tokens, ``"h"``: the first adapted block's frozen output.
    """
    names = _prefix_names(encoder)
    cache = _prefix_cache(segmenter, encoder, cache_root) if cache_root is not None else None
    rows: list[dict[str, torch.Tensor] | None] = [None] * len(images)
    keys = [EmbeddingCache.key(np.ascontiguousarray(img)) for img in images]
    if cache is not None:
        for i, key in enumerate(keys):
            found = [cache.load(f"{key}-{j}") for j in range(len(names))]
            if all(f is not None for f in found):
                rows[i] = {n: torch.from_numpy(f) for n, f in zip(names, found)}
    todo = [i for i, r in enumerate(rows) if r is None]
    bar = tqdm(total=len(todo), desc=desc, unit="img", disable=not progress or not todo)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        out = encoder.prefix(segmenter.preprocess([images[i] for i in chunk]))
        for j, i in enumerate(chunk):
            rows[i] = {n: out[n][j].to("cpu", torch.float16) for n in names}
            if cache is not None:
                for k, n in enumerate(names):
                    cache.save(f"{keys[i]}-{k}", rows[i][n].numpy())
        bar.update(len(chunk))
    bar.close()
    return {n: torch.stack([r[n] for r in rows]) for n in names}


def level_shapes(encoder: PyramidEncoder, bank: FeatureBank) -> list[tuple[int, int]]:
    """``(channels, side)`` of each pyramid level, from one cached image."""
    with torch.no_grad():
        levels = encoder({k: v[:1] for k, v in bank.items()})
    return [(int(f.shape[1]), int(f.shape[-1])) for f in levels]


def mask_targets(segmenter: PromptableSegmenter, samples: Sequence) -> torch.Tensor:
    """Disc and cup masks in the model's input frame: ``(N, 2, S, S)`` float32 in {0, 1} on the CPU."""
    disc = segmenter.preprocess_masks([s.disc for s in samples]).cpu()
    cup = segmenter.preprocess_masks([s.cup for s in samples]).cpu()
    return torch.cat([disc, cup], dim=1)


def take_batch(bank: FeatureBank, index: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v[index].to(device) for k, v in bank.items()}
