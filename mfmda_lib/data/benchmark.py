"""The synthetic benchmark on disk: generated once per configuration into a folder with a checksummed manifest
(atomic writes), verified on every load, and loaded as one :class:`FundusDataset` per domain."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from ..io import DataError, atomic_write, atomic_write_json, save_png, sha256_file
from .dataset import FundusDataset, load_folder_domain
from .domains import DOMAINS
from .sample import encode_label_map
from .synthetic import generate_sample

__all__ = ["benchmark_dir", "generate_benchmark", "load_benchmark"]


_MANIFEST = "benchmark.json"
_VERSION = 2  # bump when the renderer changes, so stale benchmarks are regenerated


def benchmark_dir(root: str | Path, *, size: int, severity: float, seed: int, train_per_domain: int,
                  test_per_domain: int) -> Path:
    """The folder for one benchmark configuration under ``root`` (profiles never share one)."""
    return Path(root) / (f"synthetic_fundus_v{_VERSION}_{size}px_sev{severity:g}_seed{seed}"
                         f"_{train_per_domain}x{test_per_domain}")


def _config(domains, train_per_domain, test_per_domain, size, severity, seed) -> dict:
    return {"version": _VERSION, "domains": list(domains), "train_per_domain": train_per_domain,
            "test_per_domain": test_per_domain, "size": size, "severity": float(severity), "seed": seed}


def _verify(out: Path, config: dict) -> bool:
    """True when ``out`` holds a complete benchmark of ``config`` whose files match their checksums."""
    manifest_path = out / _MANIFEST
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError:
        return False
    if manifest.get("config") != config:
        return False
    for rel, digest in manifest["sha256"].items():
        path = out / rel
        if not path.is_file() or sha256_file(path) != digest:
            return False
    return True


def generate_benchmark(root: str | Path, *, domains: Sequence[str] | None = None, train_per_domain: int = 40,
                       test_per_domain: int = 20, size: int = 256, severity: float = 1.0, seed: int = 0,
                       overwrite: bool = False, progress: bool = True) -> Path:
    """Write the synthetic benchmark in the kit's folder layout; reuse it when already complete.

    Layout: ``<out>/<domain>/<split>/ROIs/{image,mask}/<id>.png`` and ``<out>/<domain>/<split>/meta.csv``,
    with ``<out> = benchmark_dir(root, ...)``. A ``benchmark.json`` manifest (configuration and
    SHA-256 of every file) is written last: a run interrupted before it is simply regenerated.

    Returns:
        The benchmark folder ``<out>``.
    """
    domains = list(domains or DOMAINS)
    unknown = [d for d in domains if d not in DOMAINS]
    if unknown:
        raise ValueError(f"unknown synthetic domain(s) {unknown}; known: {sorted(DOMAINS)}")
    out = benchmark_dir(root, size=size, severity=severity, seed=seed, train_per_domain=train_per_domain,
                        test_per_domain=test_per_domain)
    config = _config(domains, train_per_domain, test_per_domain, size, severity, seed)
    if not overwrite and _verify(out, config):
        return out
    if out.exists():
        shutil.rmtree(out)
    checksums: dict[str, str] = {}
    jobs = [(d, s, i) for d in domains for s, n in (("train", train_per_domain), ("test", test_per_domain))
            for i in range(n)]
    rows: dict[tuple[str, str], list[dict]] = {}
    for domain, split, index in tqdm(jobs, desc=f"synthetic fundus (severity {severity:g})", disable=not progress):
        sample = generate_sample(domain, index, split=split, size=size, severity=severity, seed=seed)
        base = Path(domain) / split / "ROIs"
        for rel, array in ((base / "image" / f"{sample.sample_id}.png", sample.image),
                           (base / "mask" / f"{sample.sample_id}.png", encode_label_map(sample.disc, sample.cup))):
            save_png(out / rel, array)
            checksums[str(rel)] = sha256_file(out / rel)
        rows.setdefault((domain, split), []).append(
            {"id": sample.sample_id, "glaucoma": sample.glaucoma, "vcdr": sample.meta["vcdr"],
             "severity": severity, "camera": sample.meta["camera"]})
    for (domain, split), split_rows in rows.items():
        rel = Path(domain) / split / "meta.csv"
        with atomic_write(out / rel, "w") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(split_rows[0]))
            writer.writeheader()
            writer.writerows(split_rows)
        checksums[str(rel)] = sha256_file(out / rel)
    atomic_write_json(out / _MANIFEST, {"config": config, "sha256": checksums})
    return out


def load_benchmark(out: str | Path, split: str = "test", domains: Sequence[str] | None = None) -> FundusDataset:
    """Load a generated benchmark folder (from :func:`generate_benchmark`) as one dataset."""
    out = Path(out)
    if not (out / _MANIFEST).is_file():
        raise DataError(f"{out} is not a complete synthetic benchmark (no {_MANIFEST}); run generate_benchmark")
    domains = list(domains or json.loads((out / _MANIFEST).read_text())["config"]["domains"])
    datasets = [load_folder_domain(out, d, split) for d in domains]
    result = datasets[0]
    for ds in datasets[1:]:
        result = result + ds
    result.name = f"synthetic/{split}"
    return result
