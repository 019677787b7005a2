"""The unlabelled pool of self-supervised pretraining: many images of every hospital, no labels.

Unlabelled images are the cheap resource that self-supervised learning spends, so the pool is
much larger than the labelled sets: the first ``ssl_pool_per_domain`` images of the ``train``
split of *every* domain, rendered by the deterministic synthetic generator at the benchmark's
resolution and resized to ``ssl_image_size`` exactly as the labelled images are. Test images are
never in it. The first images of the pool are the benchmark's own training images (the
generator is a pure function of seed, domain, split and index), so the labelled source images
are in the pool too, unlabelled, as in any real pretraining set.

Rendering costs ~60 ms an image, so the pool is cached as ``uint8`` under
``<cache>/ssl_pool/`` with a checksum: load if present and intact, else render.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data import DOMAINS, PIXEL_MEAN, PIXEL_STD, normalised_tensors
from ..data.synthetic import generate_sample
from ..environment import paths
from ..io import TORCH, cached, sha256_bytes
from ..profiles import Profile

__all__ = ["pool_path", "unlabelled_pool", "pool_domains"]

#: Images rendered (and resized) at once.
_CHUNK = 32


def _key(profile: Profile) -> dict:
    return {"n": profile.ssl_pool_per_domain, "size": profile.image_size, "out": profile.ssl_image_size,
            "severity": profile.severity, "seed": profile.seed, "domains": list(DOMAINS), "version": 1}


def pool_path(profile: Profile) -> Path:
    """``<cache>/ssl_pool/pool_<profile>_<hash>.pt``, the hash over everything that shapes the images."""
    digest = hashlib.sha256(json.dumps(_key(profile), sort_keys=True).encode()).hexdigest()[:10]
    return paths().cache / "ssl_pool" / f"pool_{profile.name}_{digest}.pt"


def pool_domains(profile: Profile) -> list[str]:
    """The domain of each pool image, in pool order (domain by domain)."""
    return [d for d in DOMAINS for _ in range(profile.ssl_pool_per_domain)]


def _render(profile: Profile, progress: bool) -> torch.Tensor:
    jobs = [(d, i) for d in DOMAINS for i in range(profile.ssl_pool_per_domain)]
    out = []
    bar = tqdm(total=len(jobs), desc="unlabelled pool", disable=not progress, unit="img")
    for start in range(0, len(jobs), _CHUNK):
        samples = [generate_sample(d, i, split="train", size=profile.image_size, severity=profile.severity,
                                   seed=profile.seed) for d, i in jobs[start:start + _CHUNK]]
        x = normalised_tensors(samples, profile.ssl_image_size)[0]  # (n, 3, S, S) normalised
        out.append(((x * PIXEL_STD + PIXEL_MEAN).clamp(0, 1) * 255).round().to(torch.uint8))
        bar.update(len(samples))
    bar.close()
    return torch.cat(out)  # (N, 3, S, S) uint8


def unlabelled_pool(profile: Profile, *, progress: bool = True) -> torch.Tensor:
    """The pool as normalised images ``(4 * ssl_pool_per_domain, 3, S, S)``, domain by domain.

    Loaded from the cache when present and its checksum matches, else rendered and saved atomically.
    """
    key = json.dumps(_key(profile), sort_keys=True)

    def render() -> dict:
        images = _render(profile, progress)
        return {"images": images, "key": key, "sha256": sha256_bytes(images.numpy().tobytes())}

    def intact(payload: dict) -> bool:  # not stale, not corrupted
        images = payload.get("images")
        return (payload.get("key") == key and images is not None
                and sha256_bytes(images.numpy().tobytes()) == payload.get("sha256"))

    payload, _ = cached(pool_path(profile), render, TORCH, valid=intact)
    return (payload["images"].float() / 255 - PIXEL_MEAN) / PIXEL_STD
