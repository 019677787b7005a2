"""Bad input gives a clear error naming the file or setting at fault."""
import shutil

import numpy as np
import pytest
from PIL import Image

from mfmda_lib.data import FundusSample, load_folder_domain
from mfmda_lib.data.sample import decode_label_map, encode_label_map, vertical_cdr
from mfmda_lib.io import DataError, atomic_write, read_image


@pytest.fixture()
def bench_copy(tiny_benchmark, tmp_path):
    dst = tmp_path / "bench"
    shutil.copytree(tiny_benchmark, dst)
    return dst


def test_missing_split_folder_names_it(bench_copy):
    with pytest.raises(DataError, match=r"split folder not found: .*refuge_train.*val"):
        load_folder_domain(bench_copy, "refuge_train", "val")


def test_truncated_image_names_the_file(bench_copy):
    img = bench_copy / "refuge_train" / "test" / "ROIs" / "image" / "refuge_train_test_0000.png"
    img.write_bytes(img.read_bytes()[:60])
    ds = load_folder_domain(bench_copy, "refuge_train", "test")
    with pytest.raises(DataError, match="refuge_train_test_0000.png.*corrupt or truncated"):
        ds[0]


def test_not_an_image_names_the_file(tmp_path):
    bad = tmp_path / "x.png"
    bad.write_text("hello")
    with pytest.raises(DataError, match="x.png"):
        read_image(bad)
    with pytest.raises(DataError, match="not found"):
        read_image(tmp_path / "missing.png")


def test_mask_with_unexpected_values_names_the_file(bench_copy):
    mask = bench_copy / "riga_messidor" / "test" / "ROIs" / "mask" / "riga_messidor_test_0001.png"
    arr = np.asarray(Image.open(mask)).copy()
    arr[:, :32] = 60
    Image.fromarray(arr).save(mask)
    with pytest.raises(DataError, match=r"riga_messidor_test_0001.png has unexpected values \[60\]"):
        load_folder_domain(bench_copy, "riga_messidor", "test")[1]


def test_mask_size_differs_from_image(bench_copy):
    mask = bench_copy / "riga_messidor" / "test" / "ROIs" / "mask" / "riga_messidor_test_0000.png"
    Image.open(mask).resize((32, 32), Image.NEAREST).save(mask)
    with pytest.raises(DataError, match=r"riga_messidor_test_0000.png has size \(32, 32\) but image"):
        load_folder_domain(bench_copy, "riga_messidor", "test")[0]


def test_image_without_mask(bench_copy):
    (bench_copy / "refuge_train" / "train" / "ROIs" / "mask" / "refuge_train_train_0002.png").unlink()
    with pytest.raises(DataError, match="no mask for image .*refuge_train_train_0002.png"):
        load_folder_domain(bench_copy, "refuge_train", "train")


def test_sample_rejects_mismatched_masks():
    with pytest.raises(DataError, match="disc mask size"):
        FundusSample(np.zeros((8, 8, 3), np.uint8), np.zeros((4, 4), bool), np.zeros((8, 8), bool), "d", "id")


def test_label_map_roundtrip_and_vcdr():
    disc = np.zeros((20, 20), bool)
    disc[2:18, 4:16] = True
    cup = np.zeros((20, 20), bool)
    cup[6:14, 7:13] = True
    d, c = decode_label_map(encode_label_map(disc, cup))
    assert np.array_equal(d, disc) and np.array_equal(c, cup)
    assert vertical_cdr(disc, cup) == pytest.approx(8 / 16)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write(b"half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
