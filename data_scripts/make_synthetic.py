#!/usr/bin/env python
"""Generate the deterministic multi-domain synthetic fundus benchmark.

    python data_scripts/make_synthetic.py --out data/ --severity 1.0 --train 40 --test 20
    python data_scripts/make_synthetic.py --profile ci          # sizes from a profile

The layout is the kit's (multi-site) folder layout: <out>/<benchmark>/<domain>/<split>/ROIs/{image,mask}/.
"""
from __future__ import annotations

import argparse
import sys

from mfmda_lib.data import DOMAINS, generate_benchmark
from mfmda_lib.environment import paths
from mfmda_lib.profiles import PROFILE_NAMES, get_profile


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=PROFILE_NAMES, default=None, help="take sizes from a profile")
    parser.add_argument("--out", default=None, help="root folder (default: the kit's data folder)")
    parser.add_argument("--domains", nargs="*", default=None, help=f"subset of {list(DOMAINS)}")
    parser.add_argument("--severity", type=float, default=None, help="domain-shift severity, 0 = no shift")
    parser.add_argument("--train", type=int, default=None, help="training images per domain")
    parser.add_argument("--test", type=int, default=None, help="test images per domain")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    profile = get_profile(args.profile)
    pick = lambda value, default: default if value is None else value  # noqa: E731
    try:
        out = generate_benchmark(
            pick(args.out, paths().data), domains=args.domains,
            train_per_domain=pick(args.train, profile.train_per_domain),
            test_per_domain=pick(args.test, profile.test_per_domain), size=pick(args.size, profile.image_size),
            severity=pick(args.severity, profile.severity), seed=pick(args.seed, profile.seed),
            overwrite=args.overwrite)
    except ValueError as exc:
        print(f"make_synthetic: error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
