"""Figures of the clinical evaluation (notebook 10): intervals, ROC curves, reliability diagrams.

Each helper takes the tables and results of :mod:`mfmda_lib.evaluation.clinical`, draws into
``ax`` when given (else a new figure) and returns the figure, like every helper in this package.
"""
from __future__ import annotations

import os
from typing import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ._common import _domain_colours, _finish, _root

__all__ = ["ci_forest", "roc_figure", "reliability_diagram", "clinical_summary_figure"]


def _axes(ax: Axes | None, size: tuple[float, float]) -> Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=size)
    return ax


def ci_forest(table: pd.DataFrame, metric: str, ax: Axes | None = None, title: str | None = None, *,
              save_path: str | os.PathLike | None = None) -> Figure:
    """A forest plot: one row per group, the mean as a dot and its interval as a bar.

    Args:
        table: a :func:`~mfmda_lib.evaluation.clinical.ci_table` with ``metric``, ``metric_lo``, ``metric_hi``.
        metric: the column to draw.
        ax: axes to draw into (a new figure when ``None``).
        title: axes title (default: the metric).
        save_path: if given, also save the figure there.

    Returns:
        The figure; one error bar per row of ``table`` in ``ax.containers``.
    """
    for col in (metric, f"{metric}_lo", f"{metric}_hi"):
        if col not in table.columns:
            raise ValueError(f"ci_forest: table has no column {col!r}; columns: {list(table.columns)}")
    ax = _axes(ax, (5, 0.5 + 0.45 * len(table)))
    labels = [str(k) for k in table.index]
    colours = _domain_colours(labels)
    for y, (label, (_, row)) in enumerate(zip(labels, table.iterrows())):
        v, lo, hi = row[metric], row[f"{metric}_lo"], row[f"{metric}_hi"]
        ax.errorbar([v], [y], xerr=[[v - lo], [hi - v]], fmt="o", color=colours[label], capsize=4)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel(f"{metric} (mean and interval)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title or metric, fontsize=10)
    return _finish(_root(ax), save_path)


def roc_figure(screenings: Mapping[str, object], ax: Axes | None = None, title: str | None = None, *,
               save_path: str | os.PathLike | None = None) -> Figure:
    """ROC curves of glaucoma screening, one per entry, with the fixed-specificity operating point.

    Args:
        screenings: label -> :class:`~mfmda_lib.evaluation.screening.ScreeningResult`. Entries with an
            undefined ROC (one class) are listed in the legend as such.
        ax: axes to draw into.
        title: axes title.
        save_path: if given, also save the figure there.

    Returns:
        The figure; one line per defined curve plus the chance diagonal.
    """
    ax = _axes(ax, (4.2, 4))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":", label="chance")
    colours = _domain_colours(list(screenings))
    for label, s in screenings.items():
        if s.fpr.size == 0:
            ax.plot([], [], color=colours[label], label=f"{label}: undefined ({s.n_positive} suspects)")
            continue
        ax.plot(s.fpr, s.tpr, color=colours[label], lw=1.8,
                label=f"{label}: AUC {s.auc:.2f} [{s.auc_lo:.2f}, {s.auc_hi:.2f}]")
        if np.isfinite(s.sensitivity_at_specificity):
            ax.plot([1 - s.target_specificity], [s.sensitivity_at_specificity], "o", color=colours[label], ms=6)
    ax.axvline(1 - next(iter(screenings.values())).target_specificity if screenings else 0.1,
               color="grey", lw=0.6, ls="--")
    ax.set_xlabel("1 - specificity (healthy eyes referred)")
    ax.set_ylabel("sensitivity (suspects found)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title or "glaucoma screening from predicted vCDR", fontsize=10)
    return _finish(_root(ax), save_path)


def reliability_diagram(tables: Mapping[str, pd.DataFrame], ax: Axes | None = None, title: str | None = None, *,
                        save_path: str | os.PathLike | None = None) -> Figure:
    """Observed foreground frequency against predicted probability, one line per entry.

    Args:
        tables: label -> :func:`~mfmda_lib.evaluation.calibration.reliability_table` output (label may
            carry the ECE, e.g. ``"cup (ECE 0.12)"``).
        ax: axes to draw into.
        title: axes title.
        save_path: if given, also save the figure there.

    Returns:
        The figure; the diagonal is perfect calibration, points below it are over-confident and
        above it under-confident; marker area grows with the bin's pixel count.
    """
    ax = _axes(ax, (4.2, 4))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":", label="perfectly calibrated")
    colours = _domain_colours(list(tables))
    for label, t in tables.items():
        filled = t[t["count"] > 0]
        size = 10 + 90 * np.sqrt(filled["count"] / max(filled["count"].max(), 1))
        ax.plot(filled["confidence"], filled["frequency"], "-", color=colours[label], lw=1.4, label=label)
        ax.scatter(filled["confidence"], filled["frequency"], s=size, color=colours[label], alpha=0.7)
    ax.set_xlabel("predicted probability (bin mean)")
    ax.set_ylabel("observed foreground frequency")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(title or "reliability diagram (pixels in the prompt boxes)", fontsize=10)
    return _finish(_root(ax), save_path)


def clinical_summary_figure(domain_table: pd.DataFrame, screenings: Mapping[str, object],
                            reliability: Mapping[str, pd.DataFrame], *, metric: str = "cup_dice",
                            save_path: str | os.PathLike | None = None) -> Figure:
    """Three panels for a slide: per-domain interval of ``metric``, ROC curves, reliability diagram."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    ci_forest(domain_table, metric, ax=axes[0], title=f"{metric} per domain")
    roc_figure(screenings, ax=axes[1])
    reliability_diagram(reliability, ax=axes[2])
    fig.tight_layout()
    return _finish(fig, save_path)
