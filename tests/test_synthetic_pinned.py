"""The ROI benchmark keeps every pixel: every committed results table in results/ was computed on it.

The digests below were computed on ``main`` at e720c36 (numpy 2.4.6, scipy 1.17.1, Pillow 13.0.0), before
the whole-fundus renderer was added. A change to the ROI renderer, its random stream or its defaults
changes them; new realism traits must stay opt-in for ROI crops.
"""
import hashlib

import numpy as np
import pytest

from mfmda_lib.data import generate_sample

PINNED = {  # (domain, split, index) at 256 px, severity 1, seed 0: sha256(image bytes + packed disc + packed cup)
    ("refuge_train", "train", 0): "ebee063dc11afa77481a66e81ba1e26324170f35048cf3be9188a14c37f2d944",
    ("refuge_train", "test", 5): "a99be23a0842c5328a4d504f0c26c8eb5f269a95aadda3f331e6175024fbefaf",
    ("refuge_test", "train", 0): "b193634b6f214b169e867fa2a4133a6e886ac12598166f795f7413ac95dc7464",
    ("refuge_test", "test", 5): "ce25dad6597d1693f06ede7bf70c3d047276bc2ae0a96bb3350a65d4a4d4ff34",
    ("riga_binrushed", "train", 0): "5d7354bb252ef8a2cb32a46e6dbdda85ea06e1bb763f57926582c9d92ed652c7",
    ("riga_binrushed", "test", 5): "6341ba95bbde07076a559e67fcbe73b7653e58b25464e05485d684e8e0d311db",
    ("riga_messidor", "train", 0): "90a96f56ffb23bcda90b644f0582c33b4f17439a73829b67f8c7dde4d6197878",
    ("riga_messidor", "test", 5): "522669dfe8ee5f008924c3e2d37b5489b0504557d6a0db98585c98eed40ecd4f",
}


def _digest(sample) -> str:
    return hashlib.sha256(sample.image.tobytes() + np.packbits(sample.disc).tobytes()
                          + np.packbits(sample.cup).tobytes()).hexdigest()


@pytest.mark.parametrize("key", sorted(PINNED))
def test_roi_benchmark_samples_are_unchanged(key):
    domain, split, index = key
    assert _digest(generate_sample(domain, index, split=split, size=256, severity=1.0, seed=0)) == PINNED[key]


def test_a_small_low_severity_sample_is_unchanged():
    sample = generate_sample("riga_binrushed", 2, split="train", size=64, severity=0.5, seed=0)
    assert _digest(sample) == "c87c2aeb3a03e27f7663a906145e8e8aea61f77701f4b53d03e517e41f73d61c"
