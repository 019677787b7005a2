"""How synthetic is synthetic: MMD between feature sets, and ``mfmda realism DIR`` on a user's own folder."""
import json

import numpy as np
import pytest
from PIL import Image

from mfmda_lib.evaluation.realism import compare_feature_sets, mmd2


def _cloud(rng, mean, n=40, dim=8):
    return rng.normal(mean, 1.0, (n, dim))


def test_mmd_tells_a_shifted_set_from_a_resample_and_names_the_nearest_hospital():
    rng = np.random.default_rng(0)
    features = {"a": _cloud(rng, 0.0), "b": _cloud(rng, 0.7), "like a": _cloud(rng, 0.0), "far": _cloud(rng, 3.0)}
    result = compare_feature_sets(features, ["a", "b"], permutations=100)
    table = result.table().reset_index().set_index("set")
    assert set(table.index) == {"like a", "far"}
    assert table.loc["like a", "nearest synthetic hospital"] == "a"
    assert table.loc["like a", "mmd2"] <= table.loc["like a", "noise_floor_95"]  # a resample: within the noise
    assert table.loc["far", "nearest synthetic hospital"] == "b"
    assert table.loc["far", "mmd2"] > table.loc["far", "noise_floor_95"]
    assert result.synthetic_spread == pytest.approx(result.matrix.loc["a", "b"])
    assert table.loc["far", "gap_over_spread"] > 1 > table.loc["like a", "gap_over_spread"]
    assert np.allclose(result.matrix.values, result.matrix.values.T) and np.all(np.diag(result.matrix.values) == 0)


def test_mmd_needs_two_samples_per_set_and_known_synthetic_names():
    with pytest.raises(ValueError, match="at least 2 samples"):
        mmd2(np.zeros((1, 3)), np.zeros((4, 3)), 1.0)
    with pytest.raises(ValueError, match="not among"):
        compare_feature_sets({"a": np.zeros((3, 2))}, ["a", "missing"])


def test_the_realism_command_runs_on_a_users_folder_and_warns_for_a_picture_without_a_disc(tmp_path, monkeypatch, capsys):
    from mfmda_lib import cli, experiments
    from mfmda_lib.data.photo import generate_photo, write_photo_folder
    from mfmda_lib.models import build_toy_segmenter

    monkeypatch.setenv("MFMDA_RESULTS", str(tmp_path / "results"))
    monkeypatch.setattr(experiments, "model_and_cache", lambda name="litemedsam", **kw: (build_toy_segmenter(), None))
    folder = tmp_path / "clinic"
    write_photo_folder(folder, [generate_photo("riga_messidor", i, width=512) for i in range(3)], masks=False)
    Image.fromarray(np.zeros((384, 512, 3), np.uint8)).save(folder / "zz_black.png")

    assert cli.main(["realism", str(folder), "--profile", "ci"]) == 0
    out = capsys.readouterr().out
    assert "warning: no optic disc found" in out and "zz_black.png" in out
    assert f"3 ROI crops from {folder} (whole-fundus photographs" in out
    saved = json.loads((tmp_path / "results" / "realism_clinic_ci.json").read_text())
    sets = {row["set"] for row in saved["table"]}
    assert "yours: clinic" in sets
    mine = next(row for row in saved["table"] if row["set"] == "yours: clinic")
    assert mine["n"] == 3 and mine["mmd2"] >= 0 and mine["synthetic_spread"] > 0
