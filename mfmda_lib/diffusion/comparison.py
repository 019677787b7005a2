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

from ..data import FundusSample, benchmark_samples, generate_sample
from ..models import model_and_cache, pooled_embeddings
from ..profiles import Profile
from .adaptation import VARIANTS
from .ddpm import resize, to_signed_tensor, to_uint8
from .diaa import DIAA
from .metrics import frechet_distance, intra_cluster_diversity, structure_preservation
from .checkpoint import read_sidecar
from .source import load_source_ddpm, source_ddpm_path
from .stage1 import feature_encoder, sources_to_translate, stage1_dir, target_samples, translate_config, translated_source
from .translate import to_full_resolution
from ..evaluation.reporting import load_result_or_fallback

__all__ = ["Stage1Comparison", "compare_variants", "SOURCE_ROW", "stage1_history", "adapted_diaa", "gap_meter",
           "translation_ceiling", "CEILING_ROWS", "score_translations", "oracle_camera_images", "GAP_LEFT_MAX", "DISC_DICE_MIN",
           "STAGE1_TARGETS_RESULT", "saved_stage1_targets", "stage1_target_lines", "ceiling_sweep",
           "STAGE1_CEILING_RESULT", "UPSAMPLED", "DETAIL_MATCHED", "detail_gain", "detail_of", "glues", "saved_stage1_ceiling", "ceiling_clause"]

SOURCE_ROW = "source (untranslated)"

#: issue 12's bar for stage 1 (the kit's, not the paper's): on every target the translations leave at most this
#: share of the held-out feature gap and keep box-prompted LiteMedSAM disc Dice at least that
GAP_LEFT_MAX, DISC_DICE_MIN = 0.7, 0.85
#: the saved result of ``benchmarks/stage1_targets.py`` (``results/<name>_<profile>.json``)
STAGE1_TARGETS_RESULT = "mfmda_stage1_targets"


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


def gap_meter(profile: Profile, target_domain: str, segmenter, cache=None):
    """``images -> gap_left`` in the held-out feature: LiteMedSAM's full-encoder pooled embedding (256-d).

    ``gap_left(images) = |mean e(images) - mean e(target)| / |mean e(source) - mean e(target)|`` over the
    first ``stage1_eval_images`` source images and as many of the target's training images: 1 = the
    domain gap untouched, 0 = closed. No stage-1 loss uses this embedding (``f`` is LiteMedSAM's
    convolutional stem at the DDPM's resolution), so it is a check the translation was not trained on.
    """
    sources = sources_to_translate(profile)
    reference = benchmark_samples(profile, "train", profile.train_per_domain, domains=[target_domain])
    n = min(profile.stage1_eval_images, len(sources), len(reference))

    def embed(images):
        return pooled_embeddings(segmenter, list(images)[:n], cache, batch_size=profile.encoder_batch_size,
                                 progress=False).mean(0)  # (256,)

    centre = embed([s.image for s in reference])
    gap_source = max(float(np.linalg.norm(embed([s.image for s in sources]) - centre)), 1e-12)
    return lambda images: float(np.linalg.norm(embed(images) - centre)) / gap_source


def score_translations(profile: Profile, target_domain: str, candidates: dict[str, Sequence[np.ndarray]], *,
                       segmenter=None, cache=None) -> pd.DataFrame:
    """Score images that stand in for the source training images on one target, the held-out way.

    Args:
        candidates: name -> one image per source training image (:func:`~.stage1.sources_to_translate`
            order; only the first ``stage1_eval_images`` are scored), e.g. stage 1's translations and a
            baseline's output from the same K target images.

    Returns:
        Index :data:`SOURCE_ROW` (the untranslated source: ``gap_left`` 1 by definition) then the candidates;
        columns ``gap_left`` (:func:`gap_meter`, a feature no stage-1 loss uses) and ``disc_dice``,
        ``cup_dice`` (structure kept: :func:`~.metrics.structure_preservation`).
    """
    if segmenter is None:
        segmenter, cache = model_and_cache("litemedsam")
    sources = sources_to_translate(profile)[:profile.stage1_eval_images]
    gap = gap_meter(profile, target_domain, segmenter, cache)
    rows = []
    for name, images in {SOURCE_ROW: [s.image for s in sources], **candidates}.items():
        images = list(images)[:len(sources)]
        rows.append({"method": name, "gap_left": gap(images),
                     **structure_preservation(segmenter, sources, images, cache, batch_size=profile.encoder_batch_size)})
    return pd.DataFrame(rows).set_index("method")


#: rows of :func:`translation_ceiling`
CEILING_ROWS = ("oracle camera, full resolution", "oracle camera through the DDPM's resolution")


def oracle_camera_images(profile: Profile, target_domain: str) -> list[np.ndarray]:
    """The first ``stage1_eval_images`` source training eyes re-acquired by ``target_domain``'s camera: a perfect
    translation (same anatomy), which the synthetic benchmark can make and a real one cannot."""
    return [generate_sample(s.domain, int(s.sample_id.rsplit("_", 1)[1]), split="train", size=profile.image_size,
                            severity=profile.severity, seed=profile.seed, camera=target_domain).image
            for s in sources_to_translate(profile)[:profile.stage1_eval_images]]


def translation_ceiling(profile: Profile, target_domain: str, *, segmenter=None, cache=None) -> pd.DataFrame:
    """How much of the held-out gap can *any* translation at the DDPM's resolution close?

    The synthetic benchmark can re-acquire each source eye with the target's camera
    (:func:`~mfmda_lib.data.synthetic.generate_sample` with ``camera=``): a perfect translation, same
    anatomy. Its ``gap_left`` at full resolution, and after it is squeezed through the DDPM's
    resolution and brought back with the kit's glue (:func:`~.translate.to_full_resolution`, the
    profile's translation settings), bound what stage 1 can reach here.

    Returns:
        Index :data:`CEILING_ROWS`; columns ``gap_left``, ``disc_dice``, ``cup_dice`` (structure, as in
        :func:`compare_variants`).
    """
    if segmenter is None:
        segmenter, cache = model_and_cache("litemedsam")
    sources = sources_to_translate(profile)[:profile.stage1_eval_images]
    oracle = oracle_camera_images(profile, target_domain)
    size = profile.ddpm_image_size
    squeezed = to_full_resolution([s.image for s in sources], to_signed_tensor(oracle, size),
                                  translate_config(profile).change_low_pass)
    table = score_translations(profile, target_domain, dict(zip(CEILING_ROWS, (oracle, squeezed))),
                               segmenter=segmenter, cache=cache)
    return table.drop(index=SOURCE_ROW).rename_axis("row")


#: the saved result of ``benchmarks/stage1_ceiling.py`` (``results/<name>_<profile>.json``)
STAGE1_CEILING_RESULT = "mfmda_stage1_ceiling"
#: the glues :func:`ceiling_sweep` tries besides the kit's (``low-pass k``)
UPSAMPLED, DETAIL_MATCHED = "upsampled", "detail-matched"


def detail_of(x: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, 3, H, W) -> (B, 3, H, W)``: what a ``size`` px image cannot hold, ``x - up(down(x))``."""
    return x - resize(resize(x, size), x.shape[-1])


def detail_gain(sources: Sequence[np.ndarray], targets: Sequence[np.ndarray], size: int) -> float:
    """RMS of the target images' detail over the sources' (detail: :func:`detail_of` at ``size``): above 1 the target
    camera is crisper or noisier than the source's, below 1 softer."""
    def rms(images):
        return float(detail_of(to_signed_tensor(images), size).pow(2).mean().sqrt())
    return rms(targets) / max(rms(sources), 1e-12)


def glues(sources: Sequence[np.ndarray], squeezed: torch.Tensor, k_images: Sequence[np.ndarray],
          low_passes: Sequence[int] = (1, 2, 4)) -> dict[str, list[np.ndarray]]:
    """Every way :func:`ceiling_sweep` brings ``squeezed`` ``(N, 3, S, S)`` images back to the full-resolution
    ``sources``' size: ``low-pass k`` (the kit's glue, the source's detail kept), :data:`UPSAMPLED` (the squeezed
    images alone) and :data:`DETAIL_MATCHED` (upsampled plus the source's detail scaled by :func:`detail_gain` of
    ``k_images``, the K target images)."""
    x = to_signed_tensor(sources)  # (N, 3, H, W)
    size = squeezed.shape[-1]
    up = resize(squeezed, x.shape[-1])
    out = {f"low-pass {k}": to_full_resolution(sources, squeezed, k) for k in low_passes}
    out[UPSAMPLED] = list(to_uint8(up))
    out[DETAIL_MATCHED] = list(to_uint8(up + detail_gain(sources, k_images, size) * detail_of(x, size)))
    return out


def ceiling_sweep(profile: Profile, target_domain: str, sizes: Sequence[int], low_passes: Sequence[int] = (1, 2, 4),
                  *, segmenter=None, cache=None) -> pd.DataFrame:
    """What a *perfect* translation leaves of the held-out gap, per DDPM resolution and glue.

    The oracle camera's images (:func:`oracle_camera_images`: the source eyes re-acquired by the target's camera)
    are squeezed to each size ``S`` and brought back to full resolution by each of :func:`glues`: the kit's
    (``low-pass k``: :func:`~.translate.to_full_resolution`, the change low-passed by ``k``, the source's own detail
    kept), the squeezed image alone upsampled, and a candidate the kit does not use (``detail-matched``).

    No stage-1 model is involved, so each row bounds what *any* translation at ``S`` can reach with that glue.

    Returns:
        Index ``(size, glue)``; columns ``gap_left``, ``disc_dice``, ``cup_dice`` (:func:`score_translations`).
    """
    if segmenter is None:
        segmenter, cache = model_and_cache("litemedsam")
    sources = [s.image for s in sources_to_translate(profile)[:profile.stage1_eval_images]]
    k_images = [s.image for s in target_samples(profile, target_domain)]
    oracle = oracle_camera_images(profile, target_domain)
    candidates, keys = {}, {}
    for size in sizes:
        for glue, images in glues(sources, to_signed_tensor(oracle, size), k_images, low_passes).items():
            keys[f"{size} px, {glue}"] = (size, glue)
            candidates[f"{size} px, {glue}"] = images
    table = score_translations(profile, target_domain, candidates, segmenter=segmenter, cache=cache)
    table = table.drop(index=SOURCE_ROW)
    table.index = pd.MultiIndex.from_tuples([keys[n] for n in table.index], names=["size", "glue"])
    return table


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
    if segmenter is None:
        segmenter, cache = model_and_cache("litemedsam")
    sources = sources_to_translate(profile)
    targets = target_samples(profile, target_domain)
    reference = benchmark_samples(profile, "train", profile.train_per_domain, domains=[target_domain])
    _, ddpm, _ = load_source_ddpm(profile, progress=progress)
    size = ddpm.image_size
    reuse = segmenter.name == "litemedsam"  # f shares the segmenter's (frozen) image encoder
    encoder = feature_encoder(profile, to_signed_tensor([s.image for s in sources], size),
                              segmenter.device if reuse else None, segmenter.image_encoder if reuse else None)
    f_reference = encoder.encode([s.image for s in reference], size)  # (M, D)
    f_k = encoder.encode([s.image for s in targets], size)  # (K, D)
    n_eval = min(profile.stage1_eval_images, len(sources), len(reference))
    gap = gap_meter(profile, target_domain, segmenter, cache)

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
                     "gap_left": gap(images),
                     "diversity": intra_cluster_diversity(f_gen, f_k), **structure})
    table = pd.DataFrame(rows).set_index("method")
    histories = {v: stage1_history(profile, target_domain, v) for v in variants}
    return Stage1Comparison(target_domain, sources, targets, translations, table, histories, seconds)


def _saved_table(results_dir, name: str, index: list[str], profile_name: str, fallback: str
                 ) -> tuple[str, pd.DataFrame] | None:
    saved = load_result_or_fallback(results_dir, name, profile_name, fallback)
    if saved is None:
        return None
    measured_in, result = saved
    return measured_in, pd.DataFrame(result["table"]).set_index(index)


def saved_stage1_targets(results_dir, profile_name: str, fallback: str = "cpu") -> tuple[str, pd.DataFrame] | None:
    """``benchmarks/stage1_targets.py``'s table for ``profile_name``, else ``fallback``'s (the committed cpu one).

    Returns:
        ``(profile it was measured in, table indexed by (target, method))``, or None if neither was saved.
    """
    return _saved_table(results_dir, STAGE1_TARGETS_RESULT, ["target", "method"], profile_name, fallback)


def saved_stage1_ceiling(results_dir, profile_name: str, fallback: str = "cpu") -> tuple[str, pd.DataFrame] | None:
    """``benchmarks/stage1_ceiling.py``'s table (:func:`ceiling_sweep` per target), indexed by
    ``(target, size, glue)``, as :func:`saved_stage1_targets` finds it."""
    return _saved_table(results_dir, STAGE1_CEILING_RESULT, ["target", "size", "glue"], profile_name, fallback)


def ceiling_clause(rows: pd.DataFrame, ddpm_size: int) -> str:
    """What a perfect translation reaches on one target (its :func:`ceiling_sweep` rows), as a clause: the best
    ``gap_left`` through ``ddpm_size`` px that keeps disc Dice >= :data:`DISC_DICE_MIN`, and the smallest size
    at which the bar is within reach."""
    kept = rows[rows.disc_dice >= DISC_DICE_MIN]
    reachable = sorted({size for (size, _), g in kept.gap_left.items() if g <= GAP_LEFT_MAX})
    within = (f"the smallest size at which it meets the bar is {reachable[0]} px" if reachable else
              f"no size up to {rows.index.get_level_values('size').max()} px meets the bar")
    at = kept[kept.index.get_level_values("size") == ddpm_size]
    if not len(at):
        return f"a perfect translation through the DDPM's {ddpm_size} px keeps no disc Dice >= {DISC_DICE_MIN}; {within}"
    (_, how), best = at.gap_left.idxmin(), at.gap_left.min()
    reach = "out of reach" if best > GAP_LEFT_MAX else "within reach"
    return (f"a perfect translation through the DDPM's {ddpm_size} px leaves at best {best:.2f} ({how}): the bar is "
            f"{reach} at that size; {within}")


def stage1_target_lines(table: pd.DataFrame, method: str = "stage1", ceiling: pd.DataFrame | None = None,
                        ddpm_size: int | None = None) -> list[str]:
    """One sentence per target, computed from a :func:`saved_stage1_targets` table: does ``method`` meet the bar
    (:data:`GAP_LEFT_MAX`, :data:`DISC_DICE_MIN`), and which candidate closes the most of the gap; with a
    :func:`saved_stage1_ceiling` table and the DDPM's size, also what a perfect translation reaches
    (:func:`ceiling_clause`)."""
    lines = []
    for target, rows in table.groupby(level="target", sort=False):
        rows = rows.droplevel("target")
        row = rows.loc[method]
        bar = "meets" if row.gap_left <= GAP_LEFT_MAX and row.disc_dice >= DISC_DICE_MIN else "misses"
        others = rows.drop(index=[SOURCE_ROW, method, "oracle camera"], errors="ignore")
        best = others.gap_left.idxmin() if len(others) else None
        against = (f"; {best} leaves {others.gap_left[best]:.2f} (disc Dice {others.disc_dice[best]:.2f})"
                   if best is not None else "")
        limit = ""
        if ceiling is not None and ddpm_size is not None and target in ceiling.index.get_level_values("target"):
            limit = "; " + ceiling_clause(ceiling.xs(target, level="target"), ddpm_size)
        lines.append(f"{target}: {method} leaves {row.gap_left:.2f} of the gap with disc Dice {row.disc_dice:.2f}, "
                     f"{bar} the bar (gap_left <= {GAP_LEFT_MAX}, disc Dice >= {DISC_DICE_MIN}){against}{limit}.")
    return lines
