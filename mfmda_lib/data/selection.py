"""The profile's benchmark on disk, and the samples each experiment draws from it.

Every family (SSL, fine-tuning, SAM tuning, test-time adaptation, diffusion, alignment, realism)
selects its images with :func:`benchmark_samples`, so it sits here, below them all.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..environment import paths
from ..profiles import Profile
from .benchmark import generate_benchmark, load_benchmark
from .sample import FundusSample

__all__ = ["prepare_benchmark", "benchmark_samples"]


def prepare_benchmark(profile: Profile, severity: float | None = None, *, progress: bool = True) -> Path:
    """Generate (or reuse) the synthetic benchmark for ``profile`` at ``severity`` (default: the profile's)."""
    severity = profile.severity if severity is None else severity
    return generate_benchmark(paths().data, train_per_domain=profile.train_per_domain,
                              test_per_domain=profile.test_per_domain, size=profile.image_size,
                              severity=severity, seed=profile.seed, progress=progress)


def benchmark_samples(profile: Profile, split: str = "test", n_per_domain: int | None = None,
                      severity: float | None = None, domains: Sequence[str] | None = None) -> list[FundusSample]:
    """The first ``n_per_domain`` samples of each domain of the profile's benchmark, loaded into memory."""
    out = prepare_benchmark(profile, severity, progress=False)
    dataset = load_benchmark(out, split, domains)
    return list(dataset.take(n_per_domain or profile.eval_per_domain))
