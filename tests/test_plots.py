"""Figure helpers: structure of the returned figures, headless, and atomic saving."""
from __future__ import annotations

import warnings
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")  # headless, before pyplot is imported anywhere

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from PIL import Image  # noqa: E402

from mfmda_lib import plots  # noqa: E402
from mfmda_lib.data.sample import FundusSample  # noqa: E402
from mfmda_lib.evaluation import per_domain_table, segmentation_scores  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def fundus(domain: str, i: int = 0, size: int = 64, field_rgb=(200, 100, 50)) -> FundusSample:
    """A tiny fundus: black surround, a flat-coloured field of radius 28, a disc and a cup."""
    yy, xx = np.mgrid[:size, :size]
    c = size // 2
    r2 = (yy - c) ** 2 + (xx - c - i) ** 2
    image = np.zeros((size, size, 3), np.uint8)
    image[(yy - c) ** 2 + (xx - c) ** 2 <= 28 ** 2] = field_rgb
    return FundusSample(image=image, disc=r2 <= 10 ** 2, cup=r2 <= 5 ** 2, domain=domain, sample_id=f"{domain}{i}")


def square(top: int, left: int, side: int = 20, size: int = 64) -> np.ndarray:
    m = np.zeros((size, size), bool)
    m[top:top + side, left:left + side] = True
    return m


# ---------------------------------------------------------------------------------------------
# overlay
# ---------------------------------------------------------------------------------------------

def test_overlay_draws_truth_solid_prediction_dashed_and_boxes():
    s = fundus("a")
    fig = plots.overlay(s.image, s.disc, s.cup, np.roll(s.disc, 2, 1), np.roll(s.cup, 2, 1),
                        box=s.box("disc"), title="t")
    (ax,) = fig.axes
    assert len(ax.collections) == 4  # one contour set per mask
    styles = [c.get_linestyle()[0][1] for c in ax.collections]
    assert styles[0] is None and styles[1] is None  # truth solid
    assert styles[2] is not None and styles[3] is not None  # prediction dashed
    colours = [tuple(c.get_edgecolor()[0]) for c in ax.collections]
    assert colours[0] == colours[2] == to_rgba(plots.DISC_COLOUR)
    assert colours[1] == colours[3] == to_rgba(plots.CUP_COLOUR)
    (rect,) = ax.patches
    x0, y0, x1, y1 = s.box("disc")
    assert rect.get_xy() == (x0 - 0.5, y0 - 0.5) and rect.get_width() == x1 - x0 + 1
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "disc (truth)", "cup (truth)", "disc (pred)", "cup (pred)", "box"]
    assert ax.get_title() == "t"


def test_overlay_skips_empty_masks_without_warnings_and_draws_several_boxes():
    s = fundus("a")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = plots.overlay(s.image, s.disc, pred_disc=np.zeros_like(s.disc),
                            box=np.array([[1, 1, 10, 10], [20, 20, 30, 30]]), legend=False)
    ax = fig.axes[0]
    assert len(ax.collections) == 1 and len(ax.patches) == 2
    assert ax.get_legend() is None


def test_overlay_into_given_axes_and_checks_shapes():
    fig, axes = plt.subplots(1, 2)
    s = fundus("a")
    assert plots.overlay(s.image, s.disc, ax=axes[1]) is fig
    assert len(axes[1].collections) == 1 and len(axes[0].collections) == 0
    with pytest.raises(ValueError, match="disc"):
        plots.overlay(s.image, s.disc[:32])
    with pytest.raises(ValueError, match="image"):
        plots.overlay(s.image[..., :2])


# ---------------------------------------------------------------------------------------------
# dataset figures
# ---------------------------------------------------------------------------------------------

def test_sample_grid_rows_are_domains():
    by_domain = {"a": [fundus("a", i) for i in range(3)], "b": [fundus("b", i) for i in range(2)]}
    fig = plots.sample_grid(by_domain, n=3)
    axes = np.array(fig.axes).reshape(2, 3)
    assert [axes[r, 0].get_ylabel() for r in range(2)] == ["a", "b"]
    assert len(axes[0, 0].collections) == 2  # disc and cup contours
    assert axes[0, 1].get_title().startswith("a1")
    assert not axes[1, 2].axison  # b has only two samples
    bare = plots.sample_grid(by_domain, n=2, with_masks=False)
    assert len(bare.axes) == 4 and all(len(ax.collections) == 0 for ax in bare.axes)
    with pytest.raises(ValueError, match="empty"):
        plots.sample_grid({})


def test_colour_histograms_ignore_black_field_and_are_densities():
    by_domain = {"warm": [fundus("warm", 0), fundus("warm", 1)],
                 "cool": [fundus("cool", 0, field_rgb=(60, 120, 180))]}
    fig = plots.colour_histograms(by_domain, bins=32)
    assert len(fig.axes) == 3
    assert all(len(ax.lines) == 2 for ax in fig.axes)  # one line per domain
    width = 256 / 32
    red_warm = fig.axes[0].lines[0]
    x, y = red_warm.get_xdata(), red_warm.get_ydata()
    assert y.sum() * width == pytest.approx(1.0)
    assert y[np.argmax(y)] * width == pytest.approx(1.0)  # all mass in one bin: black pixels left out
    assert x[np.argmax(y)] == pytest.approx(200, abs=width / 2)
    blue_cool = fig.axes[2].lines[1]
    assert blue_cool.get_xdata()[np.argmax(blue_cool.get_ydata())] == pytest.approx(180, abs=width / 2)
    with pytest.raises(ValueError, match="divide 256"):
        plots.colour_histograms(by_domain, bins=30)


# ---------------------------------------------------------------------------------------------
# embeddings
# ---------------------------------------------------------------------------------------------

def _clusters(n_per: int = 10, dim: int = 8):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(loc=5.0 * k, size=(n_per, dim)) for k in range(3)])  # (3 n_per, dim)
    return x, ["a"] * n_per + ["b"] * n_per + ["c"] * n_per


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_embedding_scatter_one_scatter_per_domain(method):
    x, domains = _clusters()
    fig = plots.embedding_scatter(x, domains, method=method, title="feat")
    ax = fig.axes[0]
    assert len(ax.collections) == 3
    assert [len(c.get_offsets()) for c in ax.collections] == [10, 10, 10]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a (10)", "b (10)", "c (10)"]
    assert ax.get_xlabel().startswith("PC1" if method == "pca" else "t-SNE")


def test_embedding_scatter_separates_clusters_and_takes_tensors():
    x, domains = _clusters()
    fig = plots.embedding_scatter(torch.from_numpy(x).float(), domains)
    centres = [c.get_offsets().mean(axis=0) for c in fig.axes[0].collections]
    assert np.linalg.norm(centres[0] - centres[2]) > 10  # the clusters are 5 * sqrt(8) * 2 apart
    with pytest.raises(ValueError, match="domain labels"):
        plots.embedding_scatter(x, domains[:-1])
    with pytest.raises(ValueError, match="'pca' or 'tsne'"):
        plots.embedding_scatter(x, domains, method="umap")


# ---------------------------------------------------------------------------------------------
# result figures
# ---------------------------------------------------------------------------------------------

def test_metric_table_heatmap_annotates_means_and_colours_best_brightest():
    rows = [{"domain": "A", "disc_dice": 0.9, "disc_hd95": 2.0},
            {"domain": "B", "disc_dice": 0.7, "disc_hd95": 8.0},
            {"domain": "C", "disc_dice": 0.8, "disc_hd95": 4.0}]
    df = per_domain_table(rows, metrics=("disc_dice", "disc_hd95"))
    fig = plots.metric_table_heatmap(df, ["disc_dice", "disc_hd95"], title="h")
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 4 * 2  # (A, B, C, mean) x 2 metrics
    assert texts[:2] == ["0.900", "2.000"] and texts[-2:] == ["0.800", "4.667"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["A", "B", "C", "mean"]
    goodness = np.asarray(ax.collections[0].get_array()).reshape(4, 2)
    assert goodness[0, 0] == 1.0 and goodness[1, 0] == 0.0  # higher Dice brighter
    assert goodness[0, 1] == 1.0 and goodness[1, 1] == 0.0  # lower HD95 brighter
    with pytest.raises(ValueError, match="cup_dice"):
        plots.metric_table_heatmap(df, ["cup_dice"])


def test_metric_table_heatmap_method_rows():
    rows = [{"method": m, "domain": d, "disc_dice": v}
            for m, d, v in [("x", "A", 0.5), ("x", "B", 0.6), ("y", "A", 0.9)]]
    fig = plots.metric_table_heatmap(per_domain_table(rows, metrics=("disc_dice",)), ["disc_dice"])
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["x / A", "x / B", "x / mean", "y / A", "y / mean"]


def test_severity_strip_labels_each_image():
    images = [fundus("a").image, fundus("a", field_rgb=(150, 90, 60)).image, np.ones((64, 64, 3)) * 0.5]
    fig = plots.severity_strip(images, [0.0, 0.5, 1.25], title="shift")
    assert len(fig.axes) == 3
    assert [ax.get_title() for ax in fig.axes] == ["severity 0", "severity 0.5", "severity 1.25"]
    assert all(len(ax.images) == 1 for ax in fig.axes)
    assert fig._suptitle.get_text() == "shift"
    with pytest.raises(ValueError, match="severities"):
        plots.severity_strip(images, [0.0])


# ---------------------------------------------------------------------------------------------
# saving
# ---------------------------------------------------------------------------------------------

def test_save_figure_writes_png_atomically(tmp_path):
    s = fundus("a")
    fig = plots.overlay(s.image, s.disc)
    out = plots.save_figure(fig, tmp_path / "nested" / "dir" / "overlay.png")
    assert out == tmp_path / "nested" / "dir" / "overlay.png"
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > 100 and img.height > 100
        assert img.info.get("dpi", (120, 120))[0] == pytest.approx(120, abs=0.5)
        assert img.mode == "P" and len(img.getcolors(maxcolors=1 << 16)) <= plots._common.PNG_COLOURS  # small palette PNG
    assert [p.name for p in out.parent.iterdir()] == ["overlay.png"]  # no temp file left
    with pytest.raises(ValueError, match=".png"):
        plots.save_figure(fig, tmp_path / "x.jpeg")


def test_save_figure_failure_leaves_nothing(tmp_path, monkeypatch):
    fig = plt.figure()

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(RuntimeError):
        plots.save_figure(fig, tmp_path / "f.png")
    assert list(tmp_path.iterdir()) == []


def test_helpers_save_when_given_a_path(tmp_path):
    s = fundus("a")
    plots.severity_strip([s.image], [1.0], save_path=tmp_path / "strip.png")
    plots.sample_grid({"a": [s]}, n=1, save_path=tmp_path / "grid.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "strip.png"]
    assert Image.open(tmp_path / "grid.png").format == "PNG"


# ---------------------------------------------------------------------------------------------
# extras used by the notebooks and the CLI
# ---------------------------------------------------------------------------------------------

def _fake_result():
    """A ZeroShotResult-like object: 2 domains x 2 samples, the second of each badly shifted."""
    samples = [fundus("a", 0), fundus("a", 1), fundus("b", 0, field_rgb=(60, 120, 180)), fundus("b", 1)]
    pred_disc = np.stack([s.disc if k % 2 == 0 else np.roll(s.disc, 8, 1) for k, s in enumerate(samples)])
    pred_cup = np.stack([s.cup for s in samples])
    pred_cup[3] = False  # no cup predicted: cup_hd95 is the penalty, the image diagonal
    rows = [{"domain": s.domain, "sample_id": s.sample_id, **segmentation_scores(d, c, s)}
            for s, d, c in zip(samples, pred_disc, pred_cup)]
    return SimpleNamespace(rows=rows, samples=samples, pred_disc=pred_disc, pred_cup=pred_cup)


def test_hstack_images_joins_with_gaps():
    a, b = np.zeros((8, 5, 3), np.uint8), np.full((8, 3, 3), 7, np.uint8)
    out = plots.hstack_images([a, b, a], gap=2)
    assert out.shape == (8, 5 + 2 + 3 + 2 + 5, 3) and out.dtype == np.uint8
    assert (out[:, 5:7] == 255).all() and (out[:, 7:10] == 7).all()
    with pytest.raises(ValueError, match="one height"):
        plots.hstack_images([a, a[:4]])


def test_failure_gallery_picks_the_worst_per_domain():
    result = _fake_result()
    fig = plots.failure_gallery(result, metric="disc_dice", per_domain=1)
    assert len(fig.axes) == 2
    assert [ax.get_title().split("\n")[0] for ax in fig.axes] == ["a1", "b1"]  # the shifted ones
    assert [ax.get_ylabel() for ax in fig.axes] == ["a", "b"]
    fig = plots.failure_gallery(result, metric="cup_hd95", per_domain=2)
    axes = np.array(fig.axes).reshape(2, 2)
    penalty = result.rows[3]["cup_hd95"]
    assert result.rows[3]["cup_empty"] and penalty == pytest.approx(np.hypot(*result.samples[3].cup.shape))
    assert axes[1, 0].get_title() == f"b1\ncup_hd95 {penalty:.3f}"  # the empty prediction is the worst
    with pytest.raises(ValueError, match="no 'iou'"):
        plots.failure_gallery(result, metric="iou")


def test_zero_shot_figure_overlays_and_boxplots(tmp_path):
    fig = plots.zero_shot_figure(_fake_result(), save_path=tmp_path / "zs.png")
    assert len(fig.axes) == 2 + 2  # one overlay per domain, one box plot per metric
    assert [ax.get_title() for ax in fig.axes[:2]] == ["a", "b"]
    assert [ax.get_ylabel() for ax in fig.axes[2:]] == ["disc_dice", "cup_dice"]
    assert len(fig.axes[0].collections) == 4  # truth and prediction, disc and cup
    assert Image.open(tmp_path / "zs.png").format == "PNG"


def test_overlay_in_a_subfigure_returns_the_root_figure():
    fig = plt.figure()
    (sub,) = fig.subfigures(1, 1, squeeze=False)[0]
    s = fundus("a")
    assert plots.overlay(s.image, s.disc, ax=sub.subplots()) is fig
