"""Synthetic whole-fundus photographs: anatomy in the right place, both eyes, true masks, each camera's look."""
import numpy as np
import pytest

from mfmda_lib.data import DOMAINS, generate_sample
from mfmda_lib.data.photo import DISC_FRACTION, generate_photo, photo_roi_sample, write_photo_folder
from mfmda_lib.io import read_image, read_mask

WIDTH = 384


@pytest.fixture(scope="module")
def photos():
    return {(d, i): generate_photo(d, i, width=WIDTH) for d in DOMAINS for i in (0, 1)}


def test_a_photo_is_deterministic_and_4_by_3():
    a, b = generate_photo("riga_messidor", 3, width=WIDTH), generate_photo("riga_messidor", 3, width=WIDTH)
    assert a.image.shape == (288, WIDTH, 3) and a.image.dtype == np.uint8
    assert np.array_equal(a.image, b.image) and np.array_equal(a.disc, b.disc)
    assert not np.array_equal(a.image, generate_photo("riga_messidor", 3, split="train", width=WIDTH).image)
    with pytest.raises(ValueError, match="width"):
        generate_photo("riga_messidor", 0, width=100)


def test_macula_centred_field_with_the_disc_nasal_in_each_eye(photos):
    for (domain, i), p in photos.items():
        h, w = p.disc.shape
        assert p.eye == ("right" if i % 2 == 0 else "left")
        # the fovea is near the centre; the disc sits 2-3 disc diameters to its right (right eye) or left
        assert abs(p.fovea[0] - w / 2) < 0.1 * w and abs(p.fovea[1] - h / 2) < 0.1 * h
        offset = (p.disc_center[0] - p.fovea[0]) / p.disc_diameter
        assert 2.0 < (offset if p.eye == "right" else -offset) < 3.0
        # the true masks: in full-image coordinates, centred where the photo says, cup inside disc
        ys, xs = np.nonzero(p.disc)
        assert abs(xs.mean() + 0.5 - p.disc_center[0]) < 0.1 * p.disc_diameter
        assert abs(ys.mean() + 0.5 - p.disc_center[1]) < 0.1 * p.disc_diameter
        assert p.cup.any() and not (p.cup & ~p.disc).any()
        assert 0.5 * DISC_FRACTION < p.disc_diameter / w < 1.3 * DISC_FRACTION
        # the field of view: dark corners, bright disc
        assert p.image[:8, :8].mean() < 20 and p.image[-8:, -8:].mean() < 20
        assert p.image[p.disc].mean() > p.image[~p.disc & (p.image.mean(2) > 20)].mean()


def test_a_left_eye_is_a_mirrored_right_eye_in_anatomy():
    right, left = generate_photo("refuge_train", 0, width=WIDTH), generate_photo("refuge_train", 1, width=WIDTH)
    for p in (right, left):  # the temporal cup offset and the macula lie on the same side of the disc
        ys, xs = np.nonzero(p.cup)
        towards_fovea = np.sign(p.fovea[0] - p.disc_center[0])
        assert np.sign(xs.mean() + 0.5 - p.disc_center[0]) in (towards_fovea, 0)


def _mean_colour(images):
    return np.mean([im[im.mean(axis=2) > 25].mean(axis=0) for im in images], axis=0)


def test_a_photo_from_a_camera_looks_like_that_cameras_roi_benchmark():
    """The ROI of a photo "taken" by camera X is nearest, in mean colour, to camera X's ROI benchmark images."""
    benchmark = {d: _mean_colour([generate_sample(d, i, size=128).image for i in range(4)]) for d in DOMAINS}
    for d in DOMAINS:
        rois = _mean_colour([photo_roi_sample(generate_photo(d, i, width=WIDTH), 128).image for i in range(4)])
        nearest = min(DOMAINS, key=lambda other: np.abs(benchmark[other] - rois).sum())
        assert nearest == d, f"{d}'s photos look like {nearest} ({rois.round(1)} vs {benchmark[d].round(1)})"


def test_roi_sample_puts_the_disc_at_the_benchmarks_size(photos):
    for p in photos.values():
        s = photo_roi_sample(p, 256)
        cols = np.flatnonzero(s.disc.any(axis=0))
        assert 50 <= cols[-1] - cols[0] + 1 <= 75  # the ROI benchmark's discs are 50-75 px wide at 256 px
        ys, xs = np.nonzero(s.disc)
        assert abs(xs.mean() - 128) < 6 and abs(ys.mean() - 128) < 6
        assert s.meta["eye"] == p.eye and s.vcdr > 0


def test_write_photo_folder_keeps_truth_apart(tmp_path, photos):
    chosen = [photos[("riga_binrushed", 0)], photos[("riga_binrushed", 1)]]
    folder = write_photo_folder(tmp_path / "clinic", chosen)
    assert sorted(p.name for p in folder.iterdir()) == [f"{p.photo_id}.png" for p in chosen]
    assert np.array_equal(read_image(folder / f"{chosen[0].photo_id}.png"), chosen[0].image)
    label = read_mask(tmp_path / "clinic_truth" / f"{chosen[1].photo_id}_mask.png")
    assert label.shape == chosen[1].disc.shape and np.array_equal(label < 255, chosen[1].disc)
    assert (tmp_path / "clinic_truth" / "truth.csv").read_text().count("\n") == 3
