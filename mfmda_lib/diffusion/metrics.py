"""How good is a translation? Closeness to the target, diversity, and structure kept.

Three questions, three numbers (all computed in the feature space of the frozen encoder ``f``
unless said otherwise):

- **Feature Frechet distance** to the target: fit a Gaussian to the features of the translated
  images and one to the target images' features; ``FD = |mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))``
  (the formula of FID, with ``f`` instead of Inception, so the numbers are *not* FIDs). Lower = closer.
  With a few dozen images in 128 dimensions the covariances are rank-deficient and FD is biased
  upwards: compare variants at the same image counts only.
- **Intra-cluster diversity** (MFM-DA's generation metric, with ``f`` distances instead of
  LPIPS, which needs weights we do not have offline): assign each translated image to its nearest
  of the K target images, then average the pairwise feature distance inside each cluster. A model
  that memorised the K images puts near-copies in each cluster: low diversity.
- **Structure preservation**: do the source's disc and cup labels still fit the translated image?
  LiteMedSAM, prompted with the source mask's box, segments the translated image; Dice against
  the source masks (compared with the same on the untranslated source).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from scipy import linalg

from ..data import FundusSample
from ..evaluation.metrics import dice

__all__ = ["frechet_distance", "intra_cluster_diversity", "structure_preservation"]


def frechet_distance(features_a: np.ndarray | torch.Tensor, features_b: np.ndarray | torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to ``(N, D)`` and ``(M, D)`` features (N, M >= 2)."""
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"frechet_distance needs (N, D) and (M, D) features with N, M >= 2, got {a.shape}, {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)  # (D, D)
    # Tr((S_a S_b)^(1/2)) = sum of sqrt(eigenvalues of S_a^(1/2) S_b S_a^(1/2)), a symmetric PSD matrix:
    # stable for the rank-deficient covariances of a few dozen images (sqrtm of S_a S_b is not)
    w, v = linalg.eigh(cov_a)
    half_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # S_a^(1/2)
    trace_root = np.sqrt(np.clip(linalg.eigvalsh(half_a @ cov_b @ half_a), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)


def intra_cluster_diversity(generated: np.ndarray | torch.Tensor, targets: np.ndarray | torch.Tensor) -> float:
    """Mean pairwise L2 feature distance inside clusters of generated images around the K targets.

    Args:
        generated: ``(N, D)`` features of translated images.
        targets: ``(K, D)`` features of the K target images (cluster centres).

    Returns:
        The mean over clusters with at least two members of their mean pairwise distance
        (``nan`` when no cluster has two members).
    """
    g = torch.as_tensor(np.asarray(generated), dtype=torch.float64)
    t = torch.as_tensor(np.asarray(targets), dtype=torch.float64)
    nearest = torch.cdist(g, t).argmin(dim=1)  # (N,)
    per_cluster = []
    for k in range(len(t)):
        members = g[nearest == k]
        if len(members) >= 2:
            d = torch.cdist(members, members)
            per_cluster.append(float(d.sum() / (len(members) * (len(members) - 1))))
    return float(np.mean(per_cluster)) if per_cluster else float("nan")


def structure_preservation(model, samples: Sequence[FundusSample], images: Sequence[np.ndarray] | None = None,
                           cache=None, *, batch_size: int = 4, progress: bool = False) -> dict[str, float]:
    """Box-prompted LiteMedSAM Dice of the source masks on (translated) images.

    Args:
        model: a :class:`~mfmda_lib.models.PromptableSegmenter` (frozen).
        samples: the source samples (their masks and boxes are the reference).
        images: the translated images, one per sample (default: the samples' own images).
        cache: optional :class:`~mfmda_lib.models.EmbeddingCache`.

    Returns:
        ``{"disc_dice": mean, "cup_dice": mean}`` over the samples.
    """
    from ..models import segment

    images = [s.image for s in samples] if images is None else list(images)
    boxes = np.stack([np.stack([s.box("disc"), s.box("cup")]) for s in samples])  # (N, 2, 4)
    probs = segment(model, images, boxes, cache, batch_size=batch_size, progress=progress)  # (N, 2, H, W)
    disc = [dice(p[0] > 0.5, s.disc) for p, s in zip(probs, samples)]
    cup = [dice(p[1] > 0.5, s.cup) for p, s in zip(probs, samples)]
    return {"disc_dice": float(np.mean(disc)), "cup_dice": float(np.mean(cup))}
