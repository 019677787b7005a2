"""Interactive explorers where looking beats reading, with a static fallback.

Two explorers, each one call from a notebook:

- :func:`severity_explorer`: a slider over domain-shift severity; every hospital's eye re-rendered
  by the synthetic generator at that severity (notebook 00).
- :func:`box_prompt_explorer`: sliders for the box margin and a random corner jitter; LiteMedSAM's
  mask and Dice for that prompt, from the cached image embedding (notebook 01).

Widgets need a live front end (JupyterLab, Notebook, VS Code, Colab). Under nbval, nbconvert or in
an exported HTML file nobody can move a slider, so the explorers draw a static grid of a few slider
values instead. :func:`use_widgets` decides: an explicit ``interactive=True/False`` wins; otherwise
(``None``) widgets are used when ``ipywidgets`` imports and the code runs in a Jupyter kernel whose
front end can answer ``input()`` (the last execute request allowed stdin), which interactive front
ends do and headless executors (nbval, nbclient/nbconvert, papermill) do not.
"""
from __future__ import annotations

import importlib.util
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from ..data.domains import DOMAINS, SEVERITY_STEPS, style_at
from ..data.sample import FundusSample
from ..data.synthetic import generate_sample
from ..evaluation.metrics import dice
from ..models import EmbeddingCache, PromptableSegmenter, segment
from .images import overlay

__all__ = ["widget_frontend", "use_widgets", "severity_panel", "severity_grid", "severity_explorer",
           "jittered_box", "prompt_prediction", "box_grid", "box_prompt_explorer",
           "STATIC_MARGINS", "STATIC_JITTERS"]

#: Slider ranges ``(min, max, step)``.
SEVERITY_RANGE = (0.0, 2.0, 0.25)
MARGIN_RANGE = (0, 32, 2)
JITTER_RANGE = (0, 16, 2)
#: Slider values the static fallback shows.
STATIC_MARGINS = (0, 8, 32)
STATIC_JITTERS = (0, 8)


# ---------------------------------------------------------------------------------------------
# widgets or not
# ---------------------------------------------------------------------------------------------

def widget_frontend(shell=None) -> bool:
    """Whether a live, interactive Jupyter front end runs this code.

    Args:
        shell: an IPython shell (default: ``IPython.get_ipython()``); ``None`` outside IPython.

    Returns:
        ``True`` when the shell has a kernel whose current execute request allowed stdin.
    """
    if shell is None:
        try:
            from IPython import get_ipython
        except ImportError:
            return False
        shell = get_ipython()
    kernel = getattr(shell, "kernel", None)
    return bool(kernel is not None and getattr(kernel, "_allow_stdin", False))


def use_widgets(interactive: bool | None = None, shell=None) -> bool:
    """Decide between widgets and the static fallback.

    Args:
        interactive: ``True`` forces widgets (raises if ``ipywidgets`` is missing), ``False`` forces
            the static figure, ``None`` asks :func:`widget_frontend`.
        shell: passed to :func:`widget_frontend`.
    """
    have = importlib.util.find_spec("ipywidgets") is not None
    if interactive is True and not have:
        raise ValueError("interactive=True needs ipywidgets: pip install ipywidgets (or pass interactive=False)")
    if interactive is not None:
        return bool(interactive)
    return have and widget_frontend(shell)


def _show(widget):
    from IPython.display import display

    display(widget)
    return widget


# ---------------------------------------------------------------------------------------------
# severity explorer
# ---------------------------------------------------------------------------------------------

def severity_panel(severity: float, *, index: int = 0, size: int = 256, domains: Sequence[str] = tuple(DOMAINS),
                   axes: Sequence | None = None) -> Figure:
    """One row: eye ``index`` of each domain rendered at ``severity``, titled with its camera traits.

    Args:
        severity: domain-shift severity (0 = every domain drawn like the source).
        index: which eye of each domain's ``train`` stream.
        size: image side (pixels).
        domains: the domains, one panel each.
        axes: ``len(domains)`` axes to draw into (a new figure when ``None``).

    Returns:
        The figure.
    """
    if axes is None:
        _, axes = plt.subplots(1, len(domains), figsize=(2.6 * len(domains), 2.9), squeeze=False)
        axes = axes[0]
    for ax, domain in zip(axes, domains):
        s = generate_sample(domain, index, size=size, severity=severity)
        st = style_at(domain, severity)
        ax.imshow(s.image)
        ax.set_title(f"{domain}\ngamma {st.gamma:.2f} contrast {st.contrast:.2f} blur {st.blur_sigma:.1f}",
                     fontsize=7)
        ax.axis("off")
    fig = axes[0].figure
    fig.suptitle(f"severity {severity:g}", fontsize=10)
    return fig


def severity_grid(severities: Sequence[float] = SEVERITY_STEPS, *, index: int = 0, size: int = 256,
                  domains: Sequence[str] = tuple(DOMAINS), title: str | None = None) -> Figure:
    """The static fallback: rows are domains, columns are ``severities`` (``title`` replaces the default)."""
    fig, axes = plt.subplots(len(domains), len(severities), figsize=(1.9 * len(severities), 2.0 * len(domains)),
                             squeeze=False)
    for c, sev in enumerate(severities):
        for r, domain in enumerate(domains):
            ax = axes[r, c]
            ax.imshow(generate_sample(domain, index, size=size, severity=sev).image)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"severity {sev:g}", fontsize=9)
            if c == 0:
                ax.set_ylabel(domain, fontsize=8)
    fig.suptitle(title or "the same eyes at growing domain shift (static view: move the slider in a live notebook)",
                 fontsize=9)
    fig.tight_layout()
    return fig


def severity_explorer(*, size: int = 256, index: int = 0, domains: Sequence[str] = tuple(DOMAINS),
                      interactive: bool | None = None, max_index: int = 9):
    """A severity slider (and an eye selector) over every domain; a static grid without a front end.

    Returns:
        The displayed ``ipywidgets.interactive`` widget, or the static :class:`Figure`.
    """
    if not use_widgets(interactive):
        return severity_grid(SEVERITY_STEPS, index=index, size=size, domains=domains)
    import ipywidgets as w

    def draw(severity: float, eye: int) -> None:  # returns None: interactive would display a result twice
        severity_panel(severity, index=eye, size=size, domains=domains)

    lo, hi, step = SEVERITY_RANGE
    return _show(w.interactive(
        draw,
        severity=w.FloatSlider(value=1.0, min=lo, max=hi, step=step, continuous_update=False),
        eye=w.IntSlider(value=index, min=0, max=max_index, continuous_update=False)))


# ---------------------------------------------------------------------------------------------
# box-prompt explorer
# ---------------------------------------------------------------------------------------------

def jittered_box(box: np.ndarray, jitter: int, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Move each corner coordinate of ``[x0, y0, x1, y1]`` by a random integer in ``[-jitter, jitter]``.

    The result is clipped to the image (``shape`` = ``(H, W)``) and keeps ``x0 < x1``, ``y0 < y1``.
    """
    box = np.asarray(box, dtype=np.float32) + rng.integers(-jitter, jitter + 1, size=4)  # (4,)
    h, w = shape
    x0, x1 = np.clip(sorted(box[[0, 2]]), 0, w - 1)
    y0, y1 = np.clip(sorted(box[[1, 3]]), 0, h - 1)
    return np.array([x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)], dtype=np.float32)


def prompt_prediction(model: PromptableSegmenter, sample: FundusSample, cache: EmbeddingCache | None, *,
                      structure: str = "disc", margin: int = 0, jitter: int = 0,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """The model's mask for one box prompt, and its Dice against the truth.

    Args:
        model: the promptable segmenter.
        sample: the image and its masks.
        cache: embedding cache (the encoder then runs at most once for this image).
        structure: ``"disc"`` or ``"cup"``.
        margin: pixels added around the tight box.
        jitter: random corner displacement (pixels), drawn from ``seed``.
        seed: seed of the jitter.

    Returns:
        ``(box, mask, dice)``: ``(4,)`` prompt, ``(H, W)`` bool mask, Dice.
    """
    box = sample.box(structure, margin)
    if jitter:
        box = jittered_box(box, jitter, np.random.default_rng([seed, jitter]), sample.image.shape[:2])
    prob = segment(model, [sample.image], box[None], cache=cache, batch_size=1, progress=False)[0]  # (H, W)
    mask = prob > 0.5
    return box, mask, dice(mask, getattr(sample, structure))


def _box_panel(model, sample, cache, structure, margin, jitter, seed, ax) -> None:
    box, mask, d = prompt_prediction(model, sample, cache, structure=structure, margin=margin, jitter=jitter,
                                     seed=seed)
    masks = {"disc": (sample.disc, None, mask, None), "cup": (None, sample.cup, None, mask)}[structure]
    overlay(sample.image, *masks, box=box, ax=ax, legend=False,
            title=f"margin {margin}, jitter {jitter}: Dice {d:.3f}")
    ax.title.set_fontsize(8)


def box_grid(model: PromptableSegmenter, sample: FundusSample, cache: EmbeddingCache | None = None, *,
             structure: str = "disc", margins: Sequence[int] = STATIC_MARGINS,
             jitters: Sequence[int] = STATIC_JITTERS, seed: int = 0) -> Figure:
    """The static fallback: rows are jitters, columns are margins; each panel titled with its Dice."""
    fig, axes = plt.subplots(len(jitters), len(margins), figsize=(2.7 * len(margins), 2.9 * len(jitters)),
                             squeeze=False)
    for r, jitter in enumerate(jitters):
        for c, margin in enumerate(margins):
            _box_panel(model, sample, cache, structure, margin, jitter, seed, axes[r, c])
    fig.suptitle(f"{sample.domain}: {structure} box prompts (truth solid, prediction dashed; "
                 "static view: move the sliders in a live notebook)", fontsize=9)
    fig.tight_layout()
    return fig


def box_prompt_explorer(model: PromptableSegmenter, sample: FundusSample, cache: EmbeddingCache | None = None, *,
                        structure: str = "disc", seed: int = 0, interactive: bool | None = None):
    """Sliders for box margin, jitter and its seed -> the mask and Dice; a static grid without a front end.

    Returns:
        The displayed ``ipywidgets.interactive`` widget, or the static :class:`Figure`.
    """
    if structure not in ("disc", "cup"):
        raise ValueError(f"structure must be 'disc' or 'cup', got {structure!r}")
    if not use_widgets(interactive):
        return box_grid(model, sample, cache, structure=structure, seed=seed)
    import ipywidgets as w

    def draw(structure: str, margin: int, jitter: int, seed: int) -> None:
        _, ax = plt.subplots(figsize=(4.2, 4.2))
        _box_panel(model, sample, cache, structure, margin, jitter, seed, ax)

    return _show(w.interactive(
        draw, structure=w.ToggleButtons(options=["disc", "cup"], value=structure),
        margin=w.IntSlider(value=0, min=MARGIN_RANGE[0], max=MARGIN_RANGE[1], step=MARGIN_RANGE[2],
                           continuous_update=False),
        jitter=w.IntSlider(value=0, min=JITTER_RANGE[0], max=JITTER_RANGE[1], step=JITTER_RANGE[2],
                           continuous_update=False),
        seed=w.IntSlider(value=seed, min=0, max=9, continuous_update=False)))
