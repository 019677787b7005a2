"""Pipeline inputs: config validation, the user's target folder and the run state, with clear errors."""
import warnings

import numpy as np
import pytest
from PIL import Image

from mfmda_lib.data import generate_sample
from mfmda_lib.data.photo import generate_photo, write_photo_folder
from mfmda_lib.evaluation.metrics import dice
from mfmda_lib.io import DataError, read_image, read_mask, save_png
from mfmda_lib.pipeline_io import (PipelineConfig, RunState, load_config, read_target_folder, write_predictions)
from mfmda_lib.roi import DiscNotFoundWarning, centre_box
from mfmda_lib.roi.postprocess import count_components


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
    with pytest.raises(ValueError, match="crop must be"):
        PipelineConfig(crop="sometimes")
    (tmp_path / "crop.toml").write_text('crop = "off"\ndisc_confidence = 0.3\n')
    assert load_config(tmp_path / "crop.toml").crop == "off"


def test_target_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_target_folder(tmp_path / "nope", k=2, size=64)
    folder = tmp_path / "hospital"
    folder.mkdir()
    roi = generate_sample("riga_messidor", 0, size=96).image
    save_png(folder / "a.png", np.asarray(Image.fromarray(roi).resize((100, 80))))  # a non-square ROI
    (folder / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="holds 1 image"):
        read_target_folder(folder, k=2, size=64)
    (folder / "b.jpg").write_bytes(b"not really a jpeg")
    with pytest.raises(DataError, match="b.jpg"):
        read_target_folder(folder, k=2, size=64)
    save_png(folder / "b.jpg", generate_sample("riga_messidor", 1, size=120).image)  # PIL sniffs the content
    target = read_target_folder(folder, k=2, size=64)
    assert not target.whole and [i.path.name for i in target.items] == ["a.png", "b.jpg"]
    assert all(im.shape == (64, 64, 3) and im.dtype == np.uint8 for im in target.crops)
    assert target.items[0].box == centre_box((80, 100))  # an ROI is read as its centre square, not re-cropped
    save_png(folder / "c.png", np.zeros((64, 64, 3), np.uint8))
    with pytest.warns(DiscNotFoundWarning, match="c.png"), pytest.raises(DataError, match="found in only 2 of 3"):
        read_target_folder(folder, k=3, size=64)
    with pytest.raises(ValueError, match="crop must be"):
        read_target_folder(folder, k=2, size=64, crop="maybe")


def test_a_folder_of_photographs_is_cropped_around_each_disc_and_bad_pictures_are_skipped(tmp_path):
    photos = [generate_photo(d, i, width=384) for d, i in (("refuge_test", 0), ("riga_binrushed", 1))]
    write_photo_folder(tmp_path / "clinic", photos)
    save_png(tmp_path / "clinic" / "x_black.png", np.zeros((288, 384, 3), np.uint8))
    save_png(tmp_path / "clinic" / "y_uniform.png", np.full((288, 384, 3), 140, np.uint8))
    with pytest.warns(DiscNotFoundWarning) as caught:
        target = read_target_folder(tmp_path / "clinic", k=2, size=128)
    assert sorted(str(w.message).split(" (")[0].rsplit("/", 1)[-1] for w in caught) == ["x_black.png", "y_uniform.png"]
    assert target.whole and [i.path.name for i in target.skipped] == ["x_black.png", "y_uniform.png"]
    assert len(target.crops) == 2 and all(c.shape == (128, 128, 3) for c in target.crops)
    for item, photo in zip(target.usable, photos):
        assert item.shape == photo.disc.shape and item.box.side < min(item.shape)
        assert item.box.crop_mask(photo.disc, 128)[56:72, 56:72].mean() > 0.9  # the disc (32 px) is in the middle
    # the ROI mode reads the same photographs as they are (and finds no disc of an ROI's size in them)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DiscNotFoundWarning)
        off = read_target_folder(tmp_path / "clinic", k=0, size=128, crop="off")
    assert not off.whole and all(item.box is None or item.box == centre_box(item.shape) for item in off.items)


def test_write_predictions_maps_masks_back_onto_each_photograph(tmp_path):
    photos = [generate_photo("riga_messidor", i, width=384) for i in range(2)]
    write_photo_folder(tmp_path / "clinic", photos)
    save_png(tmp_path / "clinic" / "z_black.png", np.zeros((288, 384, 3), np.uint8))
    with pytest.warns(DiscNotFoundWarning):
        target = read_target_folder(tmp_path / "clinic", k=2, size=128)
    masks = [(item.box.crop_mask(p.disc, 128), item.box.crop_mask(p.cup, 128)) for item, p in zip(target.usable, photos)]
    files = write_predictions(tmp_path / "pred", target, masks)
    for p in photos:
        label = read_mask(tmp_path / "pred" / f"{p.photo_id}_mask.png")
        assert label.shape == p.disc.shape  # the photograph's own size
        assert dice(label >= 128, p.disc) > 0.95 and dice(label == 255, p.cup) > 0.9
        assert read_mask(tmp_path / "pred" / "roi" / f"{p.photo_id}_mask.png").shape == (128, 128)
        assert read_image(files["overlays"] / f"{p.photo_id}.png").shape[0] == 288
    assert not (tmp_path / "pred" / "z_black_mask.png").exists() and (files["overlays"] / "z_black.png").is_file()
    rows = files["rois"].read_text().splitlines()
    assert len(rows) == 4 and rows[-1].startswith("z_black.png,288,384,True,False")
    assert rows[0].endswith("disc_components_raw,cup_components_raw") and rows[1].endswith(",1,1")


def test_written_masks_are_post_processed_and_the_raw_roi_prediction_is_kept(tmp_path):
    photos = [generate_photo("riga_messidor", i, width=384) for i in range(2)]
    write_photo_folder(tmp_path / "clinic", photos)
    target = read_target_folder(tmp_path / "clinic", k=2, size=128)
    masks = []
    for item, p in zip(target.usable, photos):
        disc, cup = item.box.crop_mask(p.disc, 128), item.box.crop_mask(p.cup, 128)
        disc, cup = disc.copy(), cup.copy()
        disc[5:12, 5:12] = True  # a stray blob at the crop's corner (a vessel reflex)
        cup[118:124, 118:124] = True  # a "cup" outside the disc
        disc[np.nonzero(disc)[0].mean().astype(int), np.nonzero(disc)[1].mean().astype(int)] = False  # a hole
        masks.append((disc, cup))
    files = write_predictions(tmp_path / "pred", target, masks)
    for (raw_disc, raw_cup), item, p in zip(masks, target.usable, photos):
        label = read_mask(tmp_path / "pred" / "roi" / f"{p.photo_id}_mask.png")
        raw = read_mask(tmp_path / "pred" / "roi" / "raw" / f"{p.photo_id}_mask.png")
        np.testing.assert_array_equal(raw >= 128, raw_disc | raw_cup)  # the network's output, as predicted
        truth_disc, truth_cup = item.box.crop_mask(p.disc, 128), item.box.crop_mask(p.cup, 128)
        np.testing.assert_array_equal(label >= 128, truth_disc)  # blob gone, hole filled, stray cup gone
        np.testing.assert_array_equal(label == 255, truth_cup)
        full = read_mask(tmp_path / "pred" / f"{p.photo_id}_mask.png")
        assert dice(full >= 128, p.disc) > 0.95 and count_components(full >= 128) == 1
    rows = files["rois"].read_text().splitlines()
    assert all(row.endswith(",2,2") for row in rows[1:])  # the raw disc and cup had two pieces each
    with pytest.raises(ValueError, match="mask pairs"):
        write_predictions(tmp_path / "pred", target, masks[:1])


def test_run_state_survives_a_restart(tmp_path):
    state = RunState(tmp_path)
    assert not state.done("stage1/riga_binrushed")
    state.mark("stage1/riga_binrushed", {"seconds": 1.5})
    again = RunState(tmp_path)
    assert again.done("stage1/riga_binrushed") and again.stages["stage1/riga_binrushed"]["seconds"] == 1.5
    (tmp_path / "state.json").write_text("{")
    with pytest.raises(DataError, match="corrupt"):
        RunState(tmp_path)


def test_the_shipped_config_reads_and_matches_the_library_defaults():
    from pathlib import Path

    from mfmda_lib.roi import CONFIDENCE_THRESHOLD

    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "mfmda.toml")
    assert config == PipelineConfig() and config.disc_confidence == CONFIDENCE_THRESHOLD
