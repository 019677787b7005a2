"""The standard disc/cup post-processing: one solid disc, one solid cup inside it."""
import numpy as np
import pytest

from mfmda_lib.roi.postprocess import clean_disc_cup, count_components, largest_component


def _disk(shape, centre, radius):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius ** 2


def test_two_blobs_and_a_hole_come_out_as_one_filled_blob():
    disc = _disk((64, 64), (30, 30), 14)
    hole = _disk((64, 64), (28, 31), 3)
    blob = _disk((64, 64), (56, 8), 4)  # a false "disc" on a vessel reflex
    raw = (disc & ~hole) | blob
    assert count_components(raw) == 2
    cleaned, _ = clean_disc_cup(raw, np.zeros_like(raw))
    assert count_components(cleaned) == 1
    np.testing.assert_array_equal(cleaned, disc)  # the hole filled, the stray blob gone


def test_the_cup_outside_the_disc_is_removed_and_the_cup_inside_kept():
    disc = _disk((64, 64), (30, 30), 14)
    cup_inside = _disk((64, 64), (32, 30), 6)
    cup_outside = _disk((64, 64), (56, 56), 5)
    out_disc, out_cup = clean_disc_cup(disc, cup_inside | cup_outside)
    np.testing.assert_array_equal(out_disc, disc)
    np.testing.assert_array_equal(out_cup, cup_inside)
    # a cup predicted only outside the disc leaves no cup at all
    assert not clean_disc_cup(disc, cup_outside)[1].any()


def test_the_cup_is_the_largest_component_inside_the_disc():
    disc = _disk((64, 64), (30, 30), 16)
    big, small = _disk((64, 64), (30, 30), 6), _disk((64, 64), (30, 42), 2)
    assert count_components(big | small) == 2
    np.testing.assert_array_equal(clean_disc_cup(disc, big | small)[1], big)


def test_an_empty_prediction_stays_empty():
    empty = np.zeros((32, 32), bool)
    disc, cup = clean_disc_cup(empty, empty)
    assert disc.shape == cup.shape == (32, 32) and not disc.any() and not cup.any()
    assert count_components(empty) == 0
    # a cup without any disc is dropped too
    assert not clean_disc_cup(empty, _disk((32, 32), (16, 16), 5))[1].any()


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        clean_disc_cup(np.zeros((8, 8), bool), np.zeros((8, 9), bool))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        largest_component(np.zeros((2, 8, 8), bool))
