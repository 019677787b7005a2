"""Speed-up of training on cached frozen parts vs recomputing them, measured in one run.

    python benchmarks/frozen_cache.py --profile ci      # or cpu / gpu / colab

(a) a head on a frozen encoder: cached encoder outputs vs running the encoder at every step;
(b) the encoder's last stage(s) fine-tuned (from the profile's ``peft_first_unit``): cached prefix
outputs vs running the frozen prefix at every step. Prints both epoch times and their ratio, and
writes ``results/frozen_cache_<profile>.{md,json}``. The logic is ``mfmda_lib.finetune.speed``.
"""
from __future__ import annotations

import argparse
import sys

import torch

from mfmda_lib.profiles import PROFILE_NAMES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=PROFILE_NAMES, default=None, help="sizes (default: MFMDA_PROFILE)")
    parser.add_argument("--model", default="litemedsam", help="'litemedsam' or 'toy' (a tiny random model, for tests)")
    parser.add_argument("--images", type=int, default=None, help="training images (default: profile.ft_train_images)")
    parser.add_argument("--start", default=None, help="first fine-tuned unit of (b) (default: profile.peft_first_unit)")
    parser.add_argument("--no-save", action="store_true", help="print only, write nothing under results/")
    args = parser.parse_args(argv)

    from mfmda_lib import get_profile, paths, seed_everything
    from mfmda_lib.data import SOURCE_DOMAIN
    from mfmda_lib.experiments import benchmark_samples, model_and_cache, save_result
    from mfmda_lib.finetune.speed import frozen_cache_speedup
    from mfmda_lib.models import EmbeddingCache, build_toy_segmenter

    profile = get_profile(args.profile)
    seed_everything(profile.seed)
    if args.model == "toy":
        segmenter = build_toy_segmenter().requires_grad_(False).eval()
        cache = EmbeddingCache.for_model(segmenter)
        start = args.start or "3"
    else:
        segmenter, cache = model_and_cache(args.model)
        start = args.start or profile.peft_first_unit
    n = args.images or profile.ft_train_images
    samples = benchmark_samples(profile, "train", n, domains=[SOURCE_DOMAIN])
    print(f"profile {profile.name}, model {segmenter.name}, {len(samples)} images, batch {profile.ft_batch_size}, "
          f"torch threads {torch.get_num_threads()}, device {segmenter.device}")
    table = frozen_cache_speedup(segmenter, samples, start=start, batch_size=profile.ft_batch_size,
                                 cache_root=paths().cache / "prefix", embedding_cache=cache)
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    for setting, row in table.iterrows():
        print(f"{setting}: an epoch on the cache is {row.speedup:.1f}x faster than recomputing the frozen part "
              f"({row.epoch_recomputed_s:.2f} s -> {row.epoch_cached_s:.3f} s)")
    if not args.no_save:
        written = save_result(f"frozen_cache_{segmenter.name}", profile, table.drop(columns="first_trained_unit"),
                              meta={"torch_threads": torch.get_num_threads(), "prefix_setting_trains_from": start})
        print("wrote", written["md"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
