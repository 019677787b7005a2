"""Seeds x images bootstrap and the paired verdicts built on it."""
import numpy as np
import pytest

from mfmda_lib.evaluation import comparisons, metrics, stats


def _rows(method, values, seeds=(0, 1, 2)):
    return [{"method": method, "seed": s, "domain": "d", "sample_id": f"i{j}", "dice": float(v)}
            for s in seeds for j, v in enumerate(values[s] if np.ndim(values) == 2 else values)]


def test_bootstrap_interval_covers_the_mean_and_is_reproducible():
    x = np.random.default_rng(0).normal(0.5, 0.1, size=(3, 40))
    m, lo, hi = stats.seed_image_bootstrap(x, seed=1)
    assert m == pytest.approx(x.mean()) and lo < m < hi
    assert stats.seed_image_bootstrap(x, seed=1) == (m, lo, hi)  # same seed, same interval
    assert stats.seed_image_bootstrap(x[0])[0] == pytest.approx(x[0].mean())  # one seed: images only


def test_seed_spread_widens_the_interval():
    """The same images, but seeds that disagree: the interval must reflect the seeds, not only the images."""
    base = np.random.default_rng(1).normal(0, 0.01, size=40)
    agree = np.stack([base + 0.05] * 3)
    disagree = np.stack([base + 0.25, base - 0.15, base + 0.05])
    _, lo1, hi1 = stats.seed_image_bootstrap(agree)
    _, lo2, hi2 = stats.seed_image_bootstrap(disagree)
    assert hi2 - lo2 > 5 * (hi1 - lo1)


def test_non_finite_images_are_dropped_in_every_seed():
    x = np.array([[1.0, np.nan, 3.0], [1.0, 2.0, 3.0]])
    assert stats.seed_image_bootstrap(x)[0] == pytest.approx(2.0)
    assert np.isnan(stats.seed_image_bootstrap(np.full((2, 2), np.nan))[0])


def test_compare_pairs_images_and_says_no_difference_inside_the_noise():
    rng = np.random.default_rng(2)
    b = rng.uniform(0.3, 0.9, size=(3, 30))
    clear = _rows("a", b + 0.05) + _rows("b", b)
    c = stats.compare(clear, "dice", "a", "b")
    assert c.verdict == "better" and c.diff == pytest.approx(0.05) and c.n_seeds == 3 and c.n_images == 30
    noisy = _rows("a", b + rng.normal(0, 0.2, size=b.shape)) + _rows("b", b)
    assert stats.compare(noisy, "dice", "a", "b").verdict == stats.NO_DIFFERENCE
    worse = stats.compare(clear, "dice", "b", "a")
    assert worse.verdict == "worse" and "b vs a" in worse.sentence()
    assert stats.compare(clear, "dice", "b", "a", higher_is_better=False).verdict == "better"
    with pytest.raises(ValueError, match="no rows"):
        stats.compare(clear, "dice", "a", "zzz")


def test_seed_table_reports_each_method():
    rows = _rows("a", np.full((3, 5), 0.8)) + _rows("b", np.full((3, 5), 0.6))
    t = stats.seed_table(rows, ["dice"])
    assert list(t.index) == ["a", "b"] and t.loc["a", "dice"] == pytest.approx(0.8)
    assert t.loc["a", "n_seeds"] == 3 and t.loc["b", "n_images"] == 5


def test_gap_closed_is_the_share_of_the_baseline_to_oracle_gap():
    rng = np.random.default_rng(3)
    base = rng.uniform(0.3, 0.5, size=(3, 20))
    rows = _rows("so", base) + _rows("oracle", base + 0.4) + _rows("m", base + 0.1) + _rows("worse", base - 0.1)
    share, lo, hi = stats.gap_closed(rows, "dice", "m", "so", "oracle")
    assert share == pytest.approx(0.25) and lo <= 0.25 <= hi
    assert stats.gap_closed(rows, "dice", "worse", "so", "oracle")[0] == pytest.approx(-0.25)
    assert np.isnan(stats.gap_closed(rows, "dice", "m", "oracle", "so")[0])  # no gap to close


def test_comparison_table_runs_each_spec_on_its_subset():
    rng = np.random.default_rng(3)
    b = rng.uniform(0.3, 0.9, size=(3, 20))
    rows = [dict(r, setting="online") for r in _rows("a", b + 0.1) + _rows("b", b)]
    rows += [dict(r, setting="bs1") for r in _rows("a", b - 0.1) + _rows("b", b)]
    specs = [{"question": "q1", "where": {"setting": s}, "metric": "dice", "method": "a", "baseline": "b"}
             for s in ("online", "bs1")]
    specs.append({"question": "q2", "where": {"method": "a"}, "by": "setting", "metric": "dice",
                  "method": "bs1", "baseline": "online"})
    t = comparisons.comparison_table(rows, specs, n_resamples=200)
    assert t["question"].tolist() == ["q1", "q1", "q2"] and t["setting"].tolist()[:2] == ["online", "bs1"]
    assert t["verdict"].tolist() == ["better", "worse", "worse"]
    assert t["diff"].tolist() == pytest.approx([0.1, -0.1, -0.2])
    assert t.loc[2, "where_method"] == "a" and t.loc[2, "method"] == "bs1" and t.loc[2, "n_images"] == 20
    assert comparisons.comparison_table(rows, specs, n_resamples=200).equals(t)  # same seed, same numbers


def test_group_difference_resamples_each_group_on_its_own():
    rng = np.random.default_rng(4)
    a, b = rng.normal(0.7, 0.05, 40), rng.normal(0.5, 0.05, 25)  # different images, different counts
    d, lo, hi = comparisons.group_difference(a, b, n_resamples=500)
    assert d == pytest.approx(a.mean() - b.mean()) and lo < d < hi and stats.verdict_word(lo, hi) == "better"
    same = comparisons.group_difference(a, a[::-1], n_resamples=500)
    assert stats.verdict_word(same[1], same[2]) == stats.NO_DIFFERENCE
    assert comparisons.group_difference(a, b, n_resamples=500) == (d, lo, hi)  # seeded
    assert np.isnan(comparisons.group_difference(a, [np.nan])[0])


def test_auroc_rows_matches_sklearn_and_compare_auroc_pairs_seeds_and_images():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, size=40)
    scores = rng.normal(size=(3, 40)) + 2 * labels  # informative
    scores[0, :5] = 0.25  # ties
    expected = [roc_auc_score(labels, s) for s in scores]
    assert metrics.auroc_rows(labels, scores) == pytest.approx(expected)
    assert np.isnan(metrics.auroc_rows(np.zeros(40), scores)).all()  # one class: undefined
    rows = [{"method": m, "seed": s, "domain": "d", "sample_id": f"i{j}", "pred": float(v), "y": int(labels[j])}
            for m, x in (("good", scores), ("blind", rng.normal(size=(3, 40)))) for s in range(3)
            for j, v in enumerate(x[s])]
    c = comparisons.compare_auroc(rows, "pred", "y", "good", "blind")
    assert c.verdict == "better" and c.n_seeds == 3 and c.n_images == 40 and c.low < c.diff < c.high
    assert c.diff == pytest.approx(np.mean(expected) - np.mean(metrics.auroc_rows(labels,
        np.array([[r["pred"] for r in rows if r["method"] == "blind" and r["seed"] == s] for s in range(3)]))))
    assert comparisons.compare_auroc(rows, "pred", "y", "good", "good").verdict == stats.NO_DIFFERENCE


def test_compare_table_flips_the_direction_of_errors():
    b = np.random.default_rng(4).uniform(0.3, 0.9, size=(3, 30))
    rows = [{**r, "err": 1 - r["dice"]} for r in _rows("a", b + 0.05) + _rows("b", b)]
    t = comparisons.compare_table(rows, ["dice", "err"], [("a", "b")], lower_is_better=["err"])
    assert t.loc[("a", "b", "dice"), "verdict"] == "better" and t.loc[("a", "b", "err"), "verdict"] == "better"
    assert t.loc[("a", "b", "err"), "diff"] == pytest.approx(-0.05) and t.loc[("a", "b", "dice"), "n_seeds"] == 3
    from mfmda_lib.evaluation import format_table

    assert "| better |" in " ".join(format_table(t).split())  # a word column goes into the Markdown table as is
