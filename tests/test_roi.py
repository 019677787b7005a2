"""Whole-fundus photographs: the disc localiser, the ROI crop and the way back, bad pictures, the overlay."""
import warnings

import numpy as np
import pytest
from PIL import Image

from mfmda_lib.data import DOMAINS, generate_sample
from mfmda_lib.data.photo import generate_photo, photo_roi_sample
from mfmda_lib.evaluation.metrics import dice
from mfmda_lib.roi import (CONFIDENCE_THRESHOLD, DiscNotFoundWarning, RoiBox, centre_box, count_dark_corners,
                           locate_disc, roi_box)
from mfmda_lib.roi.overlay import CUP_COLOUR, DISC_COLOUR, overlay_image


def non_fundus_pictures() -> dict[str, np.ndarray]:
    """Pictures without an optic disc: uniform, black, and a photograph of a person (matplotlib's sample)."""
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        person = np.asarray(Image.open(handle).convert("RGB"))
    return {"uniform": np.full((300, 400, 3), 150, np.uint8), "black": np.zeros((300, 400, 3), np.uint8),
            "person": person}


@pytest.fixture(scope="module")
def photos():
    return [generate_photo(d, i, width=512) for d in DOMAINS for i in (0, 1)]


def test_the_localiser_finds_the_disc_in_every_camera_and_both_eyes(photos):
    for p in photos:
        loc = locate_disc(p.image)
        error = np.hypot(loc.center[0] - p.disc_center[0], loc.center[1] - p.disc_center[1]) / p.disc_diameter
        assert error < 0.25, f"{p.photo_id} ({p.eye} eye): centre off by {error:.2f} disc diameters"
        assert 0.7 < loc.diameter / p.disc_diameter < 1.4
        assert loc.found and loc.confidence >= CONFIDENCE_THRESHOLD


def test_the_localiser_works_at_any_resolution():
    p = generate_photo("refuge_test", 2, width=512)
    big = np.asarray(Image.fromarray(p.image).resize((2048, 1536), Image.BICUBIC))
    loc = locate_disc(big)
    assert np.hypot(loc.center[0] - 4 * p.disc_center[0], loc.center[1] - 4 * p.disc_center[1]) < p.disc_diameter


@pytest.mark.parametrize("name", ["uniform", "black", "person"])
def test_a_picture_without_a_disc_gets_a_named_warning(name):
    image = non_fundus_pictures()[name]
    with pytest.warns(DiscNotFoundWarning, match=f"no optic disc found in {name}.png"):
        loc = locate_disc(image, name=f"{name}.png")
    assert not loc.found and loc.confidence < CONFIDENCE_THRESHOLD
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not locate_disc(image, warn=False).found


def test_the_localiser_rejects_bad_arguments():
    with pytest.raises(ValueError, match="uint8"):
        locate_disc(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="cues"):
        locate_disc(np.zeros((64, 64, 3), np.uint8), cues=("colour",))


def test_an_roi_crop_is_found_with_its_expected_size():
    for d in DOMAINS:
        s = generate_sample(d, 1, size=256)
        loc = locate_disc(s.image, expected_diameter=64)
        ys, xs = np.nonzero(s.disc)
        assert loc.found and np.hypot(loc.center[0] - xs.mean() - 0.5, loc.center[1] - ys.mean() - 0.5) < 16


def test_dark_corners_tell_whole_photographs_from_roi_crops(photos):
    assert all(count_dark_corners(p.image) >= 3 for p in photos)
    assert all(count_dark_corners(generate_sample(d, i, size=128).image) < 3 for d in DOMAINS for i in range(3))


def test_roi_box_crop_and_paste_round_trip(photos):
    for p in photos:
        box = roi_box(p.image.shape, p.disc_center, p.disc_diameter)
        assert box.side == round(4 * p.disc_diameter)
        crop, disc = box.crop(p.image, 256), box.crop_mask(p.disc, 256)
        assert crop.shape == (256, 256, 3) and crop.flags.writeable and disc.shape == (256, 256)
        back = box.paste(disc)
        assert back.shape == p.disc.shape and dice(back, p.disc) > 0.97


def test_a_box_past_the_edge_pads_with_black_and_pastes_only_inside():
    image = np.full((100, 120, 3), 200, np.uint8)
    box = RoiBox(top=-20, left=90, side=60, height=100, width=120)
    crop = box.crop(image, 60)
    assert crop[:20].max() == 0 and crop[:, 30:].max() == 0 and crop[25:, :25].min() == 200
    full = box.paste(np.ones((30, 30), bool))
    assert full.shape == (100, 120) and full[:40, 90:].all() and full.sum() == 40 * 30
    with pytest.raises(ValueError, match="outside"):
        RoiBox(top=200, left=0, side=10, height=100, width=120).crop(image, 10)
    with pytest.raises(ValueError, match="square"):
        box.paste(np.ones((30, 20), bool))


def test_centre_box_is_how_an_roi_image_was_always_read():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)
    box = centre_box(image.shape)
    expected = np.asarray(Image.fromarray(image[:, 10:90]).resize((64, 64), Image.BICUBIC))
    assert np.array_equal(box.crop(image, 64), expected)
    assert box.paste(np.ones((64, 64), bool))[:, 10:90].all() and not box.paste(np.ones((64, 64), bool))[:, :10].any()


def test_overlay_outlines_disc_and_cup_beside_the_enlarged_roi(photos):
    p = photos[0]
    box = roi_box(p.image.shape, p.disc_center, p.disc_diameter)
    out = overlay_image(p.image, p.disc, p.cup, box, max_side=256, note="eye.png")
    assert out.shape == (192, 256 + 192, 3)
    for colour in (DISC_COLOUR, CUP_COLOUR):
        assert (out == colour).all(axis=2).any()
    bare = overlay_image(p.image, None, None, max_side=256)
    assert bare.shape == (192, 256, 3) and not (bare == DISC_COLOUR).all(axis=2).any()


def test_photo_roi_sample_and_roi_box_agree(photos):
    p = photos[1]
    s = photo_roi_sample(p, 128)
    box = roi_box(p.image.shape, p.disc_center, p.disc_diameter)
    assert np.array_equal(s.image, box.crop(p.image, 128)) and s.meta["roi"] == box.as_dict()
