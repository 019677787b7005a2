"""Figure helpers for the notebooks and slides: overlays, sample grids, colour statistics,
embeddings, result heatmaps and severity strips.

Every helper builds its figure with pyplot, returns the :class:`~matplotlib.figure.Figure` and
never calls ``plt.show()``, so it works the same in a notebook, in a script and headless
(matplotlib picks the Agg backend when there is no display). Helpers that draw one panel take
an ``ax`` to draw into someone else's figure. ``save_path`` saves through :func:`save_figure`,
which writes atomically (temporary file, then ``os.replace``).

Colours are fixed across the kit: truth is solid and prediction dashed; disc yellow, cup sky
blue, prompt boxes white (Okabe-Ito colours, which stay apart for colour-blind readers and on
the orange fundus); each domain keeps its colour across figures (seaborn's ``colorblind``
palette in order of appearance).

Sections: helpers -> single-image panels -> dataset figures -> result figures.
The result figures that take a ``result`` need only its ``rows``, ``samples``, ``pred_disc`` and
``pred_cup`` (a :class:`mfmda_lib.evaluation.zero_shot.ZeroShotResult` has them).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from .data.sample import FundusSample
from .io import atomic_write

__all__ = [
    "overlay",
    "sample_grid",
    "colour_histograms",
    "embedding_scatter",
    "metric_table_heatmap",
    "severity_strip",
    "save_figure",
    "hstack_images",
    "failure_gallery",
    "zero_shot_figure",
    "tta_settings_figure",
    "tta_stream_figure",
    "method_domain_bars",
    "DISC_COLOUR",
    "CUP_COLOUR",
    "BOX_COLOUR",
]

DISC_COLOUR = "#F0E442"  # Okabe-Ito yellow
CUP_COLOUR = "#56B4E9"  # Okabe-Ito sky blue
BOX_COLOUR = "white"
TRUTH_STYLE, PRED_STYLE = "solid", "dashed"

#: Pixels whose brightest channel is at most this are "outside the camera's field" (black).
FIELD_THRESHOLD = 20

#: Metric names containing one of these are "lower is better" in :func:`metric_table_heatmap`.
LOWER_IS_BETTER = ("hd95", "err")

_SAVE_FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 120) -> Path:
    """Save ``fig`` atomically (temporary file beside ``path``, then ``os.replace``).

    Args:
        fig: the figure to save.
        path: destination ending in ``.png`` (or ``.pdf`` / ``.svg``); parent folders are created.
        dpi: resolution of raster output.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    fmt = _SAVE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"save_figure: {path} must end in one of {sorted(_SAVE_FORMATS)}")
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format=fmt, dpi=dpi, bbox_inches="tight")
    return path


def hstack_images(images: Sequence[np.ndarray], gap: int = 4, fill: int = 255) -> np.ndarray:
    """Join images of one height side by side with a ``gap``-pixel band of grey level ``fill``.

    Args:
        images: ``(H, W_i, 3)`` uint8 images, all of height ``H``.

    Returns:
        ``(H, sum(W_i) + gap * (len(images) - 1), 3)`` uint8.
    """
    images = [np.asarray(im) for im in images]
    if not images:
        raise ValueError("hstack_images: no images given")
    heights = {im.shape[0] for im in images}
    if len(heights) != 1 or any(im.ndim != 3 or im.shape[2] != 3 for im in images):
        raise ValueError(f"hstack_images: need (H, W, 3) images of one height, got {[im.shape for im in images]}")
    band = np.full((images[0].shape[0], gap, 3), fill, dtype=np.uint8)
    parts = [p for im in images for p in (band, im.astype(np.uint8, copy=False))][1:]
    return np.concatenate(parts, axis=1)  # (H, total W, 3)


def _root(ax: Axes) -> Figure:
    """The top-level figure of ``ax``, also when ``ax`` sits in a subfigure."""
    fig = ax.figure
    return fig if isinstance(fig, Figure) else fig.figure  # SubFigure.figure is the root


def _lower_is_better(metric: str) -> bool:
    return any(tag in metric for tag in LOWER_IS_BETTER)


def _finish(fig: Figure, save_path: str | os.PathLike | None) -> Figure:
    """Save the figure if a path was given; return it."""
    if save_path is not None:
        save_figure(fig, save_path)
    return fig


def _domain_colours(domains: Sequence[str]) -> dict[str, tuple]:
    """One colour per distinct domain, in order of first appearance."""
    names = list(dict.fromkeys(domains))
    return dict(zip(names, sns.color_palette("colorblind", n_colors=max(len(names), 1))))


def _bare(ax: Axes) -> None:
    """Hide ticks and spines but keep the axis labels (used as row labels)."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _check_mask(mask: np.ndarray | None, size: tuple[int, int], name: str) -> np.ndarray | None:
    """``None`` stays ``None``; else a bool ``(H, W)`` mask of the image's size."""
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.shape != size:
        raise ValueError(f"overlay: {name} has shape {mask.shape} but the image is {size}")
    return mask.astype(bool, copy=False)


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


# ---------------------------------------------------------------------------------------------
# result figures
# ---------------------------------------------------------------------------------------------

def metric_table_heatmap(df: pd.DataFrame, metrics: Sequence[str], ax: Axes | None = None,
                         title: str | None = None, *, digits: int = 3,
                         save_path: str | os.PathLike | None = None) -> Figure:
    """Heatmap of a per-domain results table (rows x metrics), annotated with the values.

    Metrics have different units (Dice in [0, 1], HD95 in pixels), so colours are scaled per
    column: brightest = best row in that column, with metrics whose name contains one of
    :data:`LOWER_IS_BETTER` flipped. The annotations show the raw means.

    Args:
        df: the output of :func:`mfmda_lib.evaluation.per_domain_table` (any frame whose
            columns include ``metrics`` works); a ``(method, domain)`` index gives rows
            ``"method / domain"``.
        metrics: columns to show, in order.
        ax: axes to draw into; a new figure when ``None``.
        title: axes title.
        digits: decimals of the annotations.
        save_path: if given, also save the figure there.

    Returns:
        The figure; the heatmap has one annotation text per non-missing cell.
    """
    metrics = list(metrics)
    missing = [m for m in metrics if m not in df.columns]
    if not metrics or missing:
        raise ValueError(f"metric_table_heatmap: metrics {missing or metrics} not among the columns {list(df.columns)}")
    values = df[metrics].astype(float)  # (rows, metrics)
    values.index = [" / ".join(map(str, k)) if isinstance(k, tuple) else str(k) for k in df.index]
    lo, hi = values.min(), values.max()
    goodness = (values - lo) / (hi - lo).where(hi > lo, 1.0)  # per column, 0..1
    for m in metrics:
        if _lower_is_better(m):
            goodness[m] = 1.0 - goodness[m]
    own_figure = ax is None
    if own_figure:
        _, ax = plt.subplots(figsize=(1.4 * len(metrics) + 2, 0.45 * len(values) + 1.2))
    sns.heatmap(goodness, annot=values.to_numpy(), fmt=f".{digits}f", cmap="viridis", vmin=0, vmax=1,
                cbar=False, linewidths=0.5, ax=ax, annot_kws={"fontsize": 8})
    ax.set_xticklabels(ax.get_xticklabels(), rotation=30, ha="right")
    ax.set_ylabel("")
    ax.tick_params(length=0)
    if title is not None:
        ax.set_title(title)
    if own_figure:
        ax.figure.tight_layout()
    return _finish(_root(ax), save_path)


def failure_gallery(result, metric: str = "disc_dice", per_domain: int = 1, *,
                    save_path: str | os.PathLike | None = None) -> Figure:
    """The worst predictions of each domain by ``metric``, truth solid and prediction dashed.

    Args:
        result: an object with ``rows`` (dicts with ``domain`` and ``metric``), ``samples``, and
            ``pred_disc`` / ``pred_cup`` ``(N, H, W)``, e.g. a ``ZeroShotResult``.
        metric: the score to rank by; "worst" is the lowest, or the highest for metrics named in
            :data:`LOWER_IS_BETTER`. ``nan`` (no predicted mask) counts as worst of all.
        per_domain: examples per domain (columns).
        save_path: if given, also save the figure there.

    Returns:
        A figure with one row per domain and ``per_domain`` columns, each titled with the score.
    """
    if not result.rows or metric not in result.rows[0]:
        raise ValueError(f"failure_gallery: result rows have no {metric!r}; "
                         f"available: {sorted(result.rows[0]) if result.rows else []}")
    if per_domain < 1:
        raise ValueError(f"failure_gallery: per_domain must be at least 1, got {per_domain}")
    sign = -1.0 if _lower_is_better(metric) else 1.0  # sort ascending by sign * value: worst first
    by_domain: dict[str, list[int]] = {}
    for i, row in enumerate(result.rows):
        by_domain.setdefault(row["domain"], []).append(i)
    fig, axes = plt.subplots(len(by_domain), per_domain, figsize=(2.6 * per_domain, 2.8 * len(by_domain)),
                             squeeze=False)
    for r, (domain, idx) in enumerate(by_domain.items()):
        worst = sorted(idx, key=lambda i: -np.inf if np.isnan(result.rows[i][metric])
                       else sign * result.rows[i][metric])
        for c in range(per_domain):
            ax = axes[r, c]
            if c >= len(worst):
                ax.axis("off")
                continue
            i = worst[c]
            s = result.samples[i]
            overlay(s.image, s.disc, s.cup, result.pred_disc[i], result.pred_cup[i], ax=ax, legend=False)
            ax.set_title(f"{s.sample_id}\n{metric} {result.rows[i][metric]:.3f}", fontsize=7)
        axes[r, 0].axis("on")
        _bare(axes[r, 0])
        axes[r, 0].set_ylabel(domain, fontsize=10)
    fig.suptitle(f"worst {metric} per domain (truth solid, prediction dashed)", fontsize=10)
    fig.tight_layout()
    return _finish(fig, save_path)


def tta_settings_figure(settings: pd.DataFrame, metrics: Sequence[str] = ("delta_disc_dice", "delta_cup_dice"), *,
                        title: str | None = None, save_path: str | os.PathLike | None = None) -> Figure:
    """Change of mean target Dice over source-only, per test-time method and setting (notebook 06).

    Args:
        settings: indexed by ``(setting, method)`` with the ``metrics`` columns, e.g.
            :attr:`mfmda_lib.adapt.tta_benchmark.TTAResult.settings`.
        metrics: columns to draw, one panel each (bars left of zero: the method hurt).
        title: figure title.
        save_path: if given, also save the figure there.

    Returns:
        The figure; each panel holds one bar container per setting.
    """
    if not isinstance(settings.index, pd.MultiIndex) or list(settings.index.names) != ["setting", "method"]:
        raise ValueError("tta_settings_figure: settings must be indexed by (setting, method)")
    metrics = list(metrics)
    names = list(dict.fromkeys(settings.index.get_level_values("setting")))
    methods = list(dict.fromkeys(settings.index.get_level_values("method")))
    height = 0.8 / len(names)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 0.5 * len(methods) * 1.6 + 1.2),
                             squeeze=False, sharey=True)
    colours = sns.color_palette("colorblind", len(names))
    for ax, metric in zip(axes[0], metrics):
        for k, name in enumerate(names):
            values = settings.loc[name][metric].reindex(methods)
            ax.barh(np.arange(len(methods)) + (k - (len(names) - 1) / 2) * height, values, height,
                    color=colours[k], label=name)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(np.arange(len(methods)), methods, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(metric + " (vs. source-only)")
    axes[0, -1].legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _finish(fig, save_path)


def tta_stream_figure(rows: Sequence[dict], metric: str = "disc_dice", *, methods: Sequence[str] | None = None,
                      title: str | None = None, save_path: str | os.PathLike | None = None) -> Figure:
    """Per-batch ``metric`` along a continual test-time stream, one line per method (notebook 06).

    Args:
        rows: per-image rows with ``method``, ``step`` (batch number), ``domain`` and ``metric``.
        metric: the score to draw.
        methods: which methods, in order (default: all, by first appearance).
        title: axes title.
        save_path: if given, also save the figure there.

    Returns:
        The figure; the background is shaded by domain, so a switch of domain is visible.
    """
    frame = pd.DataFrame(list(rows))
    missing = [k for k in ("method", "step", "domain", metric) if k not in frame.columns]
    if frame.empty or missing:
        raise ValueError(f"tta_stream_figure: rows lack {missing or 'everything'}")
    methods = list(methods or dict.fromkeys(frame["method"]))
    fig, ax = plt.subplots(figsize=(8, 3.6))
    steps = frame.groupby("step")["domain"].first()
    domain_colours = _domain_colours(list(dict.fromkeys(steps)))
    for step, domain in steps.items():
        ax.axvspan(step - 0.5, step + 0.5, color=domain_colours[domain], alpha=0.12, lw=0)
    for domain in dict.fromkeys(steps):
        first = steps.index[steps == domain][0]
        ax.text(first - 0.4, 1.0, domain, fontsize=7, va="top", transform=ax.get_xaxis_transform())
    for method in methods:
        curve = frame[frame["method"] == method].groupby("step")[metric].mean()
        ax.plot(curve.index, curve.to_numpy(), marker="o", ms=3, label=method)
    ax.set_xlabel("test batch along the stream")
    ax.set_ylabel(metric)
    ax.legend(fontsize=7, loc="lower left", ncol=2)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _finish(fig, save_path)


def zero_shot_figure(result, metrics: Sequence[str] = ("disc_dice", "cup_dice"), *,
                     save_path: str | os.PathLike | None = None) -> Figure:
    """Summary of one evaluation run: an example overlay per domain above per-domain box plots.

    Args:
        result: an object with ``rows``, ``samples``, ``pred_disc`` and ``pred_cup`` (see
            :func:`failure_gallery`).
        metrics: per-sample scores shown as box plots, one panel each.
        save_path: if given, also save the figure there.

    Returns:
        A figure whose first ``n_domains`` axes are overlays (the first sample of each domain)
        and whose last ``len(metrics)`` axes are box plots over domains.
    """
    metrics = list(metrics)
    frame = pd.DataFrame(result.rows)
    missing = [m for m in ["domain", *metrics] if m not in frame.columns]
    if frame.empty or missing:
        raise ValueError(f"zero_shot_figure: result rows lack {missing or metrics}")
    domains = list(dict.fromkeys(frame["domain"]))
    fig = plt.figure(figsize=(2.6 * max(len(domains), 2 * len(metrics)), 5.8), layout="constrained")
    top, bottom = fig.subfigures(2, 1)
    for k, (ax, domain) in enumerate(zip(np.atleast_1d(top.subplots(1, len(domains))), domains)):
        i = int(np.flatnonzero(frame["domain"].to_numpy() == domain)[0])  # first sample of the domain
        s = result.samples[i]
        overlay(s.image, s.disc, s.cup, result.pred_disc[i], result.pred_cup[i], ax=ax, legend=k == 0)
        ax.set_title(domain, fontsize=9)
    colours = _domain_colours(domains)
    for ax, m in zip(np.atleast_1d(bottom.subplots(1, len(metrics))), metrics):
        with warnings.catch_warnings():  # seaborn 0.13 passes matplotlib 3.11's deprecated `vert`
            warnings.filterwarnings("ignore", message=".*vert: bool.*", category=DeprecationWarning)
            sns.boxplot(data=frame, x="domain", y=m, hue="domain", order=domains, palette=colours,
                        showfliers=False, legend=False, ax=ax)
        sns.stripplot(data=frame, x="domain", y=m, order=domains, color="black", size=3, ax=ax)
        ax.set_xlabel("")
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    return _finish(fig, save_path)


def method_domain_bars(table: pd.DataFrame, metrics: Sequence[str] = ("disc_dice", "cup_dice"), *,
                       title: str | None = None, save_path: str | os.PathLike | None = None) -> Figure:
    """Grouped bars of a ``(method, domain)`` table: one panel per metric, domains on x, one bar per method.

    Args:
        table: a :func:`mfmda_lib.evaluation.per_domain_table` indexed by ``(method, domain)``, with
            ``m`` and ``m_std`` columns (the ``mean`` rows are drawn as their own group).
        metrics: the columns to draw, one panel each; error bars are the ``_std`` columns.
        title: figure title.
        save_path: if given, also save the figure there.

    Returns:
        The figure; each panel holds one bar container per method.
    """
    if not isinstance(table.index, pd.MultiIndex) or list(table.index.names) != ["method", "domain"]:
        raise ValueError("method_domain_bars: table must be indexed by (method, domain); "
                         "give per_domain_table rows a 'method' key")
    metrics = list(metrics)
    methods = list(dict.fromkeys(table.index.get_level_values("method")))
    domains = list(dict.fromkeys(table.index.get_level_values("domain")))
    width = 0.8 / len(methods)
    fig, axes = plt.subplots(1, len(metrics), figsize=(1.4 * len(domains) * len(metrics) + 2, 3.6), squeeze=False)
    colours = sns.color_palette("colorblind", len(methods))
    for ax, metric in zip(axes[0], metrics):
        for k, method in enumerate(methods):
            part = table.loc[method].reindex(domains)
            std = part[f"{metric}_std"] if f"{metric}_std" in part else None
            ax.bar(np.arange(len(domains)) + (k - (len(methods) - 1) / 2) * width, part[metric], width,
                   yerr=std, capsize=2, color=colours[k], label=method)
        ax.set_xticks(np.arange(len(domains)), domains, rotation=20, fontsize=8)
        ax.set_ylabel(metric)
        ax.set_ylim(0, 1.05)
    axes[0, -1].legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _finish(fig, save_path)
