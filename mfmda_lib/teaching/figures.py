"""Figures and tables for the slide decks: found in the results, computed cheaply, or a placeholder.

A deck names what it shows, never a file path:

- ``figure:NAME`` is a figure a notebook saved, ``<results>/figures/NAME_<profile>.png``. ``NAME`` may
  hold ``*`` wildcards (a notebook not written yet can be referenced by a pattern). Profiles are
  tried in :data:`PROFILE_PREFERENCE` order, the first folder first.
- ``generated:KEY`` is a figure computed here in about a second from the synthetic benchmark
  (:data:`GENERATORS`), so it never depends on a notebook having run.
- ``{{table:NAME}}`` or ``{{table:NAME:ROWS}}`` inserts the Markdown table of ``<results>/NAME_<profile>.md``.

Whatever is missing becomes a clearly labelled placeholder (a grey PNG that says which notebook
produces it; an italic line for a table), so a deck always builds and never points to a missing file.
"""
from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Callable, Sequence

import matplotlib.pyplot as plt

__all__ = ["PROFILE_PREFERENCE", "GENERATORS", "FigureSource", "find_result_file", "figure_png", "table_markdown",
           "placeholder_png"]

#: Which profile's results a deck prefers when several exist (largest, most meaningful first).
PROFILE_PREFERENCE = ("gpu", "colab", "cpu", "ci")

_NOTEBOOK_HINTS = {  # result-name prefix -> the notebook that produces it (for placeholder text)
    "domain": "00", "benchmark": "00", "zero_shot": "01", "self_supervised": "02", "ssl": "02", "fine": "03",
    "peft": "04", "parameter": "04", "sam_decoder": "05", "test_time": "06", "diffusion": "07", "sdedit": "07",
    "mfmda_stage1": "08", "mfmda_stage2": "09", "clinical": "10",
}


class FigureSource:
    """Where a reference was resolved: ``"result"``, ``"generated"`` or ``"placeholder"``, and from what."""

    def __init__(self, kind: str, detail: str) -> None:
        self.kind, self.detail = kind, detail

    def __repr__(self) -> str:
        return f"FigureSource({self.kind!r}, {self.detail!r})"


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _hint(name: str) -> str:
    clean = name.strip("*").lower()
    for prefix, notebook in _NOTEBOOK_HINTS.items():
        if clean.startswith(prefix) or prefix in clean:
            return f"run notebook {notebook}"
    return "run the notebooks"


def find_result_file(folders: Sequence[Path], name: str, suffix: str, sub: str = "") -> Path | None:
    """The first ``<folder>/<sub>/<name>_<profile><suffix>`` found, profiles in preference order.

    ``name`` may contain ``*``; among several matches of one profile the name sorting first wins.
    """
    for profile in PROFILE_PREFERENCE:
        for folder in folders:
            base = Path(folder) / sub if sub else Path(folder)
            matches = sorted(p for p in base.glob(f"{name}_{profile}{suffix}") if p.is_file())
            if matches:
                return matches[0]
    return None


def placeholder_png(name: str, message: str) -> bytes:
    """A grey, hatched PNG saying that figure ``name`` is missing and how to produce it."""
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.add_patch(plt.Rectangle((0, 0), 1, 1, facecolor="#eeeeee", edgecolor="#999999", hatch="//", lw=2))
    ax.text(0.5, 0.62, "PLACEHOLDER: figure not produced yet", ha="center", va="center", fontsize=16,
            weight="bold", color="#444444", bbox={"facecolor": "white", "edgecolor": "none"})
    ax.text(0.5, 0.38, f"{name}\n{message}", ha="center", va="center", fontsize=11, color="#444444",
            bbox={"facecolor": "white", "edgecolor": "none"})
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    return _png(fig)


# ---------------------------------------------------------------------------------------------
# cheap generated figures (the synthetic benchmark renders an eye in ~0.05 s)
# ---------------------------------------------------------------------------------------------

def _domains_figure() -> bytes:
    from ..data import DOMAINS, generate_sample
    from ..plots import overlay

    fig, axes = plt.subplots(1, len(DOMAINS), figsize=(3 * len(DOMAINS), 3.3))
    for ax, domain in zip(axes, DOMAINS):
        s = generate_sample(domain, 0, split="test", size=256)
        overlay(s.image, s.disc, s.cup, ax=ax, legend=False, title=f"{domain}\n{DOMAINS[domain].camera.split(' (')[0]}")
        ax.title.set_fontsize(9)
    fig.suptitle("four synthetic hospitals (truth: disc yellow, cup blue)", fontsize=11)
    fig.tight_layout()
    return _png(fig)


def _severity_figure() -> bytes:
    from ..data import SEVERITY_STEPS, TARGET_DOMAINS
    from ..plots.widgets import severity_grid

    return _png(severity_grid(SEVERITY_STEPS, size=160, domains=TARGET_DOMAINS,
                              title="each hospital's eye 0 from severity 0 (source camera) to 2"))


def _vcdr_figure() -> bytes:
    from ..data import generate_sample
    from ..plots import overlay

    fig, axes = plt.subplots(1, 2, figsize=(7, 3.6))
    for ax, (domain, index) in zip(axes, (("refuge_train", 1), ("refuge_train", 2))):  # not suspect, suspect
        s = generate_sample(domain, index, split="test", size=256)
        x0, y0, x1, y1 = s.box("disc", 12).astype(int)
        crop = (slice(y0, y1 + 1), slice(x0, x1 + 1))
        overlay(s.image[crop], s.disc[crop], s.cup[crop], ax=ax, legend=False,
                title=f"vCDR {s.vcdr:.2f}: {'glaucoma suspect' if s.glaucoma else 'not suspect'}")
    fig.suptitle("vertical cup-to-disc ratio = cup height / disc height (suspect at >= 0.6)", fontsize=10)
    fig.tight_layout()
    return _png(fig)


#: Figures a deck can ask for with ``generated:KEY``.
GENERATORS: dict[str, Callable[[], bytes]] = {
    "domains": _domains_figure,
    "severity": _severity_figure,
    "vcdr": _vcdr_figure,
}


# ---------------------------------------------------------------------------------------------
# resolving references
# ---------------------------------------------------------------------------------------------

def figure_png(ref: str, folders: Sequence[Path]) -> tuple[bytes, FigureSource]:
    """PNG bytes for a deck's image reference (``figure:NAME`` or ``generated:KEY``); never raises for a missing one."""
    kind, _, name = ref.partition(":")
    if kind == "figure" and name:
        path = find_result_file(folders, name, ".png", sub="figures")
        if path is not None:
            return path.read_bytes(), FigureSource("result", str(path))
        return placeholder_png(name, f"{_hint(name)} to produce results/figures/{name}_<profile>.png"), \
            FigureSource("placeholder", name)
    if kind == "generated" and name in GENERATORS:
        return GENERATORS[name](), FigureSource("generated", name)
    return placeholder_png(ref, f"unknown reference (use figure:NAME or generated:{'|'.join(GENERATORS)})"), \
        FigureSource("placeholder", ref)


_TABLE_LINE = re.compile(r"^\s*\|")


def table_markdown(name: str, folders: Sequence[Path], max_rows: int | None = None) -> tuple[str, FigureSource]:
    """The Markdown table saved in ``<results>/NAME_<profile>.md`` with a caption line, or a placeholder line."""
    path = find_result_file(folders, name, ".md")
    if path is None:
        return f"*Table `{name}` not produced yet: {_hint(name)}.*", FigureSource("placeholder", name)
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if _TABLE_LINE.match(line)]
    if not lines:
        return f"*Table `{name}`: no table in {path.name}.*", FigureSource("placeholder", name)
    dropped = 0
    if max_rows is not None and len(lines) > max_rows + 2:
        dropped = len(lines) - 2 - max_rows
        lines = lines[:max_rows + 2]
    profile = path.stem.rsplit("_", 1)[-1]
    caption = f"*`{path.name}` ({profile} profile" + (f", {dropped} more rows in the file" if dropped else "") + ")*"
    return "\n".join(lines) + "\n\n" + caption, FigureSource("result", str(path))
