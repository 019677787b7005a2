"""The synthetic benchmark: determinism, valid masks, the severity knob, load-if-present on disk."""
import json

import numpy as np
import pytest

from mfmda_lib.data import (DOMAINS, SOURCE_DOMAIN, TARGET_DOMAINS, generate_benchmark, generate_sample,
                            load_benchmark, style_at)
from mfmda_lib.data import benchmark, synthetic
from mfmda_lib.data.sample import GLAUCOMA_SUSPECT_VCDR
from mfmda_lib.io import DataError


def test_same_arguments_give_identical_samples():
    a = generate_sample("riga_binrushed", 3, split="test", size=96, severity=0.7, seed=5)
    b = generate_sample("riga_binrushed", 3, split="test", size=96, severity=0.7, seed=5)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.disc, b.disc) and np.array_equal(a.cup, b.cup)
    c = generate_sample("riga_binrushed", 4, split="test", size=96, severity=0.7, seed=5)
    d = generate_sample("riga_binrushed", 3, split="train", size=96, severity=0.7, seed=5)
    assert not np.array_equal(a.image, c.image) and not np.array_equal(a.image, d.image)


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_masks_are_valid_anatomy(domain):
    for i in range(4):
        s = generate_sample(domain, i, size=128)
        assert s.image.shape == (128, 128, 3) and s.image.dtype == np.uint8
        assert s.disc.any() and s.cup.any()
        assert not (s.cup & ~s.disc).any(), "the cup must lie inside the disc"
        assert s.cup.sum() < s.disc.sum()
        assert 0.005 < s.disc.mean() < 0.2
        assert 0.15 < s.vcdr < 0.95
        assert s.glaucoma == int(s.vcdr >= GLAUCOMA_SUSPECT_VCDR)
        # the disc is brighter than its surroundings (what a segmenter has to find)
        ring = np.zeros_like(s.disc)
        ys, xs = np.nonzero(s.disc)
        ring[max(ys.min() - 15, 0):ys.max() + 15, max(xs.min() - 15, 0):xs.max() + 15] = True
        ring &= ~s.disc
        assert s.image[s.disc].mean() > s.image[ring].mean()


def test_glaucoma_prevalence_follows_the_domain():
    labels = [generate_sample("riga_binrushed", i, size=64, severity=1.0).glaucoma for i in range(40)]
    labels0 = [generate_sample("riga_binrushed", i, size=64, severity=0.0).glaucoma for i in range(40)]
    assert sum(labels) > sum(labels0)


def test_severity_interpolates_between_source_and_target():
    for d in TARGET_DOMAINS:
        s0, s1, sh = style_at(d, 0.0), style_at(d, 1.0), style_at(d, 0.5)
        src = DOMAINS[SOURCE_DOMAIN]
        assert s0.gamma == pytest.approx(src.gamma) and s0.rgb_gain == pytest.approx(src.rgb_gain)
        assert s1.gamma == pytest.approx(DOMAINS[d].gamma) and s1.jpeg_quality == pytest.approx(DOMAINS[d].jpeg_quality)
        assert sh.disc_radius == pytest.approx((src.disc_radius + DOMAINS[d].disc_radius) / 2)
    with pytest.raises(ValueError, match="unknown synthetic domain"):
        style_at("nowhere", 1.0)
    with pytest.raises(ValueError, match="severity"):
        style_at("refuge_test", -0.1)


def test_shift_in_pixels_grows_with_severity():
    def mean_colour(domain, severity):
        return np.mean([generate_sample(domain, i, size=64, severity=severity).image.reshape(-1, 3).mean(0)
                        for i in range(6)], axis=0)

    source = mean_colour(SOURCE_DOMAIN, 1.0)
    gaps = [np.abs(mean_colour("refuge_test", s) - source).sum() for s in (0.0, 0.5, 1.0)]
    assert gaps[0] < gaps[1] < gaps[2]
    assert gaps[0] < 0.2 * gaps[2]  # same distribution at severity 0: only sampling noise


def test_benchmark_layout_manifest_and_reload(tiny_benchmark):
    out = tiny_benchmark
    manifest = json.loads((out / "benchmark.json").read_text())
    assert manifest["config"]["train_per_domain"] == 3
    assert (out / "riga_messidor" / "test" / "ROIs" / "image" / "riga_messidor_test_0001.png").is_file()
    ds = load_benchmark(out, "test")
    assert len(ds) == 4 and ds.domains == ["refuge_train", "riga_messidor"]
    again = generate_sample("riga_messidor", 1, split="test", size=64, severity=1.0, seed=0)
    loaded = ds.by_domain("riga_messidor")[1]
    assert np.array_equal(loaded.image, again.image)
    assert np.array_equal(loaded.disc, again.disc) and np.array_equal(loaded.cup, again.cup)
    assert loaded.glaucoma == again.glaucoma


def test_complete_benchmark_is_reused_not_regenerated(tiny_benchmark, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("regenerated a complete benchmark")

    monkeypatch.setattr(benchmark, "generate_sample", boom)
    out = generate_benchmark(tiny_benchmark.parent, domains=["refuge_train", "riga_messidor"], train_per_domain=3,
                             test_per_domain=2, size=64, severity=1.0, seed=0, progress=False)
    assert out == tiny_benchmark


def test_interrupted_or_corrupted_benchmark_is_regenerated(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = synthetic.generate_sample

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(benchmark, "generate_sample", flaky)
    kw = dict(domains=["refuge_test"], train_per_domain=2, test_per_domain=1, size=64, progress=False)
    with pytest.raises(KeyboardInterrupt):
        generate_benchmark(tmp_path, **kw)
    out = benchmark.benchmark_dir(tmp_path, size=64, severity=1.0, seed=0, train_per_domain=2, test_per_domain=1)
    assert not (out / "benchmark.json").exists()
    assert not list(out.rglob("*.tmp"))
    with pytest.raises(DataError, match="not a complete synthetic benchmark"):
        load_benchmark(out)
    monkeypatch.setattr(benchmark, "generate_sample", real)
    generate_benchmark(tmp_path, **kw)
    assert len(load_benchmark(out, "train")) == 2
    # flip one byte of an image: the checksum catches it and the benchmark is rebuilt
    img = out / "refuge_test" / "train" / "ROIs" / "image" / "refuge_test_train_0000.png"
    good = img.read_bytes()
    img.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    generate_benchmark(tmp_path, **kw)
    assert img.read_bytes() == good


# nbval does not compare outputs of cells that were never run in the committed (clean) notebook,
# so the values that notebook 00 prints in its `# NBVAL_CHECK_OUTPUT` cell are pinned here. If the
# renderer changes on purpose, bump benchmark._VERSION and update these numbers.
GOLDEN_TEST_0 = {  # domain: (disc px, cup px, vCDR, glaucoma) of generate_sample(domain, 0, split="test")
    "refuge_train": (2636, 1429, 0.667, 1),
    "refuge_test": (2295, 253, 0.333, 0),
    "riga_binrushed": (4785, 1479, 0.553, 0),
    "riga_messidor": (3169, 1508, 0.687, 1),
}


@pytest.mark.parametrize("domain", list(GOLDEN_TEST_0))
def test_golden_values_printed_by_notebook_00(domain):
    s = generate_sample(domain, 0, split="test", size=256)
    assert (int(s.disc.sum()), int(s.cup.sum()), round(s.vcdr, 3), s.glaucoma) == GOLDEN_TEST_0[domain]


def test_benchmarks_of_different_sizes_coexist(tmp_path):
    kw = dict(domains=["refuge_test"], size=64, progress=False)
    small = generate_benchmark(tmp_path, train_per_domain=1, test_per_domain=1, **kw)
    large = generate_benchmark(tmp_path, train_per_domain=2, test_per_domain=1, **kw)
    assert small != large and (small / "benchmark.json").is_file() and (large / "benchmark.json").is_file()
    # the small one is still complete, and its images are the first images of the large one
    assert np.array_equal(load_benchmark(small, "train")[0].image, load_benchmark(large, "train")[0].image)
