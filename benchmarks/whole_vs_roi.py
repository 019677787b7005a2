"""``mfmda run --target-folder`` on whole-fundus photographs vs on their true ROI crops, in one run.

    python benchmarks/whole_vs_roi.py --profile cpu --domain riga_messidor

Writes the profile's synthetic whole-fundus ``test`` photographs of one target camera into a folder
and their true disc-centred ROI crops into another, runs the pipeline's user-folder path on each
(stage 1 adapted from the folder's first K images, stage 2's MFM-DA model, masks mapped back onto
the photographs; the ROI run with ``crop = "off"``), and scores both against the true full-image
masks (:func:`mfmda_lib.roi.end_to_end.whole_vs_roi`). Prints the mean full-image disc and cup Dice
of each input and their difference (raw predictions; ``_post``: the post-processed masks written
for a user), the disc mask's mean number of connected pieces before and after post-processing,
each run's wall time in this call and each stage's wall time as it first ran (from the run's
``state.json``); writes ``results/whole_vs_roi_<profile>.{md,json}``.
The two runs and their predictions (overlays included) stay in ``--work-dir``; a finished run is
not repeated (the pipeline resumes), so ``--picture docs/images/whole_fundus_overlay.png --no-save``
afterwards only writes the README's picture: the overlay of the first photograph, as the run drew it,
scaled down and stored with a 256-colour palette.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from mfmda_lib.profiles import PROFILE_NAMES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=PROFILE_NAMES, default=None, help="sizes (default: MFMDA_PROFILE)")
    parser.add_argument("--domain", default="riga_messidor", help="the target camera (a synthetic target domain)")
    parser.add_argument("--photos", type=int, default=None,
                        help="photographs (default: the larger of K and stage2_test_per_domain)")
    parser.add_argument("--work-dir", default=None, help="folders and runs (default: build/whole_vs_roi_<profile>)")
    parser.add_argument("--no-save", action="store_true", help="print only, write nothing under results/")
    parser.add_argument("--picture", default=None, help="also write the first photograph's overlay here (small PNG)")
    args = parser.parse_args(argv)

    import torch

    from mfmda_lib import get_profile
    from mfmda_lib.experiments import save_result
    from mfmda_lib.roi.end_to_end import whole_vs_roi

    profile = get_profile(args.profile)
    work = args.work_dir or f"build/whole_vs_roi_{profile.name}"
    start = time.perf_counter()
    df = whole_vs_roi(profile, args.domain, work, n_photos=args.photos, progress=False)
    wall = time.perf_counter() - start
    table = df.groupby("input", sort=False).agg(n=("file", "size"), disc_dice=("disc_dice", "mean"),
                                                disc_dice_std=("disc_dice", "std"), cup_dice=("cup_dice", "mean"),
                                                cup_dice_std=("cup_dice", "std"), disc_dice_post=("disc_dice_post", "mean"),
                                                cup_dice_post=("cup_dice_post", "mean"),
                                                disc_pieces_raw=("disc_components_raw", "mean"),
                                                disc_pieces_post=("disc_components_post", "mean"),
                                                seconds_this_call=("seconds", "first"))
    print(f"\n{args.domain}, profile {profile.name}, torch threads {torch.get_num_threads()}: full-image Dice of the raw "
          f"predictions and (_post) of the post-processed masks the run writes; mean connected pieces of the disc mask")
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    # each stage's wall time as it first ran (a resumed run skips finished stages; state.json keeps their times)
    stages = {name: {stage: info.get("seconds") for stage, info in
                     json.loads((Path(work) / f"run_{name}" / "state.json").read_text())["stages"].items()}
              for name in ("photographs", "rois")}
    for name, times in stages.items():
        print(f"run on the {name}: stage wall times as first run (s): "
              + ", ".join(f"{stage} {seconds}" for stage, seconds in times.items()))
    gap = table.loc["photographs", "disc_dice"] - table.loc["true ROIs", "disc_dice"]
    print(f"disc Dice, photographs - true ROIs: {gap:+.3f} ({'within' if abs(gap) <= 0.05 else 'NOT within'} 0.05); "
          f"both runs {wall:.0f} s wall")
    if not args.no_save:
        written = save_result("whole_vs_roi", profile, table, rows=df.to_dict(orient="records"),
                              meta={"domain": args.domain, "disc_dice_gap": round(float(gap), 4),
                                    "wall_seconds": round(wall, 1), "stage_seconds": stages,
                                    "torch_threads": torch.get_num_threads(),
                                    "work_dir": str(work)})
        print("wrote", written["md"])
    if args.picture:
        first = df.loc[df["input"] == "photographs", "file"].iloc[0]
        overlay = Path(work) / "run_photographs" / "predictions" / "photographs" / "overlay" / f"{first}.png"
        print("wrote", small_png(overlay, args.picture))
    return 0


def small_png(source: str | Path, out: str | Path, *, width: int = 960) -> Path:
    """``source`` scaled down to at most ``width`` pixels wide and saved as a palette PNG at ``out`` (for the README)."""
    from PIL import Image

    from mfmda_lib.plots import save_palette_png

    image = Image.open(source).convert("RGB")
    if image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    return save_palette_png(image, out)


if __name__ == "__main__":
    sys.exit(main())
