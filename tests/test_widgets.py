"""The two explorers: widgets with a live front end, a static grid without one."""
import importlib.util
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

from mfmda_lib.data import SEVERITY_STEPS, generate_sample
from mfmda_lib.models import EmbeddingCache, build_toy_segmenter
from mfmda_lib.plots import widgets

DOMAINS = ["refuge_train", "riga_binrushed"]


def _shell(allow_stdin: bool | None):
    """A stand-in IPython shell: with a kernel whose last request did / did not allow stdin, or none."""
    if allow_stdin is None:
        return SimpleNamespace()
    return SimpleNamespace(kernel=SimpleNamespace(_allow_stdin=allow_stdin))


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    model = build_toy_segmenter(seed=0).eval().requires_grad_(False)
    cache = EmbeddingCache(tmp_path_factory.mktemp("emb"), model.cache_key)
    return model, cache, generate_sample("riga_binrushed", 0, split="test", size=64)


def test_frontend_detection_follows_the_kernel_stdin_flag():
    assert widgets.widget_frontend(_shell(True))
    assert not widgets.widget_frontend(_shell(False))  # nbval / nbclient execute without stdin
    assert not widgets.widget_frontend(_shell(None))  # a terminal IPython: no kernel
    assert not widgets.widget_frontend()  # plain pytest: no IPython at all


def test_use_widgets_explicit_wins_and_auto_needs_ipywidgets(monkeypatch):
    assert widgets.use_widgets(False, _shell(True)) is False
    assert widgets.use_widgets(True, _shell(False)) is True
    assert widgets.use_widgets(None, _shell(True)) is True
    assert widgets.use_widgets(None, _shell(False)) is False
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ipywidgets" else real(name, *a))
    assert widgets.use_widgets(None, _shell(True)) is False
    with pytest.raises(ValueError, match="needs ipywidgets"):
        widgets.use_widgets(True)


def test_severity_explorer_static_grid_and_widget():
    fig = widgets.severity_explorer(size=64, domains=DOMAINS, interactive=False)
    assert isinstance(fig, Figure) and len(fig.axes) == len(DOMAINS) * len(SEVERITY_STEPS)
    assert fig.axes[0].get_title() == "severity 0" and fig.axes[0].get_ylabel() == DOMAINS[0]
    # the source domain does not change with severity; a target does
    grid = [generate_sample(d, 0, size=64, severity=s).image for d in DOMAINS for s in (0.0, 2.0)]
    assert np.array_equal(grid[0], grid[1]) and not np.array_equal(grid[2], grid[3])
    w = widgets.severity_explorer(size=64, domains=DOMAINS, interactive=True)
    sliders = {c.description: c for c in w.children if hasattr(c, "description") and c.description}
    assert set(sliders) == {"severity", "eye"} and sliders["severity"].max == widgets.SEVERITY_RANGE[1]
    sliders["severity"].value = 2.0  # re-renders without error
    panel = widgets.severity_panel(0.5, size=64, domains=DOMAINS)
    assert len(panel.axes) == len(DOMAINS) and "severity 0.5" in panel._suptitle.get_text()


def test_jittered_box_stays_valid_and_bounded():
    rng = np.random.default_rng(0)
    box = np.array([10, 12, 30, 40], dtype=np.float32)
    assert np.array_equal(widgets.jittered_box(box, 0, rng, (64, 64)), box)
    for _ in range(50):
        b = widgets.jittered_box(box, 8, rng, (64, 64))
        assert b[0] < b[2] and b[1] < b[3] and b.min() >= 0 and b.max() <= 63
        assert np.abs(b - box).max() <= 8
    edge = widgets.jittered_box(np.array([0, 0, 63, 63], np.float32), 16, rng, (64, 64))
    assert edge.min() >= 0 and edge.max() <= 63


def test_prompt_prediction_and_box_explorer(toy, one_torch_thread):
    model, cache, sample = toy
    box, mask, d = widgets.prompt_prediction(model, sample, cache, structure="cup", margin=4, jitter=4, seed=1)
    assert mask.shape == sample.cup.shape and mask.dtype == bool and 0.0 <= d <= 1.0
    again = widgets.prompt_prediction(model, sample, cache, structure="cup", margin=4, jitter=4, seed=1)
    assert np.array_equal(box, again[0]) and np.array_equal(mask, again[1])  # the jitter is seeded
    fig = widgets.box_prompt_explorer(model, sample, cache, interactive=False)
    assert isinstance(fig, Figure) and len(fig.axes) == len(widgets.STATIC_MARGINS) * len(widgets.STATIC_JITTERS)
    assert all("Dice" in ax.get_title() for ax in fig.axes)
    assert cache.misses == 1  # the image was encoded once, every other prompt read the cache
    w = widgets.box_prompt_explorer(model, sample, cache, interactive=True)
    names = {c.description for c in w.children if getattr(c, "description", "")}
    assert names == {"structure", "margin", "jitter", "seed"}
    with pytest.raises(ValueError, match="structure"):
        widgets.box_prompt_explorer(model, sample, cache, structure="rim", interactive=False)
