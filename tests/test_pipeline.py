"""The pipeline's stage bookkeeping: a run killed in a stage resumes there and skips finished stages.

The stages themselves are pinned by their own tests (diffusion, align); here they are replaced by
fakes that count their calls, so the test runs in a second.
"""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mfmda_lib import pipeline
from mfmda_lib.align import experiment as align_experiment
from mfmda_lib.align import inputs as align_inputs
from mfmda_lib.align.result import Stage2Result
from mfmda_lib.diffusion import source as ddpm_source
from mfmda_lib.diffusion import stage1
from mfmda_lib.io import DataError
from mfmda_lib.pipeline_io import PipelineConfig


def _fake_stage2(targets) -> Stage2Result:
    """A stage-2 result with fixed scores: MFM-DA ahead of source-only on every target, two seeds, four images."""
    rows = []
    for seed in (0, 1):
        for m, d in (("source_only", 0.6), ("mfmda", 0.8), ("oracle", 0.9)):
            for t in [*targets, "refuge_train"]:
                for i in range(4):
                    dice = d + 0.01 * i - 0.02 * seed
                    rows.append({"method": m, "domain": t, "sample_id": f"{t}_{i}", "seed": seed, "disc_dice": dice,
                                 "disc_iou": dice - 0.1, "disc_hd95": 3.0, "cup_dice": dice - 0.1,
                                 "cup_iou": dice - 0.2, "cup_hd95": 4.0, "dice": dice - 0.05})
    return Stage2Result(rows, [], {}, list(targets), "stage1", seeds=[0, 1])


@pytest.fixture
def fakes(monkeypatch, tmp_path):
    calls = {"ddpm": 0, "stage1": 0, "stage2": 0, "fail_stage2": True}

    def load_source_ddpm(profile, **kw):
        calls["ddpm"] += 1
        return None, None, tmp_path / "ddpm.pt"

    def translated_source(profile, target, **kw):
        calls["stage1"] += 1
        return [target] * 2

    def run_stage2(profile, source, translated, **kw):
        calls["stage2"] += 1
        if calls["fail_stage2"]:
            calls["fail_stage2"] = False
            raise KeyboardInterrupt("killed in stage 2")
        return _fake_stage2(list(translated))

    monkeypatch.setattr(ddpm_source, "load_source_ddpm", load_source_ddpm)
    monkeypatch.setattr(stage1, "translated_source", translated_source)
    monkeypatch.setattr(align_inputs, "source_samples", lambda profile: ["s1", "s2"])
    monkeypatch.setattr(align_experiment, "run_stage2", run_stage2)
    monkeypatch.setenv("MFMDA_RESULTS", str(tmp_path / "results"))
    return calls


def test_a_killed_run_resumes_at_the_stage_it_died_in(fakes, tmp_path):
    config = PipelineConfig(profile="ci", targets=["refuge_test", "riga_binrushed"], run_dir=str(tmp_path / "run"))
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_pipeline(config, progress=False, log=lambda m: None)
    assert fakes == {"ddpm": 1, "stage1": 2, "stage2": 1, "fail_stage2": False}
    messages = []
    result = pipeline.run_pipeline(config, progress=False, log=messages.append)
    assert fakes["ddpm"] == 1  # finished stage skipped
    assert fakes["stage2"] == 2  # the killed stage ran again
    assert any("[source_ddpm] done in an earlier run" in m for m in messages)
    assert result.summary.loc["mfmda", "dice"] > result.summary.loc["source_only", "dice"]
    md = Path(result.files["md"]).read_text()
    assert "mfmda beats every unsupervised baseline" in md and "gap closed" in md and Path(result.files["png"]).is_file()
    assert "mfmda closes 67%" in md  # (0.8 - 0.6) / (0.9 - 0.6) of the source-only -> oracle gap
    assert Path(result.files["results_json"]).parent == tmp_path / "results"
    # a third run has nothing left to do but reload
    again = pipeline.run_pipeline(config, progress=False, log=lambda m: None)
    assert set(again.seconds.values()) == {0.0}


def test_a_bad_target_folder_fails_before_any_work(fakes, tmp_path):
    config = PipelineConfig(profile="ci", target_folder=str(tmp_path / "missing"), run_dir=str(tmp_path / "run"))
    with pytest.raises(DataError, match="missing does not exist"):
        pipeline.run_pipeline(config, progress=False, log=lambda m: None)
    folder = tmp_path / "few"
    folder.mkdir()
    from mfmda_lib.io import save_png
    save_png(folder / "one.png", np.zeros((32, 32, 3), np.uint8))
    config = PipelineConfig(profile="ci", target_folder=str(folder), run_dir=str(tmp_path / "run"))
    with pytest.raises(DataError, match="at least K"):
        pipeline.run_pipeline(config, progress=False, log=lambda m: None)
    assert fakes["ddpm"] == 0


def test_cli_reports_bad_inputs_in_one_line(tmp_path, capsys, monkeypatch):
    from mfmda_lib.cli import main

    monkeypatch.setenv("MFMDA_RESULTS", str(tmp_path / "results"))
    assert main(["run", "--profile", "ci", "--target-folder", str(tmp_path / "nowhere")]) == 2
    assert "nowhere does not exist" in capsys.readouterr().err
    assert main(["run", "--config", str(tmp_path / "none.toml")]) == 2
    assert not (tmp_path / "results").exists()  # nothing written for a run that could not start


@pytest.fixture
def fake_user_stages(fakes, monkeypatch):
    """Stage 1 and stage 2 of the user-folder path replaced by fakes that record what they were given."""
    from types import SimpleNamespace

    from mfmda_lib.data import FundusSample

    mask = np.zeros((32, 32), bool)
    mask[8:24, 8:24] = True
    sources = [FundusSample(image=np.zeros((32, 32, 3), np.uint8), disc=mask, cup=mask, domain="refuge_train",
                            sample_id=f"s{i}") for i in range(3)]
    seen = {}

    def run_stage1(images, targets, **kw):
        seen["k"] = len(targets)
        return SimpleNamespace(images=[im + 1 for im in images])

    def predict_target_masks(profile, source, translated, images, **kw):
        seen["pairs"], seen["segmented"] = (len(source), len(translated)), len(images)
        seen["shapes"] = {im.shape for im in images}
        h, w = images[0].shape[:2]
        disc = np.zeros((h, w), bool)
        disc[3 * h // 8:5 * h // 8, 3 * w // 8:5 * w // 8] = True  # a disc in the middle of each ROI
        return [(disc, np.zeros((h, w), bool)) for _ in images]

    monkeypatch.setattr(ddpm_source, "load_source_ddpm", lambda p, **kw: (None, SimpleNamespace(image_size=16), None))
    monkeypatch.setattr(stage1, "sources_to_translate", lambda profile: sources)
    monkeypatch.setattr(stage1, "feature_encoder", lambda *a: None)
    monkeypatch.setattr(stage1, "run_stage1", run_stage1)
    monkeypatch.setattr(align_experiment, "predict_target_masks", predict_target_masks)
    return seen


def test_a_user_folder_is_adapted_from_k_images_and_every_image_segmented(fake_user_stages, tmp_path):
    from mfmda_lib.data import generate_sample
    from mfmda_lib.io import read_image, save_png

    profile = pipeline.get_profile("ci")
    k = profile.stage1_k_target
    folder = tmp_path / "my_hospital"
    for i in range(k + 2):  # disc-centred ROIs of 80 px
        save_png(folder / f"eye_{i}.png", generate_sample("riga_messidor", i, size=80).image)
    config = PipelineConfig(profile="ci", target_folder=str(folder), run_dir=str(tmp_path / "run"))
    result = pipeline.run_pipeline(config, progress=False, log=lambda m: None)
    seen = fake_user_stages
    assert seen["k"] == k and seen["pairs"] == (2, 2) and seen["segmented"] == k + 2  # adapt from K, segment all
    assert seen["shapes"] == {(profile.image_size, profile.image_size, 3)}
    masks = sorted(p.name for p in result.files["predictions"].glob("*_mask.png"))
    assert masks == [f"eye_{i}_mask.png" for i in range(k + 2)]
    label = read_image(result.files["predictions"] / "eye_0_mask.png")
    assert label.shape[:2] == (80, 80) and set(np.unique(label)) == {0, 128}  # disc, no cup, at the image's size


def test_a_folder_of_photographs_gets_full_size_masks_overlays_and_a_warning_for_a_bad_one(fake_user_stages, tmp_path):
    from mfmda_lib.data.photo import generate_photo, write_photo_folder
    from mfmda_lib.io import read_mask, save_png
    from mfmda_lib.roi import DiscNotFoundWarning

    profile = pipeline.get_profile("ci")
    photos = [generate_photo("riga_binrushed", i, width=384) for i in range(profile.stage1_k_target)]
    folder = write_photo_folder(tmp_path / "clinic", photos)
    save_png(folder / "zz_uniform.png", np.full((288, 384, 3), 120, np.uint8))
    config = PipelineConfig(profile="ci", target_folder=str(folder), run_dir=str(tmp_path / "run"))
    messages = []
    with pytest.warns(DiscNotFoundWarning, match="zz_uniform.png"):
        result = pipeline.run_pipeline(config, progress=False, log=messages.append)
    assert any("read as whole-fundus photographs" in m and "no mask for: zz_uniform.png" in m for m in messages)
    assert fake_user_stages["segmented"] == len(photos)  # the run went on without the bad picture
    out = result.files["predictions"]
    for p in photos:
        full = read_mask(out / f"{p.photo_id}_mask.png")
        assert full.shape == p.disc.shape  # back on the photograph, at its size
        ys, xs = np.nonzero(full == 128)  # the fake's disc is the ROI's middle: it lands on the true disc
        assert np.hypot(xs.mean() - p.disc_center[0], ys.mean() - p.disc_center[1]) < 0.25 * p.disc_diameter
        assert read_mask(out / "roi" / f"{p.photo_id}_mask.png").shape == (profile.image_size,) * 2
        assert (out / "overlay" / f"{p.photo_id}.png").is_file()
    assert not (out / "zz_uniform_mask.png").exists() and (out / "overlay" / "zz_uniform.png").is_file()
