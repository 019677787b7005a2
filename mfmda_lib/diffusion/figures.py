"""Figures of notebooks 07-08: image grids, the forward process, SDEdit sweeps, stage-1 weights and losses.

Like :mod:`mfmda_lib.plots`, every helper returns a :class:`~matplotlib.figure.Figure` and never
calls ``plt.show()``. Images are uint8 ``(H, W, 3)`` arrays or ``(B, 3, H, W)`` tensors in ``[-1, 1]``.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from .ddpm import to_uint8
from .losses import A_MAX, EVEN_T_RANGE, ODD_T_RANGE, a_weight

__all__ = ["image_grid", "forward_process_figure", "sdedit_tradeoff_figure", "loss_weights_figure",
           "stage1_history_figure", "sdedit_explorer"]


def _as_images(images) -> list[np.ndarray]:
    if isinstance(images, torch.Tensor):
        return list(to_uint8(images))  # (B, 3, H, W) in [-1, 1]
    images = list(images)
    if images and isinstance(images[0], torch.Tensor):
        return list(to_uint8(torch.stack(images)))  # B tensors (3, H, W)
    return [np.asarray(img) for img in images]


def image_grid(rows: Mapping[str, Sequence[np.ndarray] | torch.Tensor], *, col_titles: Sequence[str] | None = None,
               title: str | None = None, size: float = 1.6) -> Figure:
    """One labelled row per entry of ``rows`` (name -> images); rows may have different lengths."""
    rows = {name: _as_images(imgs) for name, imgs in rows.items()}
    n_cols = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(size * n_cols, size * len(rows) + 0.4), squeeze=False)
    for r, (name, images) in enumerate(rows.items()):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.set_xticks([]), ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(images):
                ax.imshow(images[c])
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
            if r == 0 and col_titles is not None and c < len(col_titles):
                ax.set_title(col_titles[c], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def forward_process_figure(trajectory: torch.Tensor, ts: Sequence[int], alpha_bar: torch.Tensor) -> Figure:
    """``x_t ~ q(x_t | x_0)`` at several ``t`` with the signal fraction ``sqrt(alpha_bar_t)`` in each title."""
    titles = [f"t={t}\nsqrt(abar)={float(alpha_bar[t]) ** 0.5:.2f}" for t in ts]
    return image_grid({"x_t": trajectory}, col_titles=titles, size=1.5)


def sdedit_tradeoff_figure(ts: Sequence[int], faithfulness: Sequence[float], realism: Sequence[float], *,
                           faithfulness_label: str = "PSNR to the input (dB)",
                           realism_label: str = "distance to the source centroid in f") -> Figure:
    """Two curves against SDEdit's ``t_0``: faithfulness to the input and closeness to the model's domain."""
    fig, ax = plt.subplots(figsize=(5.5, 3))
    finite = [(t, f) for t, f in zip(ts, faithfulness) if np.isfinite(f)]  # PSNR is infinite at t_0 = 0
    ax.plot([t for t, _ in finite], [f for _, f in finite], "o-", color="tab:blue", label=faithfulness_label)
    ax.set_xlabel("SDEdit noise level t_0"), ax.set_ylabel(faithfulness_label, color="tab:blue")
    other = ax.twinx()
    other.plot(ts, realism, "s--", color="tab:orange", label=realism_label)
    other.set_ylabel(realism_label, color="tab:orange")
    ax.set_title("SDEdit: faithfulness vs. realism", fontsize=10)
    fig.tight_layout()
    return fig


def loss_weights_figure(T: int = 1000) -> Figure:
    """MFM-DA's stage-1 weights against ``t``: ``a(t)`` on the direction losses, the rest on ``L_diff``."""
    t = torch.arange(T)
    a = a_weight(t, T).numpy()
    fig, ax = plt.subplots(figsize=(6, 3))
    even = (t >= EVEN_T_RANGE[0]) & (t < EVEN_T_RANGE[1])
    odd = (t >= ODD_T_RANGE[0]) & (t < ODD_T_RANGE[1])
    ax.plot(t, a, color="grey", lw=0.8, label="a(t) = 20^(t/1000)")
    ax.plot(t[even], a[even], lw=2.5, label="even: weight of L_DC + L_style = a(t)")
    ax.plot(t[even], A_MAX - a[even], lw=2.5, label="even: weight of L_diff = 20^0.9 - a(t)")
    ax.plot(t[odd], (A_MAX - a[odd]) / 5, lw=2.5, label="odd: weight of L_diff = (20^0.9 - a(t)) / 5")
    ax.set_xlabel("timestep t"), ax.set_ylabel("weight")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def stage1_history_figure(histories: Mapping[str, Sequence[dict]],
                          keys: Sequence[str] = ("l_dc", "l_style", "l_target"), smooth: int = 10) -> Figure:
    """Per-step stage-1 losses of each variant (moving average over ``smooth`` logged steps).

    ``l_dc`` and ``l_style`` are logged on even iterations (weighted by ``a(t)``); ``l_target`` is the
    unweighted noise loss on the target images at every iteration (its t range alternates, hence the smoothing).
    """
    fig, axes = plt.subplots(1, len(keys), figsize=(3.3 * len(keys), 2.8), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for variant, steps in histories.items():
            pts = [(s["step"], s[key]) for s in steps if key in s]
            if not pts:
                continue
            x, y = np.array(pts).T
            k = max(1, min(smooth, len(y)))
            ax.plot(x[k - 1:], np.convolve(y, np.ones(k) / k, mode="valid"), label=variant)
        ax.set_title(key, fontsize=9), ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def sdedit_explorer(sweep, interactive: bool | None = None):
    """A slider over an :class:`~.sdedit_sweep.SDEditSweep`'s ``t_0`` in a live notebook, else nothing.

    Returns the slider widget, or ``None`` when no live front end is there (the caller shows a
    static grid instead; see :func:`mfmda_lib.plots.widgets.use_widgets`).
    """
    from ..plots.widgets import use_widgets

    if not use_widgets(interactive):
        print("no live notebook front end: the static grid above shows every t0")
        return None
    import ipywidgets as widgets
    from IPython.display import display

    out = widgets.Output()
    slider = widgets.SelectionSlider(options=list(sweep.ts), description="t0")

    def show(_change=None) -> None:
        with out:
            out.clear_output(wait=True)
            fig = image_grid({"input": sweep.inputs, f"t0 = {slider.value}": sweep.outputs[slider.value]})
            display(fig)
            plt.close(fig)

    slider.observe(show, names="value")
    show()
    display(widgets.VBox([slider, out]))
    return slider
