"""MFM-DA stage 2 as one call: every method, baseline and ablation of notebook 09, trained and scored.

:func:`run_stage2` is what notebook 09 and the ``mfmda`` pipeline call. It takes the labelled
source samples and, per target domain, their translations (stage 1's output, passed in), trains
each requested method on cached frozen features, and scores Dice, IoU and HD95 of disc and cup on
every target's test images.

Methods (:data:`METHODS`; all share the frozen LiteMedSAM encoder, the pyramid head, the profile's
epochs and batch size, and the seed):

=======================  ==============================================================================
``source_only``          head (+ Rein tokens) trained on the source images only
``fda``                  source + Fourier-domain-adapted copies (L = 0.01) to the K target images
``histogram_matching``   source + copies histogram-matched to the K target images
``tent``                 ``source_only`` + Tent at test time (entropy, the head's BatchNorm affine params)
``sam_decoder_adapter``  reference row read from notebook 05's results (box-prompted: another protocol)
``translation_only``     source + stage-1 translations, steps 2 and 3 (no alignment)
``alignment_only``       the three steps with a photometric jitter of the source instead of a translation
``mfmda``                the method: source + translations, the three steps
``mfmda_no_rein``        ablation: no Rein tokens (only the head trains; nothing to align)
``mfmda_last_level``     ablation: head and alignment on the deepest level only (no pyramid)
``mfmda_align_last``     ablation: pyramid head, alignment on the deepest level only
=======================  ==============================================================================

Methods that do not depend on the target (``source_only``, ``tent``, ``alignment_only``) train once
and are scored on every target. Trained weights are checkpointed (named by config and data
hashes) and reused; a killed run resumes from its last epoch.

Warm start (the kit's choice for a CPU budget; MFM-DA trains each model from scratch for 100
epochs): the head first trains ``profile.stage2_warmup_epochs`` epochs on the source only, without
tokens (shared by every method with the same head, trained once); then each method adds fresh Rein
tokens and trains ``profile.stage2_epochs`` epochs of its own objective. ``source_only`` continues
on the source, so every method gets the same number of epochs.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data import SOURCE_DOMAIN, FundusSample
from ..models import PromptableSegmenter
from ..profiles import Profile
from .baselines import fda_samples, histogram_matched_samples, jittered_samples
from .features import encode_prefix
from .inputs import oracle_samples, sam_reference_rows, target_images, test_samples
from .methods import DEFAULT_METHODS, HEADLINE, METHODS, Method, stage2_config, stage2_seeds
from .result import Stage2Result
from .runner import Stage2Runner, score_model, tent_rows
from .stage2 import Stage2Config, Stage2Model, logits_to_masks, predict_logits

__all__ = ["run_stage2", "predict_target_masks"]


def _with_mean_dice(rows: list[dict]) -> list[dict]:
    """Each row gains ``dice``: the mean of its disc and cup Dice (the headline metric)."""
    return [{**r, "dice": (r["disc_dice"] + r["cup_dice"]) / 2} if "disc_dice" in r and "cup_dice" in r else r
            for r in rows]


def _checked_inputs(profile: Profile, methods: Sequence[str], source: Sequence[FundusSample],
                    translated_by_target: dict[str, list[FundusSample]], seeds: Sequence[int] | None
                    ) -> tuple[list[str], list[int]]:
    """The targets and seeds of a :func:`run_stage2` call; ``ValueError`` naming what is wrong with its inputs."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"run_stage2: unknown method(s) {unknown}; choose from {list(METHODS)}")
    targets = list(translated_by_target)
    bad = [t for t, v in translated_by_target.items() if len(v) != len(source)]
    if not targets or bad:
        raise ValueError(f"run_stage2: give one translated sample per source sample for each target (bad: {bad})")
    seeds = list(seeds) if seeds is not None else stage2_seeds(profile)
    if not seeds:
        raise ValueError("run_stage2: give at least one seed")
    return targets, seeds


def _paired_images(profile: Profile, method: Method, target: str | None, source: Sequence[FundusSample],
                   translated_by_target: dict[str, list[FundusSample]],
                   target_images_by_target: dict[str, list[np.ndarray]] | None) -> list[FundusSample] | None:
    """What ``method`` pairs with each source image for ``target`` (``None``: nothing)."""
    if method.images == "stage1":
        return translated_by_target[target]
    if method.images in ("fda", "histogram"):
        k = (target_images_by_target or {}).get(target) or target_images(profile, target)
        return fda_samples(source, k) if method.images == "fda" else histogram_matched_samples(source, k)
    if method.images == "jitter":
        return jittered_samples(source, profile.seed)
    return None


def _trained_config(profile: Profile, method: Method, seed: int) -> Stage2Config:
    """The config of the model ``method`` scores (Tent adapts the ``source_only`` model)."""
    return (METHODS["source_only"] if method.kind == "tent" else method).config(stage2_config(profile, seed))


def run_stage2(profile: Profile, source: Sequence[FundusSample], translated_by_target: dict[str, list[FundusSample]],
               *, methods: Sequence[str] = DEFAULT_METHODS, seeds: Sequence[int] | None = None,
               segmenter: PromptableSegmenter | None = None,
               target_images_by_target: dict[str, list[np.ndarray]] | None = None,
               oracle_by_target: dict[str, list[FundusSample]] | None = None,
               test: dict[str, list[FundusSample]] | None = None, checkpoint_dir: str | Path | None = None,
               cache_root: str | Path | bool | None = None, accelerator=None, translation_origin: str = "stage1",
               progress: bool = True) -> Stage2Result:
    """Train and score MFM-DA stage 2 and its baselines and ablations on every target.

    Args:
        profile: sizes (epochs, batch size, Rein placement, K, TTA steps).
        source: the ``N`` labelled source samples.
        translated_by_target: ``{target: N translated samples}``, paired with ``source`` by position
            (stage 1's :func:`~mfmda_lib.diffusion.stage1.translated_source`, or a stand-in).
        methods: names from :data:`METHODS`, in the order of the table.
        seeds: the seeds every :data:`HEADLINE` method trains with (ablations: the first one only);
            default :func:`stage2_seeds` of the profile.
        segmenter: the foundation model (default: LiteMedSAM on the accelerator's device).
        target_images_by_target: the K unlabelled images of each target, for FDA and histogram
            matching (default: :func:`target_images`).
        oracle_by_target: the labelled target images of the ``oracle`` method (default: :func:`oracle_samples`).
        test: ``{domain: samples}`` to score (default: :func:`test_samples` of the targets and the source).
        checkpoint_dir: trained weights (default ``<cache>/mfmda/<profile>/stage2``, shared by notebook 09 and
            ``mfmda run``: file names hash the config and the data, so a model trained by one is reused by the other).
        cache_root: folder of the frozen-feature cache (default ``<cache>/embeddings``); ``False``:
            keep the features in memory only.
        accelerator: an ``accelerate.Accelerator`` (default: one process on the kit's device).
        translation_origin: recorded in the result (``"stage1"``).

    Returns:
        A :class:`Stage2Result`; every row carries its ``seed``.
    """
    targets, seeds = _checked_inputs(profile, methods, source, translated_by_target, seeds)
    start_all = time.perf_counter()
    run = Stage2Runner(profile, source, segmenter, checkpoint_dir, cache_root, accelerator, progress)
    test = test if test is not None else test_samples(profile, [*targets, SOURCE_DOMAIN])

    trained: dict[tuple, Stage2Model] = {}
    rows, masks = [], {}

    def train(method: Method, target: str | None, seed: int) -> Stage2Model:
        key = (method.name, target or "all", seed)
        if key not in trained:
            if method.images == "oracle":
                labelled = (oracle_by_target or {}).get(target) or oracle_samples(profile, target)
                trained[key] = run.train(method, key, None, target, seed=seed, oracle=labelled)
            else:
                name = f"{method.images}:{target}" if method.per_target else method.images
                pair = _paired_images(profile, method, target, source, translated_by_target, target_images_by_target)
                trained[key] = run.train(method, key, pair, name, seed=seed)
        return trained[key]

    def score(method: Method, model: Stage2Model, domains: Sequence[str], seed: int) -> None:
        for d in domains:
            bank = run.banks.get(run.prefix_for(_trained_config(profile, method, seed)), f"test:{d}", test[d])
            new, found = (tent_rows(profile, model, run.segmenter, bank, test[d]) if method.kind == "tent"
                          else score_model(method.name, model, run.segmenter, bank, test[d]))
            rows.extend({**r, "seed": seed} for r in new)
            masks[(method.name, d) if seed == seeds[0] else (method.name, d, seed)] = found

    # seed-major: every method's first seed is done before any second seed (an interrupted run has a whole seed)
    for seed in seeds:
        for name in methods:
            method = METHODS[name]
            if seed != seeds[0] and (name not in HEADLINE or method.kind == "reference"):
                continue
            if method.kind == "reference":
                rows.extend(sam_reference_rows(profile, targets))
            elif method.kind == "tent":
                score(method, train(METHODS["source_only"], None, seed), targets, seed)
            elif method.per_target:
                for t in targets:
                    score(method, train(method, t, seed), [t], seed)
            else:
                domains = [*targets, SOURCE_DOMAIN] if SOURCE_DOMAIN in test else targets
                score(method, train(method, None, seed), domains, seed)
    seconds = {"total": round(time.perf_counter() - start_all, 1), "prefix": round(run.banks.seconds, 1)}
    return Stage2Result(_with_mean_dice(rows), run.costs, run.histories, targets, translation_origin, seconds, masks,
                        test, seeds)


def predict_target_masks(profile: Profile, source: Sequence[FundusSample], translated: Sequence[FundusSample],
                         images: Sequence[np.ndarray], *, target_name: str = "target", method: str = "mfmda",
                         segmenter: PromptableSegmenter | None = None, checkpoint_dir: str | Path | None = None,
                         cache_root: str | Path | bool | None = None, accelerator=None,
                         progress: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
    """Train ``method`` on ``source`` + ``translated`` (a user's own target) and segment unlabelled ``images``.

    Args:
        profile: sizes.
        source: labelled source samples; ``translated``: their translations to the target, same order.
        images: ``(H, W, 3)`` uint8 images of the target hospital (no labels needed).
        target_name: names the target in checkpoints and progress bars.
        method: a trained method of :data:`METHODS` that uses ``translated`` (default ``mfmda``).

    Returns:
        One ``(disc, cup)`` pair of ``(H, W)`` bool masks per image.
    """
    m = METHODS.get(method)
    if m is None or m.kind != "train" or m.images != "stage1":
        raise ValueError(f"predict_target_masks: method must be one trained on the translations, e.g. 'mfmda'; got {method!r}")
    if len(translated) != len(source):
        raise ValueError(f"predict_target_masks: {len(translated)} translations for {len(source)} source samples")
    run = Stage2Runner(profile, source, segmenter, checkpoint_dir, cache_root, accelerator, progress)
    model = run.train(m, (method, target_name, profile.seed), translated, f"stage1:{target_name}")
    images = [np.ascontiguousarray(img) for img in images]
    bank = encode_prefix(run.segmenter, run.prefix, images, cache_root=None, batch_size=profile.encoder_batch_size,
                         progress=progress, desc=f"frozen prefix: {target_name}")
    return logits_to_masks(run.segmenter, predict_logits(model, bank), [img.shape[:2] for img in images])
