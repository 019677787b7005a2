"""Pixel-level calibration of the mask decoder's sigmoid probabilities: the probabilities and labels of each image's
pixels, the reliability table, the expected calibration error (ECE), and both per domain."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..data.sample import FundusSample
from ..models import EmbeddingCache, PromptableSegmenter, segment
from .clinical import ClinicalConfig

__all__ = [
    "zero_shot_probabilities", "calibration_pixels", "reliability_table", "expected_calibration_error",
    "calibration_by_domain",
]


def zero_shot_probabilities(model: PromptableSegmenter, samples: Sequence[FundusSample],
                            cache: EmbeddingCache | None = None, *, box_margin: int = 0, batch_size: int = 4,
                            progress: bool = False) -> np.ndarray:
    """Sigmoid probabilities of the disc and cup prompts, as in the zero-shot evaluation.

    Same boxes as :func:`mfmda_lib.evaluation.zero_shot.zero_shot_segmentation` (its masks are
    these probabilities ``> 0.5``); embeddings come from ``cache``, so only the decoder runs.

    Returns:
        ``(N, 2, H, W)`` float32: channel 0 disc, channel 1 cup (all images one size).
    """
    boxes = np.stack([np.stack([s.box("disc", box_margin), s.box("cup", box_margin)]) for s in samples])  # (N, 2, 4)
    probs = segment(model, [s.image for s in samples], boxes, cache=cache, batch_size=batch_size,
                    progress=progress)
    if isinstance(probs, list):
        raise ValueError("zero_shot_probabilities: images of different sizes; evaluate one size at a time")
    return probs  # (N, 2, H, W)


def calibration_pixels(probs: np.ndarray, samples: Sequence[FundusSample], margin: int = 8,
                       structures: Sequence[str] = ("disc", "cup")) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and truths of the pixels inside each prompt box grown by ``margin``.

    Args:
        probs: ``(N, 2, H, W)`` disc and cup probabilities (see :func:`zero_shot_probabilities`).
        samples: the ``N`` samples (their masks are the truth; their boxes the regions).
        margin: pixels added around the tight box.
        structures: which channels to score (``"disc"`` is channel 0, ``"cup"`` channel 1).

    Returns:
        ``(p, y)``: two ``(P,)`` arrays, float32 probabilities and bool truths, image by image.
    """
    probs = np.asarray(probs)
    if probs.ndim != 4 or probs.shape[:2] != (len(samples), 2):
        raise ValueError(f"calibration_pixels: probs must be (N={len(samples)}, 2, H, W), got {probs.shape}")
    p_all, y_all = [], []
    for prob, s in zip(probs, samples):
        for structure in structures:
            k = ("disc", "cup").index(structure)
            x0, y0, x1, y1 = s.box(structure, margin).astype(int)
            p_all.append(prob[k, y0:y1 + 1, x0:x1 + 1].ravel())
            y_all.append(getattr(s, structure)[y0:y1 + 1, x0:x1 + 1].ravel())
    return np.concatenate(p_all).astype(np.float32), np.concatenate(y_all).astype(bool)


def reliability_table(p: np.ndarray, y: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Reliability diagram data: mean predicted probability vs. observed frequency per bin.

    Args:
        p: ``(P,)`` predicted foreground probabilities in ``[0, 1]``.
        y: ``(P,)`` bool truths.
        n_bins: equal-width bins on ``[0, 1]`` (the last one closed).

    Returns:
        One row per bin: ``lower``, ``upper``, ``count``, ``confidence`` (mean ``p``) and ``frequency``
        (mean ``y``); the last two are ``nan`` for empty bins.
    """
    p, y = np.asarray(p, dtype=np.float64).ravel(), np.asarray(y, dtype=bool).ravel()
    if p.shape != y.shape:
        raise ValueError(f"reliability_table: p and y differ in length ({p.size} vs {y.size})")
    if p.size and (p.min() < 0 or p.max() > 1):
        raise ValueError("reliability_table: probabilities must lie in [0, 1]")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)  # (P,) bin of each pixel
    count = np.bincount(which, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(which, weights=p, minlength=n_bins) / count
        frequency = np.bincount(which, weights=y.astype(np.float64), minlength=n_bins) / count
    return pd.DataFrame({"lower": edges[:-1], "upper": edges[1:], "count": count,
                         "confidence": confidence, "frequency": frequency})


def expected_calibration_error(p: np.ndarray, y: np.ndarray, n_bins: int = 10) -> float:
    """ECE: the count-weighted mean of ``|confidence - frequency|`` over the bins of :func:`reliability_table`.

    0 is perfectly calibrated; 0.1 means the stated probability is off by 0.1 on average.
    """
    table = reliability_table(p, y, n_bins)
    filled = table[table["count"] > 0]
    if filled.empty:
        return float("nan")
    gap = (filled["confidence"] - filled["frequency"]).abs()
    return float((gap * filled["count"]).sum() / filled["count"].sum())


def calibration_by_domain(probs: np.ndarray, samples: Sequence[FundusSample],
                          config: ClinicalConfig) -> pd.DataFrame:
    """ECE of disc and cup probabilities per domain (pixels inside the grown prompt boxes).

    Args:
        probs: ``(N, 2, H, W)`` disc and cup probabilities.
        samples: the ``N`` samples.
        config: bins and box margin.

    Returns:
        Index ``domain`` (in order of appearance); columns ``disc_ece``, ``cup_ece``, ``pixels``.
    """
    probs = np.asarray(probs)
    out = []
    for domain in dict.fromkeys(s.domain for s in samples):
        idx = [i for i, s in enumerate(samples) if s.domain == domain]
        entry = {"domain": domain, "pixels": 0}
        for structure in ("disc", "cup"):
            p, y = calibration_pixels(probs[idx], [samples[i] for i in idx], config.calibration_margin,
                                      structures=(structure,))
            entry[f"{structure}_ece"] = expected_calibration_error(p, y, config.calibration_bins)
            entry["pixels"] += int(p.size)
        out.append(entry)
    return pd.DataFrame(out).set_index("domain")
