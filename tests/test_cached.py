"""The kit's one artefact cache, ``mfmda_lib.io.cached``: hit, miss, corrupt file recomputed, atomic writes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mfmda_lib.io import JSON, NPZ, NUMPY, TORCH, cached, load_artefact, save_artefact


class Counter:
    """A ``compute`` that returns ``value`` and counts its calls."""

    def __init__(self, value):
        self.value, self.calls = value, 0

    def __call__(self):
        self.calls += 1
        return self.value


ARTEFACTS = {
    "torch": (TORCH, {"w": torch.arange(6.0).reshape(2, 3), "info": {"epochs": 3}}),
    "numpy": (NUMPY, np.arange(12, dtype=np.float16).reshape(3, 4)),
    "npz": (NPZ, {"images": np.arange(24, dtype=np.uint8).reshape(2, 3, 4)}),
    "json": (JSON, {"rows": [1, 2.5, "a"], "n": 3}),
}


def same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b)
    return a == b


@pytest.mark.parametrize("kind", sorted(ARTEFACTS))
def test_miss_computes_and_writes_then_a_hit_loads_without_computing(tmp_path, kind):
    serializer, value = ARTEFACTS[kind]
    path, compute = tmp_path / "sub" / f"artefact.{kind}", Counter(value)
    first, computed = cached(path, compute, serializer)
    assert computed and compute.calls == 1 and path.is_file() and first is value
    again, computed = cached(path, compute, serializer)
    assert not computed and compute.calls == 1 and same(again, value)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_no_path_means_no_cache(tmp_path):
    compute = Counter(np.ones(3))
    assert cached(None, compute, NUMPY)[1] and cached(None, compute, NUMPY)[1] and compute.calls == 2


@pytest.mark.parametrize("kind", sorted(ARTEFACTS))
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_corrupt_or_truncated_file_is_computed_again_with_a_warning_naming_it(tmp_path, kind, damage):
    serializer, value = ARTEFACTS[kind]
    path, compute = tmp_path / f"artefact.{kind}", Counter(value)
    cached(path, compute, serializer)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2] if damage == "truncated" else b"\x00not an artefact" * 4)
    with pytest.warns(UserWarning, match=f"{path.name}.*computing it again"):
        again, computed = cached(path, compute, serializer)
    assert computed and compute.calls == 2 and same(again, value)
    assert same(load_artefact(path, serializer), value)  # the good copy was written back


def test_a_file_failing_its_validity_check_is_computed_again(tmp_path):
    path = tmp_path / "pool.pt"
    cached(path, Counter({"key": "old", "x": torch.zeros(2)}), TORCH)
    compute = Counter({"key": "new", "x": torch.ones(2)})
    with pytest.warns(UserWarning, match="validity check"):
        got, computed = cached(path, compute, TORCH, valid=lambda p: p["key"] == "new")
    assert computed and torch.equal(got["x"], torch.ones(2))
    assert cached(path, compute, TORCH, valid=lambda p: p["key"] == "new")[1] is False and compute.calls == 1
    save_artefact(path, torch.zeros(2), TORCH)  # now a plain tensor: the check itself fails on it
    with pytest.warns(UserWarning, match=r"validity check \(AttributeError"):
        assert cached(path, compute, TORCH, valid=lambda p: p.get("key") == "new")[1]
    with pytest.raises(ValueError, match="sidecar"):
        cached(tmp_path / "a.json", Counter({}), JSON, meta={"v": 1})


def test_the_sidecar_checksum_and_meta_are_checked(tmp_path):
    path, value = tmp_path / "translated.npz", {"images": np.arange(8, dtype=np.uint8).reshape(2, 4)}
    compute = Counter(value)
    cached(path, compute, NPZ, meta={"ids": ["a", "b"]})
    side = json.loads((tmp_path / "translated.json").read_text())
    assert side["ids"] == ["a", "b"] and len(side["sha256"]) == 64
    assert not cached(path, compute, NPZ, meta={"ids": ["a", "b"]})[1]
    with pytest.warns(UserWarning, match="another artefact"):
        assert cached(path, compute, NPZ, meta={"ids": ["a", "c"]})[1]
    # a flipped byte that still loads: only the checksum sees it
    other = {"images": value["images"] + 1}
    save = Counter(other)
    cached(tmp_path / "x.npz", save, NPZ)
    (tmp_path / "translated.npz").write_bytes((tmp_path / "x.npz").read_bytes())
    with pytest.warns(UserWarning, match="SHA-256"):
        got, computed = cached(path, compute, NPZ, meta={"ids": ["a", "c"]})
    assert computed and same(got, value)


def test_an_exception_inside_compute_writes_nothing(tmp_path):
    path = tmp_path / "model.pt"

    def failing():
        raise KeyboardInterrupt("killed mid-training")

    with pytest.raises(KeyboardInterrupt):
        cached(path, failing, TORCH, meta={"v": 1})
    assert list(tmp_path.iterdir()) == []


def test_an_exception_while_writing_leaves_no_partial_file(tmp_path, monkeypatch):
    def failing_save(handle, array, allow_pickle=False):
        handle.write(b"\x93NUMPY partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        cached(tmp_path / "e.npy", Counter(np.ones(2)), NUMPY)
    assert list(tmp_path.iterdir()) == []
