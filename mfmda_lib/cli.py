"""The ``mfmda`` command: the kit's main job from the shell.

    mfmda                      # = mfmda zero-shot: benchmark + zero-shot evaluation on every domain
    mfmda zero-shot --profile cpu --model litemedsam
    mfmda generate --profile cpu --severity 0.5
    mfmda models               # which foundation models are available here

Sizes come from the profile (``--profile``, else ``$MFMDA_PROFILE``, else gpu/cpu by hardware).
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
    from .profiles import get_device, get_profile

    profile = get_profile(args.profile)
    start = time.perf_counter()
    print(f"mfmda zero-shot | profile {profile.name} | model {args.model} | device {get_device()} | "
          f"{profile.eval_per_domain} test images per domain")
    print(f"benchmark: {prepare_benchmark(profile)}")
    model, cache = model_and_cache(args.model, checkpoint=args.checkpoint)
    result = run_zero_shot(profile, model, cache)
    table = result.table()
    from .evaluation.metrics import format_table

    print(format_table(table))
    figure = None if args.no_figure else zero_shot_figure(result)
    written = save_result(f"zero_shot_{model.name}", profile, table, rows=result.rows, meta=result.meta,
                          figure=figure)
    print("wrote " + ", ".join(str(p) for p in written.values()))
    print(f"done in {time.perf_counter() - start:.0f} s (encoder cache: {cache.hits} hits, {cache.misses} misses)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mfmda`` (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="mfmda", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    zs = sub.add_parser("zero-shot", help="zero-shot box-prompted disc/cup segmentation on every domain")
    zs.add_argument("--model", default="litemedsam", help="foundation model name (see `mfmda models`)")
    zs.add_argument("--checkpoint", default=None, help="weights file for models that need one (SAM, MedSAM)")
    zs.add_argument("--no-figure", action="store_true", help="skip the overlay figure")
    gen = sub.add_parser("generate", help="generate the synthetic multi-domain benchmark")
    gen.add_argument("--severity", type=float, default=None, help="domain-shift severity (default: the profile's)")
    sub.add_parser("models", help="list foundation models and whether their weights are here")
    for p in (parser, zs, gen):
        p.add_argument("--profile", choices=["ci", "cpu", "gpu"], default=None,
                       help="size profile (default: $MFMDA_PROFILE, else gpu if CUDA is available, else cpu)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``mfmda``; returns the exit status (2 with a one-line message on bad input)."""
    args = build_parser().parse_args(argv)
    if args.command is None:
        args = build_parser().parse_args(["zero-shot"] + (["--profile", args.profile] if args.profile else []))
    commands = {"zero-shot": _cmd_zero_shot, "generate": _cmd_generate, "models": _cmd_models}
    try:
        commands[args.command](args)
    except (DataError, ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"mfmda: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
