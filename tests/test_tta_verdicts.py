"""Notebook 06's verdicts: the comparisons they rest on, and a same-seed re-run that repeats every number."""
from dataclasses import replace

import numpy as np
import pytest

from mfmda_lib.adapt import tta, tta_base
from mfmda_lib.adapt import tta_benchmark as tb
from mfmda_lib.adapt import tta_source as ts
from mfmda_lib.adapt import tta_verdicts as tv
from mfmda_lib.profiles import get_profile


def _run(profile):
    """Train the seeds' source models and run every method (plus a multi-step Tent) on them."""
    models = {s: m for s, (m, _) in ts.source_models(profile, progress=False).items()}
    config = tta_base.TTAConfig(n_augmentations=profile.tta_views)
    methods = {name: (cls, config) for name, cls in tta.TTA_METHODS.items()}
    methods["tent (2 steps)"] = (tta.Tent, replace(config, steps=2))
    result = tb.run_tta_benchmark(profile, models, methods, progress=False)
    verdicts = tv.tta_verdicts(result, variants={"tent (2 steps)": "tent"}, n_resamples=profile.bootstrap_resamples)
    return result, verdicts


def test_same_seed_rerun_reproduces_every_number(tmp_path, monkeypatch, one_torch_thread):
    """The ci profile, twice from an empty cache (source models trained again): identical rows and verdicts."""
    profile = get_profile("ci")
    runs = []
    for k in range(2):
        monkeypatch.setenv("MFMDA_CACHE", str(tmp_path / f"cache{k}"))  # each run trains its source models
        runs.append(_run(profile))
    (a, va), (b, vb) = runs
    assert a.meta["seeds"] == ts.seeds_of(profile) == [0, 1]
    assert {r["seed"] for r in a.rows} == {0, 1} and {r["method"] for r in a.rows} >= set(tta.TTA_METHODS)
    assert a.rows == b.rows and a.source_rows == b.source_rows
    pd_equal = va.equals(vb)
    assert pd_equal, "the verdict table must repeat exactly"
    # the seeds are different runs: the two source models do not predict alike
    first = [r["disc_dice"] for r in a.rows if r["method"] == "source_only" and r["setting"] == "online"]
    by_seed = np.array(first).reshape(2, -1)
    assert not np.array_equal(by_seed[0], by_seed[1])
    # every question is asked, and every line says better / worse only when its interval excludes 0
    assert set(va.question) == set(tv.QUESTIONS)
    for _, line in va.iterrows():
        assert (line.verdict == "better") == (line.low > 0) and (line.verdict == "worse") == (line.high < 0)
    # MEMO restores the source after every image: one run per image set, reused for the other regimes
    assert a.meta["run_once_per_image_set"] == ["memo"]
    memo = {(r["seed"], r["setting"], r["sample_id"]): r["disc_dice"] for r in a.rows if r["method"] == "memo"}
    assert all(memo[(s, "online", i)] == v for (s, setting, i), v in memo.items() if setting == "episodic")


def _result(rows, source_rows):
    return tb.TTAResult(table=None, settings=None, forgetting=None, rows=rows, source_rows=source_rows)


def test_headline_verdict_follows_the_intervals():
    """Norm statistics clearly help, Tent adds nothing on top: the sentence says exactly that."""
    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.6, size=(3, 12))
    rows, source_rows = [], []
    for method, shift, noise in (("source_only", 0.0, 0.0), ("norm_stats", 0.2, 0.0), ("tent", 0.2, 0.05)):
        for s in range(3):
            for j in range(12):
                value = base[s, j] + shift + noise * rng.normal()
                for setting in ("online", "batch size 1", "severity 2", "continual"):
                    rows.append({"seed": s, "method": method, "setting": setting, "domain": "refuge_test",
                                 "sample_id": f"i{j}", "disc_dice": value, "cup_dice": value})
        for s in range(3):
            for when in ("before", "after"):
                source_rows += [{"seed": s, "method": method, "when": when, "setting": "continual",
                                 "domain": "refuge_train", "sample_id": f"s{j}", "disc_dice": 0.9, "cup_dice": 0.8}
                                for j in range(4)]
    table = tv.tta_verdicts(_result(rows, source_rows), n_resamples=300)
    line = table[(table.question == "vs norm stats") & (table.metric == "disc_dice")].iloc[0]
    assert line.method == "tent" and line.verdict == tv.NO_DIFFERENCE
    assert (table[table.question == "vs source"].verdict == "better").all()
    text = tv.headline_verdict(table)
    assert "better than source-only on both structures: norm_stats, tent." in text
    assert "Gradient methods better than the batch statistics alone on both structures: none." in text
    assert "No method measurably forgot the source" in text


def test_comparisons_need_the_source_baseline():
    with pytest.raises(ValueError, match="source_only"):
        tv.tta_comparisons(["tent"], ["online"])
    specs = tv.tta_comparisons(["source_only", "norm_stats", "tent", "memo"], ["online", "continual"])
    vs_norm = {s["method"] for s in specs if s["question"] == "vs norm stats"}
    assert vs_norm == {"tent"}, "only methods that adapt on batch statistics are compared with them"
