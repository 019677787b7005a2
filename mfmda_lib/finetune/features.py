"""Frozen-prefix features: what a run trains on instead of images.

A run that trains an encoder only from unit ``start`` on never needs the gradients of the units
before it, and their outputs never change. So each image goes through that frozen prefix once;
its output is kept on disk (float16, keyed by image content, model and unit, written atomically
by :class:`~mfmda_lib.models.cache.EmbeddingCache`) and every epoch of every run reads it back.

* ``start == 0``: the "prefix" is preprocessing only (nothing to cache).
* ``start == end``: the whole encoder is frozen; its output is the kit's ordinary embedding cache,
  shared with the other notebooks.
* Gradual unfreezing freezes a *longer* prefix in its early epochs: :func:`advance` runs the frozen
  units between ``start`` and the first unfrozen one once per phase, in memory.

As in the embedding cache, fresh features are rounded through float16 too, so a result does not
depend on whether the cache was warm.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..models import EmbeddingCache, PromptableSegmenter, embed
from ..models.base import check_images
from ..models.prefix import SplitEncoder
from .heads import TaskModel

__all__ = ["prefix_cache", "prefix_features", "advance"]


def prefix_cache(model: PromptableSegmenter, unit: str, root: str | Path) -> EmbeddingCache:
    """The on-disk cache of ``model``'s activations entering ``unit`` (folder ``<model key>@<unit>``)."""
    return EmbeddingCache(root, f"{model.cache_key}@{unit}")


def prefix_features(model: PromptableSegmenter, images: Sequence[np.ndarray], start: str | int, *,
                    cache_root: str | Path | None = None, embedding_cache: EmbeddingCache | None = None,
                    batch_size: int = 4, progress: bool = True) -> torch.Tensor:
    """The frozen encoder's activations entering unit ``start`` for each image (float16, CPU).

    Args:
        model: the frozen foundation segmenter (its encoder is not changed).
        images: ``N`` arrays ``(H, W, 3)`` uint8.
        start: unit name or index (:mod:`mfmda_lib.models.prefix`); ``0``: the preprocessed images;
            ``len(units)``: the encoder output.
        cache_root: folder of the prefix caches (``None``: compute every time).
        embedding_cache: the kit's cache of whole-encoder outputs, used when ``start`` is the end.
        batch_size: images per forward pass of the whole encoder (prefix entries go one by one).

    Returns:
        ``(N, ...)`` float16: ``(N, 3, S, S)`` images, ``(N, L, C)`` tokens inside a TinyViT, or
        ``(N, C, h, w)`` encoder outputs.

    A missing entry is computed from the latest earlier unit whose cache holds the image (then it
    carries one more float16 rounding), else from the image; one image at a time.
    """
    images = check_images(images)
    split = SplitEncoder(model.image_encoder, start)
    if split.start == 0:
        return torch.cat([model.preprocess(images[i:i + batch_size]).cpu()
                          for i in range(0, len(images), batch_size)]).half()
    if split.start == len(split.names):
        return embed(model, images, embedding_cache, batch_size, progress).half()
    unit = split.names[split.start]
    cache = None if cache_root is None else prefix_cache(model, unit, cache_root)
    keys = [EmbeddingCache.key(img) for img in images]
    found = [None if cache is None else cache.load(k) for k in keys]
    todo = [i for i, f in enumerate(found) if f is None]
    # a miss may continue from an earlier unit's cache (e.g. notebook 03's) instead of from the image
    earlier = [] if cache is None else [
        (j, prefix_cache(model, split.names[j], cache_root)) for j in range(split.start - 1, 0, -1)
        if prefix_cache(model, split.names[j], cache_root).directory.is_dir()]
    with tqdm(total=len(todo), desc=f"{model.name} prefix -> {unit}", unit="img",
              disable=not progress or not todo) as bar:
        for i in todo:
            lo, h = 0, None
            for j, other in earlier:
                if keys[i] in other:
                    lo, h = j, torch.from_numpy(other.load(keys[i]).astype(np.float32))[None].to(model.device)
                    break
            with torch.inference_mode():
                h = model.preprocess([images[i]]) if h is None else h  # (1, ...)
                for _, module in split.units[lo:split.start]:
                    h = module(h)
            found[i] = h[0].float().cpu().numpy().astype(np.float16)
            if cache is not None:
                cache.save(keys[i], found[i])
            bar.update(1)
    return torch.from_numpy(np.stack(found))  # (N, ...) float16


@torch.no_grad()
def advance(model: TaskModel, h: torch.Tensor, to_unit: int, *, batch_size: int = 4) -> torch.Tensor:
    """Run the (frozen) units ``[model.start, to_unit)`` of ``model`` on start features ``h``.

    Args:
        model: the task model; the units it runs here must not have been changed by training.
        h: ``(N, ...)`` features entering ``model.start`` (any dtype; computed in float32).
        to_unit: index of the unit whose input is wanted (``model.end``: the encoder output).

    Returns:
        ``(N, ...)`` float16 on the CPU, entering ``to_unit``.
    """
    if to_unit == model.start:
        return h.half().cpu()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = [model.features(h[i:i + batch_size].float().to(device), model.start, to_unit).half().cpu()
           for i in range(0, len(h), batch_size)]
    model.train(was_training)
    return torch.cat(out)
