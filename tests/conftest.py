"""Shared fixtures: a headless matplotlib, and a tiny synthetic benchmark generated once per session."""
import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from mfmda_lib.data import generate_benchmark  # noqa: E402


@pytest.fixture(scope="session")
def tiny_benchmark(tmp_path_factory):
    """Two domains, 3 train + 2 test images each, 64 px: a fast on-disk benchmark."""
    root = tmp_path_factory.mktemp("bench")
    return generate_benchmark(root, domains=["refuge_train", "riga_messidor"], train_per_domain=3,
                              test_per_domain=2, size=64, severity=1.0, seed=0, progress=False)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small decoder ops run faster on one thread (and far faster on a shared, busy CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
