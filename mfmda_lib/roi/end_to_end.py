"""Does the whole-photograph path lose anything? The pipeline on photographs vs on their true ROI crops.

:func:`whole_vs_roi` writes synthetic whole-fundus photographs of one camera into a folder, and
their true disc-centred ROI crops (the kit's convention around the *true* disc) into another; runs
``mfmda run --target-folder`` on each (photographs: discs found, cropped, masks mapped back;
ROIs: ``crop = "off"``); and scores both against the true full-image masks (the ROI run's masks
are mapped back through the true ROI boxes). What separates the two numbers is the localiser, the
crop and the back-mapping, which is what the whole-photograph path adds. Both are scored on the
network's raw masks (``roi/raw/``, mapped back) and on the post-processed masks the run writes for
a user (:func:`~mfmda_lib.roi.postprocess.clean_disc_cup`), with the raw disc's number of pieces.
"""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from ..data.photo import generate_photo, photo_roi_sample, write_photo_folder
from ..evaluation.metrics import dice
from ..io import read_mask, save_png
from ..profiles import Profile
from .box import RoiBox, roi_box
from .postprocess import clean_disc_cup, count_components

__all__ = ["whole_vs_roi"]


def whole_vs_roi(profile: Profile, domain: str, work_dir: str | Path, *, n_photos: int | None = None,
                 progress: bool = False, log=print) -> pd.DataFrame:
    """Full-image disc and cup Dice of the pipeline on photographs and on their true ROI crops.

    Args:
        profile: sizes (K, stage-2 epochs, ``photo_width``).
        domain: the target camera (a synthetic domain; its ``test`` photographs).
        work_dir: where the two folders and the two runs go.
        n_photos: photographs (default: the larger of K and ``stage2_test_per_domain``).

    Returns:
        One row per (input, photograph): ``input`` (``photographs`` | ``true ROIs``), ``file``,
        ``disc_dice``, ``cup_dice`` (raw predictions), ``disc_dice_post``, ``cup_dice_post`` (the
        written, post-processed masks), ``disc_components_raw``, ``disc_components_post`` (connected
        pieces of the full-image disc mask) and the run's ``seconds`` on every row.
    """
    from ..pipeline import run_pipeline
    from ..pipeline_io import PipelineConfig

    work = Path(work_dir)
    n = n_photos or max(profile.stage1_k_target, profile.stage2_test_per_domain)
    photos = [generate_photo(domain, i, split="test", width=profile.photo_width, severity=profile.severity,
                             seed=profile.seed) for i in range(n)]
    write_photo_folder(work / "photographs", photos)
    for p in photos:
        save_png(work / "rois" / f"{p.photo_id}.png", photo_roi_sample(p, profile.image_size).image)
    rows = []
    for name, crop in (("photographs", "auto"), ("rois", "off")):
        config = PipelineConfig(profile=profile.name, target_folder=str(work / name), crop=crop,
                                run_dir=str(work / f"run_{name}"))
        start = time.perf_counter()
        result = run_pipeline(config, progress=progress, log=log)
        seconds = round(time.perf_counter() - start, 1)
        out = result.files["predictions"]
        boxes = _roi_boxes(out / "rois.csv") if name == "photographs" else {}
        for p in photos:
            label = read_mask(out / f"{p.photo_id}_mask.png")
            disc, cup = label >= 128, label == 255
            raw = read_mask(out / "roi" / "raw" / f"{p.photo_id}_mask.png")
            if name == "rois":  # a mask on the true ROI crop, mapped back through the true ROI box
                box = roi_box(p.image.shape, p.disc_center, p.disc_diameter)
                disc, cup = clean_disc_cup(box.paste(disc), box.paste(cup))  # as write_predictions does at full size
            else:
                box = boxes[f"{p.photo_id}.png"]
            raw_disc, raw_cup = box.paste(raw >= 128), box.paste(raw == 255)
            rows.append({"input": "photographs" if name == "photographs" else "true ROIs", "file": p.photo_id,
                         "disc_dice": dice(raw_disc, p.disc), "cup_dice": dice(raw_cup, p.cup),
                         "disc_dice_post": dice(disc, p.disc), "cup_dice_post": dice(cup, p.cup),
                         "disc_components_raw": count_components(raw_disc), "disc_components_post": count_components(disc),
                         "seconds": seconds})
    return pd.DataFrame(rows)


def _roi_boxes(rois_csv: Path) -> dict[str, RoiBox]:
    """The ROI box of each photograph whose disc was found, from a predictions folder's ``rois.csv``."""
    table = pd.read_csv(rois_csv)
    return {row.file: RoiBox(top=int(row.roi_top), left=int(row.roi_left), side=int(row.roi_side),
                             height=int(row.height), width=int(row.width))
            for row in table.itertuples() if row.disc_found}
