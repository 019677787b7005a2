"""The domain linear probe: separable features are told apart, identical distributions are not."""
import numpy as np
import pytest

from mfmda_lib.evaluation.probe import domain_probe


def _features(shift: float, n: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    feats, doms = [], []
    for k, name in enumerate(["a", "b", "c"]):
        centre = np.zeros(16)
        centre[k] = shift
        feats.append(rng.normal(0, 1, (n, 16)) + centre)
        doms += [name] * n
    return np.concatenate(feats), doms


def test_separable_domains_are_found():
    res = domain_probe(*_features(shift=8.0), folds=5)
    assert res.accuracy > 0.95 and res.chance == pytest.approx(1 / 3)
    assert res.confusion.shape == (3, 3) and res.confusion.sum() == 90
    assert np.trace(res.confusion) == round(res.accuracy * 90)


def test_identical_domains_stay_near_chance():
    res = domain_probe(*_features(shift=0.0), folds=5)
    assert res.accuracy < 0.55


def test_bad_inputs_are_named():
    f, d = _features(shift=1.0, n=3)
    with pytest.raises(ValueError, match="need >= 2 domains and >= 5 samples"):
        domain_probe(f, d, folds=5)
    with pytest.raises(ValueError, match=r"features must be \(N, D\)"):
        domain_probe(f[:4], d, folds=2)
