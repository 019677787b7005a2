"""Disc localisation in whole-fundus photographs: accuracy and time per image of each option, in one run.

    python benchmarks/disc_localisation.py --profile cpu     # 4 cameras x 26 photographs (both eyes)

Options measured on the profile's synthetic whole-fundus ``test`` photographs (``photo_per_domain``
per camera domain, even index right eye, odd left eye, ``photo_width`` wide):

- ``classical`` (what the kit uses, :func:`mfmda_lib.roi.locate_disc`): brightness + vessel convergence;
- ``brightness only`` and ``vessels only``: each cue alone (the ablation);
- ``litemedsam boxes``: LiteMedSAM encodes the photograph, a grid of disc-sized candidate boxes over
  the field of view prompts its decoder, and the box whose mask it scores highest (its own IoU
  prediction) wins; the disc centre is that mask's centroid. It runs on the first ``--sam-photos``
  photographs only (the encoder costs seconds per image on a CPU).

A disc is "found" when the predicted centre lies within a quarter of the true disc diameter of the
true centre. Also printed: how each option's confidence treats pictures without a disc (uniform,
black, a photograph of a person, noise), and how often the whole-photograph detector (four dark
corners) tells photographs from the ROI benchmark's crops. Writes ``results/disc_localisation_<profile>.{md,json}``.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np


def litemedsam_boxes(model, image: np.ndarray, *, grid: int = 12) -> tuple[tuple[float, float], float]:
    """The disc by LiteMedSAM: candidate boxes scored by the decoder's own IoU prediction.

    Returns ``(centre, predicted IoU of the best box)``; the centre in the image's pixels.
    """
    import torch

    from mfmda_lib.roi import field_of_view
    from mfmda_lib.roi.localise import DISC_PER_FOV, _working_image

    rgb, scale = _working_image(image)
    fov = field_of_view(rgb)
    cols = np.flatnonzero(fov.any(axis=0))
    d = DISC_PER_FOV * (cols[-1] - cols[0] + 1) / scale if cols.size else max(image.shape[:2]) / 10
    h, w = image.shape[:2]
    ys, xs = np.mgrid[0:grid, 0:grid]
    centres = np.stack([(xs.ravel() + 0.5) * w / grid, (ys.ravel() + 0.5) * h / grid], axis=1)
    inside = fov[np.clip((centres[:, 1] * scale).astype(int), 0, fov.shape[0] - 1),
                 np.clip((centres[:, 0] * scale).astype(int), 0, fov.shape[1] - 1)]
    centres = centres[inside] if inside.any() else centres
    boxes = np.concatenate([centres - 0.6 * d, centres + 0.6 * d], axis=1)  # (B, 4) xyxy, ~1.2 disc diameters
    with torch.inference_mode():
        x = model.preprocess([image])  # (1, 3, S, S)
        emb = model.encode(x)  # (1, C, h, w)
        b_in = model.boxes_to_input(boxes, [(h, w)] * len(boxes))  # (B, 4)
        sparse, dense = model.prompt_encoder(points=None, boxes=b_in, masks=None)
        masks, iou = model.mask_decoder(image_embeddings=emb, image_pe=model.prompt_encoder.get_dense_pe(),
                                        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                        multimask_output=False)  # (B, 1, h', w'), (B, 1)
        best = int(torch.argmax(iou[:, 0]))
        logits = torch.nn.functional.interpolate(masks[best:best + 1], size=(model.input_size, model.input_size),
                                                 mode="bilinear", align_corners=False)[0]
        prob = model.postprocess_logits(logits, (h, w)).sigmoid().numpy()
    yy, xx = np.nonzero(prob > 0.5)
    centre = (float(xx.mean()) + 0.5, float(yy.mean()) + 0.5) if xx.size else tuple(map(float, centres[best]))
    return centre, float(iou[best, 0])


def _negatives() -> dict[str, np.ndarray]:
    from matplotlib import cbook
    from PIL import Image

    rng = np.random.default_rng(0)
    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        person = np.asarray(Image.open(handle).convert("RGB"))
    return {"uniform grey": np.full((768, 1024, 3), 128, np.uint8), "black": np.zeros((768, 1024, 3), np.uint8),
            "a photograph of a person": person, "noise": rng.integers(0, 256, (768, 1024, 3), dtype=np.uint8)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=("ci", "cpu", "gpu"), default=None, help="sizes (default: MFMDA_PROFILE)")
    parser.add_argument("--sam-photos", type=int, default=16, help="photographs for the LiteMedSAM option (0: skip it)")
    parser.add_argument("--no-save", action="store_true", help="print only, write nothing under results/")
    args = parser.parse_args(argv)

    import pandas as pd
    import torch

    from mfmda_lib import get_profile
    from mfmda_lib.data import DOMAINS, generate_sample
    from mfmda_lib.data.photo import generate_photo
    from mfmda_lib.experiments import save_result
    from mfmda_lib.roi import CONFIDENCE_THRESHOLD, count_dark_corners, locate_disc
    from mfmda_lib.roi.localise import RIM_PER_REGION

    warnings.simplefilter("ignore")
    profile = get_profile(args.profile)
    start = time.perf_counter()
    photos = [generate_photo(d, i, split="test", width=profile.photo_width, severity=profile.severity, seed=profile.seed)
              for d in DOMAINS for i in range(profile.photo_per_domain)]
    print(f"profile {profile.name}: {len(photos)} photographs ({profile.photo_per_domain} per camera, both eyes, "
          f"{photos[0].image.shape[1]} x {photos[0].image.shape[0]} px), generated in {time.perf_counter() - start:.0f} s; "
          f"torch threads {torch.get_num_threads()}")

    rows = []
    options = {"classical": ("brightness", "vessels"), "brightness only": ("brightness",), "vessels only": ("vessels",)}
    for option, cues in options.items():
        for p in photos:
            cpu = time.process_time()
            loc = locate_disc(p.image, cues=cues, warn=False)
            rows.append({"option": option, "domain": p.domain, "eye": p.eye, "seconds": loc.seconds,
                         "cpu_seconds": time.process_time() - cpu,
                         "error": float(np.hypot(loc.center[0] - p.disc_center[0], loc.center[1] - p.disc_center[1])
                                        / p.disc_diameter),
                         "diameter_ratio": loc.diameter / p.disc_diameter, "confidence": loc.confidence,
                         "size_from": loc.evidence.get("size_from"),
                         "rim_per_region": loc.evidence.get("rim_diameter", np.nan) / loc.evidence.get("region_diameter", np.nan)})
    if args.sam_photos:
        from mfmda_lib.models import load_model
        from mfmda_lib.environment import get_device

        model = load_model("litemedsam", device=get_device())
        chosen = [photos[i] for i in np.linspace(0, len(photos) - 1, min(args.sam_photos, len(photos))).astype(int)]
        for p in chosen:
            wall, cpu = time.perf_counter(), time.process_time()
            centre, iou = litemedsam_boxes(model, p.image)
            rows.append({"option": "litemedsam boxes", "domain": p.domain, "eye": p.eye,
                         "seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu,
                         "error": float(np.hypot(centre[0] - p.disc_center[0], centre[1] - p.disc_center[1]) / p.disc_diameter),
                         "diameter_ratio": float("nan"), "confidence": iou})
    df = pd.DataFrame(rows)
    df["within_quarter"] = df["error"] <= 0.25
    table = df.groupby("option", sort=False).agg(n=("error", "size"), accuracy=("within_quarter", "mean"),
                                                 median_error=("error", "median"), max_error=("error", "max"),
                                                 diameter_ratio=("diameter_ratio", "median"),
                                                 seconds_per_image=("seconds", "mean"),
                                                 cpu_seconds_per_image=("cpu_seconds", "mean"))
    print("\nCentre within a quarter disc diameter (error in disc diameters):")
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    kit = df[df.option == "classical"]
    print("\nclassical, per camera and eye (accuracy):")
    print(kit.groupby(["domain", "eye"])["within_quarter"].mean().unstack().to_string(float_format=lambda v: f"{v:.2f}"))
    rim = kit.size_from == "rim"
    print(f"classical: rim circle believed on {rim.sum()} of {len(kit)} photographs (accuracy {kit.within_quarter[rim].mean():.3f}), "
          f"bright region used on {(~rim).sum()} (accuracy {kit.within_quarter[~rim].mean():.3f}); median rim/region "
          f"diameter where they agree {kit.rim_per_region[rim].median():.3f} (the localiser uses RIM_PER_REGION = "
          f"{RIM_PER_REGION}, measured on the train photographs)")
    print(f"classical: lowest confidence on a photograph {kit.confidence.min():.3f} (threshold {CONFIDENCE_THRESHOLD}); "
          f"photographs below the threshold: {(kit.confidence < CONFIDENCE_THRESHOLD).sum()}")
    if args.sam_photos:
        sam = df[df.option == "litemedsam boxes"]
        print(f"time per image (wall / CPU): litemedsam boxes {sam.seconds.mean():.2f} / {sam.cpu_seconds.mean():.2f} s "
              f"vs classical {kit.seconds.mean():.3f} / {kit.cpu_seconds.mean():.3f} s "
              f"({sam.cpu_seconds.mean() / kit.cpu_seconds.mean():.0f}x the CPU time), same run")

    print("\nPictures without a disc (classical):")
    negatives = []
    for name, image in _negatives().items():
        loc = locate_disc(image, warn=False)
        negatives.append({"picture": name, "confidence": loc.confidence, "found": loc.found})
        print(f"  {name:26s} confidence {loc.confidence:.3f} -> {'FOUND (wrong)' if loc.found else 'not found: warning, no mask'}")
    whole = [count_dark_corners(p.image) >= 3 for p in photos]
    rois = [count_dark_corners(generate_sample(d, i, split="test", size=profile.image_size).image) < 3
            for d in DOMAINS for i in range(profile.photo_per_domain)]
    print(f"\nwhole-photograph detector (>= 3 dark corners): {np.mean(whole):.3f} of photographs and "
          f"{np.mean(rois):.3f} of ROI benchmark crops classified correctly")
    print(f"benchmark done in {time.perf_counter() - start:.0f} s")
    if not args.no_save:
        written = save_result("disc_localisation", profile, table,
                              rows=df.drop(columns="within_quarter").to_dict(orient="records"),
                              meta={"torch_threads": torch.get_num_threads(), "photos": len(photos),
                                    "negatives": negatives, "whole_detector_photos": float(np.mean(whole)),
                                    "whole_detector_rois": float(np.mean(rois))})
        print("wrote", written["md"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
