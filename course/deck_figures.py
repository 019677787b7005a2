"""``make figures``: redraw the decks' figures from the saved results, with the notebooks' plotting functions.

A deck shows ``figure:NAME``, the PNG ``<results>/figures/NAME_<profile>.png``. Notebooks save the
figures that need images or models (galleries, embeddings, reliability diagrams). Every figure that
a saved table or its per-image rows determine is listed in :data:`FIGURES`: for each
``<results>/<result>_<profile>.json`` present, :func:`draw_all` draws it with the same plotting
function the notebook uses (or, for notebooks 02-04, a summary plot of :mod:`mfmda_lib.plots.summary`)
and writes it beside the notebook's own figures. Rows are found by their method or key column,
never by position, so results regenerated with more methods or seeds redraw without changes.

PNGs are written with a 256-colour palette (a few tens of kB each) so the ``cpu`` figures can be
committed and a fresh clone builds complete decks. Run ``python -m course.deck_figures``
(``make figures``; ``make slides`` runs it first).
"""
from __future__ import annotations

import argparse
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from mfmda_lib.io import atomic_write_bytes

__all__ = ["DeckFigure", "FIGURES", "TTA_FAILURE_SETTINGS", "draw", "draw_all", "compact_png", "compact_file",
           "MAX_WIDTH", "MAX_HEIGHT"]

#: Largest figure kept (pixels): a slide is about 1000 x 560 px, so larger figures are scaled down.
MAX_WIDTH, MAX_HEIGHT = 1400, 760

#: Notebook 06's settings shown on the "where TTA fails" slide: the headline regime, then the failures.
TTA_FAILURE_SETTINGS = ("online", "batch size 1", "severity 2", "continual")


@dataclass(frozen=True)
class DeckFigure:
    """A figure drawn from a saved result: ``figures/<name>_<profile>.png`` from ``<result>_<profile>.json``."""

    name: str
    result: str
    draw: Callable[[dict], Figure]


def _table(saved: dict, index: Sequence[str] | None = None) -> pd.DataFrame:
    frame = pd.DataFrame(saved.get("table", []))
    missing = [c for c in (index or []) if c not in frame.columns]
    if frame.empty or missing:
        raise ValueError(f"saved table lacks {missing or 'rows'}")
    return frame.set_index(list(index)) if index else frame


def _method_domain(title: str) -> Callable[[dict], Figure]:
    def draw_bars(saved: dict) -> Figure:
        from mfmda_lib.plots import method_domain_bars

        return method_domain_bars(_table(saved, ["method", "domain"]), ["disc_dice", "cup_dice"], title=title)
    return draw_bars


def _box_margin(saved: dict) -> Figure:
    from mfmda_lib.plots.summary import box_margin_figure

    return box_margin_figure(_table(saved, ["margin"]))


def _tta_failures(saved: dict) -> Figure:
    from mfmda_lib.adapt.tta_benchmark import settings_table
    from mfmda_lib.plots import tta_settings_figure

    rows = [r for r in saved.get("rows", []) if r.get("setting") in TTA_FAILURE_SETTINGS]
    if not rows:
        raise ValueError("no per-image rows of the failure settings")
    table = settings_table(rows)
    order = [s for s in TTA_FAILURE_SETTINGS if s in table.index.get_level_values("setting")]
    table = table.reindex(order, level="setting")
    return tta_settings_figure(table, title="mean target Dice minus source-only: online, batch of one image, "
                                            "severity 2, continual stream")


def _tta_stream(saved: dict) -> Figure:
    from mfmda_lib.plots import tta_stream_figure

    rows = [r for r in saved.get("rows", []) if r.get("setting") == "continual"]
    if not rows:
        raise ValueError("no per-image rows of the continual stream")
    return tta_stream_figure(rows, "disc_dice", title="disc Dice per batch along the continual stream")


def _sdedit(saved: dict) -> Figure:
    from mfmda_lib.diffusion.figures import sdedit_tradeoff_figure

    table = _table(saved, ["t0"]).sort_index()
    return sdedit_tradeoff_figure(list(table.index), table["psnr"], table["relative_distance"])


def _summary(function: str, **kwargs) -> Callable[[dict], Figure]:
    def draw_summary(saved: dict) -> Figure:
        from mfmda_lib.plots import summary

        return getattr(summary, function)(_table(saved), **kwargs)
    return draw_summary


def _clinical_intervals(saved: dict) -> Figure:
    from mfmda_lib.plots.clinical import ci_forest

    table = _table(saved, ["domain"])
    metrics = [m for m in ("disc_dice", "cup_dice", "vcdr_abs_err") if f"{m}_lo" in table.columns]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        ci_forest(table, metric, ax=ax)
    fig.tight_layout()
    return fig


#: Every figure ``make figures`` draws, by name (the deck's ``figure:NAME``).
FIGURES: tuple[DeckFigure, ...] = (
    DeckFigure("box_prompt_sensitivity", "box_prompt_sensitivity", _box_margin),
    DeckFigure("ssl_label_budgets", "self_supervised_pretraining", _summary("label_budget_figure")),
    DeckFigure("fine_tuning_transfer", "fine_tuning_strategies", _summary("transfer_figure")),
    DeckFigure("peft_tradeoff", "peft_segmentation", _summary("peft_tradeoff_figure")),
    DeckFigure("sam_decoder_adapter", "sam_decoder_adapter", _method_domain("Dice per target domain")),
    DeckFigure("test_time_adaptation", "test_time_adaptation", _method_domain("online TTA, default severity")),
    DeckFigure("tta_failures", "test_time_adaptation", _tta_failures),
    DeckFigure("tta_stream", "test_time_adaptation", _tta_stream),
    DeckFigure("sdedit_tradeoff", "sdedit_tradeoff", _sdedit),
    DeckFigure("mfmda_stage1_variants", "mfmda_stage1", _summary("stage1_variants_figure")),
    DeckFigure("mfmda_stage2", "mfmda_stage2", _method_domain("MFM-DA stage 2: Dice per target")),
    DeckFigure("clinical_intervals", "clinical_evaluation", _clinical_intervals),
)


def _palette_png(data: bytes, colors: int = 256) -> bytes:
    from PIL import Image

    image = Image.open(io.BytesIO(data)).convert("RGB")
    scale = min(1.0, MAX_WIDTH / image.width, MAX_HEIGHT / image.height)
    if scale < 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(out, format="PNG", optimize=True)
    return out.getvalue()


def compact_png(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as a palette PNG (256 colours, within :data:`MAX_WIDTH` x :data:`MAX_HEIGHT`): a fraction of the
    size of a full-colour one."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return _palette_png(buf.getvalue())


def compact_file(path: str | Path, colors: int = 128) -> Path:
    """Re-encode a PNG a notebook saved (a gallery of photographs, an embedding plot) the same way, in place and
    atomically; 128 colours keep a gallery of fundus images under about 200 kB."""
    path = Path(path)
    atomic_write_bytes(path, _palette_png(path.read_bytes(), colors))
    return path


def draw(figure: DeckFigure, json_path: Path, out_dir: Path) -> Path:
    """Draw ``figure`` from one saved result and write ``out_dir/<name>_<profile>.png``."""
    profile = json_path.stem.rsplit("_", 1)[-1]
    saved = json.loads(json_path.read_text(encoding="utf-8"))
    try:
        fig = figure.draw(saved)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{json_path}: cannot draw {figure.name}: {exc}") from exc
    out = out_dir / f"{figure.name}_{profile}.png"
    atomic_write_bytes(out, compact_png(fig))
    return out


def draw_all(results: str | Path, out_dir: str | Path | None = None, *, profiles: Sequence[str] | None = None,
             figures: Sequence[DeckFigure] = FIGURES) -> list[Path]:
    """Draw every figure of :data:`FIGURES` whose result is in ``results`` (one per profile found).

    Args:
        results: a results folder (``<result>_<profile>.json`` files).
        out_dir: where the PNGs go (default ``<results>/figures``).
        profiles: only these profiles (default: every one found).
    """
    results = Path(results)
    out_dir = Path(out_dir) if out_dir is not None else results / "figures"
    written = []
    for figure in figures:
        for path in sorted(results.glob(f"{figure.result}_*.json")):
            profile = path.stem[len(figure.result) + 1:]
            if "_" in profile or (profiles is not None and profile not in profiles):
                continue  # another result whose name extends this one's
            written.append(draw(figure, path, out_dir))
    return written


def main(argv: list[str] | None = None) -> int:
    import matplotlib

    from mfmda_lib.environment import paths

    matplotlib.use("Agg")
    parser = argparse.ArgumentParser(description="Redraw the decks' figures from the saved results.")
    parser.add_argument("--results", default=None, help="results folder (default: MFMDA_RESULTS or results/)")
    parser.add_argument("--profile", action="append", default=None, help="only this profile (repeatable)")
    parser.add_argument("--compact", nargs="+", default=None, metavar="PNG",
                        help="only re-encode these PNGs (notebook figures) as small palette PNGs, in place")
    args = parser.parse_args(argv)
    if args.compact:
        for path in map(compact_file, args.compact):
            print(f"{path} ({path.stat().st_size / 1024:.0f} kB)")
        return 0
    written = draw_all(args.results or paths().results, profiles=args.profile)
    for path in written:
        print(f"{path} ({path.stat().st_size / 1024:.0f} kB)")
    print(f"{len(written)} figures")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
