"""Metrics and tables on hand-built masks with known answers."""
from __future__ import annotations

import math
import sys

import numpy as np
import pandas as pd
import pytest

from mfmda_lib.data.sample import FundusSample
from mfmda_lib.evaluation import (SCORE_KEYS, dice, format_table, hd95, iou, per_domain_table,
                                  segmentation_scores, vcdr_error)
from mfmda_lib.evaluation.metrics import auroc, hd95_penalty


def square(top: int, left: int, side: int = 10, size: int = 64) -> np.ndarray:
    """``(size, size)`` bool mask with a ``side`` x ``side`` square at (top, left)."""
    m = np.zeros((size, size), dtype=bool)
    m[top:top + side, left:left + side] = True
    return m


def rows_mask(first: int, last: int, cols: slice = slice(20, 40), size: int = 64) -> np.ndarray:
    """Mask covering rows ``first..last`` (inclusive) in the given columns."""
    m = np.zeros((size, size), dtype=bool)
    m[first:last + 1, cols] = True
    return m


def disc_sample(size: int = 64, domain: str = "site_a") -> FundusSample:
    """A tiny sample: grey image, disc = circle r 12, cup = circle r 6, both centred."""
    yy, xx = np.mgrid[:size, :size]
    r2 = (yy - size // 2) ** 2 + (xx - size // 2) ** 2
    image = np.full((size, size, 3), 90, dtype=np.uint8)
    return FundusSample(image=image, disc=r2 <= 12 ** 2, cup=r2 <= 6 ** 2, domain=domain, sample_id="s0")


# ---------------------------------------------------------------------------------------------
# Dice and IoU
# ---------------------------------------------------------------------------------------------

def test_dice_iou_squares_offset_by_half():
    a, b = square(10, 10), square(10, 15)  # overlap 10 x 5 = 50 of 100 + 100
    assert dice(a, b) == pytest.approx(0.5)
    assert iou(a, b) == pytest.approx(1 / 3)


def test_dice_iou_identical_disjoint_and_empty():
    a = square(5, 5)
    assert dice(a, a) == 1.0 and iou(a, a) == 1.0
    assert dice(a, square(40, 40)) == 0.0 and iou(a, square(40, 40)) == 0.0
    empty = np.zeros_like(a)
    assert dice(empty, empty) == 1.0 and iou(empty, empty) == 1.0
    assert dice(a, empty) == 0.0 and dice(empty, a) == 0.0
    assert iou(a, empty) == 0.0 and iou(empty, a) == 0.0


def test_dice_accepts_01_integers_and_rejects_bad_shapes():
    a = square(10, 10)
    assert dice(a.astype(np.uint8), square(10, 15).astype(np.int64)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="differ in size"):
        dice(a, a[:32])
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        iou(a[None], a[None])


# ---------------------------------------------------------------------------------------------
# HD95
# ---------------------------------------------------------------------------------------------

def test_hd95_identical_is_zero():
    a = square(10, 10)
    assert hd95(a, a) == 0.0


@pytest.mark.parametrize("k", [1, 3, 5, 7])
def test_hd95_of_shifted_square_is_the_shift(k):
    a = square(10, 10)
    assert hd95(a, square(10, 10 + k)) == pytest.approx(k)  # horizontal
    assert hd95(square(10 + k, 10), a) == pytest.approx(k)  # vertical, other argument order


def test_hd95_spacing_scales_distances():
    a, down3 = square(10, 10), square(13, 10)
    assert hd95(a, down3, spacing=0.5) == pytest.approx(1.5)
    assert hd95(a, down3, spacing=(2.0, 1.0)) == pytest.approx(6.0)  # rows are 2 units apart
    assert hd95(a, down3, spacing=(1.0, 2.0)) == pytest.approx(3.0)  # columns do not matter here
    with pytest.raises(ValueError, match="positive"):
        hd95(a, down3, spacing=0.0)


def test_hd95_empty_cases():
    a, empty = square(10, 10), np.zeros((64, 64), bool)
    assert hd95(empty, empty) == 0.0
    assert hd95(empty, a) == hd95(a, empty) == pytest.approx(64 * math.sqrt(2))  # the image diagonal
    assert hd95(empty, a, spacing=(2.0, 1.0)) == pytest.approx(math.hypot(128, 64)) == hd95_penalty((64, 64), (2, 1))


def test_an_empty_prediction_never_beats_a_poor_one():
    """The penalty exists so that predicting nothing cannot lower a mean HD95."""
    target = square(10, 10)
    far = square(50, 50)  # a poor prediction in the opposite corner
    assert hd95(np.zeros_like(target), target) > hd95(far, target)
    rows = [{"method": m, "domain": "A", "cup_hd95": hd95(p, target), "cup_empty": not p.any()}
            for m, p in (("nothing", np.zeros_like(target)), ("poor", far))]
    t = per_domain_table(rows, ["cup_hd95"])
    assert t.loc[("nothing", "mean"), "cup_hd95"] > t.loc[("poor", "mean"), "cup_hd95"]


def _pinned_shapes() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    yy, xx = np.mgrid[:64, :64]
    circle = (yy - 32) ** 2 + (xx - 30) ** 2 <= 12 ** 2
    ellipse = ((yy - 35) / 9.0) ** 2 + ((xx - 33) / 15.0) ** 2 <= 1
    blob = circle.copy()
    blob[20:26, 40:60] = True
    blob[30:34, 5:12] = True  # a detached island far from the circle
    corner = np.zeros((64, 64), bool)
    corner[0:10, 50:64] = True  # touches the image border
    return {"ellipse": (ellipse, circle), "blob": (blob, circle), "corner": (corner, circle)}


# monai.metrics.compute_hausdorff_distance(pred[None, None], target[None, None],
#     include_background=True, percentile=95, spacing=...) with MONAI 1.6.1 (float32 output).
MONAI_HD95 = {
    ("ellipse", 1.0): 6.05379581451416, ("ellipse", (2.0, 0.5)): 10.291305541992188,
    ("blob", 1.0): 18.104389190673828, ("blob", (2.0, 0.5)): 10.536372184753418,
    ("corner", 1.0): 41.72529220581055, ("corner", (2.0, 0.5)): 68.87224578857422,
}


@pytest.mark.parametrize("name,spacing", list(MONAI_HD95))
def test_hd95_matches_monai_on_irregular_shapes(name, spacing):
    pred, target = _pinned_shapes()[name]
    assert hd95(pred, target, spacing) == pytest.approx(MONAI_HD95[name, spacing], rel=1e-6)


# ---------------------------------------------------------------------------------------------
# vCDR and per-sample scores
# ---------------------------------------------------------------------------------------------

def test_vcdr_error_on_hand_built_masks():
    true_disc, true_cup = rows_mask(10, 29), rows_mask(15, 24, slice(25, 35))  # 10 / 20 = 0.5
    pred_disc, pred_cup = rows_mask(10, 29), rows_mask(14, 25, slice(25, 35))  # 12 / 20 = 0.6
    assert vcdr_error(pred_disc, pred_cup, true_disc, true_cup) == pytest.approx(0.1)
    assert vcdr_error(true_disc, true_cup, true_disc, true_cup) == 0.0
    empty = np.zeros_like(true_disc)
    assert vcdr_error(empty, empty, true_disc, true_cup) == pytest.approx(0.5)  # charged the true vCDR


def test_segmentation_scores_perfect_prediction():
    s = disc_sample()
    scores = segmentation_scores(s.disc, s.cup, s)
    assert tuple(scores) == SCORE_KEYS
    assert scores["disc_dice"] == scores["cup_dice"] == 1.0
    assert scores["disc_iou"] == scores["cup_iou"] == 1.0
    assert scores["disc_hd95"] == scores["cup_hd95"] == 0.0
    assert scores["vcdr_true"] == pytest.approx(13 / 25)  # cup rows 26..38, disc rows 20..44
    assert scores["vcdr_pred"] == scores["vcdr_true"]
    assert scores["vcdr_abs_err"] == 0.0
    assert not scores["disc_empty"] and not scores["cup_empty"]


def test_segmentation_scores_shifted_prediction_uses_each_metric():
    s = disc_sample()
    pred_disc, pred_cup = np.roll(s.disc, 3, axis=1), np.zeros_like(s.cup)  # disc 3 px right, no cup
    scores = segmentation_scores(pred_disc, pred_cup, s)
    assert scores["disc_dice"] == pytest.approx(dice(pred_disc, s.disc))
    assert 0.5 < scores["disc_dice"] < 1.0
    assert scores["disc_iou"] == pytest.approx(iou(pred_disc, s.disc))
    assert scores["disc_hd95"] == pytest.approx(3.0)
    assert scores["cup_dice"] == 0.0 and scores["cup_hd95"] == pytest.approx(64 * math.sqrt(2))
    assert scores["cup_empty"] and not scores["disc_empty"]
    assert scores["vcdr_pred"] == 0.0
    assert scores["vcdr_abs_err"] == pytest.approx(s.vcdr)


def test_segmentation_scores_rejects_wrong_size():
    s = disc_sample()
    with pytest.raises(ValueError, match="resize predictions"):
        segmentation_scores(s.disc[:32], s.cup, s)


# ---------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------

ROWS = [
    {"domain": "A", "disc_dice": 0.8, "cup_dice": 0.5},
    {"domain": "A", "disc_dice": 0.6, "cup_dice": 0.7},
    {"domain": "B", "disc_dice": 1.0, "cup_dice": 0.9, "extra": "ignored"},
]


def test_per_domain_table_means_stds_and_macro_mean_row():
    t = per_domain_table(ROWS)
    assert list(t.index) == ["A", "B", "mean"]
    assert list(t.columns) == ["n", "disc_dice", "disc_dice_std", "cup_dice", "cup_dice_std"]
    assert t.loc["A", "disc_dice"] == pytest.approx(0.7)
    assert t.loc["A", "disc_dice_std"] == pytest.approx(0.1)  # ddof=0
    assert t.loc["B", "disc_dice_std"] == 0.0
    assert t.loc["mean", "disc_dice"] == pytest.approx(0.85)  # (0.7 + 1.0) / 2, not the image mean 0.8
    assert t.loc["mean", "disc_dice_std"] == pytest.approx(0.15)  # spread of the domain means
    assert t.loc["mean", "cup_dice"] == pytest.approx(0.75)
    assert t["n"].tolist() == [2, 1, 3]
    assert per_domain_table(ROWS, ddof=1).loc["A", "disc_dice_std"] == pytest.approx(np.std([0.8, 0.6], ddof=1))


def test_per_domain_table_order_methods_and_nan():
    rows = [dict(r, method="base") for r in ROWS] + [
        {"method": "tta", "domain": "B", "disc_dice": 0.9, "cup_dice": float("nan")},
        {"method": "tta", "domain": "B", "disc_dice": 0.7, "cup_dice": 0.4},
    ]
    t = per_domain_table(rows, domain_order=["B", "A"])
    assert t.index.names == ["method", "domain"]
    assert list(t.index) == [("base", "B"), ("base", "A"), ("base", "mean"), ("tta", "B"), ("tta", "mean")]
    assert t.loc[("tta", "B"), "disc_dice"] == pytest.approx(0.8)
    assert t.loc[("tta", "B"), "cup_dice"] == pytest.approx(0.4)  # nan skipped
    assert t.loc[("tta", "mean"), "disc_dice"] == pytest.approx(0.8)  # only B for tta
    assert t.loc[("base", "mean"), "disc_dice"] == pytest.approx(0.85)


def test_per_domain_table_fails_loudly():
    with pytest.raises(ValueError, match="lacks"):
        per_domain_table([{"domain": "A", "disc_dice": 1.0}])  # no cup_dice
    with pytest.raises(ValueError, match="in rows but not listed"):
        per_domain_table(ROWS, domain_order=["A"])
    with pytest.raises(ValueError, match="listed but no rows"):
        per_domain_table(ROWS, domain_order=["A", "B", "C"])
    with pytest.raises(ValueError, match="reserved"):
        per_domain_table([{"domain": "mean", "disc_dice": 1.0, "cup_dice": 1.0}])
    with pytest.raises(ValueError, match="empty"):
        per_domain_table([])


def test_empty_predictions_are_counted_beside_each_structures_means(monkeypatch):
    rows = [{"method": "m", "domain": d, "disc_dice": v, "disc_hd95": h, "disc_empty": e, "cup_dice": 0.5,
             "cup_hd95": 3.0, "cup_empty": False}
            for d, v, h, e in (("A", 0.0, 90.5, True), ("A", 0.8, 4.0, False), ("B", 0.0, 90.5, True))]
    t = per_domain_table(rows, ["disc_dice", "disc_hd95", "cup_dice"], domain_order=["A", "B"])
    assert list(t.columns) == ["n", "disc_dice", "disc_dice_std", "disc_hd95", "disc_hd95_std", "disc_empty",
                               "cup_dice", "cup_dice_std", "cup_empty"]
    assert t["disc_empty"].tolist() == [1, 1, 2] and t["cup_empty"].tolist() == [0, 0, 0]
    assert t.loc[("m", "A"), "disc_hd95"] == pytest.approx((90.5 + 4.0) / 2)  # the penalty enters the mean
    for fallback in (False, True):
        if fallback:
            monkeypatch.setitem(sys.modules, "tabulate", None)
        lines = format_table(t).splitlines()
        header = [c.strip() for c in lines[0].strip("|").split("|")]
        assert header == ["method", "domain", "n", "disc_dice", "disc_hd95", "disc_empty", "cup_dice", "cup_empty"]
        mean_row = [c.strip() for c in lines[-1].strip("|").split("|")]
        assert mean_row[header.index("disc_empty")] == "2" and mean_row[header.index("n")] == "3"
    # rows without the flags: no count column (older saved rows)
    assert "disc_empty" not in per_domain_table(ROWS).columns


def _check_markdown(text: str) -> None:
    lines = text.splitlines()
    assert len(lines) == 2 + 3  # header, alignment rule, A, B, mean
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["domain", "n", "disc_dice", "cup_dice"]
    assert set(lines[1]) <= set("|:- ")
    assert "0.700 ± 0.100" in lines[2] and lines[2].lstrip("| ").startswith("A")
    assert "1.000 ± 0.000" in lines[3]
    assert "0.850 ± 0.150" in lines[4] and "mean" in lines[4]
    assert all(line.startswith("|") and line.endswith("|") for line in lines)


def test_format_table_builtin_formatter(monkeypatch):
    monkeypatch.setitem(sys.modules, "tabulate", None)  # force the fallback path
    text = format_table(per_domain_table(ROWS))
    _check_markdown(text)
    widths = {len(line) for line in text.splitlines()}
    assert len(widths) == 1  # columns padded to one width


def test_format_table_default_path_and_digits():
    t = per_domain_table(ROWS)
    _check_markdown(format_table(t))
    assert "0.7 ± 0.1" in format_table(t, digits=1)


def test_format_table_methods_and_missing_values(monkeypatch):
    monkeypatch.setitem(sys.modules, "tabulate", None)
    rows = [{"method": "m", "domain": "A", "disc_dice": float("nan"), "cup_dice": 0.5}]
    text = format_table(per_domain_table(rows))
    assert [c.strip() for c in text.splitlines()[0].strip("|").split("|")][:2] == ["method", "domain"]
    assert "n/a" in text and "0.500 ± 0.000" in text
    plain = format_table(pd.DataFrame({"acc": [0.5], "acc_std": [0.1], "chance": [0.25]}, index=["s0"]))
    assert "0.500 ± 0.100" in plain and "0.250" in plain and "acc_std" not in plain
    with pytest.raises(ValueError, match="no value columns"):
        format_table(pd.DataFrame({"n": [1]}))


def test_auroc_matches_sklearn_and_is_nan_without_two_classes():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 50)
    scores = labels + rng.normal(0, 1, 50)
    assert auroc(labels, scores) == roc_auc_score(labels, scores)
    assert auroc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert math.isnan(auroc([1, 1, 1], [0.1, 0.5, 0.9])) and math.isnan(auroc([], []))
