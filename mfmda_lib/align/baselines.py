"""Image-level baselines of MFM-DA stage 2: Fourier domain adaptation, histogram matching, photometric jitter.

Each one turns a labelled source image into a target-looking image *without* a generative model,
using the same K unlabelled target images as MFM-DA's stage 1. The masks are kept (the anatomy
does not move), so the result is a drop-in replacement for stage 1's translations:

- :func:`fda_translate`: Fourier domain adaptation (Yang & Soatto, CVPR 2020): swap the
  low-frequency *amplitude* spectrum of the source for the target's, keep the source's *phase*.
  The swapped window is the centred square of half-side ``floor(L * min(H, W))`` of the shifted
  spectrum; MFM-DA's code uses ``L = 0.01``.
- :func:`histogram_match`: map each colour channel's cumulative histogram onto the pooled
  histogram of the K target images.
- :func:`photometric_jitter`: random colour gains, gamma, contrast and blur, *not* aimed at any
  target: the "alignment without translation" control aligns a source image with this.

Sample-level wrappers (:func:`fda_samples`, :func:`histogram_matched_samples`,
:func:`jittered_samples`) keep order, masks and ids, so they pair with the source list.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from PIL import Image, ImageFilter

from ..data.sample import FundusSample

__all__ = ["fda_translate", "histogram_match", "photometric_jitter", "fda_samples", "histogram_matched_samples",
           "jittered_samples"]

#: MFM-DA's FDA window: L = 0.01 of the shorter side.
FDA_L = 0.01


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def _check_rgb(image: np.ndarray, name: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{name} must be an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
    return image


def _fit(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``image`` resized (bicubic) to ``shape = (H, W)`` if it differs."""
    if image.shape[:2] == shape:
        return image
    return np.asarray(Image.fromarray(image).resize((shape[1], shape[0]), Image.BICUBIC))


def _with_image(sample: FundusSample, image: np.ndarray, how: str) -> FundusSample:
    return dataclasses.replace(sample, image=image, path=None, meta={**sample.meta, "translation": how})


# ---------------------------------------------------------------------------------------------
# image-level methods
# ---------------------------------------------------------------------------------------------

def fda_translate(source: np.ndarray, target: np.ndarray, L: float = FDA_L) -> np.ndarray:
    """Fourier domain adaptation: the source's phase with the target's low-frequency amplitude.

    Args:
        source: ``(H, W, 3)`` uint8.
        target: ``(H', W', 3)`` uint8 (resized to ``H x W`` if needed).
        L: half-side of the swapped window as a fraction of ``min(H, W)`` (0 swaps only the DC term).

    Returns:
        ``(H, W, 3)`` uint8.
    """
    source, target = _check_rgb(source, "source"), _check_rgb(target, "target")
    if not 0 <= L < 0.5:
        raise ValueError(f"fda_translate: L must be in [0, 0.5), got {L}")
    h, w = source.shape[:2]
    target = _fit(target, (h, w))
    spec_s = np.fft.fftshift(np.fft.fft2(source.astype(np.float64), axes=(0, 1)), axes=(0, 1))  # (H, W, 3)
    spec_t = np.fft.fftshift(np.fft.fft2(target.astype(np.float64), axes=(0, 1)), axes=(0, 1))
    amplitude, phase = np.abs(spec_s), np.angle(spec_s)
    b, ch, cw = int(np.floor(min(h, w) * L)), h // 2, w // 2
    window = (slice(ch - b, ch + b + 1), slice(cw - b, cw + b + 1))
    amplitude[window] = np.abs(spec_t)[window]
    out = np.fft.ifft2(np.fft.ifftshift(amplitude * np.exp(1j * phase), axes=(0, 1)), axes=(0, 1)).real
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def histogram_match(source: np.ndarray, references: Sequence[np.ndarray]) -> np.ndarray:
    """Per-channel histogram matching of ``source`` to the pooled histogram of ``references``.

    Each source value goes to the reference value at the same cumulative frequency (quantile),
    interpolated linearly between the reference's distinct values.

    Args:
        source: ``(H, W, 3)`` uint8.
        references: one or more ``(H', W', 3)`` uint8 images (any sizes).

    Returns:
        ``(H, W, 3)`` uint8.
    """
    source = _check_rgb(source, "source")
    refs = [_check_rgb(r, f"references[{i}]") for i, r in enumerate(references)]
    if not refs:
        raise ValueError("histogram_match: give at least one reference image")
    out = np.empty_like(source)
    for c in range(3):
        values, index, counts = np.unique(source[..., c].ravel(), return_inverse=True, return_counts=True)
        cdf_s = np.cumsum(counts) / counts.sum()
        ref_values, ref_counts = np.unique(np.concatenate([r[..., c].ravel() for r in refs]), return_counts=True)
        cdf_r = np.cumsum(ref_counts) / ref_counts.sum()
        mapped = np.interp(cdf_s, cdf_r, ref_values.astype(np.float64))  # (n_values,)
        out[..., c] = np.clip(np.rint(mapped[index]), 0, 255).astype(np.uint8).reshape(source.shape[:2])
    return out


def photometric_jitter(image: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """A random camera-like change: colour gains, gamma, contrast, brightness and a little blur.

    Args:
        image: ``(H, W, 3)`` uint8.
        rng: NumPy generator (the caller seeds it).
        strength: scales every range (0: the image unchanged).

    Returns:
        ``(H, W, 3)`` uint8.
    """
    image = _check_rgb(image, "image")
    x = image.astype(np.float64) / 255.0
    gains = 1 + strength * rng.uniform(-0.25, 0.25, size=3)
    gamma = float(np.exp(strength * rng.uniform(-0.4, 0.4)))
    contrast = 1 + strength * rng.uniform(-0.3, 0.3)
    shift = strength * rng.uniform(-0.08, 0.08)
    x = np.clip(x * gains, 0, 1) ** gamma
    x = (x - x.mean()) * contrast + x.mean() + shift
    out = Image.fromarray(np.clip(np.rint(x * 255), 0, 255).astype(np.uint8))
    radius = strength * rng.uniform(0, 1.5)
    if radius > 0.2:
        out = out.filter(ImageFilter.GaussianBlur(radius))
    return np.array(out)  # a writable copy


# ---------------------------------------------------------------------------------------------
# sample-level wrappers (order, masks and ids kept)
# ---------------------------------------------------------------------------------------------

def fda_samples(source: Sequence[FundusSample], targets: Sequence[np.ndarray], L: float = FDA_L) -> list[FundusSample]:
    """Source sample ``i`` with the low-frequency amplitude of target image ``i mod K``."""
    if not targets:
        raise ValueError("fda_samples: give at least one target image")
    return [_with_image(s, fda_translate(s.image, targets[i % len(targets)], L), f"fda(L={L})")
            for i, s in enumerate(source)]


def histogram_matched_samples(source: Sequence[FundusSample], targets: Sequence[np.ndarray]) -> list[FundusSample]:
    """Every source sample matched to the pooled colour histograms of the K ``targets``."""
    return [_with_image(s, histogram_match(s.image, targets), "histogram_matching") for s in source]


def jittered_samples(source: Sequence[FundusSample], seed: int, strength: float = 1.0) -> list[FundusSample]:
    """Every source sample with a :func:`photometric_jitter` (seeded by ``seed`` and the position)."""
    return [_with_image(s, photometric_jitter(s.image, np.random.default_rng([seed, i]), strength), "jitter")
            for i, s in enumerate(source)]
