"""The ``mfmda`` command: the kit's main job from the shell.

    mfmda                      # = mfmda run: the MFM-DA pipeline on the default benchmark
    mfmda run --config configs/mfmda.toml --profile cpu
    mfmda run --target-folder ~/my_hospital_images      # adapt to your own unlabeled images
    mfmda run --target-folder ~/my_rois --crop off      # ... that are already disc-centred ROIs
    mfmda realism ~/my_hospital_images                  # how far the synthetic hospitals sit from your photographs
    mfmda zero-shot --profile cpu --model litemedsam
    mfmda generate --profile cpu --severity 0.5
    mfmda models               # which foundation models are available here

Sizes come from the profile (``--profile``, else ``$MFMDA_PROFILE``, else colab/gpu/cpu by hardware).
"""
from __future__ import annotations

import argparse
import sys
import time

from .io import DataError

__all__ = ["main"]


def _cmd_generate(args) -> None:
    from .experiments import prepare_benchmark
    from .profiles import get_profile

    profile = get_profile(args.profile)
    out = prepare_benchmark(profile, args.severity)
    print(f"synthetic benchmark ({profile.name} profile) ready at {out}")


def _cmd_models(args) -> None:
    from .models import available_models

    for name, text in available_models().items():
        print(f"{name:14s} {text}")


def _cmd_zero_shot(args) -> None:
    from .experiments import model_and_cache, prepare_benchmark, run_zero_shot, save_result
    from .plots import zero_shot_figure
    from .profiles import get_profile
    from .environment import get_device

    profile = get_profile(args.profile)
    start = time.perf_counter()
    print(f"mfmda zero-shot | profile {profile.name} | model {args.model} | device {get_device()} | "
          f"{profile.eval_per_domain} test images per domain")
    print(f"benchmark: {prepare_benchmark(profile)}")
    model, cache = model_and_cache(args.model, checkpoint=args.checkpoint)
    result = run_zero_shot(profile, model, cache)
    table = result.table()
    from .evaluation.tables import format_table

    print(format_table(table))
    figure = None if args.no_figure else zero_shot_figure(result)
    written = save_result(f"zero_shot_{model.name}", profile, table, rows=result.rows, meta=result.meta,
                          figure=figure)
    print("wrote " + ", ".join(str(p) for p in written.values()))
    print(f"done in {time.perf_counter() - start:.0f} s (encoder cache: {cache.hits} hits, {cache.misses} misses)")


def _cmd_run(args) -> None:
    from .evaluation.tables import format_table
    from .pipeline import run_pipeline
    from .pipeline_io import load_config

    config = load_config(args.config, profile=args.profile, target_folder=args.target_folder,
                         targets=args.targets, run_dir=args.run_dir, crop=args.crop)
    start = time.perf_counter()
    result = run_pipeline(config, progress=not args.no_progress, fresh=args.fresh)
    if result.summary is not None:
        print(format_table(result.summary))
    print("stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in result.seconds.items()))
    print("wrote " + ", ".join(str(p) for p in result.files.values()))
    print(f"done in {time.perf_counter() - start:.0f} s")


def _cmd_realism(args) -> None:
    import warnings

    from .data import DOMAINS
    from .evaluation.tables import format_table
    from .evaluation.realism import measure_realism, synthetic_image_sets
    from .experiments import model_and_cache, save_result
    from .pipeline_io import read_target_folder
    from .profiles import get_profile
    from .roi import DiscNotFoundWarning

    profile = get_profile(args.profile)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DiscNotFoundWarning)
        target = read_target_folder(args.folder, 2, profile.image_size, crop=args.crop)
    for w in caught:
        print(f"warning: {w.message}")
    name = f"yours: {target.folder.name}"
    print(f"{len(target.crops)} ROI crops from {target.folder} ("
          + ("whole-fundus photographs, cropped around the disc" if target.whole else "read as ROIs") + ")")
    sets = {**synthetic_image_sets(profile), name: target.crops}
    model, cache = model_and_cache("litemedsam")
    result = measure_realism(model, sets, list(DOMAINS), cache=cache, batch_size=profile.encoder_batch_size)
    table = result.table()
    print(format_table(table))
    stem = "".join(c if c.isalnum() or c in "_-" else "_" for c in target.folder.name)
    written = save_result(f"realism_{stem}", profile, table, meta={"folder": str(target.folder)})
    print("wrote " + ", ".join(str(p) for p in written.values()))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mfmda`` (exposed for tests and docs)."""
    from .profiles import PROFILE_NAMES

    parser = argparse.ArgumentParser(prog="mfmda", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    zs = sub.add_parser("zero-shot", help="zero-shot box-prompted disc/cup segmentation on every domain")
    zs.add_argument("--model", default="litemedsam", help="foundation model name (see `mfmda models`)")
    zs.add_argument("--checkpoint", default=None, help="weights file for models that need one (SAM, MedSAM)")
    zs.add_argument("--no-figure", action="store_true", help="skip the overlay figure")
    run = sub.add_parser("run", help="the MFM-DA pipeline: source DDPM, stage 1 per target, stage 2, report")
    run.add_argument("--config", default=None, help="TOML file of pipeline settings (see configs/mfmda.toml)")
    run.add_argument("--target-folder", default=None, help="a folder of your own unlabeled target images")
    run.add_argument("--crop", choices=["auto", "whole", "off"], default=None,
                     help="target-folder images: auto (default) detects whole-fundus photographs and crops each "
                          "around its optic disc; off: the images are already disc-centred ROIs")
    run.add_argument("--targets", nargs="+", default=None, help="benchmark target domains (default: all three)")
    run.add_argument("--run-dir", default=None, help="folder of this run (default: results/mfmda_run_<profile>)")
    run.add_argument("--fresh", action="store_true", help="forget finished stages (checkpoints are still reused)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    gen = sub.add_parser("generate", help="generate the synthetic multi-domain benchmark")
    gen.add_argument("--severity", type=float, default=None, help="domain-shift severity (default: the profile's)")
    sub.add_parser("models", help="list foundation models and whether their weights are here")
    real = sub.add_parser("realism", help="how far the synthetic hospitals sit from a folder of your own photographs "
                                          "(LiteMedSAM features, MMD)")
    real.add_argument("folder", help="a folder of fundus photographs (whole-fundus or disc-centred ROIs)")
    real.add_argument("--crop", choices=["auto", "whole", "off"], default="auto",
                      help="auto (default): whole-fundus photographs are detected and cropped around the disc")
    for p in (parser, zs, gen, run, real):
        p.add_argument("--profile", choices=PROFILE_NAMES, default=None,
                       help="size profile (default: $MFMDA_PROFILE, else colab on a small GPU, gpu on a large "
                            "one, else cpu)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``mfmda``; returns the exit status (2 with a one-line message on bad input)."""
    args = build_parser().parse_args(argv)
    if args.command is None:
        args = build_parser().parse_args(["run"] + (["--profile", args.profile] if args.profile else []))
    commands = {"run": _cmd_run, "zero-shot": _cmd_zero_shot, "generate": _cmd_generate, "models": _cmd_models,
                "realism": _cmd_realism}
    try:
        commands[args.command](args)
    except (DataError, ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"mfmda: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
