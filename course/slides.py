"""Build the seminar decks: Markdown in ``slides/decks/`` -> self-contained HTML in ``slides/build/``.

One deck per seminar session, one Markdown file per deck; slides are separated by a line that is
exactly ``---``. Images are named, not pathed (``![caption](figure:zero_shot_litemedsam)``,
``![caption](generated:domains)``) and tables come from saved results (``{{table:NAME}}``, and
per-method mean tables ``{{means:NAME ...}}``): see :mod:`course.deck_sources`. A line
``Cite: ...`` cites the slide's paper (shown small at the bottom of the slide); everything after a
line ``Notes:`` is the slide's speaker notes (hidden on screen, shown in the presenter view and in
print). The output embeds every image as a base64 ``data:`` URI and inlines ``slides/theme.css``
and ``slides/deck.js``, so a deck opens offline from a single file.

In the browser: arrow keys / space / PageUp / PageDown move between slides (presentation mode),
``N`` shows the speaker notes beside the slide (presenter view; also ``#notes`` in the address),
``Esc`` returns to the scrolling overview, ``#7`` in the address opens slide 7, printing gives one
slide per page with its notes. An inline script writes ``<div id="deck-status">`` with the slide
count, any image that failed to load, the placeholders shown and the rows of each results table,
which the slide test reads from a headless Chromium.

Run ``python -m course.slides`` (``make slides``).
"""
from __future__ import annotations

import argparse
import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from mfmda_lib.environment import paths
from mfmda_lib.io import atomic_write_bytes
from .deck_sources import FigureSource, figure_png, means_table, meta_markdown, parse_means, table_markdown

__all__ = ["DeckReport", "split_slides", "split_notes", "render_markdown", "build_deck", "build_all",
           "default_result_folders", "SLIDES_DIR"]

#: The repository's slides folder (decks/, theme.css, deck.js; build/ is the output).
SLIDES_DIR = Path(__file__).resolve().parents[1] / "slides"

_IMAGE_REF = re.compile(r"!\[([^\]]*)\]\(((?:figure|generated):[^)\s]+)\)")
_TABLE_REF = re.compile(r"\{\{table:([A-Za-z0-9_*]+)(?::(\d+))?\}\}")
_MEANS_REF = re.compile(r"\{\{means:([^}]+)\}\}")
_META_REF = re.compile(r"\{\{meta:([A-Za-z0-9_*]+):([A-Za-z0-9_ ()-]+)(?::([^}]+))?\}\}")
_NOTES = re.compile(r"^Notes:\s*$", re.M)
_CITE = re.compile(r"^Cite:\s*(.+)$", re.M)
_FENCE = re.compile(r"^\s*(```|~~~)")
_EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["'](?:https?:)?//|@import|url\(\s*["']?(?:https?:)?//|<link\b""", re.I)


@dataclass
class DeckReport:
    """What one build produced.

    Attributes:
        name: the deck's file stem, e.g. ``"06_clinical_evaluation"``.
        title: its first heading.
        output: the HTML file written.
        slides: number of slides.
        images: number of ``<img>`` elements.
        sources: how each image or table was resolved, in order.
        slide_sources: the same, per slide.
        notes: each slide's speaker notes (Markdown; empty when it has none).
        cites: each slide's citations.
        tables: ``(result name, rows named)`` of each ``means`` table, in order.
    """

    name: str
    title: str
    output: Path
    slides: int
    images: int
    sources: list[FigureSource] = field(default_factory=list)
    slide_sources: list[list[FigureSource]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cites: list[list[str]] = field(default_factory=list)
    tables: list[tuple[str, list[str]]] = field(default_factory=list)

    @property
    def placeholders(self) -> list[str]:
        """References that fell back to a placeholder."""
        return [s.detail for s in self.sources if s.kind == "placeholder"]


# ---------------------------------------------------------------------------------------------
# Markdown -> slide HTML
# ---------------------------------------------------------------------------------------------

def split_slides(text: str) -> list[str]:
    """Split a deck's Markdown on lines that are exactly ``---`` (outside code fences); drop empty slides."""
    slides, current, fenced = [], [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        if not fenced and line.strip() == "---":
            slides.append("\n".join(current))
            current = []
        else:
            current.append(line)
    slides.append("\n".join(current))
    return [s.strip("\n") for s in slides if s.strip()]


def split_notes(text: str) -> tuple[str, list[str], str]:
    """One slide's Markdown -> ``(body, citations, speaker notes)``: ``Cite:`` lines and what follows ``Notes:``."""
    parts = _NOTES.split(text, maxsplit=1)
    body, notes = parts[0], parts[1].strip() if len(parts) > 1 else ""
    cites = [c.strip() for c in _CITE.findall(body)]
    return _CITE.sub("", body).rstrip(), cites, notes


def render_markdown(text: str) -> str:
    """Markdown (with tables) to HTML through ``mistune`` (installed with Jupyter's nbconvert)."""
    try:
        import mistune
    except ImportError as exc:  # pragma: no cover - mistune ships with nbconvert / jupyterlab
        raise ImportError("building slides needs mistune: pip install 'mistune>=3'") from exc
    return mistune.create_markdown(escape=False, plugins=["table", "strikethrough"])(text)


def _render_slide(text: str, folders: Sequence[Path], images: dict[str, tuple[str, str]],
                  sources: list[FigureSource], tables: list[tuple[str, list[str]]]) -> str:
    """One slide's HTML: tables inlined, image references replaced by tokens, then by data URIs."""
    def table(match: re.Match) -> str:
        if match.group(2):
            raise ValueError(f"{{{{table:{match.group(1)}:{match.group(2)}}}}}: cutting a table hides rows; "
                             f"show the whole table or a per-method {{{{means:...}}}} table")
        md, source = table_markdown(match.group(1), folders)
        sources.append(source)
        return md

    blocks: dict[str, str] = {}

    def means(match: re.Match) -> str:
        spec = parse_means(match.group(1))
        block, source, named = means_table(spec["name"], folders, key=spec["key"], cols=spec["cols"],
                                           rows=spec["rows"], where=spec["where"])
        sources.append(source)
        tables.append((spec["name"], named))
        token = f"DECKBLOCK{len(blocks)}X"
        blocks[token] = block
        return f"\n\n{token}\n\n"

    def meta(match: re.Match) -> str:
        md, source = meta_markdown(match.group(1), match.group(2), folders, prefix=match.group(3))
        sources.append(source)
        return md

    tokens: dict[str, tuple[str, str]] = {}

    def image(match: re.Match) -> str:
        ref = match.group(2)
        if ref not in images:
            png, source = figure_png(ref, folders)
            images[ref] = ("data:image/png;base64," + base64.b64encode(png).decode("ascii"), source.kind)
            sources.append(source)
        token = f"deck-image-{len(tokens)}"
        tokens[token] = images[ref]
        return f"![{match.group(1)}]({token})"

    text = _META_REF.sub(meta, _MEANS_REF.sub(means, _TABLE_REF.sub(table, text)))
    body = render_markdown(_IMAGE_REF.sub(image, text))
    for token, (uri, kind) in tokens.items():
        body = body.replace(f'src="{token}"', f'src="{uri}" data-source="{kind}"')
    for token, block in blocks.items():
        body = body.replace(f"<p>{token}</p>", block)
    return body


def _page(name: str, title: str, slides: list[tuple[str, list[str], str]], css: str, js: str) -> str:
    n = len(slides)

    def section(i: int, body: str, cites: list[str], notes: str) -> str:
        cite = "".join(render_markdown(c) for c in cites)
        return (f'<section class="slide" id="slide-{i}"><div class="slide-body">{body}'
                + (f'<div class="cite">{cite}</div>' if cites else "") + "</div>"
                + (f'<aside class="notes"><h4>Notes · slide {i}</h4>{render_markdown(notes)}</aside>' if notes else "")
                + f'<footer>{html.escape(title)} <span class="page">{i}/{n}</span></footer></section>')

    sections = "\n".join(section(i, *parts) for i, parts in enumerate(slides, start=1))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{css}</style></head>\n"
            f'<body><main class="deck" data-deck="{html.escape(name)}" data-slides="{n}">\n{sections}\n</main>\n'
            f'<div id="deck-status" hidden></div>\n<script>{js}</script></body></html>\n')


# ---------------------------------------------------------------------------------------------
# building decks
# ---------------------------------------------------------------------------------------------

def default_result_folders() -> list[Path]:
    """Where figures and tables are looked for: ``paths().results``, then the clone's ``results/``."""
    folders = [paths().results, SLIDES_DIR.parent / "results"]
    out = []
    for f in folders:
        if f.resolve() not in [o.resolve() for o in out]:
            out.append(f)
    return out


def build_deck(source: str | Path, out_dir: str | Path, folders: Sequence[Path] | None = None, *,
               slides_dir: str | Path = SLIDES_DIR) -> DeckReport:
    """Build one deck into ``out_dir/<stem>.html``.

    Args:
        source: the deck's Markdown file.
        out_dir: output folder (created).
        folders: results folders to take figures and tables from (default :func:`default_result_folders`).
        slides_dir: where ``theme.css`` and ``deck.js`` live.

    Returns:
        A :class:`DeckReport`. Raises ``ValueError`` if the page would load anything from the network.
    """
    source, slides_dir = Path(source), Path(slides_dir)
    folders = default_result_folders() if folders is None else [Path(f) for f in folders]
    parts = split_slides(source.read_text(encoding="utf-8"))
    if not parts:
        raise ValueError(f"{source}: no slides (separate slides with a line '---')")
    heading = re.search(r"^#\s+(.+)$", parts[0], re.M)
    title = heading.group(1).strip() if heading else source.stem
    images: dict[str, tuple[str, str]] = {}
    sources: list[FigureSource] = []
    tables: list[tuple[str, list[str]]] = []
    rendered, per_slide, all_notes, all_cites = [], [], [], []
    for part in parts:
        body, cites, notes = split_notes(part)
        before = len(sources)
        rendered.append((_render_slide(body, folders, images, sources, tables), cites, notes))
        per_slide.append(sources[before:])
        all_notes.append(notes)
        all_cites.append(cites)
    page = _page(source.stem, title, rendered, (slides_dir / "theme.css").read_text(encoding="utf-8"),
                 (slides_dir / "deck.js").read_text(encoding="utf-8"))
    external = _EXTERNAL.search(page)
    if external:
        raise ValueError(f"{source}: the deck would load {external.group(0)!r} from the network; embed it instead")
    out = Path(out_dir) / f"{source.stem}.html"
    atomic_write_bytes(out, page.encode("utf-8"))
    return DeckReport(name=source.stem, title=title, output=out, slides=len(rendered),
                      images=page.count("<img "), sources=sources, slide_sources=per_slide, notes=all_notes,
                      cites=all_cites, tables=tables)


def build_all(decks_dir: str | Path = SLIDES_DIR / "decks", out_dir: str | Path = SLIDES_DIR / "build",
              folders: Sequence[Path] | None = None, *, slides_dir: str | Path = SLIDES_DIR) -> list[DeckReport]:
    """Build every ``*.md`` deck of ``decks_dir`` (sorted by name) into ``out_dir``."""
    decks = sorted(Path(decks_dir).glob("*.md"))
    if not decks:
        raise ValueError(f"no decks (*.md) in {Path(decks_dir).resolve()}")
    return [build_deck(d, out_dir, folders, slides_dir=slides_dir) for d in decks]


def main(argv: list[str] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    parser = argparse.ArgumentParser(description="Build the seminar decks into self-contained HTML.")
    parser.add_argument("--decks", default=str(SLIDES_DIR / "decks"), help="folder of deck Markdown files")
    parser.add_argument("--out", default=str(SLIDES_DIR / "build"), help="output folder")
    parser.add_argument("--results", action="append", default=None,
                        help="results folder to take figures/tables from (repeatable; default: MFMDA_RESULTS, results/)")
    args = parser.parse_args(argv)
    for r in build_all(args.decks, args.out, args.results):
        missing = f", placeholders: {', '.join(r.placeholders)}" if r.placeholders else ""
        print(f"{r.output}: {r.slides} slides, {r.images} images{missing}")


if __name__ == "__main__":
    main()
