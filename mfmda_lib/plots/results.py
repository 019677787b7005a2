"""Figures of results: metric heatmaps, failure galleries, method comparisons, TTA settings."""
from __future__ import annotations

import os
import warnings
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ._common import _bare, _domain_colours, _finish, _lower_is_better, _root
from .images import overlay


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
