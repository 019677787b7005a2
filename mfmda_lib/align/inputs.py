"""What stage 2 trains on and is scored on, for a profile: the labelled source samples, each target's K unlabelled
images, the oracle's labelled target samples, the test samples, stage 1's translations, and notebook 05's reference
rows."""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np

from ..data import SOURCE_DOMAIN, TARGET_DOMAINS, FundusSample, benchmark_samples
from ..diffusion.stage1 import translated_source
from ..environment import paths
from ..profiles import Profile

__all__ = ["source_samples", "target_images", "oracle_samples", "test_samples", "translations", "sam_reference_rows"]


def source_samples(profile: Profile) -> list[FundusSample]:
    """The labelled source images of stage 2: the first ``stage2_pairs`` of stage 1's list (source train split)."""
    return benchmark_samples(profile, "train", profile.stage2_pairs, domains=[SOURCE_DOMAIN])


def target_images(profile: Profile, target: str) -> list[np.ndarray]:
    """The K = ``profile.stage1_k_target`` unlabelled images of a target: the first of its train split."""
    return [s.image for s in benchmark_samples(profile, "train", profile.stage1_k_target, domains=[target])]


def oracle_samples(profile: Profile, target: str) -> list[FundusSample]:
    """The oracle's labelled target images: the first ``stage2_pairs`` of the target's train split."""
    return benchmark_samples(profile, "train", profile.stage2_pairs, domains=[target])


def test_samples(profile: Profile, domains: Sequence[str]) -> dict[str, list[FundusSample]]:
    """The scored test images of each domain (``eval_per_domain`` of the test split)."""
    return {d: benchmark_samples(profile, "test", profile.stage2_test_per_domain, domains=[d]) for d in domains}


def translations(profile: Profile, targets: Sequence[str] = TARGET_DOMAINS, *, source: Sequence[FundusSample] | None = None,
                 progress: bool = True) -> tuple[dict[str, list[FundusSample]], str]:
    """Stage 1's translations of the source to each target (trained or loaded by stage 1's own cache).

    Stage 1 translates every source training image; the first ``len(source)`` translations are
    kept (same order), so they pair with ``source`` (default :func:`source_samples`) by position.
    Nothing stands in for stage 1: an error in it stops the run.

    Returns:
        ``({target: translated samples}, "stage1")`` (the origin is recorded in the results).
    """
    source = list(source) if source is not None else source_samples(profile)
    out = {}
    for t in targets:
        translated = translated_source(profile, t, variant="mfmda", progress=progress)[:len(source)]
        mismatch = [s.sample_id for s, x in zip(source, translated) if s.sample_id != x.sample_id]
        if len(translated) != len(source) or mismatch:
            raise ValueError(f"stage 1's translations to {t} do not pair with the source samples "
                             f"({len(translated)} for {len(source)}; mismatched ids {mismatch[:3]})")
        out[t] = translated
    return out, "stage1"


def sam_reference_rows(profile: Profile, domains: Sequence[str]) -> list[dict]:
    """Per-image rows of notebook 05's supervised decoder adapter (``results/sam_decoder_adapter_<profile>.json``).

    Box-prompted with the ground-truth box, so not comparable as a UDA method: a reference of
    what a prompted foundation model reaches. Empty when the file is absent.
    """
    path = paths().results / f"sam_decoder_adapter_{profile.name}.json"
    if not path.is_file():
        return []
    rows = json.loads(path.read_text()).get("rows", [])
    return [{**r, "method": "sam_decoder_adapter"} for r in rows
            if r.get("method") == "decoder_adapter" and r.get("domain") in domains]
