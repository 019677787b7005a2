"""The MFM-DA pipeline's inputs and bookkeeping: config file, a user's target folder, run state.

Kept apart from :mod:`mfmda_lib.pipeline` (which chains the stages) so each piece is small and
tested on its own:

- :class:`PipelineConfig` and :func:`load_config`: a validated dataclass read from a TOML file;
  an unknown key or a bad value is an error naming the file and the key.
- :func:`read_target_folder`: the K unlabeled images of a new hospital, with a clear error for a
  missing folder, too few images or an unreadable file.
- :class:`RunState`: which stages of a run finished (``state.json`` in the run folder, written
  atomically), so an interrupted run resumes at the first unfinished stage.
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .data.synthetic import DOMAINS
from .io import DataError, atomic_write_json, read_image
from .profiles import PROFILE_NAMES

__all__ = ["PipelineConfig", "load_config", "read_target_folder", "RunState", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
SOURCE_DOMAIN = "refuge_train"
TARGET_DOMAINS = tuple(d for d in DOMAINS if d != SOURCE_DOMAIN)


@dataclass
class PipelineConfig:
    """What one ``mfmda run`` does. Sizes (K, epochs, steps, resolution) come from the profile, not from here.

    Attributes:
        profile: ``ci`` | ``cpu`` | ``gpu`` | ``colab``; empty = ``$MFMDA_PROFILE``, else colab/gpu/cpu by
            hardware.
        targets: benchmark target domains to adapt to (each gets its own stage 1 and stage 2).
        target_folder: a folder of your own unlabeled target images; when set, it is the only target
            (named after the folder) and no Dice can be computed for it (no labels): the run writes
            translations and predicted masks instead.
        methods: stage-2 methods to train and compare (see ``mfmda_lib.align``); ``mfmda`` is the method.
        run_dir: where checkpoints, translations and results of this run go; empty =
            ``<results>/mfmda_run_<profile>``.
    """

    profile: str = ""
    targets: list[str] = field(default_factory=lambda: list(TARGET_DOMAINS))
    target_folder: str = ""
    methods: list[str] = field(default_factory=list)
    run_dir: str = ""

    def __post_init__(self) -> None:
        if self.profile and self.profile not in PROFILE_NAMES:
            raise ValueError(f"profile must be one of {', '.join(PROFILE_NAMES)} (or empty), got {self.profile!r}")
        unknown = [t for t in self.targets if t not in TARGET_DOMAINS]
        if unknown:
            raise ValueError(f"unknown target domain(s) {unknown}: choose from {list(TARGET_DOMAINS)}")
        if not self.targets and not self.target_folder:
            raise ValueError("nothing to adapt to: give `targets` or a `target_folder`")


def load_config(path: str | Path | None = None, **overrides) -> PipelineConfig:
    """Read a TOML config (keys = :class:`PipelineConfig` fields), apply ``overrides`` (``None`` values ignored)."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"config file {path} does not exist")
        try:
            values = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise DataError(f"config file {path} is not valid TOML: {exc}") from exc
        known = {f.name for f in dataclasses.fields(PipelineConfig)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise DataError(f"config file {path}: unknown key(s) {unknown}; known keys are {sorted(known)}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return PipelineConfig(**values)
    except (TypeError, ValueError) as exc:
        raise DataError(f"config {path or '(defaults)'}: {exc}") from exc


def _square(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square and resize to ``size x size`` (uint8 RGB)."""
    h, w = image.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = image[top:top + s, left:left + s]
    if s != size:
        crop = np.asarray(Image.fromarray(crop).resize((size, size), Image.BICUBIC))
    return crop


def read_target_folder(folder: str | Path, k: int, size: int) -> tuple[list[np.ndarray], list[Path]]:
    """Every image (sorted by name) of a folder of unlabeled target images, as ``(size, size, 3)`` uint8.

    Stage 1 adapts from the first ``k``; stage 2 segments all of them.

    Raises:
        DataError: the folder is missing, holds fewer than ``k`` images, or an image is unreadable
            (the message names the folder or the file).
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"target folder {folder} does not exist (set `target_folder` in the config or --target-folder)")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < k:
        raise DataError(f"target folder {folder} holds {len(files)} image(s) ({', '.join(IMAGE_SUFFIXES)}); "
                        f"MFM-DA needs at least K = {k} unlabeled target images")
    images = [_square(read_image(p), size) for p in files]  # read_image raises DataError naming the file
    return images, files


class RunState:
    """The finished stages of a run, in ``<run_dir>/state.json`` (atomic writes).

    Each finished stage records a small JSON-able summary (times, files it wrote). A run that
    restarts skips finished stages; a stage killed half-way is re-entered and resumes from its
    own checkpoints.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "state.json"
        self.stages: dict[str, dict] = {}
        if self.path.is_file():
            try:
                self.stages = json.loads(self.path.read_text())["stages"]
            except (ValueError, KeyError) as exc:
                raise DataError(f"run state {self.path} is corrupt ({exc}); delete it to start the run again") from exc

    def done(self, stage: str) -> bool:
        return stage in self.stages

    def mark(self, stage: str, summary: dict | None = None) -> None:
        """Record ``stage`` as finished (written to disk at once)."""
        self.stages[stage] = summary or {}
        atomic_write_json(self.path, {"stages": self.stages})
