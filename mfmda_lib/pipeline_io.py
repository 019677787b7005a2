"""The MFM-DA pipeline's inputs and bookkeeping: config file, a user's target folder, run state.

Kept apart from :mod:`mfmda_lib.pipeline` (which chains the stages) so each piece is small and
tested on its own:

- :class:`PipelineConfig` and :func:`load_config`: a validated dataclass read from a TOML file;
  an unknown key or a bad value is an error naming the file and the key.
- :func:`read_target_folder`: the unlabeled images of a new hospital as the kit's disc-centred ROIs
  (whole-fundus photographs are detected, the disc found and cropped; folders of ROIs are read as
  they are), with a clear error for a missing folder, too few images or an unreadable file, and a
  :class:`~mfmda_lib.roi.DiscNotFoundWarning` for a photograph whose disc cannot be found.
- :func:`write_predictions`: the masks predicted on the ROIs, mapped back onto every photograph
  (ROI masks, full-size masks, an overlay PNG per image and a CSV of where each disc was found).
- :class:`RunState`: which stages of a run finished (``state.json`` in the run folder, written
  atomically), so an interrupted run resumes at the first unfinished stage.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data.domains import DOMAINS
from .io import DataError, atomic_write, atomic_write_json, read_image, save_png
from .profiles import PROFILE_NAMES
from .roi import (CONFIDENCE_THRESHOLD, DiscLocation, RoiBox, centre_box, count_dark_corners, locate_disc,
                  roi_box)
from .roi.postprocess import clean_disc_cup, count_components

__all__ = ["PipelineConfig", "load_config", "read_target_folder", "TargetImage", "TargetFolder",
           "write_predictions", "RunState", "IMAGE_SUFFIXES", "CROP_MODES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
SOURCE_DOMAIN = "refuge_train"
TARGET_DOMAINS = tuple(d for d in DOMAINS if d != SOURCE_DOMAIN)
#: How ``target_folder`` images are read: ``auto`` (whole-fundus photographs detected by their dark
#: corners and cropped around the disc), ``whole`` (always crop), ``off`` (already disc-centred ROIs).
CROP_MODES = ("auto", "whole", "off")


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
        crop: how ``target_folder`` images are read, one of :data:`CROP_MODES`: ``auto`` detects
            whole-fundus photographs and crops each around its optic disc; ``off`` reads a folder of
            disc-centred ROIs as they are.
        disc_confidence: below this localiser confidence a photograph gets a warning and no mask.
    """

    profile: str = ""
    targets: list[str] = field(default_factory=lambda: list(TARGET_DOMAINS))
    target_folder: str = ""
    methods: list[str] = field(default_factory=list)
    run_dir: str = ""
    crop: str = "auto"
    disc_confidence: float = CONFIDENCE_THRESHOLD

    def __post_init__(self) -> None:
        if self.profile and self.profile not in PROFILE_NAMES:
            raise ValueError(f"profile must be one of {', '.join(PROFILE_NAMES)} (or empty), got {self.profile!r}")
        if self.crop not in CROP_MODES:
            raise ValueError(f"crop must be one of {list(CROP_MODES)}, got {self.crop!r}")
        if not 0 <= self.disc_confidence <= 1:
            raise ValueError(f"disc_confidence must be in [0, 1], got {self.disc_confidence}")
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


@dataclass
class TargetImage:
    """One image of a target folder and where its ROI came from.

    Attributes:
        path: the file.
        shape: its ``(H, W)``.
        whole: read as a whole-fundus photograph (cropped around the disc) or as an ROI.
        location: what the disc localiser found.
        box: the ROI on the image, or ``None`` when no disc was found (the image gets no mask).
    """

    path: Path
    shape: tuple[int, int]
    whole: bool
    location: DiscLocation
    box: RoiBox | None


@dataclass
class TargetFolder:
    """A folder of unlabeled target images, read as the kit's ROIs.

    Attributes:
        folder: where they came from.
        items: every image file, sorted by name.
        crops: ``(size, size, 3)`` uint8 ROI crops of the images with a disc (``usable``), same order.
        whole: the folder was read as whole-fundus photographs.
    """

    folder: Path
    items: list[TargetImage]
    crops: list[np.ndarray]
    whole: bool

    @property
    def usable(self) -> list[TargetImage]:
        """The images whose disc was found (each has a crop)."""
        return [item for item in self.items if item.box is not None]

    @property
    def skipped(self) -> list[TargetImage]:
        """The images without a findable disc: a warning each, no mask."""
        return [item for item in self.items if item.box is None]


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_target_folder(folder: str | Path, k: int, size: int, *, crop: str = "auto",
                       threshold: float = CONFIDENCE_THRESHOLD) -> TargetFolder:
    """Every image (sorted by name) of a folder of unlabeled target images, as ``(size, size, 3)`` ROI crops.

    With ``crop="auto"`` the folder counts as whole-fundus photographs when at least half of its
    images have four dark corners (a round field of view); each photograph's disc is then found
    (:func:`~mfmda_lib.roi.locate_disc`) and cropped to the kit's ROI (:func:`~mfmda_lib.roi.roi_box`).
    Otherwise (``"off"``) each image is an ROI already: its centre square is resized. Either way an
    image whose disc cannot be found gets a :class:`~mfmda_lib.roi.DiscNotFoundWarning` and no crop.
    Stage 1 adapts from the first ``k`` crops; stage 2 segments all of them.

    Raises:
        DataError: the folder is missing, holds fewer than ``k`` images (or fewer than ``k`` with a
            findable disc), or an image is unreadable (the message names the folder or the file).
    """
    if crop not in CROP_MODES:
        raise ValueError(f"crop must be one of {list(CROP_MODES)}, got {crop!r}")
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"target folder {folder} does not exist (set `target_folder` in the config or --target-folder)")
    files = _image_files(folder)
    if len(files) < k:
        raise DataError(f"target folder {folder} holds {len(files)} image(s) ({', '.join(IMAGE_SUFFIXES)}); "
                        f"MFM-DA needs at least K = {k} unlabeled target images")
    if crop == "auto":  # read_image raises DataError naming the file
        corners = [count_dark_corners(read_image(p)) for p in files]
        whole = sum(c >= 3 for c in corners) * 2 >= len(files)
    else:
        whole = crop == "whole"
    items, crops = [], []
    for path in files:
        image = read_image(path)
        h, w = image.shape[:2]
        expected = None if whole else min(h, w) / 4  # an ROI's disc is about a quarter of its side
        loc = locate_disc(image, expected_diameter=expected, threshold=threshold, name=str(path))
        box = None
        if loc.found:
            box = roi_box(image.shape, loc.center, loc.diameter) if whole else centre_box(image.shape)
            crops.append(box.crop(image, size))
        items.append(TargetImage(path=path, shape=(h, w), whole=whole, location=loc, box=box))
    result = TargetFolder(folder=folder, items=items, crops=crops, whole=whole)
    if len(crops) < k:
        raise DataError(f"target folder {folder}: the optic disc was found in only {len(crops)} of {len(files)} "
                        f"image(s); MFM-DA needs at least K = {k} (not found: "
                        f"{', '.join(i.path.name for i in result.skipped[:5])})")
    return result


def write_predictions(out: str | Path, target: TargetFolder, masks: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, Path]:
    """Write the masks predicted on a folder's ROI crops, mapped back onto every image.

    Each predicted pair is first made anatomically plausible (:func:`~mfmda_lib.roi.postprocess.clean_disc_cup`:
    the disc's largest connected component, holes filled; the cup's largest component inside it).
    Per image ``<stem>``: ``roi/<stem>_mask.png`` (the ROI), ``<stem>_mask.png`` (the image's own
    ``H x W``), both 0 background, 128 disc, 255 cup and post-processed; ``roi/raw/<stem>_mask.png``,
    the network's raw ROI prediction; and ``overlay/<stem>.png``, the photograph with the
    (post-processed) outlines and the ROI enlarged. An image without a findable disc gets an
    overlay that says so, and no mask. ``rois.csv`` lists each image's disc centre, diameter,
    confidence, ROI box, and how many connected pieces the raw disc and cup predictions had.

    Args:
        out: the predictions folder.
        target: from :func:`read_target_folder`.
        masks: one ``(disc, cup)`` pair of ``(S, S)`` bool masks per crop (``target.usable`` order).
    """
    from .roi.overlay import overlay_image

    out = Path(out)
    if len(masks) != len(target.crops):
        raise ValueError(f"write_predictions: {len(masks)} mask pairs for {len(target.crops)} ROI crops")
    predicted = iter(masks)
    rows = []
    for item in target.items:
        image, stem, loc = read_image(item.path), item.path.stem, item.location
        row = {"file": item.path.name, "height": item.shape[0], "width": item.shape[1], "whole_fundus": item.whole,
               "disc_found": item.box is not None, "confidence": round(loc.confidence, 3)}
        if item.box is None:
            note = f"{item.path.name}: no optic disc found (confidence {loc.confidence:.2f}): no mask"
            save_png(out / "overlay" / f"{stem}.png", overlay_image(image, None, None, note=note))
            rows.append(row)
            continue
        raw_disc, raw_cup = next(predicted)
        save_png(out / "roi" / "raw" / f"{stem}_mask.png", _label(raw_disc, raw_cup))
        disc, cup = clean_disc_cup(raw_disc, raw_cup)
        save_png(out / "roi" / f"{stem}_mask.png", _label(disc, cup))
        # again at full size: resizing the ROI mask down into a photograph can cut a thin bridge in two
        full_disc, full_cup = clean_disc_cup(item.box.paste(disc), item.box.paste(cup))
        save_png(out / f"{stem}_mask.png", _label(full_disc, full_cup))
        save_png(out / "overlay" / f"{stem}.png", overlay_image(image, full_disc, full_cup, item.box, note=item.path.name))
        row.update(disc_x=round(loc.center[0], 1), disc_y=round(loc.center[1], 1), disc_diameter=round(loc.diameter, 1),
                   **{f"roi_{k}": v for k, v in item.box.as_dict().items() if k in ("top", "left", "side")},
                   disc_components_raw=count_components(raw_disc), cup_components_raw=count_components(raw_cup))
        rows.append(row)
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_write(out / "rois.csv", "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return {"predictions": out, "overlays": out / "overlay", "rois": out / "rois.csv"}


def _label(disc: np.ndarray, cup: np.ndarray) -> np.ndarray:
    """0 background, 128 disc, 255 cup (the predictions' encoding)."""
    label = np.zeros(disc.shape, np.uint8)
    label[disc] = 128
    label[cup] = 255
    return label


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
