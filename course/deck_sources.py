"""Figures and tables for the slide decks: found in the results, computed cheaply, or a placeholder.

A deck names what it shows, never a file path:

- ``figure:NAME`` is a figure a notebook saved, ``<results>/figures/NAME_<profile>.png``. ``NAME`` may
  hold ``*`` wildcards (a notebook not written yet can be referenced by a pattern). Profiles are
  tried in :data:`PROFILE_PREFERENCE` order, the first folder first.
- ``generated:KEY`` is a figure computed here in about a second from the synthetic benchmark
  (:data:`GENERATORS`), so it never depends on a notebook having run.
- ``{{table:NAME}}`` inserts the whole Markdown table of ``<results>/NAME_<profile>.md`` (never cut: a
  cut hides rows; a long table belongs in a ``means`` table).
- ``{{meta:NAME:KEY}}`` inserts a computed entry of the saved result's ``meta`` (a verdict the notebook
  computed, a list becomes bullets): words from numbers, never typed in.
- ``{{means:NAME key=method cols=disc_dice,cup_dice rows=a,b where=budget:0.1}}`` is a per-method mean
  table read from ``<results>/NAME_<profile>.json`` (:func:`means_table`): rows found by their key,
  never by position, so a regenerated file with more methods or seeds still fills the table.

Whatever is missing becomes a clearly labelled placeholder (a grey PNG that says which notebook
produces it; a paragraph or a table row marked ``placeholder`` for a table), so a deck always builds
and never points to a missing file; the slide test fails on any placeholder.
"""
from __future__ import annotations

import html
import io
import json
import re
from pathlib import Path
from typing import Callable, Sequence

import matplotlib.pyplot as plt

__all__ = ["PROFILE_PREFERENCE", "GENERATORS", "FigureSource", "find_result_file", "figure_png", "table_markdown",
           "placeholder_png", "means_table", "parse_means", "meta_markdown", "SOURCE_DOMAIN"]

#: The labelled hospital: a per-method mean over domains leaves it out (it is not a target).
SOURCE_DOMAIN = "refuge_train"

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
    from mfmda_lib.data import DOMAINS, generate_sample
    from mfmda_lib.plots import overlay

    fig, axes = plt.subplots(1, len(DOMAINS), figsize=(3 * len(DOMAINS), 3.3))
    for ax, domain in zip(axes, DOMAINS):
        s = generate_sample(domain, 0, split="test", size=256)
        overlay(s.image, s.disc, s.cup, ax=ax, legend=False, title=f"{domain}\n{DOMAINS[domain].camera.split(' (')[0]}")
        ax.title.set_fontsize(9)
    fig.suptitle("four synthetic hospitals (truth: disc yellow, cup blue)", fontsize=11)
    fig.tight_layout()
    return _png(fig)


def _severity_figure() -> bytes:
    from mfmda_lib.data import SEVERITY_STEPS, TARGET_DOMAINS
    from mfmda_lib.plots.widgets import severity_grid

    return _png(severity_grid(SEVERITY_STEPS, size=160, domains=TARGET_DOMAINS,
                              title="each hospital's eye 0 from severity 0 (source camera) to 2"))


def _vcdr_figure() -> bytes:
    from mfmda_lib.data import generate_sample
    from mfmda_lib.plots import overlay

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


def _placeholder_html(text: str) -> str:
    return f'<p class="placeholder">{html.escape(text)}</p>'


def table_markdown(name: str, folders: Sequence[Path]) -> tuple[str, FigureSource]:
    """The whole Markdown table saved in ``<results>/NAME_<profile>.md`` with a caption line, or a placeholder."""
    path = find_result_file(folders, name, ".md")
    if path is None:
        return _placeholder_html(f"Table {name} not produced yet: {_hint(name)}."), FigureSource("placeholder", name)
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if _TABLE_LINE.match(line)]
    if not lines:
        return _placeholder_html(f"Table {name}: no table in {path.name}."), FigureSource("placeholder", name)
    profile = path.stem.rsplit("_", 1)[-1]
    return "\n".join(lines) + f"\n\n*`{path.name}` ({profile} profile)*", FigureSource("result", str(path))


def meta_markdown(name: str, key: str, folders: Sequence[Path], prefix: str | None = None) -> tuple[str, FigureSource]:
    """``meta[key]`` of ``<results>/NAME_<profile>.json`` as Markdown (a list as bullets, only the items starting
    with ``prefix`` when given: ``{{meta:NAME:KEY:PREFIX}}``), or a placeholder."""
    path = find_result_file(folders, name, ".json")
    meta = json.loads(path.read_text(encoding="utf-8")).get("meta", {}) if path is not None else {}
    if key not in meta:
        where = path.name if path is not None else f"{name}_<profile>.json (not produced yet: {_hint(name)})"
        return _placeholder_html(f"{key} is not in {where}."), FigureSource("placeholder", f"{name}:{key}")
    value = meta[key]
    if isinstance(value, list):
        items = [str(v).strip() for v in value if prefix is None or str(v).strip().startswith(prefix)]
        if not items:
            return (_placeholder_html(f"no {key} entry of {path.name} starts with {prefix!r}."),
                    FigureSource("placeholder", f"{name}:{key}"))
        text = "\n".join(f"- {html.escape(v[len(prefix or ''):].strip())}" for v in items)
    else:
        text = html.escape(str(value))
    profile = path.stem.rsplit("_", 1)[-1]
    return f"{text}\n\n*computed by the notebook: `{path.name}` ({profile} profile)*", FigureSource("result", str(path))


_MEANS_OPTIONS = ("key", "cols", "rows", "where")


def parse_means(spec: str) -> dict:
    """``"NAME key=a,b cols=x,y rows=r1,r2 where=k:v,k2:v2"`` -> ``{"name", "key", "cols", "rows", "where"}``."""
    name, *options = spec.split()
    out: dict = {"name": name, "key": ["method"], "cols": None, "rows": None, "where": {}}
    for option in options:
        field, sep, value = option.partition("=")
        if not sep or field not in _MEANS_OPTIONS or not value:
            allowed = ", ".join(o + "=..." for o in _MEANS_OPTIONS)
            raise ValueError(f"means table {name!r}: bad option {option!r} (use {allowed})")
        items = [v for v in value.split(",") if v]
        if field == "where":
            pairs = [item.partition(":") for item in items]
            if any(not sep2 for _, sep2, _ in pairs):
                raise ValueError(f"means table {name!r}: where takes column:value pairs, got {value!r}")
            out["where"] = {k: v for k, _, v in pairs}
        else:
            out[field] = items
    return out


def _matches(column, value: str):
    try:
        return column.astype(float) == float(value)
    except (TypeError, ValueError):
        return column.astype(str) == value


def means_table(name: str, folders: Sequence[Path], *, key: Sequence[str] = ("method",),
                cols: Sequence[str] | None = None, rows: Sequence[str] | None = None,
                where: dict[str, str] | None = None) -> tuple[str, FigureSource, list[str]]:
    """A per-method mean table from ``<results>/NAME_<profile>.json`` as HTML, found by key, never by position.

    Args:
        name: the result name (``mfmda_stage2``).
        folders: results folders, in order.
        key: column(s) naming a row (joined by ``/``), e.g. ``method`` or ``init,protocol``.
        cols: numeric columns to show (default: every numeric column but counts and spreads).
        rows: the rows the slide names, in order; each must be in the file (a missing one becomes a
            placeholder row). Default: every key, in the file's order.
        where: ``column -> value`` filters applied first (numbers compared as numbers).

    The mean: the file's own ``domain == "mean"`` rows when it has them, else the mean over its rows
    per key, leaving out the source hospital (``refuge_train``) unless ``where`` picks a domain.

    Returns:
        ``(html, source, named rows)``; the ``<table>`` carries ``data-result`` and ``data-rows`` (the rows
        named) and each ``<tr>`` a ``data-row``, which the slide test reads in the browser.
    """
    import pandas as pd

    path = find_result_file(folders, name, ".json")
    if path is None:
        return (_placeholder_html(f"Table {name} not produced yet: {_hint(name)}."), FigureSource("placeholder", name),
                list(rows or []))
    frame = pd.DataFrame(json.loads(path.read_text(encoding="utf-8")).get("table", []))
    where = dict(where or {})
    unknown = [c for c in [*key, *where, *(cols or [])] if c not in frame.columns]
    if frame.empty or unknown:
        raise ValueError(f"means table {name!r}: {path.name} has no column(s) {unknown or 'at all'}; "
                         f"columns: {list(frame.columns)}")
    for column, value in where.items():
        frame = frame[_matches(frame[column], value)]
    averaged = "over its rows"
    if "domain" in frame.columns and "domain" not in where and "domain" not in key:
        if (frame["domain"] == "mean").any():
            frame, averaged = frame[frame["domain"] == "mean"], "the file's mean over target hospitals"
        else:
            frame, averaged = frame[frame["domain"] != SOURCE_DOMAIN], "mean over the target hospitals"
    frame = frame.assign(_key=frame[list(key)].astype(str).agg("/".join, axis=1))
    if cols is None:
        numeric = frame.select_dtypes("number").columns
        cols = [c for c in numeric if c not in key and c != "n" and not c.endswith(("_std", "_lo", "_hi"))]
    means = frame.groupby("_key", sort=False)[list(cols)].mean()
    order = list(rows) if rows else list(means.index)
    missing = [r for r in order if r not in means.index]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["/".join(key), *cols])
    body = []
    for r in order:
        if r in means.index:
            cells = "".join(f"<td>{v:.3f}</td>" for v in means.loc[r])
            body.append(f'<tr data-row="{html.escape(r)}"><td>{html.escape(r)}</td>{cells}</tr>')
        else:
            body.append(f'<tr data-row="{html.escape(r)}" class="placeholder"><td>{html.escape(r)}</td>'
                        f'<td colspan="{len(cols)}">missing from {html.escape(path.name)}</td></tr>')
    profile = path.stem.rsplit("_", 1)[-1]
    filters = "".join(f", {k} = {v}" for k, v in where.items())
    caption = f"<code>{html.escape(path.name)}</code> ({profile} profile): {averaged}{html.escape(filters)}"
    table = (f'<table class="results" data-result="{html.escape(name)}" data-rows="{html.escape(",".join(order))}">'
             f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
             f'<p class="caption">{caption}</p>')
    source = (FigureSource("placeholder", f"{name}: no row {', '.join(missing)}") if missing
              else FigureSource("result", str(path)))
    return table, source, order
