"""Notebook 08's experiment: stage-1 variants on one target domain, scored three ways.

Variants (:data:`~.adaptation.VARIANTS`): ``none`` (the source DDPM translates, not adapted),
``naive`` (fine-tuned on the K target images), ``static`` (direction losses with
``Delta_static`` only) and ``mfmda`` (with the DIAA). Each translates every source training
image (:func:`~.stage1.translated_source`, cached). The table has one row per variant plus the
untranslated source images, and these columns:

- ``fd_f``: Frechet distance in ``f``'s feature space to all of the target's training images
  (lower = closer to the target). Caution: ``f`` is also the space in which ``L_DC`` pulls, so
  this metric favours the direction losses by construction;
- ``gap_left``: an independent check in the *full* LiteMedSAM embedding (256-d pooled, never
  used in training), on the first ``stage1_eval_images`` images: the distance between the mean
  embedding of the translated images and that of as many target training images, divided by the
  same distance for the untranslated source. 1 = the domain gap is untouched, 0 = closed,
  > 1 = moved away from the target;
- ``diversity``: intra-cluster diversity in ``f`` (:func:`~.metrics.intra_cluster_diversity`);
- ``disc_dice``, ``cup_dice``: structure preservation on the first ``stage1_eval_images``
  translated images (LiteMedSAM prompted with the source mask's boxes, Dice vs the source masks).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..data import FundusSample
from ..profiles import Profile
from .adaptation import VARIANTS
from .ddpm import to_tensor
from .diaa import DIAA
from .metrics import frechet_distance, intra_cluster_diversity, structure_preservation
from .checkpoint import read_sidecar
from .source import load_source_ddpm, source_ddpm_path
from .stage1 import feature_encoder, source_samples, stage1_dir, target_samples, translated_source

__all__ = ["Stage1Comparison", "compare_variants", "SOURCE_ROW", "stage1_history", "adapted_diaa"]

SOURCE_ROW = "source (untranslated)"


@dataclass
class Stage1Comparison:
    """Everything notebook 08 shows.

    Attributes:
        target_domain: the target.
        sources: the source training samples; ``targets``: the K target images used to adapt.
        translations: variant -> translated samples (same order as ``sources``).
        table: one row per variant (and the untranslated source): the metrics above.
        histories: variant -> per-step logs of its adaptation (empty for ``none``).
        seconds: variant -> wall time of ``translated_source`` (small when it came from the cache).
    """

    target_domain: str
    sources: list[FundusSample]
    targets: list[FundusSample]
    translations: dict[str, list[FundusSample]]
    table: pd.DataFrame
    histories: dict[str, list[dict]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def _adapt_checkpoint(profile: Profile, target_domain: str, variant: str) -> dict | None:
    side = read_sidecar(source_ddpm_path(profile))
    if variant == "none" or side is None:
        return None
    ckpt = stage1_dir(profile, target_domain, variant, side["sha256"]) / "adapt.pt"
    return torch.load(ckpt, map_location="cpu", weights_only=True) if ckpt.is_file() else None


def stage1_history(profile: Profile, target_domain: str, variant: str) -> list[dict]:
    """The per-step logs stored in a finished adaptation's checkpoint (``[]`` if none)."""
    state = _adapt_checkpoint(profile, target_domain, variant)
    return [] if state is None else list(state["history"])


def adapted_diaa(profile: Profile, target_domain: str) -> DIAA | None:
    """The DIAA trained by the ``mfmda`` variant on ``target_domain`` (None if it has not run)."""
    state = _adapt_checkpoint(profile, target_domain, "mfmda")
    if state is None or "diaa" not in state["modules"]:
        return None
    weights = state["modules"]["diaa"]
    diaa = DIAA(weights["c_source"], weights["c_target"], hidden=weights["w1.weight"].shape[0],
                gate_hidden=weights["w_e.weight"].shape[0])
    diaa.load_state_dict(weights)
    return diaa.eval()


def compare_variants(profile: Profile, target_domain: str, variants: Sequence[str] = VARIANTS, *,
                     segmenter=None, cache=None, progress: bool = True) -> Stage1Comparison:
    """Run (or load) every variant on ``target_domain`` and score it.

    Args:
        profile: sizes.
        target_domain: a target domain of the benchmark.
        variants: subset of :data:`~.adaptation.VARIANTS`.
        segmenter: the frozen LiteMedSAM for structure preservation and the probe (default: loaded).
        cache: its :class:`~mfmda_lib.models.EmbeddingCache` (default: the kit's).
        progress: tqdm bars.
    """
    from ..experiments import benchmark_samples, model_and_cache

    if segmenter is None:
        segmenter, cache = model_and_cache("litemedsam")
    sources = source_samples(profile)
    targets = target_samples(profile, target_domain)
    reference = benchmark_samples(profile, "train", profile.train_per_domain, domains=[target_domain])
    _, ddpm, _ = load_source_ddpm(profile, progress=progress)
    size = ddpm.image_size
    reuse = segmenter.name == "litemedsam"  # f shares the segmenter's (frozen) image encoder
    encoder = feature_encoder(profile, to_tensor([s.image for s in sources], size),
                              segmenter.device if reuse else None, segmenter.image_encoder if reuse else None)
    f_reference = encoder.encode([s.image for s in reference], size)  # (M, D)
    f_k = encoder.encode([s.image for s in targets], size)  # (K, D)
    from ..models import pooled_embeddings

    n_eval = min(profile.stage1_eval_images, len(sources), len(reference))
    embed = lambda images: pooled_embeddings(segmenter, images[:n_eval], cache,  # noqa: E731
                                             batch_size=profile.encoder_batch_size, progress=False).mean(0)
    centre_target = embed([s.image for s in reference])  # (256,)
    gap_source = float(np.linalg.norm(embed([s.image for s in sources]) - centre_target))

    translations, seconds, rows = {}, {}, []
    candidates = [(SOURCE_ROW, sources)]
    for variant in variants:
        start = time.perf_counter()
        translations[variant] = translated_source(profile, target_domain, variant=variant, progress=progress,
                                                  encoder=encoder)
        seconds[variant] = round(time.perf_counter() - start, 1)
        candidates.append((variant, translations[variant]))
    for name, samples in candidates:
        images = [s.image for s in samples]
        f_gen = encoder.encode(images, size)  # (N, D)
        structure = structure_preservation(segmenter, sources[:n_eval], images[:n_eval], cache,
                                           batch_size=profile.encoder_batch_size)
        rows.append({"method": name, "fd_f": frechet_distance(f_gen, f_reference),
                     "gap_left": float(np.linalg.norm(embed(images) - centre_target)) / max(gap_source, 1e-12),
                     "diversity": intra_cluster_diversity(f_gen, f_k), **structure})
    table = pd.DataFrame(rows).set_index("method")
    histories = {v: stage1_history(profile, target_domain, v) for v in variants}
    return Stage1Comparison(target_domain, sources, targets, translations, table, histories, seconds)
