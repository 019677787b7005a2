"""The machine and folders the kit runs with, read from the environment: the torch device (``MFMDA_DEVICE``, else
CUDA, else MPS, else CPU), the folders for data, cache and results (``MFMDA_HOME``, ``MFMDA_DATA``, ``MFMDA_CACHE``,
``MFMDA_RESULTS``), and seeding every random generator."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["get_device", "Paths", "paths", "seed_everything"]


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
