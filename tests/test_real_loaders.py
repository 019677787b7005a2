"""Real-dataset loaders on tiny fixture trees written in each dataset's own layout and mask encoding."""
from __future__ import annotations

import csv
import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mfmda_lib.data.real import LOADERS, load_dataset, load_drishti_gs, load_refuge, load_riga_plus, load_rim_one_dl
from mfmda_lib.io import DataError

H, W = 24, 32
YY, XX = np.mgrid[0:H, 0:W]
RADIUS = np.hypot(YY - 12, XX - 16)  # (H, W) distance from the disc centre


def disc_of(r: float) -> np.ndarray:
    return RADIUS <= r


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def photo(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    return save(path, rng.integers(0, 255, (H, W, 3), dtype=np.uint8))


def refuge_map(disc_r: float = 8, cup_r: float = 4) -> np.ndarray:
    """REFUGE encoding: 0 cup, 128 rim, 255 background."""
    m = np.full((H, W), 255, np.uint8)
    m[disc_of(disc_r)] = 128
    m[disc_of(cup_r)] = 0
    return m


def riga_map(disc_r: float, cup_r: float) -> np.ndarray:
    """RIGA+ encoding: 0 background, 255 rim, 128 cup."""
    m = np.zeros((H, W), np.uint8)
    m[disc_of(disc_r)] = 255
    m[disc_of(cup_r)] = 128
    return m


def binary(r: float) -> np.ndarray:
    return np.where(disc_of(r), 255, 0).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# fixture trees
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def refuge_root(tmp_path: Path) -> Path:
    root = tmp_path / "refuge"
    for folder, stem in [("Glaucoma", "g0001"), ("Glaucoma", "g0002"), ("Non-Glaucoma", "n0001")]:
        photo(root / "Training400" / folder / f"{stem}.jpg")
        # the annotation zip unpacks one folder deeper, and the mask folder name differs in case
        save(root / "Annotation-Training400" / "Annotation-Training400" / "disc_cup_masks" / folder / f"{stem}.bmp",
             refuge_map())
    photo(root / "REFUGE-Validation400" / "V0001.jpg")
    save(root / "REFUGE-Validation400-GT" / "Disc_Cup_Masks" / "V0001.bmp", refuge_map())
    for folder, stem in [("G", "T0001"), ("N", "T0002")]:
        photo(root / "Test400" / f"{stem}.jpg")
        save(root / "REFUGE-Test-GT" / "Disc_Cup_Masks" / folder / f"{stem}.bmp", refuge_map())
    return root


@pytest.fixture
def riga_root(tmp_path: Path) -> Path:
    root = tmp_path / "riga_plus"
    rows = {"BinRushed": [("BinRushed1", "image1")], "Magrabia": [("MagrabiaMale", "image7")],
            "MESSIDOR_Base1": [("Labeled", "image20")], "MESSIDOR_Base2": [("Labeled", "image21")],
            "MESSIDOR_Base3": [("Labeled", "image22"), ("Labeled", "image23")]}
    for subset, items in rows.items():
        for split in ("train", "test"):
            with _mkopen(root / f"{subset}_{split}.csv") as handle:
                writer = csv.writer(handle)
                writer.writerow(["image", "mask"])
                for collection, stem in items:
                    name = f"{stem}{split}"
                    image = f"RIGA/{subset}/{collection}/{name}.tif"
                    mask = f"RIGA-mask/{subset}/{collection}/{name}.tif"
                    writer.writerow([image, mask])
                    photo(root / image)
                    # four raters: disc radius 6..9, cup radius 2..5 -> at least half agree on 8 / 4
                    for k, (d, c) in enumerate([(6, 2), (7, 3), (8, 4), (9, 5)], 1):
                        save(root / f"RIGA-mask/{subset}/{collection}/{name}-{k}.tif", riga_map(d, c))
    return root


def _mkopen(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "w", newline="")


def soft_map(inner_r: float, half_r: float, low_r: float, inner: int, half: int, low: int) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[disc_of(low_r)] = low
    m[disc_of(half_r)] = half
    m[disc_of(inner_r)] = inner
    return m


@pytest.fixture
def drishti_root(tmp_path: Path) -> Path:
    root = tmp_path / "drishti_gs"
    files = root / "Drishti-GS1_files"
    splits = [("Training", "GT", ["drishtiGS_002", "drishtiGS_004"]), ("Test", "Test_GT", ["drishtiGS_001"])]
    for split, gt, stems in splits:
        for stem in stems:
            photo(files / split / "Images" / f"{stem}.png")
            soft = files / split / gt / stem / "SoftMap"
            # disc: all experts r<=6, half of them to r=8, a quarter to r=9 -> cut at 0.5 gives r<=8
            save(soft / f"{stem}_ODsegSoftmap.png", soft_map(6, 8, 9, 255, 128, 64))
            # cup: three quarters r<=3, just under half (127/255) to r=4 -> r<=3
            save(soft / f"{stem}_cupsegSoftmap.png", soft_map(3, 4, 4, 191, 127, 127))
    return root


@pytest.fixture
def rim_one_root(tmp_path: Path) -> Path:
    root = tmp_path / "rim_one_dl"
    images = root / "RIM-ONE_DL_images"
    segs = root / "RIM-ONE_DL_reference_segmentations"
    layout = {("partitioned_by_hospital", "training_set"): [("glaucoma", "r1_Im001"), ("normal", "r1_Im002"),
                                                              ("normal", "r1_Im003")],
              ("partitioned_by_hospital", "test_set"): [("glaucoma", "r2_Im010")],
              ("partitioned_randomly", "training_set"): [("glaucoma", "r1_Im001"), ("glaucoma", "r2_Im010")],
              ("partitioned_randomly", "test_set"): [("normal", "r1_Im002"), ("normal", "r1_Im003")]}
    for (partition, split), items in layout.items():
        for cls, stem in items:
            photo(images / partition / split / cls / f"{stem}.png")
            save(segs / cls / f"{stem}-1-Disc-T.png", binary(8))
            save(segs / cls / f"{stem}-1-Cup-T.png", binary(4))
            (segs / cls / f"{stem}-1-Disc-T.txt").write_text("DCSeg contour, ignored\n")
    return root


# ---------------------------------------------------------------------------------------------
# loaders decode each encoding into the same disc / cup masks
# ---------------------------------------------------------------------------------------------

def assert_masks(sample, disc_r: float = 8, cup_r: float = 4) -> None:
    assert sample.image.shape == (H, W, 3) and sample.image.dtype == np.uint8
    np.testing.assert_array_equal(sample.disc, disc_of(disc_r))
    np.testing.assert_array_equal(sample.cup, disc_of(cup_r))


def test_refuge_official_layout_train_val_test(refuge_root):
    train = load_refuge(refuge_root, "train")
    assert len(train) == 3 and train.domains == ["refuge_train"]
    assert [r.sample_id for r in train.refs] == ["g0001", "g0002", "n0001"]
    assert [r.glaucoma for r in train.refs] == [1, 1, 0]
    for sample in train:
        assert_masks(sample)
    val = load_refuge(refuge_root, "validation")
    assert len(val) == 1 and val.domains == ["refuge_val"] and val.refs[0].glaucoma is None
    test = load_refuge(refuge_root, "test")
    assert test.domains == ["refuge_test"]
    assert {r.sample_id: r.glaucoma for r in test.refs} == {"T0001": 1, "T0002": 0}
    assert_masks(test[1])


def test_refuge_flat_images_masks_layout(tmp_path):
    root = tmp_path / "REFUGE"
    for split in ("train", "val", "test"):
        photo(root / split / "Images" / f"{split}_1.jpg")
        save(root / split / "Masks" / f"{split}_1.png", refuge_map(9, 5))
    for split in ("train", "val", "test"):
        dataset = load_refuge(root, split)
        assert len(dataset) == 1 and dataset.domains == [f"refuge_{split}"]
        assert_masks(dataset[0], 9, 5)


def test_riga_plus_majority_vote_and_domains(riga_root):
    train = load_riga_plus(riga_root, "train")
    assert train.domains == ["riga_binrushed", "riga_magrabia", "riga_messidor"]
    assert len(train) == 6 and len(train.by_domain("riga_messidor")) == 4
    assert {r.meta["subset"] for r in train.by_domain("riga_messidor").refs} == {f"MESSIDOR_Base{i}" for i in (1, 2, 3)}
    assert all(len(r.mask_paths) == 4 and r.glaucoma is None for r in train.refs)
    assert train.refs[0].sample_id == "BinRushed/BinRushed1/image1train"
    for sample in train:
        assert_masks(sample, 8, 4)  # 2 of 4 raters suffice; a strict majority would give 7 / 3


def test_riga_plus_single_rater_and_registry_subsets(riga_root):
    first = load_riga_plus(riga_root, "test", subsets=["Magrabia"], rater=1)
    assert len(first) == 1 and first.domains == ["riga_magrabia"]
    assert_masks(first[0], 6, 2)
    messidor = load_dataset("riga_messidor", riga_root, "test")
    assert len(messidor) == 4 and messidor.domains == ["riga_messidor"]
    assert len(load_dataset("riga_binrushed", riga_root.parent, "train")) == 1  # root may be the parent
    with pytest.raises(ValueError, match="MESSIDOR_Base1"):
        load_riga_plus(riga_root, "train", subsets=["Messidor"])


def test_drishti_soft_maps_cut_at_half(drishti_root):
    train = load_drishti_gs(drishti_root, "train")
    assert len(train) == 2 and train.domains == ["drishti_gs"]
    for sample in train:
        assert_masks(sample, 8, 3)
    test = load_dataset("drishti_gs", drishti_root / "Drishti-GS1_files", "test")
    assert [r.sample_id for r in test.refs] == ["drishtiGS_001"]
    assert_masks(test[0], 8, 3)


def test_rim_one_dl_partitions_and_labels(rim_one_root):
    train = load_rim_one_dl(rim_one_root, "train")
    assert train.domains == ["rim_one_dl"]
    assert {r.sample_id: r.glaucoma for r in train.refs} == {"r1_Im001": 1, "r1_Im002": 0, "r1_Im003": 0}
    for sample in train:
        assert_masks(sample)
    assert len(load_rim_one_dl(rim_one_root, "test")) == 1
    random_test = load_dataset("rim_one_dl_random", rim_one_root, "test")
    assert [r.glaucoma for r in random_test.refs] == [0, 0]
    assert random_test.refs[0].meta["partition"] == "partitioned_randomly"


def test_loaders_return_references_only_until_indexed(refuge_root):
    dataset = load_refuge(refuge_root, "train")
    (refuge_root / "Training400" / "Glaucoma" / "g0002.jpg").write_bytes(b"gone bad after listing")
    assert len(dataset) == 3  # listing did not read pixels
    assert_masks(dataset[0])


# ---------------------------------------------------------------------------------------------
# bad inputs fail loudly and name the file or folder
# ---------------------------------------------------------------------------------------------

def test_unknown_dataset_and_split_list_the_valid_names(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'refugee'.*refuge.*riga_plus"):
        load_dataset("refugee", tmp_path, "train")
    with pytest.raises(ValueError, match=r"\['test', 'train', 'val'\]"):
        load_refuge(tmp_path, "dev")
    assert set(LOADERS) >= {"refuge", "riga_plus", "riga_binrushed", "riga_magrabia", "riga_messidor",
                            "drishti_gs", "rim_one_dl"}


def test_missing_split_folders_are_named(refuge_root, rim_one_root, drishti_root, riga_root):
    shutil.rmtree(refuge_root / "Test400")
    with pytest.raises(DataError, match="Test400"):
        load_refuge(refuge_root, "test")
    shutil.rmtree(refuge_root / "REFUGE-Validation400-GT")
    with pytest.raises(DataError, match="REFUGE-Validation400-GT"):
        load_refuge(refuge_root, "val")
    shutil.rmtree(rim_one_root / "RIM-ONE_DL_images" / "partitioned_randomly" / "test_set")
    with pytest.raises(DataError, match="partitioned_randomly.test_set"):
        load_rim_one_dl(rim_one_root, "test", partition="randomly")
    shutil.rmtree(drishti_root / "Drishti-GS1_files" / "Test" / "Test_GT")
    with pytest.raises(DataError, match="Test_GT"):
        load_drishti_gs(drishti_root, "test")
    (riga_root / "Magrabia_test.csv").unlink()
    with pytest.raises(DataError, match="Magrabia_test.csv"):
        load_riga_plus(riga_root, "test")


def test_image_without_mask_names_both(refuge_root, rim_one_root, riga_root):
    mask = next((refuge_root / "Annotation-Training400").rglob("n0001.bmp"))
    mask.unlink()
    with pytest.raises(DataError, match=r"n0001\.jpg.*n0001\.bmp"):
        load_refuge(refuge_root, "train")
    (rim_one_root / "RIM-ONE_DL_reference_segmentations" / "normal" / "r1_Im002-1-Cup-T.png").unlink()
    with pytest.raises(DataError, match=r"r1_Im002\.png.*r1_Im002-1-Cup-T\.png"):
        load_rim_one_dl(rim_one_root, "train")
    for k in (1, 2, 3, 4):
        (riga_root / f"RIGA-mask/Magrabia/MagrabiaMale/image7train-{k}.tif").unlink()
    with pytest.raises(DataError, match=r"image7train\.tif.*image7train-1\.\.6\.tif"):
        load_riga_plus(riga_root, "train")


def test_corrupt_and_truncated_images_name_the_file(refuge_root):
    dataset = load_refuge(refuge_root, "train")
    corrupt = refuge_root / "Training400" / "Glaucoma" / "g0001.jpg"
    corrupt.write_bytes(b"this is not a JPEG")
    with pytest.raises(DataError, match=re.escape(str(corrupt))):
        dataset[0]
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((H, W, 3), np.uint8) + 77).save(buffer, format="PNG")
    truncated = refuge_root / "Training400" / "Non-Glaucoma" / "n0001.jpg"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(DataError, match=re.escape(str(truncated))):
        dataset[2]


def test_masks_with_unexpected_values_are_rejected(refuge_root, riga_root, rim_one_root):
    bad = np.full((H, W), 60, np.uint8)
    refuge_mask = next((refuge_root / "Annotation-Training400").rglob("g0001.bmp"))
    save(refuge_mask, bad)
    with pytest.raises(DataError, match=re.escape(str(refuge_mask)) + r".*unexpected values \[60\]"):
        load_refuge(refuge_root, "train")[0]
    riga_mask = riga_root / "RIGA-mask/BinRushed/BinRushed1/image1train-2.tif"
    save(riga_mask, bad)
    with pytest.raises(DataError, match=re.escape(str(riga_mask)) + r".*unexpected values"):
        load_riga_plus(riga_root, "train", subsets=["BinRushed"])[0]
    rim_mask = rim_one_root / "RIM-ONE_DL_reference_segmentations" / "glaucoma" / "r1_Im001-1-Disc-T.png"
    save(rim_mask, bad + 40)
    with pytest.raises(DataError, match=re.escape(str(rim_mask)) + r".*unexpected values \[100\]"):
        load_rim_one_dl(rim_one_root, "train")[0]


def test_mask_size_differing_from_image_is_rejected(refuge_root, drishti_root):
    mask = refuge_root / "REFUGE-Validation400-GT" / "Disc_Cup_Masks" / "V0001.bmp"
    save(mask, np.full((16, 16), 255, np.uint8))
    with pytest.raises(DataError, match=r"V0001\.bmp has size \(16, 16\) but image .*V0001\.jpg has size \(24, 32\)"):
        load_refuge(refuge_root, "val")[0]
    cup = drishti_root / "Drishti-GS1_files/Training/GT/drishtiGS_002/SoftMap/drishtiGS_002_cupsegSoftmap.png"
    save(cup, np.zeros((12, 16), np.uint8))
    with pytest.raises(DataError, match=r"cupsegSoftmap\.png has size \(12, 16\)"):
        load_drishti_gs(drishti_root, "train")[0]
