"""Pipeline inputs: config validation, the user's target folder and the run state, with clear errors."""
import numpy as np
import pytest

from mfmda_lib.io import DataError, save_png
from mfmda_lib.pipeline_io import PipelineConfig, RunState, load_config, read_target_folder


def test_config_reads_toml_and_rejects_bad_keys_and_values(tmp_path):
    good = tmp_path / "run.toml"
    good.write_text('profile = "ci"\ntargets = ["riga_binrushed"]\n')
    cfg = load_config(good, run_dir=str(tmp_path / "run"), target_folder=None)
    assert cfg.profile == "ci" and cfg.targets == ["riga_binrushed"] and cfg.run_dir.endswith("run")
    assert load_config().targets == ["refuge_test", "riga_binrushed", "riga_messidor"]
    (tmp_path / "typo.toml").write_text('targts = ["riga_binrushed"]\n')
    with pytest.raises(DataError, match=r"typo.toml: unknown key\(s\) \['targts'\]"):
        load_config(tmp_path / "typo.toml")
    (tmp_path / "bad.toml").write_text('targets = ["mars"]\n')
    with pytest.raises(DataError, match="unknown target domain"):
        load_config(tmp_path / "bad.toml")
    (tmp_path / "broken.toml").write_text('targets = [\n')
    with pytest.raises(DataError, match="not valid TOML"):
        load_config(tmp_path / "broken.toml")
    with pytest.raises(DataError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ValueError, match="profile must be"):
        PipelineConfig(profile="tpu")


def test_target_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_target_folder(tmp_path / "nope", k=2, size=64)
    folder = tmp_path / "hospital"
    folder.mkdir()
    rng = np.random.default_rng(0)
    save_png(folder / "a.png", rng.integers(0, 255, (80, 100, 3), dtype=np.uint8))
    (folder / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="holds 1 image"):
        read_target_folder(folder, k=2, size=64)
    (folder / "b.jpg").write_bytes(b"not really a jpeg")
    with pytest.raises(DataError, match="b.jpg"):
        read_target_folder(folder, k=2, size=64)
    save_png(folder / "b.jpg", rng.integers(0, 255, (120, 90, 3), dtype=np.uint8))  # PIL sniffs the content
    images, files = read_target_folder(folder, k=2, size=64)
    assert [f.name for f in files] == ["a.png", "b.jpg"]
    assert all(im.shape == (64, 64, 3) and im.dtype == np.uint8 for im in images)


def test_run_state_survives_a_restart(tmp_path):
    state = RunState(tmp_path)
    assert not state.done("stage1/riga_binrushed")
    state.mark("stage1/riga_binrushed", {"seconds": 1.5})
    again = RunState(tmp_path)
    assert again.done("stage1/riga_binrushed") and again.stages["stage1/riga_binrushed"]["seconds"] == 1.5
    (tmp_path / "state.json").write_text("{")
    with pytest.raises(DataError, match="corrupt"):
        RunState(tmp_path)
