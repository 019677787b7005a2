"""Slide decks: built offline into self-contained HTML, rendered in a real headless Chromium.

The rendering test needs Debian's ``chromium`` (``make test`` installs it when apt-get is available);
it skips, saying so, only when no Chromium binary exists.
"""
import json
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from mfmda_lib.teaching import figures, slides

ROOT = Path(__file__).resolve().parents[1]
DECKS = sorted((ROOT / "slides" / "decks").glob("*.md"))
#: The six seminar sessions, in order.
SESSIONS = ("foundation_models", "self_supervised", "finetuning_peft", "sam_adapters_tta", "diffusion_mfmda",
            "clinical_evaluation")
CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or "")
                 if p and Path(p).is_file()), None)


def _png(path: Path, colour: str) -> None:
    fig, ax = plt.subplots(figsize=(2, 1))
    ax.set_facecolor(colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Every real deck built once against an empty results folder (all notebook figures missing)."""
    out = tmp_path_factory.mktemp("decks")
    empty = tmp_path_factory.mktemp("no-results")
    return slides.build_all(ROOT / "slides" / "decks", out, [empty])


def test_split_slides_ignores_separators_in_code_and_empty_slides():
    text = "# A\n\n---\n\n## B\n```\n---\n```\n---\n\n---\n## C"
    parts = slides.split_slides(text)
    assert [p.splitlines()[0] for p in parts] == ["# A", "## B", "## C"]
    assert "---" in parts[1]


def test_figures_resolve_results_by_profile_preference_then_generate_then_placeholder(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    _png(first / "figures" / "zero_shot_litemedsam_ci.png", "red")
    _png(second / "figures" / "zero_shot_litemedsam_cpu.png", "blue")
    png, source = figures.figure_png("figure:zero_shot_litemedsam", [first, second])
    assert source.kind == "result" and source.detail.endswith("zero_shot_litemedsam_cpu.png")  # cpu beats ci
    assert png == (second / "figures" / "zero_shot_litemedsam_cpu.png").read_bytes()
    _, pattern = figures.figure_png("figure:zero_shot*", [first])
    assert pattern.kind == "result"
    png, missing = figures.figure_png("figure:mfmda_stage2", [first])
    assert missing.kind == "placeholder" and png.startswith(b"\x89PNG")
    assert "notebook 09" in figures._hint("mfmda_stage2")
    png, generated = figures.figure_png("generated:vcdr", [])
    assert generated.kind == "generated" and png.startswith(b"\x89PNG")
    assert figures.figure_png("generated:nope", [])[1].kind == "placeholder"


def test_tables_come_from_saved_results_or_say_they_are_missing(tmp_path):
    rows = "\n".join(f"| d{i} | {i} |" for i in range(6))
    (tmp_path / "zero_shot_litemedsam_ci.md").write_text(f"# title\n\n_meta_\n\n| domain | x |\n|---|---|\n{rows}\n")
    md, source = figures.table_markdown("zero_shot_litemedsam", [tmp_path], max_rows=3)
    assert source.kind == "result" and md.count("\n| d") == 3 and "3 more rows" in md and "ci profile" in md
    md, source = figures.table_markdown("absent", [tmp_path])
    assert source.kind == "placeholder" and "not produced yet" in md


def test_a_deck_embeds_everything_and_never_touches_the_network(tmp_path):
    deck = tmp_path / "decks" / "99_demo.md"
    deck.parent.mkdir()
    deck.write_text("# Demo deck\n\nintro\n\n---\n\n## Figure\n\n![a result](figure:demo_fig)\n\n"
                    "---\n\n## Missing\n\n![gone](figure:not_there) and {{table:absent}}\n")
    results = tmp_path / "results"
    _png(results / "figures" / "demo_fig_gpu.png", "green")
    report = slides.build_deck(deck, tmp_path / "out", [results])
    page = report.output.read_text()
    assert report.title == "Demo deck" and report.slides == 3 and report.images == 2
    assert page.count('<section class="slide"') == 3 and 'data-slides="3"' in page
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'<img[^>]*src="([^"]*)"', page))
    assert sorted(report.placeholders) == ["absent", "not_there"]
    assert not re.search(r"""(src|href)=["']https?:|<link|@import""", page)
    assert "deck-status" in page and "<style>" in page
    bad = tmp_path / "decks" / "98_bad.md"
    bad.write_text('# Bad\n\n<img src="https://example.org/x.png">\n')
    with pytest.raises(ValueError, match="network"):
        slides.build_deck(bad, tmp_path / "out", [results])


def test_six_decks_one_per_session(built):
    assert len(DECKS) == 6
    for session, deck in zip(SESSIONS, DECKS):
        assert session in deck.stem
    for report, deck in zip(built, DECKS):
        assert report.slides == len(slides.split_slides(deck.read_text())) >= 6
        assert report.output.stat().st_size > 1000


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed: `make test` installs Debian's chromium "
                                              "(apt-get install -y chromium); run it to render the decks")
def test_every_deck_renders_in_headless_chromium_with_no_missing_image(built, tmp_path):
    def launch(i, report):
        return subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / f'profile{i}'}", "--virtual-time-budget=5000",
             "--dump-dom", report.output.resolve().as_uri()],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    running = [(report, launch(i, report)) for i, report in enumerate(built)]  # one browser per deck, in parallel
    for report, proc in running:
        out, err = proc.communicate(timeout=180)
        match = re.search(r'<div id="deck-status"[^>]*>([^<]*)</div>', out)
        assert match and match.group(1), f"{report.name}: no status from Chromium (rc {proc.returncode}): {err[-500:]}"
        status = json.loads(match.group(1))
        html = report.output.read_text()
        assert status["slides"] == report.slides == html.count('<section class="slide"'), report.name
        assert status["images"] == report.images, report.name
        assert status["broken"] == [], f"{report.name}: images that did not load: {status['broken']}"
