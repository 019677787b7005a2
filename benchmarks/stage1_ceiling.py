"""How much of the camera gap can *any* translation through the DDPM close? The ceiling of stage 1, per target.

    python benchmarks/stage1_ceiling.py --profile cpu

Stage 1 translates at the DDPM's resolution (64 px in every profile) and brings the change back to the
full-resolution source with the kit's glue (``x + up(low_pass(translated - down(x)))``, low-pass factor 4).
The synthetic benchmark can re-acquire each source eye with the target's camera: a perfect translation. Squeezed
through a DDPM size and glued back the same way, it bounds what stage 1 can reach there, with no stage-1 model
involved (:func:`~mfmda_lib.diffusion.comparison.ceiling_sweep`). For each target this scores it at the DDPM's
size, twice that, and the images' own size, with the glue's low-pass factor 1, 2 and 4, upsampled alone, and with
a candidate glue that scales the source's detail to the K target images' (`detail-matched`).

If even the perfect translation at 64 px leaves more than issue 12's bar (``gap_left`` <= 0.7), no change to
stage 1's losses or budget can meet the bar on that target: only a DDPM at a higher resolution can.

Second part (``--part glue``): stage 1's *own* translations (MFM-DA's adapted DDPM, re-translated from its cached
checkpoint: the same images as the pipeline's) brought back with each glue, to tell the glue's share of the shortfall
from the translation's.

Writes ``results/mfmda_stage1_ceiling_<profile>.{md,json}`` (notebook 08 shows it with the per-target check) and
``results/mfmda_stage1_glue_<profile>.{md,json}``.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd

from mfmda_lib.data import TARGET_DOMAINS
from mfmda_lib.diffusion.comparison import (DISC_DICE_MIN, GAP_LEFT_MAX, STAGE1_CEILING_RESULT, ceiling_clause,
                                            ceiling_sweep, glues, score_translations)
from mfmda_lib.diffusion.ddpm import to_signed_tensor
from mfmda_lib.diffusion.source import load_source_ddpm
from mfmda_lib.diffusion.checkpoint import read_sidecar
from mfmda_lib.diffusion.stage1 import (feature_encoder, run_stage1, sources_to_translate, stage1_config, stage1_dir,
                                        target_samples, translate_config, translated_source)
from mfmda_lib.experiments import model_and_cache, save_result
from mfmda_lib.profiles import PROFILES, get_profile


GLUE_RESULT = "mfmda_stage1_glue"


def stage1_glues(profile, target: str, segmenter, cache) -> pd.DataFrame:
    """Stage 1's translations of the first ``stage1_eval_images`` sources, with each glue (rows as ``ceiling_sweep``'s)."""
    translated_source(profile, target, progress=False)  # adapts (and caches) the DDPM if it has not run
    model, ddpm, ddpm_path = load_source_ddpm(profile, progress=False)
    sources = sources_to_translate(profile)
    src = [s.image for s in sources[:profile.stage1_eval_images]]
    k_images = [s.image for s in target_samples(profile, target)]
    with tempfile.TemporaryDirectory() as tmp:  # resume the finished adaptation from a copy: no step is repeated
        shutil.copy(stage1_dir(profile, target, "mfmda", read_sidecar(ddpm_path)["sha256"]) / "adapt.pt", Path(tmp) / "adapt.pt")
        lo = run_stage1(src, k_images, source_model=model, ddpm=ddpm, variant="mfmda",
                        encoder=feature_encoder(profile, to_signed_tensor([s.image for s in sources], ddpm.image_size)),
                        adapt_config=stage1_config(profile), translate_cfg=translate_config(profile),
                        checkpoint=Path(tmp) / "adapt.pt", progress=False).translated_lo  # (N, 3, S, S)
    table = score_translations(profile, target, glues(src, lo, k_images), segmenter=segmenter, cache=cache)
    return table.rename_axis("glue")


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default=None)
    parser.add_argument("--targets", nargs="+", default=list(TARGET_DOMAINS), choices=list(TARGET_DOMAINS))
    parser.add_argument("--part", choices=("ceiling", "glue", "both"), default="both")
    args = parser.parse_args(argv)
    profile = get_profile(args.profile)
    segmenter, cache = model_and_cache("litemedsam")
    if args.part in ("glue", "both"):
        start = time.perf_counter()
        glue = pd.concat({t: stage1_glues(profile, t, segmenter, cache) for t in args.targets}, names=["target"])
        save_result(GLUE_RESULT, profile, glue.reset_index().set_index("target"),
                    meta={"targets": args.targets, "n_images": profile.stage1_eval_images,
                          "seconds": round(time.perf_counter() - start, 1)})
        print(glue.to_string(float_format="%.3f"))
    if args.part == "glue":
        return glue
    sizes = sorted({profile.ddpm_image_size, min(2 * profile.ddpm_image_size, profile.image_size), profile.image_size})
    start = time.perf_counter()
    tables = {t: ceiling_sweep(profile, t, sizes, segmenter=segmenter, cache=cache) for t in args.targets}
    table = pd.concat(tables, names=["target"])
    table["meets_issue_12"] = (table["gap_left"] <= GAP_LEFT_MAX) & (table["disc_dice"] >= DISC_DICE_MIN)
    save_result(STAGE1_CEILING_RESULT, profile, table.reset_index().set_index("target"),
                meta={"targets": args.targets, "sizes": sizes, "ddpm_image_size": profile.ddpm_image_size,
                      "n_images": profile.stage1_eval_images, "gap_left_max": GAP_LEFT_MAX,
                      "disc_dice_min": DISC_DICE_MIN, "seconds": round(time.perf_counter() - start, 1)})
    print(table.to_string(float_format="%.3f"))
    for t, rows in tables.items():
        print(f"{t}: {ceiling_clause(rows, profile.ddpm_image_size)}.")
    return table


if __name__ == "__main__":
    main()
