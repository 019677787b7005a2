"""Which frozen features should stage 1's losses use? A measured ablation (notebook 08 shows its table).

MFM-DA computes L_DC on CLIP ViT-B/32 embeddings and the style loss on VGG16 Gram matrices at four
layers; neither is available offline, so the kit uses LiteMedSAM's convolutional stem at the DDPM's
resolution. This script adapts the source DDPM to one target with several choices of ``f`` (how many
encoder units, how much low-pass blur before them), translates the first ``stage1_eval_images``
source images and scores each choice with the held-out check of notebook 08: ``gap_left`` in the full
LiteMedSAM embedding (never a training loss) and structure preservation (box-prompted LiteMedSAM
Dice against the source labels). It also reports the DIAA's gate on the target images.

    python benchmarks/stage1_features.py --profile cpu --target riga_binrushed

Writes ``results/mfmda_stage1_features_<profile>.{md,json}``. Each choice costs one stage-1
adaptation (``--steps``, default the profile's).
"""
from __future__ import annotations

import argparse
import copy
import time

import pandas as pd
import torch

from mfmda_lib.diffusion.adaptation import Stage1Config, adapt
from mfmda_lib.diffusion.comparison import gap_meter
from mfmda_lib.diffusion.ddpm import alphas_cumprod, build_scheduler, to_signed_tensor
from mfmda_lib.diffusion.features import FrozenFeatureEncoder
from mfmda_lib.diffusion.metrics import structure_preservation
from mfmda_lib.diffusion.source import load_source_ddpm
from mfmda_lib.diffusion.stage1 import sources_to_translate, stage1_config, target_samples, translate_config
from mfmda_lib.diffusion.translate import to_full_resolution, translate
from mfmda_lib.experiments import model_and_cache, save_result
from mfmda_lib.profiles import PROFILES, get_profile

#: (encoder units, low-pass factor): 1 = the patch embedding (a per-pixel colour code), 2 = + the first conv stage
CHOICES = ((1, 4), (2, 4), (2, 1))


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default=None)
    parser.add_argument("--target", default="riga_binrushed")
    parser.add_argument("--steps", type=int, default=None, help="stage-1 iterations (default: the profile's)")
    args = parser.parse_args(argv)
    profile = get_profile(args.profile)
    steps = args.steps or profile.stage1_steps
    segmenter, cache = model_and_cache("litemedsam")
    sources, targets = sources_to_translate(profile), target_samples(profile, args.target)
    model, ddpm, _ = load_source_ddpm(profile, progress=False)
    x_source = to_signed_tensor([s.image for s in sources], ddpm.image_size)
    x_target = to_signed_tensor([s.image for s in targets], ddpm.image_size)
    alpha_bar = alphas_cumprod(ddpm)
    n = profile.stage1_eval_images
    gap = gap_meter(profile, args.target, segmenter, cache)
    rows = []
    for units, blur in CHOICES:
        f = FrozenFeatureEncoder(segmenter.image_encoder, units=units, input_size=ddpm.image_size,
                                 low_pass=blur).calibrate(x_source)
        config = Stage1Config(**{**vars(stage1_config(profile)), "steps": steps})
        start = time.perf_counter()
        state = adapt(copy.deepcopy(model), x_source, x_target, f, alpha_bar, config, progress=False)
        seconds = time.perf_counter() - start
        lo = translate(state.model, build_scheduler(ddpm, "ddim"), x_source[:n], alpha_bar, translate_config(profile),
                       progress=False)
        images = to_full_resolution([s.image for s in sources[:n]], lo, translate_config(profile).change_low_pass)
        with torch.no_grad():
            gate = float(state.diaa.gate(f.encode(x_target)).mean())
        rows.append({"f": f"{units} unit(s), low-pass x{blur}", "units": units, "low_pass": blur, "steps": steps,
                     "gap_left": gap(images),
                     **structure_preservation(segmenter, sources[:n], images, cache),
                     "gate_target": gate, "adapt_seconds": round(seconds, 1)})
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows).set_index("f")
    save_result("mfmda_stage1_features", profile, table, meta={"target": args.target, "steps": steps})
    print(table.to_string(float_format="%.3f"))
    return table


if __name__ == "__main__":
    main()
