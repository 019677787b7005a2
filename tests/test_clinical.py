"""Clinical evaluation: bootstrap intervals, screening, calibration, subgroups, reporting (notebook 10)."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torchmetrics.functional.classification import binary_calibration_error

from mfmda_lib.data import generate_sample
from mfmda_lib.evaluation import calibration, clinical, metrics, reporting, screening
from mfmda_lib.evaluation.clinical import ClinicalConfig

CONFIG = ClinicalConfig(n_resamples=400, seed=0)


@pytest.fixture(scope="module")
def samples():
    """Two tiny eyes per domain (64 px), from the synthetic generator."""
    return [generate_sample(d, i, split="test", size=64) for d in ("refuge_train", "riga_messidor") for i in range(2)]


def _rows(domains_values: dict[str, list[float]], metric: str = "disc_dice") -> list[dict]:
    return [{"domain": d, "sample_id": f"{d}_{i}", metric: v} for d, vs in domains_values.items()
            for i, v in enumerate(vs)]


# ---------------------------------------------------------------------------------------------
# config and bootstrap
# ---------------------------------------------------------------------------------------------

def test_config_validates_and_reads_the_profile():
    from mfmda_lib.profiles import PROFILES

    with pytest.raises(ValueError, match="confidence"):
        ClinicalConfig(confidence=1.5)
    with pytest.raises(ValueError, match="n_resamples"):
        ClinicalConfig(n_resamples=2)
    cfg = ClinicalConfig.from_profile(PROFILES["ci"], target_specificity=0.95)
    assert cfg.n_resamples == PROFILES["ci"].bootstrap_resamples and cfg.target_specificity == 0.95
    assert cfg.level == "95%"


def test_bootstrap_interval_contains_the_mean_is_seeded_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    small, large = rng.normal(0.8, 0.1, 10), rng.normal(0.8, 0.1, 1000)
    est, lo, hi = clinical.bootstrap_ci(small, n_resamples=500, seed=3)
    assert lo < est < hi and est == pytest.approx(small.mean())
    assert clinical.bootstrap_ci(small, n_resamples=500, seed=3) == (est, lo, hi)
    _, lo_l, hi_l = clinical.bootstrap_ci(large, n_resamples=500, seed=3)
    assert (hi_l - lo_l) < (hi - lo) / 4  # width ~ 1/sqrt(n): 10x the images, ~3x narrower... at least 4x here
    assert lo_l < 0.8 < hi_l


def test_bootstrap_edge_cases_drop_nan():
    assert clinical.bootstrap_ci([0.5]) == (0.5, 0.5, 0.5)
    assert all(np.isnan(clinical.bootstrap_ci([np.nan, np.nan])))
    est, lo, hi = clinical.bootstrap_ci([1.0, np.nan, 3.0], n_resamples=200)
    assert est == 2.0 and 1.0 <= lo <= hi <= 3.0
    est, _, _ = clinical.bootstrap_ci([1.0, 2.0, 9.0], np.median, n_resamples=50)
    assert est == 2.0


def test_ci_table_has_groups_pooled_targets_and_bounds():
    rows = _rows({"refuge_train": [0.9, 0.95], "refuge_test": [0.8, 0.7, 0.75], "riga_messidor": [0.6, 0.65]})
    table = clinical.ci_table(rows, ["disc_dice"], CONFIG)
    assert list(table.index) == ["refuge_train", "refuge_test", "riga_messidor", clinical.POOLED_TARGETS]
    assert table.loc[clinical.POOLED_TARGETS, "n"] == 5
    assert table.loc[clinical.POOLED_TARGETS, "disc_dice"] == pytest.approx(np.mean([0.8, 0.7, 0.75, 0.6, 0.65]))
    assert (table.disc_dice_lo <= table.disc_dice).all() and (table.disc_dice <= table.disc_dice_hi).all()
    text = clinical.format_ci(table)
    assert text.loc["refuge_train", "disc_dice"].startswith("0.925 [")
    with pytest.raises(ValueError, match="cup_dice"):
        clinical.ci_table(rows, ["cup_dice"], CONFIG)
    only_one_target = clinical.ci_table(_rows({"refuge_test": [0.8, 0.7]}), ["disc_dice"], CONFIG)
    assert clinical.POOLED_TARGETS not in only_one_target.index  # pooling one group would just repeat it


# ---------------------------------------------------------------------------------------------
# screening
# ---------------------------------------------------------------------------------------------

def test_rank_auc_matches_scikit_learn_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.random((20, 15)) < 0.4
    scores = np.round(rng.random((20, 15)), 1)  # many ties
    auc = metrics.auroc_rows(labels, scores)
    for row in range(20):
        if 0 < labels[row].sum() < 15:
            assert auc[row] == pytest.approx(roc_auc_score(labels[row], scores[row]))
        else:
            assert np.isnan(auc[row])


def test_screening_perfect_random_and_single_class():
    true = np.array([0.3, 0.4, 0.5, 0.65, 0.7, 0.8, 0.35, 0.45])
    perfect = screening.glaucoma_screening(true, true, CONFIG)
    assert perfect.auc == 1.0 and perfect.sensitivity == 1.0 and perfect.specificity == 1.0
    assert perfect.n_positive == 3 and perfect.n_negative == 5
    assert perfect.sensitivity_at_specificity == 1.0 and perfect.auc_lo == 1.0
    inverted = screening.glaucoma_screening(true, 1 - true, CONFIG)
    assert inverted.auc == 0.0 and inverted.sensitivity == 0.0
    under = screening.glaucoma_screening(true, true - 0.1, CONFIG)  # every ratio 0.1 too small
    assert under.auc == 1.0 and under.sensitivity < 1.0  # ranking intact, the fixed rule misses suspects
    one_class = screening.glaucoma_screening([0.3, 0.4], [0.3, 0.5], CONFIG)
    assert np.isnan(one_class.auc) and one_class.fpr.size == 0 and "one class" in one_class.note
    assert one_class.specificity == 1.0
    assert set(perfect.summary()) >= {"auc", "auc_lo", "sensitivity", "note"}


def test_sensitivity_at_specificity_picks_the_best_feasible_point():
    fpr = np.array([0.0, 0.05, 0.1, 0.3, 1.0])
    tpr = np.array([0.0, 0.4, 0.7, 0.9, 1.0])
    thr = np.array([np.inf, 0.8, 0.7, 0.6, 0.1])
    assert screening.sensitivity_at_specificity(fpr, tpr, thr, 0.9) == (0.7, 0.7)
    assert screening.sensitivity_at_specificity(fpr, tpr, thr, 0.95) == (0.4, 0.8)
    assert screening.sensitivity_at_specificity(fpr, tpr, thr, 0.99) == (0.0, np.inf)


def test_screening_errors_names_both_kinds():
    rows = [{"domain": "a", "sample_id": "1", "vcdr_true": 0.7, "vcdr_pred": 0.5},
            {"domain": "a", "sample_id": "2", "vcdr_true": 0.4, "vcdr_pred": 0.62},
            {"domain": "a", "sample_id": "3", "vcdr_true": 0.4, "vcdr_pred": 0.45}]
    errors = screening.screening_errors(rows, 0.6)
    assert list(errors.error) == ["false referral", "missed suspect"]  # worst vCDR error (0.22, 0.2) first
    assert screening.screening_errors(rows[2:], 0.6).empty


# ---------------------------------------------------------------------------------------------
# calibration
# ---------------------------------------------------------------------------------------------

def test_ece_matches_torchmetrics_and_is_small_when_calibrated():
    rng = np.random.default_rng(0)
    p = rng.random(20000)
    y = rng.random(20000) < p  # calibrated by construction
    ece = calibration.expected_calibration_error(p, y, 10)
    reference = binary_calibration_error(torch.tensor(p), torch.tensor(y.astype(int)), n_bins=10, norm="l1")
    assert ece == pytest.approx(float(reference), abs=1e-6)
    assert ece < 0.02
    over = np.clip(p * 1.6 - 0.3, 0, 1)  # pushed towards 0 and 1: over-confident
    assert calibration.expected_calibration_error(over, y, 10) > 5 * ece
    table = calibration.reliability_table(p, y, 10)
    assert table["count"].sum() == p.size and len(table) == 10
    assert calibration.reliability_table(np.array([1.0]), np.array([True]), 4)["count"].iloc[-1] == 1  # 1.0 in the last bin
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        calibration.reliability_table(np.array([1.2]), np.array([True]))


def test_calibration_pixels_cover_the_grown_boxes(samples):
    probs = np.stack([np.stack([s.disc, s.cup]).astype(np.float32) for s in samples])  # (N, 2, H, W), perfect
    p, y = calibration.calibration_pixels(probs, samples, margin=2)
    expected = 0
    for s in samples:
        for structure in ("disc", "cup"):
            x0, y0, x1, y1 = s.box(structure, 2).astype(int)
            expected += (x1 - x0 + 1) * (y1 - y0 + 1)
    assert p.size == y.size == expected
    assert calibration.expected_calibration_error(p, y) == 0.0  # the truth as probability: calibrated
    by_domain = calibration.calibration_by_domain(probs, samples, CONFIG)
    assert list(by_domain.index) == ["refuge_train", "riga_messidor"]
    assert (by_domain[["disc_ece", "cup_ece"]] == 0).all().all()
    with pytest.raises(ValueError, match="probs must be"):
        calibration.calibration_pixels(probs[:, :1], samples)


def test_disc_size_groups_split_at_the_median(samples):
    split = clinical.disc_size_groups(samples)
    assert split.labels.count("large disc") >= split.labels.count("small disc") >= 1
    areas = [s.disc.sum() for s in samples]
    assert split.threshold == pytest.approx(np.median(areas))
    assert clinical.disc_size_groups(samples, threshold=0).labels == ["large disc"] * len(samples)


# ---------------------------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------------------------

def _method_rows():
    rows = []
    for method, shift in (("frozen", 0.0), ("adapter", 0.1)):
        for i in range(6):
            rows.append({"method": method, "domain": "refuge_test", "sample_id": f"s{i}", "step": i,
                         "cup_dice": 0.5 + 0.05 * i + shift, "vcdr_true": 0.4 + 0.1 * (i % 3),
                         "vcdr_pred": 0.42 + 0.1 * (i % 3)})
    rows.append({"method": "frozen", "domain": "refuge_train", "sample_id": "x", "step": 0, "cup_dice": 0.0,
                 "vcdr_true": 0.5, "vcdr_pred": 0.5})
    return rows


def test_results_inventory_lists_known_missing_and_extra(tmp_path):
    (tmp_path / "zero_shot_litemedsam_ci.json").write_text(json.dumps({"meta": {"date": "d", "device": "cpu"},
                                                                       "table": [], "rows": [{"a": 1}]}))
    (tmp_path / "new_thing_ci.json").write_text(json.dumps({"meta": {}, "table": [], "rows": []}))
    (tmp_path / "new_thing_cpu.json").write_text("{}")
    inv = reporting.results_inventory(tmp_path, "ci", exclude=["test_time_adaptation"])
    assert inv.loc["zero_shot_litemedsam", "present"] and inv.loc["zero_shot_litemedsam", "rows"] == 1
    assert not inv.loc["sam_decoder_adapter", "present"]
    assert inv.loc["new_thing", "notebook"] == "?" and "test_time_adaptation" not in inv.index
    assert reporting.load_result(tmp_path, "absent", "ci") is None
    (tmp_path / "broken_ci.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        reporting.load_result(tmp_path, "broken", "ci")


def test_summarise_rows_groups_by_setting_and_screens():
    rows = _method_rows()
    assert reporting.setting_columns(rows) == ["method"]  # step and sample_id identify, metrics are metrics
    summary = reporting.summarise_rows(rows, CONFIG, metrics=("cup_dice",))
    assert list(summary.index) == ["frozen", "adapter"] and (summary.n == 6).all()  # source row left out
    assert summary.loc["adapter", "cup_dice"] - summary.loc["frozen", "cup_dice"] == pytest.approx(0.1)
    assert summary.loc["frozen", "auc"] == 1.0
    assert reporting.summarise_rows(rows, CONFIG, domains=["riga_binrushed"]).empty
    located = [{"domain": r["domain"], "sample_id": r["sample_id"], "error": 0.1} for r in rows]  # no metric at all
    assert reporting.summarise_rows(located, CONFIG).empty


def test_paired_difference_is_exact_for_a_constant_shift():
    diff = reporting.paired_difference(_method_rows(), "cup_dice", "frozen", config=CONFIG)
    assert list(diff.index) == ["adapter"] and diff.loc["adapter", "n"] == 6
    assert diff.loc["adapter", "diff"] == pytest.approx(0.1)
    assert diff.loc["adapter", "diff_hi"] - diff.loc["adapter", "diff_lo"] == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="no rows with method == 'none'"):
        reporting.paired_difference(_method_rows(), "cup_dice", "none", config=CONFIG)


def test_checklist_is_filled_from_measurements(samples, tmp_path):
    rows = [{"domain": s.domain, "sample_id": s.sample_id, "disc_dice": 0.9 - 0.1 * i, "cup_dice": 0.7 - 0.1 * i,
             "vcdr_abs_err": 0.05, "vcdr_true": s.vcdr, "vcdr_pred": s.vcdr + 0.01} for i, s in enumerate(samples)]
    table = clinical.ci_table(rows, ["disc_dice", "cup_dice", "vcdr_abs_err"], CONFIG)
    screen = screening.glaucoma_screening([r["vcdr_true"] for r in rows], [r["vcdr_pred"] for r in rows], CONFIG)
    probs = np.stack([np.stack([s.disc, s.cup]).astype(np.float32) for s in samples])
    ece = calibration.calibration_by_domain(probs, samples, CONFIG)
    split = clinical.disc_size_groups(samples)
    subgroups = clinical.ci_table([dict(r, size=g) for r, g in zip(rows, split.labels)], ["cup_dice"], CONFIG,
                                  by="size", pooled=None)
    checklist = reporting.reporting_checklist(
        domain_table=table, screening=screen, ece=ece, subgroups=subgroups,
        inventory=reporting.results_inventory(tmp_path, "ci"), failures_shown=1, prompt="ground truth", config=CONFIG)
    assert set(checklist.status) <= {"reported", "caveat", "missing"}
    assert checklist.loc["sites and images per site", "status"] == "caveat"  # 2 images per site
    assert "riga_messidor" in checklist.loc["performance per site, worst site named", "evidence"]
    assert "missing:" in checklist.loc["results of the other notebooks", "evidence"]
    md = reporting.markdown_table(checklist)
    assert md.splitlines()[0].startswith("| item") and len(md.splitlines()) == len(checklist) + 2
    assert reporting.markdown_table(pd.DataFrame({"a": ["x|y"]})).count("\\|") == 1


def test_summarise_rows_pools_seeds_and_paired_difference_says_its_verdict():
    rows = [dict(r, seed=s) for s in (0, 1, 2) for r in _method_rows()]
    assert reporting.setting_columns(rows) == ["method"], "a seed is not a setting"
    summary = reporting.summarise_rows(rows, CONFIG, metrics=("cup_dice",))
    assert list(summary.index) == ["frozen", "adapter"] and (summary.n == 18).all() and (summary.n_seeds == 3).all()
    diff = reporting.paired_difference(rows, "cup_dice", "frozen", config=CONFIG)
    assert diff.loc["adapter", "n_seeds"] == 3 and diff.loc["adapter", "verdict"] == "better"
    err = reporting.paired_difference(rows, "cup_dice", "frozen", config=CONFIG, higher_is_better=False)
    assert err.loc["adapter", "verdict"] == "worse"
