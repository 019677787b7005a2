"""The kit's experiments as a few calls each: what notebooks and the ``mfmda`` command run.

Each function takes a :class:`~mfmda_lib.profiles.Profile` (every size comes from it), uses
the on-disk benchmark and frozen-encoder cache (load if present, else compute), and returns
plain results that the caller prints or plots. ``prepare_benchmark`` / ``benchmark_samples`` (from
:mod:`mfmda_lib.data`) and ``model_and_cache`` (from :mod:`mfmda_lib.models`) are re-exported here for
the notebooks.
"""
from __future__ import annotations

import datetime as _dt
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from .data import FundusSample, benchmark_samples, prepare_benchmark
from .environment import get_device, paths
from .evaluation.probe import ProbeResult, domain_probe
from .evaluation.tables import format_table
from .evaluation.zero_shot import ZeroShotResult, zero_shot_segmentation
from .io import atomic_write, atomic_write_json
from .models import EmbeddingCache, PromptableSegmenter, model_and_cache, pooled_embeddings
from .profiles import Profile

__all__ = ["prepare_benchmark", "benchmark_samples", "model_and_cache", "run_zero_shot", "DomainShiftResult",
           "measure_domain_shift", "save_result"]


def run_zero_shot(profile: Profile, model: PromptableSegmenter, cache: EmbeddingCache | None = None, *,
                  samples: Sequence[FundusSample] | None = None, progress: bool = True) -> ZeroShotResult:
    """Zero-shot box-prompted disc/cup segmentation on every domain of the profile's test split."""
    samples = list(samples) if samples is not None else benchmark_samples(profile, "test")
    start = time.perf_counter()
    result = zero_shot_segmentation(model, samples, cache, batch_size=profile.encoder_batch_size, progress=progress)
    result.meta.update(profile=profile.name, seconds=round(time.perf_counter() - start, 1), n=len(samples))
    return result


@dataclass
class DomainShiftResult:
    """Linear-probe evidence of the domain gap at several severities.

    Attributes:
        probes: severity -> :class:`ProbeResult`.
        features: severity -> ``(N, C)`` pooled embeddings.
        domains: severity -> the ``N`` domain names.
    """

    probes: dict[float, ProbeResult]
    features: dict[float, np.ndarray]
    domains: dict[float, list[str]]

    def table(self) -> pd.DataFrame:
        """One row per severity: probe accuracy, its spread and chance."""
        return pd.DataFrame([{"severity": s, "n": int(p.confusion.sum()), "probe_accuracy": p.accuracy,
                              "probe_accuracy_std": p.accuracy_std, "chance": p.chance}
                             for s, p in self.probes.items()]).set_index("severity")


def measure_domain_shift(profile: Profile, model: PromptableSegmenter, cache: EmbeddingCache | None = None,
                         severities: Sequence[float] = (0.0, 1.0), *, progress: bool = True) -> DomainShiftResult:
    """Embed ``probe_per_domain`` training images of every domain at each severity and probe for the domain."""
    probes, feats, doms = {}, {}, {}
    for severity in severities:
        samples = benchmark_samples(profile, "train", profile.probe_per_domain, severity)
        feats[severity] = pooled_embeddings(model, [s.image for s in samples], cache,
                                            batch_size=profile.encoder_batch_size, progress=progress)
        doms[severity] = [s.domain for s in samples]
        probes[severity] = domain_probe(feats[severity], doms[severity], folds=profile.probe_folds, seed=profile.seed)
    return DomainShiftResult(probes, feats, doms)


def save_result(name: str, profile: Profile, table: pd.DataFrame, *, rows: list[dict] | None = None,
                meta: dict | None = None, figure=None) -> dict[str, Path]:
    """Write ``results/<name>_<profile>.{json,md}`` (and ``results/figures/<name>_<profile>.png``) atomically.

    The Markdown file states the profile, device, date and software versions that produced it.
    """
    root = paths().results
    stem = f"{name}_{profile.name}"
    stamp = {"profile": profile.name, "device": str(get_device()), "date": _dt.date.today().isoformat(),
             "torch": torch.__version__, "python": platform.python_version(), **(meta or {})}
    written = {"json": root / f"{stem}.json", "md": root / f"{stem}.md"}
    atomic_write_json(written["json"], {"meta": stamp, "table": table.reset_index().to_dict(orient="records"),
                                        "rows": rows or []})
    header = ", ".join(f"{k}: {v}" for k, v in stamp.items())
    with atomic_write(written["md"], "w") as handle:
        handle.write(f"# {name} ({profile.name} profile)\n\n_{header}_\n\n{format_table(table)}\n")
    if figure is not None:
        from .plots import save_figure

        written["png"] = root / "figures" / f"{stem}.png"
        save_figure(figure, written["png"])
    return written

