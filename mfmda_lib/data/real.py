"""Loaders for the public fundus datasets, each in the folder layout its publishers release.

Every loader walks one released layout, pairs each image with its masks and returns a lazy
:class:`FundusDataset` of :class:`SampleRef` (nothing is decoded until a sample is indexed).
Folder names are matched case-insensitively, and a release that was unzipped one folder
deeper than expected (``REFUGE-Training400/Training400/...``) is still found. What each
loader assumes about its layout, and how sure we are, is written in its docstring.
The folder lookup, the image/mask pairing and the mask readers are in :mod:`.real_files`.

===================  ==============================  =========================================
name                 domains                         mask encoding on disk
===================  ==============================  =========================================
``refuge``           refuge_train / _val / _test     one map: 0 cup, 128 rim, 255 background
``riga_plus``        riga_binrushed / _magrabia /    six maps (one per rater): 0 background,
                     riga_messidor                   128 cup, 255 rim -> majority vote
``drishti_gs``       drishti_gs                      two soft maps (disc, cup), cut at 0.5
``rim_one_dl``       rim_one_dl                      two binary maps (disc, cup), 0 / 255
===================  ==============================  =========================================
"""
from __future__ import annotations

import csv
import re
from functools import partial
from pathlib import Path
from typing import Callable, Iterable

from ..io import DataError
from .dataset import FundusDataset, SampleRef
from .real_files import (canonical_split, child_dir, find_dir, glaucoma_from_folder, image_files, index_by_stem,
                         is_visible, make_dataset)

__all__ = [
    "load_refuge", "load_riga_plus", "load_drishti_gs", "load_rim_one_dl", "load_dataset", "LOADERS", "RIGA_SUBSETS",
]


# ---------------------------------------------------------------------------------------------
# REFUGE
# ---------------------------------------------------------------------------------------------

_REFUGE_SPLITS = {"train": "train", "training": "train", "val": "val", "validation": "val", "test": "test"}
#: Official release: (image folder names, ground-truth folder names) per split.
_REFUGE_OFFICIAL = {
    "train": (("Training400", "REFUGE-Training400"), ("Annotation-Training400",)),
    "val": (("REFUGE-Validation400", "Validation400"), ("REFUGE-Validation400-GT", "Validation400-GT")),
    "test": (("Test400", "REFUGE-Test400"), ("REFUGE-Test-GT", "Test400-GT")),
}
_REFUGE_FLAT = {"train": ("train", "training"), "val": ("val", "validation", "valid"), "test": ("test",)}


def load_refuge(root: str | Path, split: str = "train") -> FundusDataset:
    """REFUGE (MICCAI 2018): 400 train (Zeiss Visucam 500), 400 val and 400 test (Canon CR-2).

    Official release, as unzipped from the six challenge archives (confidence: high; folder
    names are used the same way by many public loaders, e.g. bob.ip.binseg and mmsegmentation)::

        <root>/Training400/{Glaucoma,Non-Glaucoma}/g0001.jpg | n0001.jpg
        <root>/Annotation-Training400/Disc_Cup_Masks/{Glaucoma,Non-Glaucoma}/g0001.bmp
        <root>/REFUGE-Validation400/V0001.jpg
        <root>/REFUGE-Validation400-GT/Disc_Cup_Masks/V0001.bmp
        <root>/Test400/T0001.jpg
        <root>/REFUGE-Test-GT/Disc_Cup_Masks/{G,N}/T0001.bmp

    Also the common re-packaging ``<root>/{train,val,test}/{Images,Masks}/<id>.{jpg,png,bmp}``.
    Masks are 0 cup / 128 rim / 255 background. Glaucoma labels come from the Glaucoma /
    Non-Glaucoma (train) and G / N (test GT) folders; validation labels live only in an
    ``.xlsx`` sheet, which is not read (``glaucoma=None``).

    Args:
        root: folder holding the unzipped archives.
        split: ``"train"``, ``"val"`` or ``"test"``; the domain is ``refuge_<split>``.

    Returns:
        A :class:`FundusDataset`; raises :class:`DataError` naming the missing folder or the
        image without a mask.
    """
    root = Path(root)
    split = canonical_split(split, _REFUGE_SPLITS, "REFUGE")
    flat = child_dir(child_dir(root, *_REFUGE_FLAT[split]), "Images", "Image", "imgs")
    if flat is not None:
        image_dir, mask_dir = flat, child_dir(flat.parent, "Masks", "Mask", "GT")
        expected_masks = flat.parent / "Masks"
    else:
        image_names, gt_names = _REFUGE_OFFICIAL[split]
        image_dir = find_dir(root, image_names)
        if image_dir is None:
            raise DataError(f"REFUGE {split} images not found: expected a folder {image_names[0]!r} up to two "
                            f"levels below {root}, or {root / _REFUGE_FLAT[split][0] / 'Images'}")
        gt_dir = find_dir(root, gt_names)
        mask_dir = find_dir(gt_dir, ("Disc_Cup_Masks",)) if gt_dir is not None else None
        expected_masks = (gt_dir or root / gt_names[0]) / "Disc_Cup_Masks"
    if mask_dir is None:
        raise DataError(f"REFUGE {split} masks not found: expected the folder {expected_masks}")
    masks = index_by_stem(mask_dir)
    refs = []
    for image in image_files(image_dir, recursive=True):
        mask = masks.get(image.stem.lower())
        if mask is None:
            raise DataError(f"no mask for image {image}: expected {mask_dir / image.stem}.bmp (or .png)")
        refs.append(SampleRef(image, (mask,), f"refuge_{split}", image.stem, "labelmap",
                              glaucoma_from_folder(image, mask), {"split": split}))
    return make_dataset(refs, f"refuge/{split}", image_dir)


# ---------------------------------------------------------------------------------------------
# RIGA+
# ---------------------------------------------------------------------------------------------

#: RIGA+ subsets (the CSV prefixes) and the domain each belongs to.
RIGA_SUBSETS = {
    "BinRushed": "riga_binrushed",
    "Magrabia": "riga_magrabia",
    "MESSIDOR_Base1": "riga_messidor",
    "MESSIDOR_Base2": "riga_messidor",
    "MESSIDOR_Base3": "riga_messidor",
}
_RIGA_SPLITS = {"train": "train", "training": "train", "test": "test"}
_RIGA_RATERS = range(1, 7)


def _riga_masks(listed: Path, rater: int | None, image: Path) -> tuple[Path, ...]:
    """The rater masks of one image: ``listed`` itself if it exists, else ``<stem>-<k><suffix>`` for k = 1..6."""
    if listed.is_file():
        return (listed,)
    raters = [rater] if rater is not None else list(_RIGA_RATERS)
    candidates = [listed.with_name(f"{listed.stem}-{k}{listed.suffix}") for k in raters]
    found = tuple(p for p in candidates if p.is_file())
    if not found:
        want = f"{listed.stem}-{rater}{listed.suffix}" if rater else f"{listed.stem}-1..6{listed.suffix}"
        raise DataError(f"no mask for image {image}: expected {listed.with_name(want)}")
    return found


def _riga_base(root: Path) -> Path:
    """The folder holding the RIGA+ CSV files: ``root`` or one of its sub-folders (``RIGAPlus/``)."""
    if not root.is_dir() or any(root.glob("*_train.csv")):
        return root
    holders = [c for c in sorted(root.iterdir()) if c.is_dir() and is_visible(c) and any(c.glob("*_train.csv"))]
    return holders[0] if holders else root


def load_riga_plus(root: str | Path, split: str = "train", subsets: Iterable[str] | None = None,
                   rater: int | None = None) -> FundusDataset:
    """RIGA+ (Hu et al., Zenodo record 6325549): BinRushed, Magrabia and MESSIDOR Base1-3.

    Assumed layout of ``RIGAPlus.zip`` (confidence: medium-high; from the authors' loaders in
    ProSFDA / DoCR / CCSDG, which read ``<Subset>_<split>.csv`` with columns ``image, mask``,
    and from torch-em's RIGA+ loader, which appends ``-<rater>`` to the listed mask)::

        <root>/BinRushed_train.csv, BinRushed_test.csv, Magrabia_*.csv, MESSIDOR_Base{1,2,3}_*.csv
        <root>/RIGA/<Subset>/<collection>/image<N>.tif          (800x800 crops)
        <root>/RIGA-mask/<Subset>/<collection>/image<N>-<k>.tif  k = 1..6, one per ophthalmologist

    Paths in the CSV are relative to the CSV's folder; ``<root>`` may also be its parent.
    Each mask is 0 background, 128 cup, 255 rim (the authors' code: ``>0`` disc, ``==128``
    cup; torch-em's docstring says REFUGE's 0/128/255, which their own test data contradicts).
    With ``rater=None`` the six maps are fused by majority (a pixel is in when at least half of
    the raters mark it). The ``*_unlabeled.csv`` MESSIDOR lists carry no masks and are not read.

    Args:
        root: folder holding the CSV files (or its parent).
        split: ``"train"`` or ``"test"`` (the authors' split).
        subsets: any of :data:`RIGA_SUBSETS` (default: all five).
        rater: use only this rater (1..6) instead of the majority vote.

    Returns:
        A :class:`FundusDataset` with domains ``riga_binrushed``, ``riga_magrabia`` and
        ``riga_messidor`` (the MESSIDOR base is in ``meta["subset"]``).
    """
    root = Path(root)
    split = canonical_split(split, _RIGA_SPLITS, "RIGA+")
    subsets = list(RIGA_SUBSETS) if subsets is None else list(subsets)
    unknown = [s for s in subsets if s not in RIGA_SUBSETS]
    if unknown:
        raise ValueError(f"unknown RIGA+ subset(s) {unknown}; known: {list(RIGA_SUBSETS)}")
    if rater is not None and rater not in _RIGA_RATERS:
        raise ValueError(f"rater must be 1..6 or None (majority vote), got {rater!r}")
    base = _riga_base(root)
    refs = []
    for subset in subsets:
        table = next((p for p in base.glob("*.csv") if p.name.lower() == f"{subset}_{split}.csv".lower()), None)
        if table is None:
            raise DataError(f"RIGA+ split file not found: {base / f'{subset}_{split}.csv'} "
                            f"(RIGAPlus.zip ships <Subset>_train.csv and <Subset>_test.csv beside RIGA/)")
        with open(table, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if rows and not {"image", "mask"} <= set(rows[0]):
            raise DataError(f"{table} must have columns 'image' and 'mask', found {sorted(rows[0])}")
        for row in rows:
            image = base / row["image"].strip()
            if not image.is_file():
                raise DataError(f"{table} lists image {image}, which does not exist")
            masks = _riga_masks(base / row["mask"].strip(), rater, image)
            sample_id = "/".join(Path(row["image"].strip()).with_suffix("").parts[-3:])
            refs.append(SampleRef(image, masks, RIGA_SUBSETS[subset], sample_id, "riga_vote", None,
                                  {"subset": subset, "split": split, "raters": len(masks)}))
    return make_dataset(refs, f"riga_plus/{split}", base)


# ---------------------------------------------------------------------------------------------
# Drishti-GS1
# ---------------------------------------------------------------------------------------------

_DRISHTI_SPLITS = {"train": "Training", "training": "Training", "test": "Test"}


def _soft_map(folder: Path | None, stem: str, structure: str) -> Path | None:
    """``<folder>/<stem>_<structure>segSoftmap.<ext>`` matched case-insensitively."""
    if folder is None:
        return None
    want = f"{stem}_{structure}segsoftmap".lower()
    return next((p for p in image_files(folder) if p.stem.lower() == want), None)


def load_drishti_gs(root: str | Path, split: str = "train") -> FundusDataset:
    """Drishti-GS1 (Aravind Eye Hospital): 50 training and 51 test images, soft maps of 4 experts.

    Assumed layout of ``Drishti-GS1_files`` (confidence: high for Training, medium for the test
    ground truth folder name ``Test_GT``; as listed by bob.ip.binseg)::

        <root>/Drishti-GS1_files/Training/Images/drishtiGS_002.png
        <root>/Drishti-GS1_files/Training/GT/drishtiGS_002/SoftMap/drishtiGS_002_ODsegSoftmap.png
        <root>/Drishti-GS1_files/Training/GT/drishtiGS_002/SoftMap/drishtiGS_002_cupsegSoftmap.png
        <root>/Drishti-GS1_files/Test/Images/...    <root>/Drishti-GS1_files/Test/Test_GT/<name>/SoftMap/...

    ``<root>`` may also be ``Drishti-GS1_files`` itself. Soft maps give the share of experts
    marking each pixel; a pixel is in when at least :data:`SOFT_MAP_THRESHOLD` of them agree.
    The diagnosis sheet is not read (``glaucoma=None``).

    Args:
        root: folder holding ``Drishti-GS1_files`` (or that folder).
        split: ``"train"`` or ``"test"``; the domain is ``drishti_gs``.
    """
    root = Path(root)
    folder = canonical_split(split, _DRISHTI_SPLITS, "Drishti-GS1")
    split_dir = find_dir(root, (folder,), depth=3)
    image_dir = child_dir(split_dir, "Images")
    if image_dir is None:
        raise DataError(f"Drishti-GS1 {split} images not found: "
                        f"expected {root / 'Drishti-GS1_files' / folder / 'Images'}")
    gt_dir = child_dir(split_dir, "GT", "Test_GT", f"{folder}_GT")
    if gt_dir is None:
        expected = split_dir / ("GT" if folder == "Training" else "Test_GT")
        raise DataError(f"Drishti-GS1 {split} ground truth not found: expected {expected}")
    refs = []
    for image in image_files(image_dir):
        soft = child_dir(child_dir(gt_dir, image.stem), "SoftMap")
        disc, cup = _soft_map(soft, image.stem, "OD"), _soft_map(soft, image.stem, "cup")
        if disc is None or cup is None:
            where = gt_dir / image.stem / "SoftMap" / f"{image.stem}_{'OD' if disc is None else 'cup'}segSoftmap.png"
            raise DataError(f"no mask for image {image}: expected {where}")
        refs.append(SampleRef(image, (disc, cup), "drishti_gs", image.stem, "soft_pair", None,
                              {"split": folder.lower()}))
    return make_dataset(refs, f"drishti_gs/{folder.lower()}", image_dir)


# ---------------------------------------------------------------------------------------------
# RIM-ONE DL
# ---------------------------------------------------------------------------------------------

_RIM_ONE_SPLITS = {"train": "training_set", "training": "training_set", "test": "test_set"}
_RIM_ONE_PARTITIONS = {"by_hospital": "partitioned_by_hospital", "hospital": "partitioned_by_hospital",
                       "randomly": "partitioned_randomly", "random": "partitioned_randomly"}
_RIM_ONE_MASK = re.compile(r"(?P<stem>.+)-\d+-(?P<structure>disc|cup)-t", re.IGNORECASE)


def load_rim_one_dl(root: str | Path, split: str = "train", partition: str = "by_hospital") -> FundusDataset:
    """RIM-ONE DL (Fumero Batista et al. 2020): 485 images from three Spanish hospitals.

    Assumed layout of the two official zips (confidence: high; the authors' README and
    scripts in miag-ull/rim-one-dl, and loaders that parse these names)::

        <root>/RIM-ONE_DL_images/partitioned_by_hospital/{training_set,test_set}/{glaucoma,normal}/r1_Im001.png
        <root>/RIM-ONE_DL_images/partitioned_randomly/{training_set,test_set}/{glaucoma,normal}/...
        <root>/RIM-ONE_DL_reference_segmentations/{glaucoma,normal}/r1_Im001-1-Disc-T.png, -1-Cup-T.png

    By hospital, training is HUC (Tenerife) and test is HUMS + HCSC. Masks are binary 0 / 255
    PNGs (the ``.txt`` DCSeg contours beside them are ignored). Glaucoma labels come from the
    glaucoma / normal folders.

    Args:
        root: folder holding both unzipped archives.
        split: ``"train"`` or ``"test"``; the domain is ``rim_one_dl``.
        partition: ``"by_hospital"`` (default) or ``"randomly"``.
    """
    root = Path(root)
    split_folder = canonical_split(split, _RIM_ONE_SPLITS, "RIM-ONE DL")
    if partition not in _RIM_ONE_PARTITIONS:
        raise ValueError(f"RIM-ONE DL partition must be one of {sorted(_RIM_ONE_PARTITIONS)}, got {partition!r}")
    partition_name = _RIM_ONE_PARTITIONS[partition]
    split_dir = child_dir(find_dir(root, (partition_name,), depth=3), split_folder)
    if split_dir is None:
        raise DataError(f"RIM-ONE DL {split} folder not found: expected "
                        f"{root / 'RIM-ONE_DL_images' / partition_name / split_folder}")
    seg_root = find_dir(root, ("RIM-ONE_DL_reference_segmentations", "reference_segmentations"), depth=3)
    if seg_root is None:
        raise DataError(f"RIM-ONE DL reference segmentations not found: "
                        f"expected {root / 'RIM-ONE_DL_reference_segmentations'}")
    masks: dict[str, dict[str, Path]] = {}
    for path in image_files(seg_root, recursive=True):
        match = _RIM_ONE_MASK.fullmatch(path.stem)
        if match:
            masks.setdefault(match["stem"].lower(), {})[match["structure"].lower()] = path
    refs = []
    for class_dir in (c for c in (child_dir(split_dir, "glaucoma"), child_dir(split_dir, "normal")) if c is not None):
        for image in image_files(class_dir):
            pair = masks.get(image.stem.lower(), {})
            if "disc" not in pair or "cup" not in pair:
                missing = "Disc" if "disc" not in pair else "Cup"
                raise DataError(f"no mask for image {image}: expected "
                                f"{seg_root / class_dir.name / f'{image.stem}-1-{missing}-T.png'}")
            refs.append(SampleRef(image, (pair["disc"], pair["cup"]), "rim_one_dl", image.stem, "binary_pair",
                                  glaucoma_from_folder(image), {"split": split, "partition": partition_name}))
    return make_dataset(refs, f"rim_one_dl/{split}", split_dir)


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------

#: Dataset name -> loader ``(root, split, **kwargs) -> FundusDataset``.
LOADERS: dict[str, Callable[..., FundusDataset]] = {
    "refuge": load_refuge,
    "riga_plus": load_riga_plus,
    "riga_binrushed": partial(load_riga_plus, subsets=("BinRushed",)),
    "riga_magrabia": partial(load_riga_plus, subsets=("Magrabia",)),
    "riga_messidor": partial(load_riga_plus, subsets=("MESSIDOR_Base1", "MESSIDOR_Base2", "MESSIDOR_Base3")),
    "drishti_gs": load_drishti_gs,
    "rim_one_dl": load_rim_one_dl,
    "rim_one_dl_random": partial(load_rim_one_dl, partition="randomly"),
}


def load_dataset(name: str, root: str | Path, split: str = "train", **kwargs) -> FundusDataset:
    """Load dataset ``name`` (a key of :data:`LOADERS`) from ``root`` for ``split``.

    Raises ``ValueError`` listing the known names for an unknown ``name``.
    """
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(LOADERS)}")
    return LOADERS[name](root, split, **kwargs)
