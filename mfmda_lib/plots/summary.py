"""Summary figures of saved result tables: what a slide shows of notebooks 01-04 and 08.

Each helper takes the table a notebook saved (``results/<name>_<profile>.json``, its ``table``
records as a DataFrame) and finds rows by their method or key column, never by position, so a
table regenerated with more methods or seeds still draws.
"""
from __future__ import annotations

import os
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from ._common import CUP_COLOUR, DISC_COLOUR, _finish

__all__ = ["box_margin_figure", "peft_tradeoff_figure", "transfer_figure", "label_budget_figure",
           "stage1_variants_figure"]


def _require(table: pd.DataFrame, columns: Sequence[str], who: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{who}: table has no column(s) {missing}; columns: {list(table.columns)}")


def box_margin_figure(sweep: pd.DataFrame, *, save_path: str | os.PathLike | None = None) -> Figure:
    """Mean disc and cup Dice against the box-prompt margin (notebook 01's sweep, indexed by ``margin``)."""
    _require(sweep, ["disc_dice", "cup_dice"], "box_margin_figure")
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for metric, colour, marker in (("disc_dice", DISC_COLOUR, "o"), ("cup_dice", CUP_COLOUR, "s")):
        ax.plot(sweep.index, sweep[metric], marker=marker, color=colour, mec="black", label=metric)
    ax.set_xlabel("box margin (pixels)")
    ax.set_ylabel("mean Dice (all domains)")
    ax.set_title("Dice vs. box margin", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _finish(fig, save_path)


def peft_tradeoff_figure(table: pd.DataFrame, *, score: str = "cross_domain_disc_dice",
                         save_path: str | os.PathLike | None = None) -> Figure:
    """Share of trainable parameters (log scale) against a score, one labelled point per method; the marker
    area grows with the training memory (notebook 04's ``peft_segmentation`` table)."""
    _require(table, ["method", "trainable_pct", score], "peft_tradeoff_figure")
    fig, ax = plt.subplots(figsize=(7, 4))
    memory = table["train_memory_mb"] if "train_memory_mb" in table else pd.Series(50.0, index=table.index)
    sizes = 40 + 300 * memory / max(float(memory.max()), 1e-9)
    colours = sns.color_palette("colorblind", len(table))
    for (_, row), size, colour in zip(table.iterrows(), sizes, colours):
        ax.scatter(max(row["trainable_pct"], 1e-4), row[score], s=size, color=colour, edgecolor="black", alpha=0.85)
        ax.annotate(str(row["method"]), (max(row["trainable_pct"], 1e-4), row[score]), fontsize=7,
                    xytext=(5, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (% of encoder + head, log scale)")
    ax.set_ylabel(score)
    ax.set_title("PEFT: what trains against what it scores (marker area: training memory)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _finish(fig, save_path)


def transfer_figure(table: pd.DataFrame, *, structures: Sequence[str] = ("disc", "cup"),
                    save_path: str | os.PathLike | None = None) -> Figure:
    """In-domain against cross-domain Dice per method (notebook 03's ``fine_tuning_strategies`` table):
    one panel per structure, a pair of bars per method."""
    cols = [f"{where}_{s}_dice" for s in structures for where in ("in_domain", "cross_domain")]
    _require(table, ["method", *cols], "transfer_figure")
    methods = list(table["method"])
    fig, axes = plt.subplots(1, len(structures), figsize=(4.2 * len(structures), 3.4), squeeze=False, sharey=True)
    x = np.arange(len(methods))
    for ax, s in zip(axes[0], structures):
        for k, (where, colour) in enumerate((("in_domain", "#0072B2"), ("cross_domain", "#D55E00"))):
            ax.bar(x + (k - 0.5) * 0.38, table[f"{where}_{s}_dice"], 0.38, color=colour, label=where.replace("_", "-"))
        ax.set_xticks(x, methods, rotation=20, fontsize=8)
        ax.set_title(f"{s} Dice", fontsize=10)
        ax.set_ylim(0, 1.05)
    axes[0, 0].set_ylabel("Dice")
    axes[0, -1].legend(fontsize=8)
    fig.tight_layout()
    return _finish(fig, save_path)


def label_budget_figure(table: pd.DataFrame, *, metrics: Sequence[str] = ("target_disc_dice", "target_cup_dice"),
                        save_path: str | os.PathLike | None = None) -> Figure:
    """A score against the share of labels, one line per initialisation, one panel per protocol and metric
    (notebook 02's ``self_supervised_pretraining`` table: ``protocol``, ``budget``, ``init``)."""
    _require(table, ["protocol", "budget", "init", *metrics], "label_budget_figure")
    protocols = list(dict.fromkeys(table["protocol"]))
    inits = list(dict.fromkeys(table["init"]))
    fig, axes = plt.subplots(len(metrics), len(protocols), figsize=(3.8 * len(protocols), 2.8 * len(metrics)),
                             squeeze=False, sharex=True)
    colours = dict(zip(inits, sns.color_palette("colorblind", len(inits))))
    for i, metric in enumerate(metrics):
        for j, protocol in enumerate(protocols):
            ax = axes[i, j]
            for init in inits:
                part = table[(table["protocol"] == protocol) & (table["init"] == init)].sort_values("budget")
                ax.plot(part["budget"] * 100, part[metric], "o-", color=colours[init], label=init)
            ax.set_xscale("log")
            ax.set_title(f"{protocol}: {metric}", fontsize=9)
            ax.grid(alpha=0.3)
            if i == len(metrics) - 1:
                ax.set_xlabel("labelled source images (%)")
    axes[0, -1].legend(fontsize=8)
    fig.tight_layout()
    return _finish(fig, save_path)


def stage1_variants_figure(table: pd.DataFrame, *, save_path: str | os.PathLike | None = None) -> Figure:
    """Stage 1's variants (notebook 08's ``mfmda_stage1`` table): the domain gap left in LiteMedSAM's embedding
    (lower: closer to the target) and the structure kept (LiteMedSAM Dice on the translations)."""
    _require(table, ["method", "gap_left", "disc_dice", "cup_dice"], "stage1_variants_figure")
    methods = list(table["method"])
    x = np.arange(len(methods))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    axes[0].bar(x, table["gap_left"], color=sns.color_palette("colorblind", len(methods)))
    axes[0].axhline(1.0, color="black", lw=0.8, ls="--")
    axes[0].set_title("domain gap left (1 = untranslated)", fontsize=10)
    for k, (s, colour) in enumerate((("disc_dice", DISC_COLOUR), ("cup_dice", CUP_COLOUR))):
        axes[1].bar(x + (k - 0.5) * 0.38, table[s], 0.38, color=colour, edgecolor="black", label=s)
    axes[1].set_ylim(0, 1.05)
    axes[1].set_title("structure kept (LiteMedSAM Dice)", fontsize=10)
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.set_xticks(x, methods, rotation=20, fontsize=8)
    fig.tight_layout()
    return _finish(fig, save_path)
