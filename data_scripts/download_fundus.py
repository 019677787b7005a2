"""Download the public fundus datasets, or print how to get the ones behind a registration.

Every dataset lives in ``<dest>/<name>``, which is the root its loader reads::

    python data_scripts/download_fundus.py --list
    python data_scripts/download_fundus.py --dataset riga_plus --dest data        # download, unpack, check
    python data_scripts/download_fundus.py --dataset refuge --dest data           # prints registration steps
    python data_scripts/download_fundus.py --dataset refuge --dest data --extract ~/Downloads/*.zip  # after registering
    python data_scripts/download_fundus.py --dataset refuge --dest data --check   # count what the loader finds

Exit status: 0 done, 1 data or network error (one line on stderr), 2 bad arguments.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mfmda_lib.data.extract import safe_extract
from mfmda_lib.data.real import load_dataset
from mfmda_lib.data.sources import SOURCES, fetch_source, registration_steps
from mfmda_lib.io import DataError


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(description="Download fundus datasets or print how to get them.")
    parser.add_argument("--list", action="store_true", help="list the datasets and how each is obtained")
    parser.add_argument("--dataset", help=f"one of {sorted(SOURCES)}")
    parser.add_argument("--dest", type=Path, help="data root; the dataset goes to DEST/<dataset>")
    parser.add_argument("--extract", nargs="+", type=Path, metavar="ARCHIVE",
                        help="unpack these local archives into DEST/<dataset> (for registration-only sets)")
    parser.add_argument("--check", action="store_true", help="load every split and print its size")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def list_sources() -> str:
    """One line per dataset: name, how to get it, title."""
    rows = []
    for name, source in sorted(SOURCES.items()):
        how = "download" if source.public else "registration"
        rows.append(f"{name:<12} {how:<13} {source.title}")
    return "\n".join(rows)


def check(name: str, root: Path) -> str:
    """Load each split of ``name`` from ``root``; one line per split with its size and domains."""
    source = SOURCES[name]
    lines = []
    for split in source.splits:
        dataset = load_dataset(source.loader, root, split)
        lines.append(f"{name}/{split}: {len(dataset)} samples, domains {dataset.domains}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Carry out the parsed command; errors propagate to :func:`main`."""
    if args.list:
        print(list_sources())
        return 0
    source = SOURCES.get(args.dataset)
    if source is None:
        raise ValueError(f"unknown dataset {args.dataset!r}; known: {sorted(SOURCES)}")
    root = args.dest / args.dataset
    fetched = False
    if args.extract:
        for archive in args.extract:
            safe_extract(archive, root)
            print(f"extracted {archive} -> {root}")
    elif args.check:
        pass
    elif source.public:
        root, fetched = fetch_source(args.dataset, args.dest, progress=not args.quiet), True
        print(f"{args.dataset} is in {root}")
    else:
        print(registration_steps(args.dataset, str(args.dest)))
        return 0
    if args.check or fetched:
        print(check(args.dataset, root))
    return 0


def _one_line(exc: BaseException) -> str:
    return str(exc).replace("\n", " ")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status instead of raising."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.list and (args.dataset is None or args.dest is None):
        parser.error("give --list, or --dataset NAME --dest DIR")
    try:
        return run(args)
    except DataError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc.__class__.__name__}: {_one_line(exc)}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
