"""MFM-DA stage 1 end to end: adapt the source DDPM to a target, translate the source training set.

The contract with stage 2 and the pipeline::

    translated_source(profile, target_domain, *, variant="mfmda", progress=True) -> list[FundusSample]

returns the source domain's training samples (``benchmark_samples(profile, "train",
profile.train_per_domain, domains=["refuge_train"])``: same order, same disc/cup masks) whose
images are translated to ``target_domain`` by the stage-1 model adapted with the first
``stage1_k_target`` unlabelled ``train`` images of that target. Each returned sample keeps its
source ``domain`` and ``sample_id``; ``meta`` gains ``translated_to`` and ``variant``.

Load if present, else compute: results live under
``<cache>/mfmda/<profile>/<target>/<variant>-<key>/`` (``key`` hashes every setting and the
source DDPM's checksum) as ``translated.npz`` with a ``translated.json`` holding its SHA-256; the
stage-1 adaptation checkpoint ``adapt.pt`` beside them makes a killed run resume.

For a user's own images (the pipeline), :func:`run_stage1` takes explicit image lists.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from accelerate import Accelerator

from ..data import SOURCE_DOMAIN, TARGET_DOMAINS, FundusSample, benchmark_samples
from ..environment import get_device, paths
from ..io import NPZ, cached
from ..models import load_model
from ..profiles import Profile
from .adaptation import VARIANTS, Stage1Config, Stage1State, adapt
from .checkpoint import load_ddpm
from .conditioned import ContentConditionedUNet
from .ddpm import DDPMConfig, alphas_cumprod, build_scheduler, to_signed_tensor
from .features import FrozenFeatureEncoder
from .source import load_source_ddpm
from .training import make_accelerator
from .translate import TranslateConfig, to_full_resolution, translate

__all__ = ["stage1_config", "translate_config", "feature_encoder", "sources_to_translate", "target_samples",
           "Stage1Output", "run_stage1", "translated_source", "stage1_dir"]


# ---------------------------------------------------------------------------------------------
# settings and data of a profile
# ---------------------------------------------------------------------------------------------

def stage1_config(profile: Profile, variant: str = "mfmda") -> Stage1Config:
    """Adaptation settings: ``stage1_steps`` iterations of ``stage1_batch_size`` images (``"none"``, which adapts
    nothing, gets the ``mfmda`` settings, so that its cache key names the same sizes)."""
    return Stage1Config(variant="mfmda" if variant == "none" else variant, steps=profile.stage1_steps,
                        batch_size=profile.stage1_batch_size,
                        seed=profile.seed, checkpoint_every=2 * max(1, min(10, profile.stage1_steps // 2)))


def translate_config(profile: Profile) -> TranslateConfig:
    """Translation settings: noise to ``stage1_t_translate``, ``stage1_translate_steps`` DDIM steps."""
    return TranslateConfig(t_start=profile.stage1_t_translate, steps=profile.stage1_translate_steps,
                           guide_stop=min(400, profile.stage1_t_translate), seed=profile.seed)


def feature_encoder(profile: Profile, x_source: torch.Tensor, device: torch.device | None = None,
                    image_encoder: torch.nn.Module | None = None) -> FrozenFeatureEncoder:
    """``f``: LiteMedSAM's frozen encoder (``stage1_encoder_units`` units at ``stage1_feature_size`` px),
    calibrated on ``(N, 3, S, S)`` source images.

    Args:
        image_encoder: an already loaded LiteMedSAM image encoder to reuse (default: load it).
    """
    device = device or torch.device("cpu")
    if image_encoder is None:
        image_encoder = load_model("litemedsam", device=device).image_encoder
    encoder = FrozenFeatureEncoder(image_encoder, units=profile.stage1_encoder_units,
                                   input_size=profile.stage1_feature_size).to(device)
    return encoder.calibrate(x_source.to(device))


def sources_to_translate(profile: Profile) -> list[FundusSample]:
    """The labelled source training samples that stage 1 translates (all ``train_per_domain`` of them)."""
    return benchmark_samples(profile, "train", profile.train_per_domain, domains=[SOURCE_DOMAIN])


def target_samples(profile: Profile, target_domain: str) -> list[FundusSample]:
    """The first ``stage1_k_target`` training images of a target domain (their masks are never used)."""
    if target_domain not in TARGET_DOMAINS:
        raise ValueError(f"target_domain must be one of {list(TARGET_DOMAINS)}, got {target_domain!r}")
    if profile.stage1_k_target > profile.train_per_domain:
        raise ValueError(f"profile {profile.name}: stage1_k_target ({profile.stage1_k_target}) exceeds "
                         f"train_per_domain ({profile.train_per_domain})")
    return benchmark_samples(profile, "train", profile.stage1_k_target, domains=[target_domain])


# ---------------------------------------------------------------------------------------------
# stage 1 on explicit images
# ---------------------------------------------------------------------------------------------

@dataclass
class Stage1Output:
    """Translated full-resolution images and, for an adapted variant, the adaptation state."""

    images: list[np.ndarray]
    translated_lo: torch.Tensor
    state: Stage1State | None


def run_stage1(source_images: Sequence[np.ndarray], target_images: Sequence[np.ndarray], *,
               source_model: ContentConditionedUNet | str | Path, ddpm: DDPMConfig | None = None,
               encoder: FrozenFeatureEncoder | None = None,
               variant: str = "mfmda", adapt_config: Stage1Config | None = None,
               translate_cfg: TranslateConfig | None = None, accelerator: Accelerator | None = None,
               checkpoint: str | Path | None = None, callback: Callable[[int, dict], None] | None = None,
               progress: bool = True) -> Stage1Output:
    """Adapt a copy of ``source_model`` to ``target_images`` and translate ``source_images``.

    Args:
        source_images: ``N`` uint8 ``(H, W, 3)`` square source images (any one size).
        target_images: ``K`` uint8 ``(H', W', 3)`` unlabelled target images.
        source_model: the conditioned source DDPM (not modified: a copy is adapted), or the path of a
            checkpoint written by :func:`~.checkpoint.save_ddpm` (checksum verified on load).
        ddpm: its :class:`DDPMConfig` (read from the checkpoint when ``source_model`` is a path).
        encoder: the frozen ``f`` (calibrated); default: LiteMedSAM's patch embedding
            (:class:`FrozenFeatureEncoder` defaults) calibrated on ``source_images``.
        variant: one of ``"none"``, ``"naive"``, ``"static"``, ``"mfmda"``.
        adapt_config: :class:`Stage1Config` (its ``variant`` is replaced by ``variant``).
        translate_cfg: :class:`TranslateConfig`.
        accelerator: default :func:`~.training.make_accelerator` ``()``.
        checkpoint: resumable adaptation checkpoint.
        callback: ``(step, logs)`` after each adaptation step.

    Returns:
        :class:`Stage1Output` with ``N`` translated images at the sources' resolution.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    accelerator = accelerator or make_accelerator()
    if not isinstance(source_model, ContentConditionedUNet):
        source_model, ddpm = load_ddpm(source_model)
    if ddpm is None:
        raise ValueError("run_stage1: pass ddpm=<DDPMConfig> with a model object (or a checkpoint path)")
    translate_cfg = translate_cfg or TranslateConfig()
    alpha_bar = alphas_cumprod(ddpm)
    x_source = to_signed_tensor(source_images, ddpm.image_size)  # (N, 3, S, S)
    if encoder is None:
        encoder = FrozenFeatureEncoder(load_model("litemedsam", device=torch.device("cpu")).image_encoder,
                                       input_size=ddpm.image_size).calibrate(x_source)
    state = None
    model = copy.deepcopy(source_model)
    if variant != "none":
        config = adapt_config or Stage1Config()
        config = Stage1Config(**{**vars(config), "variant": variant})
        x_target = to_signed_tensor(target_images, ddpm.image_size)  # (K, 3, S, S)
        state = adapt(model, x_source, x_target, encoder, alpha_bar, config, accelerator=accelerator,
                      checkpoint=checkpoint, callback=callback, progress=progress)
        model = state.model
    model = model.to(accelerator.device).eval()
    lo = translate(model, build_scheduler(ddpm, "ddim"), x_source, alpha_bar, translate_cfg,
                   device=accelerator.device, progress=progress)
    return Stage1Output(to_full_resolution(list(source_images), lo, translate_cfg.change_low_pass), lo, state)


# ---------------------------------------------------------------------------------------------
# the profile-level contract, with its cache
# ---------------------------------------------------------------------------------------------

#: bump when a code change alters stage-1 results, so cached translations are recomputed
STAGE1_VERSION = 2


def _key(profile: Profile, target_domain: str, variant: str, ddpm_sha: str) -> str:
    blob = json.dumps({"version": STAGE1_VERSION, "target": target_domain, "variant": variant, "ddpm_sha256": ddpm_sha,
                       "stage1": vars(stage1_config(profile, variant)),
                       "translate": vars(translate_config(profile)), "k": profile.stage1_k_target,
                       "f": [profile.stage1_encoder_units, profile.stage1_feature_size],
                       "bench": [profile.train_per_domain, profile.image_size, profile.severity, profile.seed]},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def stage1_dir(profile: Profile, target_domain: str, variant: str, ddpm_sha: str) -> Path:
    """``<cache>/mfmda/<profile>/<target>/<variant>-<key>/``."""
    return paths().cache / "mfmda" / profile.name / target_domain / f"{variant}-{_key(profile, target_domain, variant, ddpm_sha)}"


def translated_source(profile: Profile, target_domain: str, *, variant: str = "mfmda",
                      progress: bool = True, accelerator: Accelerator | None = None,
                      callback: Callable[[int, dict], None] | None = None,
                      encoder: FrozenFeatureEncoder | None = None) -> list[FundusSample]:
    """The source training samples translated to ``target_domain`` (load if cached, else compute).

    Args:
        profile: sizes (source count, K, steps, resolutions).
        target_domain: ``refuge_test``, ``riga_binrushed`` or ``riga_messidor``.
        variant: ``"mfmda"`` (the method), ``"static"`` (no DIAA), ``"naive"`` (plain fine-tuning on
            the K images) or ``"none"`` (the source DDPM, not adapted).
        progress: tqdm bars.
        accelerator: default :func:`~.training.make_accelerator` on the kit's device.
        callback: ``(step, logs)`` after each adaptation step (only when it runs).
        encoder: ``f`` from :func:`feature_encoder` for this profile, to reuse (default: built when needed).

    Returns:
        ``train_per_domain`` :class:`FundusSample` s in the source order, with the source masks.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    targets = target_samples(profile, target_domain)  # validates the domain and K first
    sources = sources_to_translate(profile)
    ids = [s.sample_id for s in sources]
    model, ddpm, ddpm_path = load_source_ddpm(profile, accelerator=accelerator, progress=progress)
    ddpm_sha = json.loads(ddpm_path.with_suffix(".json").read_text())["sha256"]
    folder = stage1_dir(profile, target_domain, variant, ddpm_sha)

    def compute() -> dict[str, np.ndarray]:
        acc = accelerator or make_accelerator(get_device())
        x_source = to_signed_tensor([s.image for s in sources], ddpm.image_size)
        f = encoder if encoder is not None else feature_encoder(profile, x_source, acc.device)
        out = run_stage1([s.image for s in sources], [t.image for t in targets], source_model=model, ddpm=ddpm,
                         encoder=f, variant=variant, adapt_config=stage1_config(profile, variant),
                         translate_cfg=translate_config(profile), accelerator=acc,
                         checkpoint=folder / "adapt.pt", callback=callback, progress=progress)
        return {"images": np.stack(out.images)}

    meta = {"ids": ids, "profile": profile.name, "target": target_domain, "variant": variant,
            "ddpm_sha256": ddpm_sha, "k_target": len(targets)}  # translated.json beside translated.npz
    images = list(cached(folder / "translated.npz", compute, NPZ, meta=meta)[0]["images"])
    return [FundusSample(image=img, disc=s.disc, cup=s.cup, domain=s.domain, sample_id=s.sample_id,
                         glaucoma=s.glaucoma, meta={**s.meta, "translated_to": target_domain, "variant": variant})
            for s, img in zip(sources, images)]
