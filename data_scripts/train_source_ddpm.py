#!/usr/bin/env python
"""Train the source DDPM of MFM-DA stage 1 (and its content-fusion block) and save a checksummed checkpoint.

    OMP_NUM_THREADS=2 python data_scripts/train_source_ddpm.py --profile cpu --out checkpoints/source_ddpm_64px.pt
    accelerate launch --num_processes 2 data_scripts/train_source_ddpm.py --profile gpu   # several GPUs

Sizes (image side, channels, steps, batch, number of source images) come from the profile. The
checkpoint is float16 with a ``.json`` sidecar holding its SHA-256, its config and this command.
A killed run resumes from ``<out>.ddpm-train.pt`` / ``<out>.fusion-train.pt`` when started again.
Without ``--out`` the checkpoint goes where the kit looks for it (the cache; for ci/cpu the shipped file is used instead).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from mfmda_lib.diffusion.source import source_ddpm_path, train_source_ddpm
from mfmda_lib.diffusion.training import make_accelerator
from mfmda_lib.environment import get_device
from mfmda_lib.profiles import PROFILE_NAMES, get_profile


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=PROFILE_NAMES, default=None, help="take sizes from a profile")
    parser.add_argument("--out", default=None, help="checkpoint file (.pt); default: where the kit looks for it")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    profile = get_profile(args.profile)
    out = Path(args.out) if args.out else source_ddpm_path(profile)
    if out.suffix != ".pt":
        print(f"train_source_ddpm: error: --out must end in .pt, got {out}", file=sys.stderr)
        return 2
    command = "python data_scripts/train_source_ddpm.py " + " ".join(sys.argv[1:] if argv is None else argv)
    accelerator = make_accelerator(get_device())
    accelerator.print(f"source DDPM | profile {profile.name} | {profile.ddpm_image_size}px | "
                      f"{profile.ddpm_train_steps} + {profile.ddpm_fusion_steps} steps of {profile.ddpm_batch_size} | "
                      f"{profile.ddpm_train_images} images | device {accelerator.device} | torch threads "
                      f"{torch.get_num_threads()} | -> {out}")
    digest = train_source_ddpm(profile, out, accelerator=accelerator, progress=not args.quiet, command=command)
    accelerator.print(f"{out}\nsha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
