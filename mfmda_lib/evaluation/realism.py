"""How synthetic is synthetic? Distances between image sets in a foundation model's feature space.

Each set of images (a synthetic hospital, the whole-fundus renderer's ROIs, a folder of your own
photographs) becomes a cloud of LiteMedSAM embeddings (the frozen encoder's pooled output, the
features every method of the kit builds on). Two clouds are compared with the **maximum mean
discrepancy** (MMD, Gretton et al. 2012; unbiased estimate of MMD², Gaussian kernel with one
bandwidth for every pair: the median distance over all images), so one table says how far each set
sits from every other. Two reference scales make a number readable:

- the **spread between synthetic hospitals**: the median MMD² over pairs of synthetic domains, the
  gap the kit's adaptation methods are built to cross;
- the **noise floor** of a pair: the 95th percentile of MMD² under random relabelling of its
  images (a permutation test), what two samples of one distribution would give at these sizes.

A folder of real photographs whose distance to its nearest synthetic hospital is many times the
spread between synthetic hospitals sits outside what the benchmark simulates. What it cannot show:
that a model trained on the synthetic images fails, or works, on those photographs (only labels
can), nor anything about image content the encoder ignores; and with a few dozen images per set
the estimates are noisy (the noise floor says how noisy).
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..data import DOMAINS, benchmark_samples
from ..data.photo import generate_photo, photo_roi_sample
from ..models import pooled_embeddings

__all__ = ["mmd2", "RealismResult", "compare_feature_sets", "measure_realism", "synthetic_image_sets",
           "PHOTO_SET"]

#: Name of the set of ROI crops of the whole-fundus renderer's photographs (all cameras).
PHOTO_SET = "whole-fundus renderer (ROIs)"


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.clip((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0, None)


def mmd2(x: np.ndarray, y: np.ndarray, bandwidth: float) -> float:
    """Unbiased MMD² between ``x`` ``(N, C)`` and ``y`` ``(M, C)`` (N, M >= 2), Gaussian kernel of ``bandwidth``."""
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"mmd2 needs at least 2 samples per set, got {len(x)} and {len(y)}")
    g = 1.0 / (2 * bandwidth ** 2)
    kxx, kyy, kxy = np.exp(-g * _sq_dists(x, x)), np.exp(-g * _sq_dists(y, y)), np.exp(-g * _sq_dists(x, y))
    n, m = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2 * kxy.mean())


def _null_95(x: np.ndarray, y: np.ndarray, bandwidth: float, permutations: int, rng: np.random.Generator) -> float:
    """95th percentile of MMD² when the pooled images are split at random into sets of the same sizes."""
    pooled, n = np.concatenate([x, y]), len(x)
    values = []
    for _ in range(permutations):
        order = rng.permutation(len(pooled))
        values.append(mmd2(pooled[order[:n]], pooled[order[n:]], bandwidth))
    return float(np.percentile(values, 95))


@dataclass
class RealismResult:
    """Pairwise MMD² between image sets, and each set's distance to the synthetic hospitals.

    Attributes:
        matrix: ``(K, K)`` DataFrame of MMD² (rows, columns: set names).
        noise_floor: ``(K, K)`` DataFrame, the permutation 95th percentile of each pair.
        synthetic: the names of the synthetic hospitals (the reference sets).
        sizes: images per set.
    """

    matrix: pd.DataFrame
    noise_floor: pd.DataFrame
    synthetic: list[str]
    sizes: dict[str, int]

    @property
    def synthetic_spread(self) -> float:
        """Median MMD² over pairs of synthetic hospitals."""
        pairs = [self.matrix.loc[a, b] for a, b in combinations(self.synthetic, 2)]
        return float(np.median(pairs)) if pairs else float("nan")

    def table(self) -> pd.DataFrame:
        """One row per set that is not a synthetic hospital (index: the set and its nearest synthetic hospital).

        Columns: ``n`` images, ``mmd2`` to the nearest hospital, ``noise_floor_95`` of that pair,
        ``synthetic_spread`` and ``gap_over_spread`` = mmd2 / synthetic_spread.
        """
        rows = []
        for name in self.matrix.index:
            if name in self.synthetic:
                continue
            dists = self.matrix.loc[name, self.synthetic]
            nearest = str(dists.idxmin())
            rows.append({"set": name, "nearest synthetic hospital": nearest, "n": self.sizes[name],
                         "mmd2": float(dists.min()), "noise_floor_95": float(self.noise_floor.loc[name, nearest]),
                         "synthetic_spread": self.synthetic_spread,
                         "gap_over_spread": float(dists.min()) / max(self.synthetic_spread, 1e-12)})
        return pd.DataFrame(rows).set_index(["set", "nearest synthetic hospital"])


def compare_feature_sets(features: Mapping[str, np.ndarray], synthetic: Sequence[str], *, permutations: int = 200,
                         seed: int = 0) -> RealismResult:
    """MMD² between every pair of feature sets ``{name: (N_i, C)}``; ``synthetic`` names the reference sets.

    Features are standardised over all sets together; the kernel bandwidth is the median pairwise
    distance over all images.
    """
    names = list(features)
    missing = [s for s in synthetic if s not in features]
    if missing:
        raise ValueError(f"compare_feature_sets: synthetic set(s) {missing} not among {names}")
    pooled = np.concatenate([np.asarray(features[n], np.float64) for n in names])
    mean, std = pooled.mean(0), pooled.std(0) + 1e-8
    sets = {n: (np.asarray(features[n], np.float64) - mean) / std for n in names}
    z = (pooled - mean) / std
    bandwidth = float(np.sqrt(np.median(_sq_dists(z, z)[np.triu_indices(len(z), 1)])))
    rng = np.random.default_rng(seed)
    matrix = pd.DataFrame(0.0, index=names, columns=names)
    floor = pd.DataFrame(0.0, index=names, columns=names)
    for a, b in combinations(names, 2):
        matrix.loc[a, b] = matrix.loc[b, a] = mmd2(sets[a], sets[b], bandwidth)
        floor.loc[a, b] = floor.loc[b, a] = _null_95(sets[a], sets[b], bandwidth, permutations, rng)
    return RealismResult(matrix, floor, list(synthetic), {n: len(sets[n]) for n in names})


def measure_realism(model, image_sets: Mapping[str, Sequence[np.ndarray]], synthetic: Sequence[str], *, cache=None,
                    batch_size: int = 4, permutations: int = 200, seed: int = 0, progress: bool = True) -> RealismResult:
    """Embed each image set with ``model``'s frozen encoder (pooled) and compare the sets (:func:`compare_feature_sets`).

    Args:
        model: a :class:`~mfmda_lib.models.PromptableSegmenter` (LiteMedSAM in the kit).
        image_sets: ``{name: [(H, W, 3) uint8, ...]}``, at least 2 images each; the ROI crops of a
            folder of photographs come from :func:`mfmda_lib.pipeline_io.read_target_folder`.
        synthetic: which of the sets are the synthetic hospitals.
        cache: an optional :class:`~mfmda_lib.models.EmbeddingCache`.
    """
    features = {name: pooled_embeddings(model, list(images), cache, batch_size=batch_size, progress=progress)
                for name, images in image_sets.items()}
    return compare_feature_sets(features, synthetic, permutations=permutations, seed=seed)


def synthetic_image_sets(profile, photos: Sequence | bool = True) -> dict[str, list[np.ndarray]]:
    """The reference sets: each synthetic hospital's first ``probe_per_domain`` ROI benchmark ``train`` images
    (the images notebook 00 probes, so their embeddings are cached), and the ROI crops of whole-fundus
    photographs (:data:`PHOTO_SET`): ``photos`` given (:class:`~mfmda_lib.data.photo.FundusPhoto`), else with
    ``photos=True`` ``photo_per_domain`` new ones per camera; ``photos=False``: none.
    """
    samples = benchmark_samples(profile, "train", profile.probe_per_domain)
    sets = {d: [s.image for s in samples if s.domain == d] for d in DOMAINS}
    if photos is True:
        photos = [generate_photo(d, i, split="train", width=profile.photo_width, severity=profile.severity,
                                 seed=profile.seed) for d in DOMAINS for i in range(profile.photo_per_domain)]
    if photos:
        sets[PHOTO_SET] = [photo_roi_sample(p, profile.image_size).image for p in photos]
    return sets
