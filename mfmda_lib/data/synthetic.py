"""A deterministic multi-domain synthetic fundus benchmark with optic disc and cup masks.

Real multi-site fundus benchmarks (REFUGE train/test, RIGA+ BinRushed and MESSIDOR) differ in
two ways that matter for adaptation: the *camera* (colour balance, illumination, contrast,
gamma, blur, noise, vignetting, field of view, compression) and the *population* (disc size,
cup-to-disc ratio, glaucoma prevalence). Each synthetic domain is a :class:`DomainStyle`
holding both. A continuous ``severity`` dials every trait from the source domain's value
(severity 0: every domain is drawn from the source distribution) to the target's
(severity 1, the default) and beyond (extrapolation, severity > 1).

Sections: anatomy (disc, cup, vessels) -> acquisition (the camera) -> sample. The styles are in
:mod:`.domains`, the benchmark on disk (load-if-present-else-generate, with checksums) in :mod:`.benchmark`.

Every sample is a pure function of ``(seed, domain, split, index, size, severity)``, so a
small profile's images are the first images of a larger profile's.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter

from .domains import DomainStyle, style_at
from .sample import GLAUCOMA_SUSPECT_VCDR, FundusSample

__all__ = ["generate_sample"]

# ---------------------------------------------------------------------------------------------
# anatomy: disc, cup, vessels (geometry only; colours come later)
# ---------------------------------------------------------------------------------------------

_RETINA_RGB = np.array([0.80, 0.36, 0.16])
_RIM_RGB = np.array([0.96, 0.64, 0.40])
_CUP_RGB = np.array([1.00, 0.90, 0.70])
_VEIN_RGB = np.array([0.42, 0.07, 0.05])
_ARTERY_RGB = np.array([0.62, 0.14, 0.08])


@dataclass(frozen=True)
class _Ellipse:
    cx: float
    cy: float
    rx: float
    ry: float
    wobble: tuple[float, ...]  # amplitudes of angular harmonics 2..4 (irregular outline)
    phase: tuple[float, ...]

    def level(self, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
        """Normalised radius: < 1 inside the outline, 1 on it. ``(H, W)``."""
        dx, dy = (xx - self.cx) / self.rx, (yy - self.cy) / self.ry
        phi = np.arctan2(dy, dx)
        outline = 1.0 + sum(a * np.cos(k * phi + p) for k, a, p in zip((2, 3, 4), self.wobble, self.phase))
        return np.hypot(dx, dy) / outline


def _sample_anatomy(style: DomainStyle, rng: np.random.Generator, size: int) -> tuple[_Ellipse, _Ellipse, bool]:
    """Draw disc and cup outlines and the glaucoma status of one eye."""
    glaucoma = bool(rng.random() < style.glaucoma_fraction)
    r = size * float(np.clip(rng.normal(style.disc_radius, style.disc_radius_sd), 0.6 * style.disc_radius, 0.25))
    disc = _Ellipse(
        cx=size * (0.5 + rng.uniform(-0.05, 0.05)), cy=size * (0.5 + rng.uniform(-0.05, 0.05)),
        rx=r * rng.uniform(0.88, 0.98), ry=r * rng.uniform(1.0, 1.08),
        wobble=tuple(rng.uniform(0, 0.025, 3)), phase=tuple(rng.uniform(0, 2 * np.pi, 3)),
    )
    vcdr = rng.normal(0.74, 0.06) if glaucoma else rng.normal(0.42, 0.07)
    vcdr = float(np.clip(vcdr, 0.63, 0.88) if glaucoma else np.clip(vcdr, 0.22, 0.56))
    ry = vcdr * disc.ry
    rx = min(ry * rng.uniform(0.85, 1.05), 0.88 * disc.rx)
    slack = max(disc.rx * 0.9 - rx, 0.0)
    cup = _Ellipse(
        cx=disc.cx - rng.uniform(0.0, 0.6) * slack,  # cups sit towards the temporal (left) side
        cy=disc.cy + rng.uniform(-0.04, 0.04) * disc.ry,
        rx=rx, ry=ry, wobble=tuple(rng.uniform(0, 0.03, 3)), phase=tuple(rng.uniform(0, 2 * np.pi, 3)),
    )
    return disc, cup, glaucoma


def _vessel_maps(disc: _Ellipse, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Opacity maps ``(H, W)`` in [0, 1] of veins and arteries: branching random walks from the disc."""
    ss = 2  # supersampling for smooth edges
    maps = []
    for base_width, jitter in ((0.020, 0.0), (0.014, 0.25)):  # veins, then arteries
        canvas = Image.new("L", (size * ss, size * ss), 0)
        draw = ImageDraw.Draw(canvas)
        # arcades: temporal superior/inferior arch to the left, nasal ones go right
        for angle, bend in ((-115, -0.018), (115, 0.018), (-35, 0.006), (35, -0.006)):
            start = np.array([disc.cx + rng.normal(0, 0.15) * disc.rx, disc.cy + rng.normal(0, 0.15) * disc.ry])
            theta = np.deg2rad(angle + rng.normal(0, 8) + jitter * 40)
            stack = [(start, theta, bend * rng.uniform(0.7, 1.3), base_width * size * rng.uniform(0.8, 1.1), 0)]
            while stack:
                pos, th, curv, width, depth = stack.pop()
                for _ in range(int(size * 0.9)):
                    step = pos + 2.0 * np.array([np.cos(th), np.sin(th)])
                    draw.line([tuple(pos * ss), tuple(step * ss)], fill=255, width=max(1, int(round(width * ss))))
                    pos, th = step, th + curv + rng.normal(0, 0.05)
                    width *= 0.997
                    if not (-5 < pos[0] < size + 5 and -5 < pos[1] < size + 5) or width < 0.6:
                        break
                    if depth < 2 and rng.random() < 0.012:
                        side = rng.choice([-1, 1])
                        stack.append((pos.copy(), th + side * rng.uniform(0.5, 1.0), rng.normal(0, 0.01),
                                      width * 0.65, depth + 1))
        arr = np.asarray(canvas.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
        maps.append(gaussian_filter(arr, 0.4))
    return maps[0], maps[1]


# ---------------------------------------------------------------------------------------------
# acquisition: the camera
# ---------------------------------------------------------------------------------------------


def _acquire(rgb: np.ndarray, style: DomainStyle, rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray,
             fov_center: tuple[float, float]) -> np.ndarray:
    """Apply one camera's traits to a linear square ``(S, S, 3)`` ROI image in [0, 1]; returns uint8."""
    size = rgb.shape[0]
    return camera(rgb, style, rng, xx, yy, center=(size / 2, size / 2), scale=size, fov_center=fov_center,
                  fov_radius=style.fov_radius * size)


def camera(rgb: np.ndarray, style: DomainStyle, rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, *,
           center: tuple[float, float], scale: float, fov_center: tuple[float, float], fov_radius: float) -> np.ndarray:
    """Apply one camera's traits (:class:`DomainStyle`) to a linear ``(H, W, 3)`` image in [0, 1].

    Args:
        rgb: ``(H, W, 3)`` float image; ``xx``, ``yy``: ``(H, W)`` pixel-centre coordinates.
        center: where the illumination gradient is neutral (pixels).
        scale: pixels per unit of the style's lengths (the ROI side: blur is ``blur_sigma`` at 256 px per unit).
        fov_center, fov_radius: the circular aperture, in pixels.

    Returns:
        ``(H, W, 3)`` uint8.
    """
    # per-image jitter: the same camera is never set up identically twice
    gain = np.asarray(style.rgb_gain) * rng.normal(1.0, 0.03, 3)
    angle = np.deg2rad(style.illumination_angle + rng.normal(0, 15))
    ramp = ((xx - center[0]) * np.cos(angle) + (yy - center[1]) * np.sin(angle)) / scale
    illum = 1.0 + style.illumination * rng.uniform(0.8, 1.2) * ramp * 2
    rr = np.hypot(xx - fov_center[0], yy - fov_center[1]) / fov_radius
    vignette = 1.0 - style.vignetting * np.clip(rr, 0, 1) ** 2
    img = rgb * (illum * vignette)[..., None] * gain
    img = (img - 0.5) * style.contrast + 0.5 + style.brightness
    img = np.clip(img, 0, 1) ** style.gamma
    sigma = style.blur_sigma * scale / 256
    if sigma > 0.05:
        img = gaussian_filter(img, (sigma, sigma, 0))
    img = img + rng.normal(0, style.noise_sigma, img.shape)
    fov = np.clip((1.0 - rr) * scale / 3.0, 0, 1)[..., None]  # soft edge of the circular aperture
    img = img * fov + (1 - fov) * rng.uniform(0.0, 0.03, img.shape)
    out = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    if style.jpeg_quality < 99.5:
        buffer = io.BytesIO()
        Image.fromarray(out).save(buffer, format="JPEG", quality=int(round(style.jpeg_quality)))
        out = np.asarray(Image.open(buffer).convert("RGB"), dtype=np.uint8).copy()
    return out


# ---------------------------------------------------------------------------------------------
# one sample
# ---------------------------------------------------------------------------------------------


def _rng(seed: int, domain: str, split: str, index: int) -> np.random.Generator:
    tag = int.from_bytes(hashlib.sha256(f"{domain}/{split}".encode()).digest()[:4], "little")
    return np.random.default_rng([seed, tag, index])


def generate_sample(domain: str, index: int, *, split: str = "train", size: int = 256, severity: float = 1.0,
                    seed: int = 0, camera: str | None = None) -> FundusSample:
    """Render one synthetic fundus photograph with its disc and cup masks.

    Args:
        domain: a key of :data:`DOMAINS`.
        index: sample number within ``(domain, split)``.
        split: ``"train"`` or ``"test"`` (independent random streams).
        size: image side in pixels.
        severity: domain-shift severity (0 = source distribution, 1 = the domain as defined).
        seed: benchmark seed.
        camera: acquire the same eye with another domain's camera (its style at ``severity``): the
            anatomy and every random draw are ``domain``'s, only the acquisition traits change. A
            synthetic-only oracle of what a perfect translation to that camera would look like.

    Returns:
        A :class:`FundusSample` with a ``(size, size, 3)`` uint8 image, exact masks,
        ``glaucoma`` = vertical CDR >= :data:`GLAUCOMA_SUSPECT_VCDR`, and the style in ``meta``.
    """
    style = style_at(domain, severity)
    rng = _rng(seed, domain, split, index)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    disc, cup, _ = _sample_anatomy(style, rng, size)

    # background retina: orange-red with choroidal texture, darker towards the macula (left)
    texture = gaussian_filter(rng.normal(0, 1, (size, size)), size / 40) * 6.0
    grain = gaussian_filter(rng.normal(0, 1, (size, size)), 1.0) * 0.6
    macula = np.exp(-(((xx - (disc.cx - 0.75 * size)) / (0.35 * size)) ** 2 + ((yy - disc.cy) / (0.3 * size)) ** 2))
    shade = 1.0 + 0.05 * texture + 0.03 * grain - 0.25 * macula
    rgb = _RETINA_RGB * rng.normal(1.0, 0.04, 3) * shade[..., None]

    # optic disc (bright rim) and cup (pale): soft edges whose level set 1 is the mask outline
    disc_level, cup_level = disc.level(xx, yy), cup.level(xx, yy)
    edge = max(size / 256, 0.5)
    disc_alpha = 1 / (1 + np.exp(-(1 - disc_level) * disc.rx / edge))
    cup_alpha = 1 / (1 + np.exp(-(1 - cup_level) * cup.rx / (1.6 * edge)))
    glow = np.exp(-((disc_level / 1.6) ** 2))[..., None] * 0.10  # peripapillary brightening
    rgb = rgb * (1 + glow)
    rgb = rgb * (1 - disc_alpha[..., None]) + _RIM_RGB * rng.normal(1.0, 0.03, 3) * disc_alpha[..., None]
    rgb = rgb * (1 - cup_alpha[..., None]) + _CUP_RGB * cup_alpha[..., None]

    # vessels on top: veins darker and wider than arteries; fainter on the disc, faintest on the cup
    veins, arteries = _vessel_maps(disc, rng, size)
    fade = style.vessel_contrast * (1 - 0.45 * disc_alpha - 0.3 * cup_alpha)[..., None]
    rgb = rgb * (1 - fade * veins[..., None]) + _VEIN_RGB * fade * veins[..., None]
    rgb = rgb * (1 - fade * arteries[..., None]) + _ARTERY_RGB * fade * arteries[..., None]

    fov_center = (disc.cx - 0.32 * size, disc.cy + rng.normal(0, 0.03) * size)  # the disc lies nasally
    camera_style = style if camera is None else style_at(camera, severity)
    image = _acquire(np.clip(rgb, 0, 1), camera_style, rng, xx, yy, fov_center)

    disc_mask = disc_level <= 1.0
    cup_mask = (cup_level <= 1.0) & disc_mask
    sample = FundusSample(image=image, disc=disc_mask, cup=cup_mask, domain=domain,
                          sample_id=f"{domain}_{split}_{index:04d}", meta={"severity": severity})
    sample.glaucoma = int(sample.vcdr >= GLAUCOMA_SUSPECT_VCDR)
    sample.meta.update(vcdr=round(sample.vcdr, 4), camera=style.camera)
    return sample
