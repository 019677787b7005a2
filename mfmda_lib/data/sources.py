"""Where each public fundus dataset is published (:data:`SOURCES`): whether a script may fetch it and from where
(:func:`fetch_source` downloads and unpacks it), and, for the ones behind a registration, the steps a person takes
(:func:`registration_steps`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..io import DataError
from .download import ARCHIVE_SUFFIXES, download
from .extract import safe_extract

__all__ = ["RemoteFile", "Source", "SOURCES", "registration_steps", "fetch_source"]


@dataclass(frozen=True)
class RemoteFile:
    """One file a script may download.

    Attributes:
        url: where to get it.
        filename: name to save it under.
        sha256: expected hex SHA-256, or None where no checksum could be found.
        checksum_note: where the checksum comes from, or why there is none.
    """

    url: str
    filename: str
    sha256: str | None = None
    checksum_note: str = ""


@dataclass(frozen=True)
class Source:
    """Where one dataset comes from and how to get it.

    Attributes:
        name: key in :data:`SOURCES` and folder name under the data root.
        title: human-readable name.
        homepage: the publisher's page.
        licence: terms of use, in brief.
        loader: key in :data:`mfmda_lib.data.real.LOADERS`.
        splits: splits the loader accepts.
        files: files a script may fetch; empty when the data sits behind a registration.
        registration: steps for a person, for data a script may not fetch.
    """

    name: str
    title: str
    homepage: str
    licence: str
    loader: str
    splits: tuple[str, ...]
    files: tuple[RemoteFile, ...] = ()
    registration: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if bool(self.files) == bool(self.registration):
            raise ValueError(f"source {self.name!r} needs either files to download or registration steps, not both")

    @property
    def public(self) -> bool:
        """True when a script may download the data without an account."""
        return bool(self.files)


_UNPACK = ("Unpack the archives into DEST/{name}: python data_scripts/download_fundus.py "
           "--dataset {name} --dest DEST --extract <archive> [<archive> ...]")


SOURCES: dict[str, Source] = {
    "riga_plus": Source(
        name="riga_plus",
        title="RIGA+ (BinRushed, Magrabia, MESSIDOR Base1-3; six raters per image), Hu et al. 2022",
        homepage="https://zenodo.org/records/6325549",
        licence="CC BY 4.0 on the Zenodo record; the original RIGA is CC BY-NC 4.0, so treat it as non-commercial",
        loader="riga_plus",
        splits=("train", "test"),
        files=(RemoteFile(
            url="https://zenodo.org/api/records/6325549/files/RIGAPlus.zip/content",
            filename="RIGAPlus.zip",
            sha256="f9fa96df2faa70852ccd4c73d0e79ed6eb258b5a37e72292f5efa3f81f195d20",
            checksum_note="SHA-256 as used by torch-em's RIGA+ loader (constantinpape/torch-em); "
                          "Zenodo itself lists only an MD5; about 1.1 GB"),),
    ),
    "rim_one_dl": Source(
        name="rim_one_dl",
        title="RIM-ONE DL (HUC, HUMS, HCSC hospitals), Fumero Batista et al. 2020",
        homepage="https://github.com/miag-ull/rim-one-dl",
        licence="research and education only, free of charge; no redistribution",
        loader="rim_one_dl",
        splits=("train", "test"),
        files=(
            RemoteFile(url="https://bit.ly/rim-one-dl-images", filename="RIM-ONE_DL_images.zip",
                       checksum_note="no checksum is published; the short link from the official README "
                                     "may redirect to a host that wants a browser"),
            RemoteFile(url="https://bit.ly/rim-one-dl-reference-segmentations",
                       filename="RIM-ONE_DL_reference_segmentations.zip",
                       checksum_note="no checksum is published; short link from the official README"),
        ),
    ),
    "refuge": Source(
        name="refuge",
        title="REFUGE (MICCAI 2018 glaucoma challenge; Zeiss train, Canon val/test)",
        homepage="https://refuge.grand-challenge.org/",
        licence="challenge data: research use under the challenge's terms, no redistribution",
        loader="refuge",
        splits=("train", "val", "test"),
        registration=(
            "Create a free account at https://grand-challenge.org and sign in.",
            "Open https://refuge.grand-challenge.org/ and join the challenge; the download page "
            "(https://refuge.grand-challenge.org/REFUGE2Download/) lists the archives once its terms are accepted.",
            "Download REFUGE-Training400.zip, Annotation-Training400.zip, REFUGE-Validation400.zip, "
            "REFUGE-Validation400-GT.zip, REFUGE-Test400.zip and REFUGE-Test-GT.zip.",
            _UNPACK,
        ),
    ),
    "drishti_gs": Source(
        name="drishti_gs",
        title="Drishti-GS1 (Aravind Eye Hospital; soft maps of four experts)",
        homepage="https://cvit.iiit.ac.in/projects/mip/drishti-gs/mip-dataset2/Home.php",
        licence="research use under the publisher's terms, no redistribution",
        loader="drishti_gs",
        splits=("train", "test"),
        registration=(
            "Open https://cvit.iiit.ac.in/projects/mip/drishti-gs/mip-dataset2/Home.php and follow its Download link.",
            "Give the details the site asks for (name, institution, e-mail) and accept its terms; "
            "it then gives the link to Drishti-GS1_files.zip.",
            _UNPACK,
        ),
    ),
}


def _source(name: str) -> Source:
    if name not in SOURCES:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(SOURCES)}")
    return SOURCES[name]


def registration_steps(name: str, dest: str = "DEST") -> str:
    """Numbered steps, for a person, to get dataset ``name`` into ``<dest>/<name>`` and load it."""
    source = _source(name)
    if source.public:
        steps = [f"No registration needed: python data_scripts/download_fundus.py --dataset {name} --dest {dest}"]
    else:
        steps = [s.format(name=name).replace("DEST", dest) for s in source.registration]
    steps.append(f"Load it: load_dataset({source.loader!r}, {str(Path(dest) / name)!r}, split) "
                 f"with split in {list(source.splits)}.")
    lines = [f"{source.title}", f"  homepage: {source.homepage}", f"  licence:  {source.licence}"]
    lines += [f"  {i}. {step}" for i, step in enumerate(steps, 1)]
    return "\n".join(lines)


def fetch_source(name: str, dest: str | os.PathLike, *, progress: bool = True) -> Path:
    """Download the files of public dataset ``name`` into ``dest`` and unpack them into ``dest/name``.

    Archives are kept in ``dest`` (a rerun skips them), and each is unpacked once (a marker
    file ``dest/name/.<archive>.extracted`` records it). Returns ``dest/name``, the loader root.
    """
    source = _source(name)
    if not source.public:
        raise DataError(f"{name} cannot be downloaded by a script; see registration_steps({name!r})")
    dest = Path(dest)
    root = dest / name
    for remote in source.files:
        archive = download(remote.url, dest / remote.filename, remote.sha256, progress=progress)
        marker = root / f".{remote.filename}.extracted"
        if remote.filename.lower().endswith(ARCHIVE_SUFFIXES) and not marker.is_file():
            safe_extract(archive, root)
            marker.write_text(f"{remote.url}\n")
    return root
