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
from mfmda_lib.diffusion import source as ddpm_source
from mfmda_lib.diffusion import stage1
from mfmda_lib.io import DataError
from mfmda_lib.pipeline_io import PipelineConfig


def _fake_stage2(targets) -> align_experiment.Stage2Result:
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
    return align_experiment.Stage2Result(rows, [], {}, list(targets), "stage1", seeds=[0, 1])


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
    monkeypatch.setattr(align_experiment, "source_samples", lambda profile: ["s1", "s2"])
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


def test_a_user_folder_is_adapted_from_k_images_and_every_image_segmented(fakes, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from mfmda_lib.data import FundusSample
    from mfmda_lib.io import read_image, save_png

    k = pipeline.get_profile("ci").stage1_k_target
    folder = tmp_path / "my_hospital"
    for i in range(k + 2):
        save_png(folder / f"eye_{i}.png", np.full((40, 40, 3), 10 * i, np.uint8))
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
        return [(np.ones(im.shape[:2], bool), np.zeros(im.shape[:2], bool)) for im in images]

    monkeypatch.setattr(ddpm_source, "load_source_ddpm", lambda p, **kw: (None, SimpleNamespace(image_size=16), None))
    monkeypatch.setattr(stage1, "source_samples", lambda profile: sources)
    monkeypatch.setattr(stage1, "feature_encoder", lambda *a: None)
    monkeypatch.setattr(stage1, "run_stage1", run_stage1)
    monkeypatch.setattr(align_experiment, "predict_target_masks", predict_target_masks)
    config = PipelineConfig(profile="ci", target_folder=str(folder), run_dir=str(tmp_path / "run"))
    result = pipeline.run_pipeline(config, progress=False, log=lambda m: None)
    assert seen == {"k": k, "pairs": (2, 2), "segmented": k + 2}  # adapt from K, train on stage2_pairs, segment all
    masks = sorted(p.name for p in result.files["predictions"].iterdir())
    assert masks == [f"eye_{i}_mask.png" for i in range(k + 2)]
    assert set(np.unique(read_image(result.files["predictions"] / "eye_0_mask.png"))) == {128}  # disc, no cup
