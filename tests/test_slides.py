"""Slide decks: built offline into self-contained HTML, rendered in a real headless Chromium.

The decks are built against the results a fresh clone has (the files git tracks under ``results/``):
no deck may show a placeholder, every results table must hold the rows its slide names, and every
content slide cites its paper and has speaker notes. The rendering test needs Debian's ``chromium``
(``make test`` installs it when apt-get is available); it skips, saying so, only when no Chromium
binary exists. It saves a screenshot of one slide per deck under ``build/slides/``.
"""
import json
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from course import deck_figures, slides
from course import deck_sources as figures

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


def _tracked_results(dest: Path) -> Path:
    """The results a fresh clone has: the files git tracks under results/ (the working tree's copy of them)."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "results"], capture_output=True, text=True)
    if listed.returncode != 0:  # not a git checkout (an unpacked archive): it holds only what was shipped
        return ROOT / "results"
    for name in filter(None, listed.stdout.split("\0")):
        target = dest / Path(name).relative_to("results")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, target)
    return dest


@pytest.fixture(scope="module")
def fresh_results(tmp_path_factory):
    return _tracked_results(tmp_path_factory.mktemp("fresh-clone-results"))


@pytest.fixture(scope="module")
def built(tmp_path_factory, fresh_results):
    """Every real deck built once against the results of a fresh clone."""
    return slides.build_all(ROOT / "slides" / "decks", tmp_path_factory.mktemp("decks"), [fresh_results])


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


def test_tables_come_whole_from_saved_results_or_say_they_are_missing(tmp_path):
    rows = "\n".join(f"| d{i} | {i} |" for i in range(16))
    (tmp_path / "zero_shot_litemedsam_ci.md").write_text(f"# title\n\n_meta_\n\n| domain | x |\n|---|---|\n{rows}\n")
    md, source = figures.table_markdown("zero_shot_litemedsam", [tmp_path])
    assert source.kind == "result" and md.count("\n| d") == 16 and "ci profile" in md  # never cut
    md, source = figures.table_markdown("absent", [tmp_path])
    assert source.kind == "placeholder" and "not produced yet" in md and 'class="placeholder"' in md
    deck = tmp_path / "cut.md"
    deck.write_text("# Cut\n\n{{table:zero_shot_litemedsam:3}}\n")
    with pytest.raises(ValueError, match="hides rows"):
        slides.build_deck(deck, tmp_path / "out", [tmp_path])


def _save_table(folder: Path, name: str, records: list[dict], meta: dict | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps({"meta": meta or {}, "table": records, "rows": []}))


def test_means_tables_find_rows_by_key_whatever_the_file_order(tmp_path):
    methods = [f"baseline_{i}" for i in range(12)] + ["mfmda"]  # MFM-DA last: a row cut at 10 would hide it
    records = [{"method": m, "domain": d, "disc_dice": 0.1 * k + (0.5 if d == "mean" else 0), "n": 4}
               for k, m in enumerate(reversed(methods)) for d in ("refuge_test", "mean")]
    _save_table(tmp_path, "mfmda_stage2_cpu", records)
    html, source, named = figures.means_table("mfmda_stage2", [tmp_path], cols=["disc_dice"],
                                              rows=["baseline_0", "mfmda"])
    assert source.kind == "result" and named == ["baseline_0", "mfmda"]
    assert re.findall(r'<tr data-row="([^"]+)"', html) == ["baseline_0", "mfmda"]
    assert '<td>mfmda</td><td>0.500</td>' in html  # the file's own "mean" rows, found by name
    every, _, named = figures.means_table("mfmda_stage2", [tmp_path], cols=["disc_dice"])
    assert named == list(reversed(methods)) and every.count("<tr data-row=") == len(methods)
    html, source, _ = figures.means_table("mfmda_stage2", [tmp_path], rows=["mfmda", "gone"])
    assert source.kind == "placeholder" and 'data-row="gone" class="placeholder"' in html
    # without "mean" rows: the mean over the target hospitals (the source hospital left out), filtered first
    _save_table(tmp_path, "ssl_cpu", [{"init": i, "protocol": "finetune", "budget": b, "domain": d,
                                       "dice": {"refuge_train": 0.9, "refuge_test": 0.2, "riga_messidor": 0.4}[d]
                                       + (0.01 if i == "mae" else 0)}
                                      for i in ("random", "mae") for b in (0.1, 1.0)
                                      for d in ("refuge_train", "refuge_test", "riga_messidor")])
    html, _, named = figures.means_table("ssl", [tmp_path], key=["init", "protocol"], where={"budget": "0.1"})
    assert named == ["random/finetune", "mae/finetune"] and "<td>0.300</td>" in html and "<td>0.310</td>" in html
    assert figures.parse_means("x key=init cols=a,b rows=r where=budget:0.1") == {
        "name": "x", "key": ["init"], "cols": ["a", "b"], "rows": ["r"], "where": {"budget": "0.1"}}
    with pytest.raises(ValueError, match="bad option"):
        figures.parse_means("x colums=a")


def test_notes_and_citations_are_parsed_and_hidden_on_screen(tmp_path):
    deck = tmp_path / "decks" / "97_notes.md"
    deck.parent.mkdir()
    deck.write_text("# Title\n\nNotes:\nopening words\n\n---\n\n## Body\n\n- point\n\n"
                    "Cite: Ho et al., *NeurIPS* 2020\n\nNotes:\nsay **this**\n")
    report = slides.build_deck(deck, tmp_path / "out", [tmp_path])
    page = report.output.read_text()
    assert report.notes == ["opening words", "say **this**"] and report.cites == [[], ["Ho et al., *NeurIPS* 2020"]]
    assert page.count('<aside class="notes">') == 2 and "<strong>this</strong>" in page and "Cite:" not in page
    assert '<div class="cite"><p>Ho et al., <em>NeurIPS</em> 2020</p>' in page
    css = (ROOT / "slides" / "theme.css").read_text()
    assert re.search(r"aside\.notes \{ display: none; \}", css)  # hidden on screen ...
    assert re.search(r"@media print \{.*aside\.notes \{ display: block;", css, re.S)  # ... printed with the slide
    assert "presenter" in css and "presenter" in (ROOT / "slides" / "deck.js").read_text()


def test_every_content_slide_cites_its_paper_and_has_speaker_notes():
    for deck in DECKS:
        for i, part in enumerate(slides.split_slides(deck.read_text()), start=1):
            _, cites, notes = slides.split_notes(part)
            assert len(notes.split()) >= 15, f"{deck.name} slide {i}: speaker notes missing or too short"
            if i > 1:  # the title slide cites nothing
                assert cites, f"{deck.name} slide {i}: no 'Cite:' line"


_MEASURED = re.compile(r"\d\.\d{2,}|\b\d+ of \d+ (draws|images|runs)|\b\d+(\.\d+)? ?(s|min|ms|MB|kB)\b")


def test_no_measured_number_is_typed_into_a_deck():
    for deck in DECKS:
        # code spans, references and paper identifiers are not typed measurements
        text = re.sub(r"`[^`]*`|\{\{[^}]*\}\}|\(figure:[^)]*\)|arXiv:[0-9.]+", "", deck.read_text())
        found = [m.group(0) for m in _MEASURED.finditer(text)]
        assert not found, f"{deck.name}: numbers that look measured: {found} (take them from saved results)"


def test_deck_three_describes_the_kits_additive_visual_prompts():
    peft = next(p for p in slides.split_slides(DECKS[2].read_text()) if p.startswith("## Parameter-efficient"))
    body, _, _ = slides.split_notes(peft)
    assert "added to the tokens" in body and "additive" in body.lower()
    assert not re.search(r"prompts?\b[^.\n]*\bprepended", body, re.I)
    source = (ROOT / "mfmda_lib" / "finetune" / "peft_methods.py").read_text()
    assert "x <- x + upsample(P_l)" in source  # what the slide describes is what the kit does


def test_make_figures_draws_every_deck_figure_from_the_saved_results(fresh_results, tmp_path):
    written = deck_figures.draw_all(fresh_results, tmp_path, profiles=["cpu"])
    assert sorted(p.name for p in written) == sorted(f"{f.name}_cpu.png" for f in deck_figures.FIGURES)
    for path in written:
        assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size < 200_000, path.name
    committed = {p.name for p in (fresh_results / "figures").glob("*_cpu.png")}
    assert {p.name for p in written} <= committed, "run `make figures` and commit results/figures/*_cpu.png"
    assert all(p.stat().st_size < 200_000 for p in (fresh_results / "figures").glob("*.png"))  # small PNGs


def test_every_deck_reference_resolves_in_a_fresh_clone(built):
    for report in built:
        assert report.placeholders == [], f"{report.name} shows placeholders: {report.placeholders}"
        assert all(s.kind in ("result", "generated") for s in report.sources)
        named = [rows for _, rows in report.tables]
        assert all(named), f"{report.name}: a means table with no rows"
    stage2 = [rows for r in built for name, rows in r.tables if name == "mfmda_stage2"]
    assert stage2 and "mfmda" in stage2[0]


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


def _chromium(*args: str, profile: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _status(proc: subprocess.Popen, name: str) -> dict:
    out, err = proc.communicate(timeout=180)
    match = re.search(r'<div id="deck-status"[^>]*>([^<]*)</div>', out)
    assert match and match.group(1), f"{name}: no status from Chromium (rc {proc.returncode}): {err[-500:]}"
    return json.loads(match.group(1))


def _showcase(report: slides.DeckReport) -> int:
    """The slide a screenshot shows: the first with a results table, else the first with a saved figure."""
    for i, sources in enumerate(report.slide_sources, start=1):
        if any(s.kind == "result" and s.detail.endswith(".json") for s in sources):
            return i
    return next((i for i, s in enumerate(report.slide_sources, start=1) if any(x.kind == "result" for x in s)), 1)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed: `make test` installs Debian's chromium "
                                              "(apt-get install -y chromium); run it to render the decks")
def test_every_deck_renders_complete_in_headless_chromium(built, tmp_path):
    shots = ROOT / "build" / "slides"
    shots.mkdir(parents=True, exist_ok=True)
    running = []  # one browser per deck and task, in parallel
    for i, report in enumerate(built):
        uri = report.output.resolve().as_uri()
        running.append((report, _chromium("--dump-dom", uri, profile=tmp_path / f"dom{i}"),
                        _chromium("--window-size=1280,720", f"--screenshot={shots / (report.name + '.png')}",
                                  f"{uri}#{_showcase(report)}", profile=tmp_path / f"shot{i}")))
    presenter = _chromium("--dump-dom", built[0].output.resolve().as_uri() + "#2,notes", profile=tmp_path / "notes")
    for report, dom, shot in running:
        status = _status(dom, report.name)
        html = report.output.read_text()
        assert status["slides"] == report.slides == html.count('<section class="slide"'), report.name
        assert status["images"] == report.images, report.name
        assert status["broken"] == [], f"{report.name}: images that did not load: {status['broken']}"
        assert status["placeholders"] == [], f"{report.name} shows placeholders: {status['placeholders']}"
        assert [t["result"] for t in status["tables"]] == [name for name, _ in report.tables], report.name
        for table in status["tables"]:
            missing = [r for r in table["named"] if r not in table["rows"]]
            assert table["named"] and not missing, f"{report.name}: {table['result']} lacks rows {missing}"
        assert status["notes"] == sum(1 for n in report.notes if n) and not status["notesVisible"], report.name
        shot.communicate(timeout=180)
        assert (shots / f"{report.name}.png").stat().st_size > 10_000, f"{report.name}: no screenshot"
    assert _status(presenter, "presenter view")["notesVisible"]  # N / #notes shows them beside the slide
