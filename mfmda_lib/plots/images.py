"""Figures of images and datasets: overlays, grids, colour histograms, embeddings, severity."""
from __future__ import annotations

import os
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from ..data.sample import FundusSample
from ._common import (BOX_COLOUR, CUP_COLOUR, DISC_COLOUR, FIELD_THRESHOLD, PRED_STYLE, TRUTH_STYLE, _bare,
                      _check_mask, _domain_colours, _finish, _root)


# ---------------------------------------------------------------------------------------------
# single-image panels
# ---------------------------------------------------------------------------------------------

def overlay(image: np.ndarray, disc: np.ndarray | None = None, cup: np.ndarray | None = None,
            pred_disc: np.ndarray | None = None, pred_cup: np.ndarray | None = None,
            box: np.ndarray | Sequence[Sequence[float]] | None = None, ax: Axes | None = None,
            title: str | None = None, *, legend: bool = True,
            save_path: str | os.PathLike | None = None) -> Figure:
    """Show an image with disc/cup contours: truth solid, prediction dashed; optional boxes.

    Args:
        image: ``(H, W, 3)`` uint8 RGB (or float in ``[0, 1]``), or ``(H, W)`` grey.
        disc, cup: ``(H, W)`` bool reference masks, drawn solid.
        pred_disc, pred_cup: ``(H, W)`` bool predicted masks, drawn dashed.
        box: one ``[x0, y0, x1, y1]`` box (inclusive pixel coordinates, as
            :meth:`FundusSample.box` gives) or an ``(N, 4)`` array of boxes, e.g. SAM prompts.
        ax: axes to draw into; a new 4x4-inch figure when ``None``.
        title: axes title.
        legend: add a legend naming the drawn contours and boxes.
        save_path: if given, also save the figure there (see :func:`save_figure`).

    Returns:
        The figure. Each non-empty mask adds one contour set to ``ax.collections``, each box one
        rectangle to ``ax.patches``; empty masks are skipped.
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"overlay: image must be (H, W, 3) or (H, W), got shape {image.shape}")
    size = image.shape[:2]
    if ax is None:
        fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
    handles = []
    for mask, colour, style, label in (
        (disc, DISC_COLOUR, TRUTH_STYLE, "disc (truth)"),
        (cup, CUP_COLOUR, TRUTH_STYLE, "cup (truth)"),
        (pred_disc, DISC_COLOUR, PRED_STYLE, "disc (pred)"),
        (pred_cup, CUP_COLOUR, PRED_STYLE, "cup (pred)"),
    ):
        mask = _check_mask(mask, size, label)
        if mask is None or not mask.any():
            continue  # matplotlib warns on a contour with no level crossing
        ax.contour(mask.astype(np.float32), levels=[0.5], colors=[colour], linestyles=style, linewidths=1.5)
        handles.append(Line2D([], [], color=colour, linestyle=style, label=label))
    if box is not None:
        boxes = np.asarray(box, dtype=np.float64).reshape(-1, 4)  # (N, 4) x0, y0, x1, y1
        for x0, y0, x1, y1 in boxes:
            # inclusive pixel coordinates: the box edge runs along the outer pixel borders
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1,
                                   fill=False, edgecolor=BOX_COLOUR, linewidth=1.2))
        handles.append(Line2D([], [], color=BOX_COLOUR, label="box"))
    ax.set_xlim(-0.5, size[1] - 0.5)
    ax.set_ylim(size[0] - 0.5, -0.5)
    _bare(ax)
    if title is not None:
        ax.set_title(title, fontsize=9)
    if legend and handles:
        ax.legend(handles=handles, loc="lower right", fontsize=6, framealpha=0.6, facecolor="grey")
    return _finish(_root(ax), save_path)


# ---------------------------------------------------------------------------------------------
# dataset figures
# ---------------------------------------------------------------------------------------------

def sample_grid(samples_by_domain: dict[str, list[FundusSample]], n: int = 4, with_masks: bool = True, *,
                save_path: str | os.PathLike | None = None) -> Figure:
    """A grid of examples: one row per domain, ``n`` columns.

    Args:
        samples_by_domain: ``{domain: [FundusSample, ...]}``; the first ``n`` of each are shown.
            A domain with fewer leaves its remaining cells blank.
        n: examples per row.
        with_masks: draw the true disc and cup contours.
        save_path: if given, also save the figure there.

    Returns:
        The figure with ``len(samples_by_domain) * n`` axes (rows = domains, in dict order).
    """
    if not samples_by_domain:
        raise ValueError("sample_grid: samples_by_domain is empty; pass {domain: [samples]}")
    if n < 1:
        raise ValueError(f"sample_grid: n must be at least 1, got {n}")
    rows = len(samples_by_domain)
    fig, axes = plt.subplots(rows, n, figsize=(2.2 * n, 2.45 * rows), squeeze=False)
    for r, (domain, samples) in enumerate(samples_by_domain.items()):
        for c in range(n):
            ax = axes[r, c]
            if c >= len(samples):
                ax.axis("off")
                continue
            s = samples[c]
            overlay(s.image, s.disc if with_masks else None, s.cup if with_masks else None,
                    ax=ax, legend=False)
            ax.set_title(f"{s.sample_id}\nvCDR {s.vcdr:.2f}", fontsize=7)
        axes[r, 0].axis("on")  # the row label lives on the first column even when it is blank
        _bare(axes[r, 0])
        axes[r, 0].set_ylabel(domain, fontsize=10)
    fig.tight_layout()
    return _finish(fig, save_path)


def colour_histograms(samples_by_domain: dict[str, list[FundusSample]], *, bins: int = 64,
                      threshold: int = FIELD_THRESHOLD,
                      save_path: str | os.PathLike | None = None) -> Figure:
    """Per-channel intensity histograms inside the camera's bright field, one line per domain.

    Pixels whose brightest channel is ``<= threshold`` (the black surround of a fundus photo)
    are left out, so domains with different fields of view compare fairly. Each histogram is a
    density over the pooled pixels of all the domain's images.

    Args:
        samples_by_domain: ``{domain: [FundusSample, ...]}``.
        bins: number of bins over 0..255 (must divide 256).
        threshold: near-black cut-off, 0..254.
        save_path: if given, also save the figure there.

    Returns:
        A figure with three axes (R, G, B), each with one line per domain.
    """
    if not samples_by_domain:
        raise ValueError("colour_histograms: samples_by_domain is empty; pass {domain: [samples]}")
    if bins < 1 or 256 % bins:
        raise ValueError(f"colour_histograms: bins must divide 256 (e.g. 32, 64, 128, 256), got {bins}")
    colours = _domain_colours(list(samples_by_domain))
    fig, axes = plt.subplots(1, 3, figsize=(11, 3), sharey=True)
    centres = (np.arange(bins) + 0.5) * (256 / bins)
    for domain, samples in samples_by_domain.items():
        counts = np.zeros((3, 256), dtype=np.int64)  # per channel, per grey level
        for s in samples:
            field = s.image.max(axis=2) > threshold  # (H, W)
            for ch in range(3):
                counts[ch] += np.bincount(s.image[..., ch][field], minlength=256)
        binned = counts.reshape(3, bins, 256 // bins).sum(axis=2)  # (3, bins)
        total = binned.sum(axis=1, keepdims=True)
        density = binned / np.maximum(total, 1) / (256 / bins)  # (3, bins), integrates to 1
        for ch, ax in enumerate(axes):
            ax.plot(centres, density[ch], color=colours[domain], label=f"{domain} ({len(samples)})")
    for ax, name in zip(axes, ("red", "green", "blue")):
        ax.set_title(f"{name} channel", fontsize=10)
        ax.set_xlabel("intensity")
        ax.set_xlim(0, 255)
    axes[0].set_ylabel("density (bright field)")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    return _finish(fig, save_path)


def embedding_scatter(embeddings: np.ndarray, domains: Sequence[str], method: str = "pca",
                      ax: Axes | None = None, title: str | None = None, *, seed: int = 0,
                      n_threads: int | None = 1, save_path: str | os.PathLike | None = None) -> Figure:
    """2-D projection (PCA or t-SNE) of feature vectors, one colour per domain.

    Args:
        embeddings: ``(N, D)`` features (numpy or a CPU/GPU torch tensor), e.g. pooled encoder
            outputs, one row per image.
        domains: ``N`` domain names, one per row.
        method: ``"pca"`` (fast, linear, axes show explained variance) or ``"tsne"``
            (non-linear; perplexity is lowered for small ``N``).
        ax: axes to draw into; a new figure when ``None``.
        title: axes title.
        seed: random state of t-SNE.
        n_threads: OpenMP threads for t-SNE. One is the default because OpenMP's busy-waiting
            threads can make a small t-SNE 100x slower on a shared or 2-core machine (seen: 40 s
            instead of 0.1 s for 30 points); one thread embeds 2,000 points in ~15 s. ``None``
            lets OpenMP use every core.
        save_path: if given, also save the figure there.

    Returns:
        The figure; ``ax.collections`` holds one scatter per domain, in order of appearance.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    if hasattr(embeddings, "detach"):
        embeddings = embeddings.detach().cpu().numpy()
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embedding_scatter: embeddings must be (N, D), got shape {x.shape}")
    domains = [str(d) for d in domains]
    if len(domains) != x.shape[0]:
        raise ValueError(f"embedding_scatter: {x.shape[0]} embeddings but {len(domains)} domain labels")
    if x.shape[0] < 3 or x.shape[1] < 2:
        raise ValueError(f"embedding_scatter: need at least 3 points of at least 2 dimensions, got {x.shape}")
    if method == "pca":
        pca = PCA(n_components=2, random_state=seed)
        xy = pca.fit_transform(x)  # (N, 2)
        labels = [f"PC{i + 1} ({100 * v:.0f}% var.)" for i, v in enumerate(pca.explained_variance_ratio_)]
    elif method == "tsne":
        perplexity = min(30.0, (x.shape[0] - 1) / 3)  # sklearn requires perplexity < N
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
        with threadpool_limits(limits=n_threads, user_api="openmp"):
            xy = tsne.fit_transform(x)  # (N, 2)
        labels = ["t-SNE 1", "t-SNE 2"]
    else:
        raise ValueError(f"embedding_scatter: method must be 'pca' or 'tsne', got {method!r}")
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4.5))
    colours = _domain_colours(domains)
    labels_arr = np.asarray(domains)
    for domain, colour in colours.items():
        pts = xy[labels_arr == domain]
        ax.scatter(pts[:, 0], pts[:, 1], s=14, alpha=0.8, color=colour, label=f"{domain} ({len(pts)})")
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.legend(fontsize=8, markerscale=1.5)
    if title is not None:
        ax.set_title(title)
    return _finish(_root(ax), save_path)


def severity_strip(images: list[np.ndarray], severities: list[float], title: str | None = None, *,
                   save_path: str | os.PathLike | None = None) -> Figure:
    """One row of images, each labelled with its severity (e.g. one eye at growing domain shift).

    Args:
        images: ``(H, W, 3)`` uint8 (or float in ``[0, 1]``) images.
        severities: one number per image.
        title: figure title.
        save_path: if given, also save the figure there.

    Returns:
        A figure with ``len(images)`` axes titled ``"severity <s>"``.
    """
    if len(images) == 0:
        raise ValueError("severity_strip: no images given")
    if len(images) != len(severities):
        raise ValueError(f"severity_strip: {len(images)} images but {len(severities)} severities")
    fig, axes = plt.subplots(1, len(images), figsize=(2.2 * len(images), 2.5), squeeze=False)
    for ax, img, sev in zip(axes[0], images, severities):
        ax.imshow(np.asarray(img))
        ax.set_title(f"severity {sev:g}", fontsize=9)
        ax.axis("off")
    if title is not None:
        fig.suptitle(title)
    fig.tight_layout()
    return _finish(fig, save_path)
