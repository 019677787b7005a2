"""Synthetic whole-fundus photographs: what a hospital's camera actually saves.

The ROI benchmark (:mod:`mfmda_lib.data.synthetic`) renders disc-centred crops, like the public
ROI layouts. A clinic's camera saves the whole 45-degree field instead: macula-centred, the optic
disc off-centre (on the right of the macula in a right eye, on the left in a left eye) and about a
tenth of the image wide, the vessel arcades arching around the macula, and the dark corners
outside the circular field of view. :func:`generate_photo` renders that, with true disc and cup
masks in full-image coordinates, so the disc localiser and the crop / back-mapping of
:mod:`mfmda_lib.roi` can be tested here, without real photographs.

Each photo is "taken" by one of the benchmark's cameras: the :class:`DomainStyle` of a domain
(colour balance, gamma, contrast, illumination, vignetting, blur, noise, JPEG) is applied by the
same camera model as the ROI benchmark, and its population traits (disc size, glaucoma
prevalence) set the anatomy. The realism layers of :mod:`mfmda_lib.data.retina` (choroidal
texture, nerve-fibre striation, vessel width and tortuosity, disc pallor and rim colour,
illumination artefacts) are drawn here only: the ROI benchmark keeps every pixel it had. A
realistic ROI sample is an explicit opt-in, :func:`photo_roi_sample` (the ROI crop of a photo).

Every photo is a pure function of ``(seed, domain, split, index, width, severity)``; even
indices are right eyes, odd ones left eyes.
"""
from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.special import expit

from ..io import atomic_write, save_png
from . import retina
from .domains import DOMAINS, SOURCE_DOMAIN, style_at
from .sample import GLAUCOMA_SUSPECT_VCDR, FundusSample, encode_label_map, vertical_cdr
from .synthetic import _rng, _sample_anatomy, camera

__all__ = ["FundusPhoto", "generate_photo", "photo_roi_sample", "write_photo_folder", "DISC_FRACTION"]

#: Mean disc diameter of the source population as a fraction of the photograph's width (a 45-degree field).
DISC_FRACTION = 0.10
_RETINA_RGB = np.array([0.80, 0.36, 0.16])
_CUP_RGB = np.array([1.00, 0.90, 0.70])
_VEIN_RGB = np.array([0.42, 0.07, 0.05])
_ARTERY_RGB = np.array([0.62, 0.14, 0.08])


@dataclass
class FundusPhoto:
    """A whole-fundus photograph with its true disc and cup masks.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB.
        disc, cup: ``(H, W)`` bool masks in full-image coordinates.
        domain: the camera (a key of :data:`~mfmda_lib.data.domains.DOMAINS`).
        photo_id: ``<domain>_<split>_<index>``.
        eye: ``"right"`` (disc right of the macula) or ``"left"``.
        disc_center: ``(x, y)`` of the disc outline's centre, pixels.
        disc_diameter: the disc's mean diameter (``2 sqrt(rx ry)`` of its outline), pixels.
        fovea: ``(x, y)`` of the fovea, pixels.
        meta: severity, camera, vcdr, field of view.
    """

    image: np.ndarray
    disc: np.ndarray
    cup: np.ndarray
    domain: str
    photo_id: str
    eye: str
    disc_center: tuple[float, float]
    disc_diameter: float
    fovea: tuple[float, float]
    meta: dict = field(default_factory=dict)

    @property
    def vcdr(self) -> float:
        """Vertical cup-to-disc ratio of the true masks."""
        return vertical_cdr(self.disc, self.cup)

    @property
    def glaucoma(self) -> int:
        return int(self.vcdr >= GLAUCOMA_SUSPECT_VCDR)


def _mirror(ellipse, width: int):
    """The ellipse seen in a horizontally mirrored image (a left eye from a right eye's drawing)."""
    return dataclasses.replace(ellipse, cx=width - ellipse.cx,
                               phase=tuple(np.pi - p if k % 2 else -p for k, p in zip((2, 3, 4), ellipse.phase)))


def _level_near(ellipse, xx: np.ndarray, yy: np.ndarray, reach: float = 4.0) -> np.ndarray:
    """``ellipse.level`` ``(H, W)``, computed within ``reach`` radii of the centre only (``reach`` beyond)."""
    out = np.full(xx.shape, reach, np.float32)
    r = reach * max(ellipse.rx, ellipse.ry)
    x0, x1 = int(max(ellipse.cx - r, 0)), int(min(ellipse.cx + r + 1, xx.shape[1]))
    y0, y1 = int(max(ellipse.cy - r, 0)), int(min(ellipse.cy + r + 1, xx.shape[0]))
    if x1 > x0 and y1 > y0:
        out[y0:y1, x0:x1] = np.minimum(ellipse.level(xx[y0:y1, x0:x1], yy[y0:y1, x0:x1]), reach)
    return out


def _paint_disc(rgb: np.ndarray, rng: np.random.Generator, disc, cup, disc_level: np.ndarray, cup_level: np.ndarray,
                disc_d: float, pallor: float, xx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paint the disc over the ``(H, W, 3)`` retina: peripapillary glow, rim colour with pallor, pale cup.

    Returns the image and the disc's and cup's opacities ``(H, W, 1)`` (soft edges around level set 1).
    """
    edge = max(disc_d / 64, 0.5)
    disc_alpha = expit((1 - disc_level) * disc.rx / edge)[..., None]
    cup_alpha = expit((1 - cup_level) * cup.rx / (1.6 * edge))[..., None]
    rgb = rgb * (1 + 0.10 * np.exp(-((disc_level / 1.6) ** 2))[..., None])
    rim = retina.disc_colours(rng, disc_level, xx, (disc.cx, disc.cy), disc_d, pallor, temporal=-1.0)
    rgb = rgb * (1 - disc_alpha) + rim * disc_alpha
    rgb = rgb * (1 - cup_alpha) + _CUP_RGB * rng.normal(1.0, 0.02, 3) * cup_alpha
    return rgb, disc_alpha, cup_alpha


def generate_photo(domain: str, index: int, *, split: str = "test", width: int = 1024, severity: float = 1.0,
                   seed: int = 0) -> FundusPhoto:
    """Render one whole-fundus photograph (4:3, macula-centred) with its disc and cup masks.

    Args:
        domain: the camera and population, a key of :data:`DOMAINS`.
        index: photo number within ``(domain, split)``; even: right eye, odd: left eye.
        split: ``"train"`` or ``"test"`` (independent random streams, also independent of the ROI benchmark's).
        width: image width in pixels (height = 3/4 of it); at least 256.
        severity: domain-shift severity, as for the ROI benchmark.
        seed: benchmark seed.
    """
    if width < 256:
        raise ValueError(f"generate_photo: width must be >= 256 pixels, got {width}")
    style = style_at(domain, severity)
    rng = _rng(seed, domain, f"photo/{split}", index)
    w, h = int(width), int(round(width * 0.75))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    source = DOMAINS[SOURCE_DOMAIN]

    # geometry, canonical right eye: fovea near the centre, disc ~2.5 diameters nasal (right) and a bit above
    roi = DISC_FRACTION * w / (2 * source.disc_radius)  # the ROI side at which the source disc has its ROI size
    disc, cup, _ = _sample_anatomy(style, rng, int(round(roi)))
    disc_d = 2 * float(np.sqrt(disc.rx * disc.ry))
    fov_center = (w / 2 + rng.normal(0, 0.01) * w, h / 2 + rng.normal(0, 0.01) * h)
    fov_radius = 0.53 * h * float(np.clip(style.fov_radius / source.fov_radius, 0.85, 1.1))
    fovea = np.array(fov_center) + rng.normal(0, 0.02, 2) * w
    centre = fovea + np.array([2.5 * rng.uniform(0.92, 1.08), -0.25 * rng.uniform(0.3, 1.5)]) * disc_d
    shift = centre - np.array([disc.cx, disc.cy])
    disc = dataclasses.replace(disc, cx=disc.cx + shift[0], cy=disc.cy + shift[1])
    cup = dataclasses.replace(cup, cx=cup.cx + shift[0], cy=cup.cy + shift[1])

    # per-eye anatomy: pigmentation, nerve-fibre sheen, pallor (more in glaucoma), tortuosity
    pigment = rng.uniform(0, 1)
    glaucoma_like = (cup.ry / disc.ry) >= GLAUCOMA_SUSPECT_VCDR
    pallor = float(np.clip(rng.normal(0.35 if glaucoma_like else 0.15, 0.08), 0, 0.7))
    tortuosity = rng.uniform(0.1, 0.9)
    retina_rgb = _RETINA_RGB * (1 + 0.25 * (0.5 - pigment) * np.array([1.0, 1.6, 2.0]))  # darker, browner when pigmented
    shade = retina.choroidal_texture(rng, (h, w), disc_d, tuple(fovea), xx, yy, visibility=1 - pigment)
    macula = np.exp(-((xx - fovea[0]) ** 2 + (yy - fovea[1]) ** 2) / (2 * (0.9 * disc_d) ** 2))
    foveal_pit = np.exp(-((xx - fovea[0]) ** 2 + (yy - fovea[1]) ** 2) / (2 * (0.12 * disc_d) ** 2))
    rgb = retina_rgb * (shade * (1 - 0.35 * macula))[..., None]
    rgb = rgb + 0.05 * foveal_pit[..., None] * np.array([1.0, 0.9, 0.7])  # foveal reflex
    sheen = retina.nerve_fibre_striation(rng, (disc.cx, disc.cy), disc_d, xx, yy, strength=rng.uniform(0.03, 0.08))
    rgb = rgb + sheen[..., None] * np.array([0.9, 0.9, 1.0])

    # disc: peripapillary glow, rim colour with pallor, pale cup (soft edges; level set 1 is the mask outline)
    disc_level, cup_level = _level_near(disc, xx, yy), _level_near(cup, xx, yy)
    rgb, disc_alpha, cup_alpha = _paint_disc(rgb, rng, disc, cup, disc_level, cup_level, disc_d, pallor, xx)

    # vessels on top, fainter on the disc and cup; the arteries' central reflex
    vessels = retina.vessel_tree(rng, (h, w), (disc.cx, disc.cy), disc_d, tuple(fovea), tortuosity)
    fade = style.vessel_contrast * (1 - 0.45 * disc_alpha - 0.3 * cup_alpha)
    for opacity, colour in ((vessels.veins, _VEIN_RGB), (vessels.arteries, _ARTERY_RGB)):
        a = fade * opacity[..., None]
        rgb = rgb * (1 - a) + colour * a
    rgb = rgb + 0.18 * (fade * vessels.reflex[..., None]) * np.array([1.0, 0.8, 0.7])
    gain, haze = retina.illumination_artefacts(rng, xx, yy, fov_center, fov_radius)
    rgb = rgb * gain[..., None] + haze[..., None] * np.array([0.9, 0.9, 1.0])

    eye = "right" if index % 2 == 0 else "left"
    if eye == "left":  # a left eye is the mirror image of a right one; the camera is not mirrored
        rgb = rgb[:, ::-1]
        disc, cup = _mirror(disc, w), _mirror(cup, w)
        fovea = np.array([w - fovea[0], fovea[1]])
        fov_center = (w - fov_center[0], fov_center[1])
        disc_level, cup_level = _level_near(disc, xx, yy), _level_near(cup, xx, yy)
    image = camera(np.clip(rgb, 0, 1), style, rng, xx, yy, center=(w / 2, h / 2), scale=0.4 * w,
                   fov_center=fov_center, fov_radius=fov_radius)
    disc_mask = disc_level <= 1.0
    cup_mask = (cup_level <= 1.0) & disc_mask
    meta = {"severity": severity, "camera": style.camera, "fov_center": [float(v) for v in fov_center],
            "fov_radius": float(fov_radius), "vcdr": round(vertical_cdr(disc_mask, cup_mask), 4)}
    return FundusPhoto(image=image, disc=disc_mask, cup=cup_mask, domain=domain, photo_id=f"{domain}_{split}_{index:04d}",
                       eye=eye, disc_center=(float(disc.cx), float(disc.cy)), disc_diameter=disc_d,
                       fovea=(float(fovea[0]), float(fovea[1])), meta=meta)


def photo_roi_sample(photo: FundusPhoto, size: int = 256) -> FundusSample:
    """The disc-centred ROI of a photo at the kit's convention (:func:`mfmda_lib.roi.roi_box`), as a sample.

    The explicit opt-in to the whole-fundus renderer's realism for ROI work: the ROI benchmark's own
    samples (:func:`~mfmda_lib.data.synthetic.generate_sample`) are unchanged.
    """
    from ..roi import roi_box

    box = roi_box(photo.image.shape[:2], photo.disc_center, photo.disc_diameter)
    sample = FundusSample(image=box.crop(photo.image, size), disc=box.crop_mask(photo.disc, size),
                          cup=box.crop_mask(photo.cup, size), domain=photo.domain, sample_id=photo.photo_id,
                          meta={**photo.meta, "eye": photo.eye, "roi": box.as_dict()})
    sample.glaucoma = int(sample.vcdr >= GLAUCOMA_SUSPECT_VCDR)
    return sample


def write_photo_folder(folder: str | Path, photos: Sequence[FundusPhoto], *, masks: bool = True) -> Path:
    """Write photos as ``<id>.png`` (what a clinic's folder holds) and, apart, their true masks.

    The true masks go to ``<folder>_truth/<id>_mask.png`` (0 cup, 128 rim, 255 background) with a
    ``truth.csv`` of disc centres and diameters, so the photo folder itself holds images only.
    """
    folder = Path(folder)
    truth = folder.parent / f"{folder.name}_truth"
    for photo in photos:
        save_png(folder / f"{photo.photo_id}.png", photo.image)
        if masks:
            save_png(truth / f"{photo.photo_id}_mask.png", encode_label_map(photo.disc, photo.cup))
    if masks and photos:
        with atomic_write(truth / "truth.csv", "w") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "eye", "disc_x", "disc_y", "disc_diameter", "vcdr"])
            for p in photos:
                writer.writerow([p.photo_id, p.eye, f"{p.disc_center[0]:.2f}", f"{p.disc_center[1]:.2f}",
                                 f"{p.disc_diameter:.2f}", p.meta["vcdr"]])
    return folder
