"""How much the frozen-part caches save: one training epoch with and without them, timed in one run.

Two settings, each timed over the same images and batches:

* ``frozen_encoder``: a linear segmentation head on a frozen encoder. *Cached*: the head trains on
  the encoder outputs kept from an earlier pass. *Recomputed*: every step runs the encoder
  (forward, no gradient) on its images first.
* ``frozen_prefix``: the encoder's units from ``start`` on are fine-tuned with the head (e.g. the
  last stage). *Cached*: every step starts from the stored prefix outputs. *Recomputed*: every
  step runs the frozen prefix (forward, no gradient) first.

The speed-up is ``recomputed / cached`` epoch time. The one-off cost of filling each cache (a
pass over the images, skipped when the cache is warm) is reported beside it.
"""
from __future__ import annotations

import copy
import time
from typing import Sequence

import pandas as pd
import torch

from ..data import FundusSample
from ..models import EmbeddingCache, PromptableSegmenter
from ..models.prefix import SplitEncoder
from .features import prefix_features
from .heads import TaskModel, build_head, task_loss
from .runs import task_targets
from .strategies import STRATEGIES, configure

__all__ = ["frozen_cache_speedup"]


def _epoch(model: TaskModel, inputs, targets: torch.Tensor, batch_size: int, lr: float = 1e-4) -> float:
    """Seconds of one epoch of AdamW steps; ``inputs(idx) -> features entering model.start`` (timed too)."""
    groups = configure(model, STRATEGIES["full_finetune"] if model.start < model.end else STRATEGIES["linear_probe"])
    optimizer = torch.optim.AdamW(groups, lr=lr)
    model.train()
    start = time.perf_counter()
    for lo in range(0, len(targets), batch_size):
        idx = torch.arange(lo, min(lo + batch_size, len(targets)))
        loss = task_loss(model.task, model(inputs(idx)), targets[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def frozen_cache_speedup(segmenter: PromptableSegmenter, samples: Sequence[FundusSample], *, start: str | int,
                         batch_size: int, cache_root, embedding_cache: EmbeddingCache | None,
                         progress: bool = True) -> pd.DataFrame:
    """Time one training epoch with each cache and without it.

    Args:
        segmenter: the frozen foundation segmenter (its encoder is copied, not changed).
        samples: the training images (with disc/cup masks).
        start: first fine-tuned unit of the ``frozen_prefix`` setting.
        batch_size: images per step.
        cache_root, embedding_cache: where the prefix outputs and the encoder outputs are cached.

    Returns:
        One row per setting: ``images``, ``cache_fill_s`` (filling the cache now; ~0 when warm),
        ``epoch_cached_s``, ``epoch_recomputed_s`` and ``speedup`` (recomputed / cached).
    """
    images = [s.image for s in samples]
    grid, channels = segmenter.prompt_encoder.image_embedding_size[0], segmenter.prompt_encoder.embed_dim
    targets = task_targets(segmenter, "segmentation", samples, grid)
    encoder = segmenter.image_encoder
    end = len(SplitEncoder(encoder, 0).names)
    rows = []
    for setting, cut in (("frozen_encoder", end), ("frozen_prefix", start)):
        split = SplitEncoder(encoder, cut)
        t0 = time.perf_counter()
        cached = prefix_features(segmenter, images, cut, cache_root=cache_root, embedding_cache=embedding_cache,
                                 progress=progress)
        fill = time.perf_counter() - t0

        def recompute(idx: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                h, _ = split.prefix(segmenter.preprocess([images[i] for i in idx.tolist()]))
            return h.float()

        times = {}
        for mode, inputs in (("cached", lambda idx: cached[idx].float()), ("recomputed", recompute)):
            torch.manual_seed(0)
            model = TaskModel(copy.deepcopy(encoder), build_head("segmentation", channels), "segmentation", split.start)
            times[mode] = _epoch(model, inputs, targets, batch_size)
        first = split.names[split.start] if split.start < end else "(head only)"
        rows.append({"setting": setting, "first_trained_unit": first,
                     "images": len(images), "cache_fill_s": fill, "epoch_cached_s": times["cached"],
                     "epoch_recomputed_s": times["recomputed"], "speedup": times["recomputed"] / times["cached"]})
    return pd.DataFrame(rows).set_index("setting")
