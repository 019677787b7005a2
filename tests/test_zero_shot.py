"""Zero-shot evaluation with the real LiteMedSAM, several prompts per image, and the `mfmda` command."""
import json

import numpy as np
import pytest

from mfmda_lib import profiles
from mfmda_lib.cli import main
from mfmda_lib.data import generate_sample
from mfmda_lib.evaluation.zero_shot import box_margin_sweep, zero_shot_segmentation
from mfmda_lib.models import EmbeddingCache, build_toy_segmenter, load_model, segment


@pytest.fixture(scope="module")
def litemedsam():
    return load_model("litemedsam")


def test_litemedsam_zero_shot_disc_dice_on_the_source_domain(litemedsam, tmp_path):
    samples = [generate_sample("refuge_train", i, split="test") for i in range(3)]
    cache = EmbeddingCache(tmp_path, litemedsam.cache_key)
    result = zero_shot_segmentation(litemedsam, samples, cache, progress=False)
    disc = np.mean([r["disc_dice"] for r in result.rows])
    assert disc >= 0.85, f"LiteMedSAM disc Dice on the synthetic source is {disc:.3f}"
    assert cache.misses == 3  # one encoder pass per image, although each image had two prompts
    table = result.table()
    assert list(table.index) == ["refuge_train", "mean"]
    # the margin sweep reuses the cached embeddings: no new encoder pass
    sweep = box_margin_sweep(litemedsam, samples, cache, margins=(0, 16))
    assert cache.misses == 3 and list(sweep.index) == [0, 16]
    assert sweep.loc[0, "disc_dice"] == pytest.approx(disc)


def test_several_boxes_per_image_match_one_box_at_a_time():
    model = build_toy_segmenter()
    images = [generate_sample("refuge_test", i, size=64).image for i in range(2)]
    boxes = np.array([[[5, 5, 40, 40], [20, 10, 60, 50]], [[0, 0, 63, 63], [10, 30, 30, 50]]], np.float32)
    both = segment(model, images, boxes, progress=False)  # (2, 2, 64, 64)
    assert both.shape == (2, 2, 64, 64)
    for k in range(2):
        one = segment(model, images, boxes[:, k], progress=False)  # (2, 64, 64)
        np.testing.assert_allclose(both[:, k], one, atol=1e-6)
    with pytest.raises(ValueError, match="boxes must be"):
        segment(model, images, boxes[:1], progress=False)


@pytest.fixture()
def tiny_ci_profile(monkeypatch, tmp_path):
    monkeypatch.setenv("MFMDA_HOME", str(tmp_path))
    for var in ("MFMDA_DATA", "MFMDA_CACHE", "MFMDA_RESULTS"):
        monkeypatch.delenv(var, raising=False)
    tiny = profiles.PROFILES["ci"].replace(train_per_domain=1, test_per_domain=1, eval_per_domain=1,
                                           probe_per_domain=2, probe_folds=2)
    monkeypatch.setitem(profiles.PROFILES, "ci", tiny)
    return tmp_path


def test_main_job_writes_the_table(tiny_ci_profile, capsys):
    assert main(["zero-shot", "--profile", "ci"]) == 0
    out = capsys.readouterr().out
    for domain in ("refuge_train", "refuge_test", "riga_binrushed", "riga_messidor"):
        assert domain in out
    result = json.loads((tiny_ci_profile / "results" / "zero_shot_litemedsam_ci.json").read_text())
    assert result["meta"]["profile"] == "ci" and len(result["rows"]) == 4
    assert (tiny_ci_profile / "results" / "figures" / "zero_shot_litemedsam_ci.png").stat().st_size > 1000
    md = (tiny_ci_profile / "results" / "zero_shot_litemedsam_ci.md").read_text()
    assert "disc_dice" in md and "| mean" in md


def test_main_job_names_what_is_wrong(tiny_ci_profile, capsys):
    assert main(["zero-shot", "--profile", "ci", "--model", "gpt"]) == 2
    err = capsys.readouterr().err
    assert "gpt" in err and "litemedsam" in err
    assert main(["generate", "--profile", "ci"]) == 0
    assert "synthetic benchmark" in capsys.readouterr().out
