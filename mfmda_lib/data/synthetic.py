"""A deterministic multi-domain synthetic fundus benchmark with optic disc and cup masks.

Real multi-site fundus benchmarks (REFUGE train/test, RIGA+ BinRushed and MESSIDOR) differ in
two ways that matter for adaptation: the *camera* (colour balance, illumination, contrast,
gamma, blur, noise, vignetting, field of view, compression) and the *population* (disc size,
cup-to-disc ratio, glaucoma prevalence). Each synthetic domain is a :class:`DomainStyle`
holding both. A continuous ``severity`` dials every trait from the source domain's value
(severity 0: every domain is drawn from the source distribution) to the target's
(severity 1, the default) and beyond (extrapolation, severity > 1).

Sections: styles -> anatomy (disc, cup, vessels) -> acquisition (the camera) -> sample ->
benchmark on disk (load-if-present-else-generate, with checksums).

Every sample is a pure function of ``(seed, domain, split, index, size, severity)``, so a
small profile's images are the first images of a larger profile's.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter
from tqdm.auto import tqdm

from ..io import DataError, atomic_write, atomic_write_json, save_png, sha256_file
from .dataset import FundusDataset, load_folder_domain
from .sample import GLAUCOMA_SUSPECT_VCDR, FundusSample, encode_label_map

__all__ = [
    "DomainStyle",
    "DOMAINS",
    "SOURCE_DOMAIN",
    "TARGET_DOMAINS",
    "style_at",
    "generate_sample",
    "generate_benchmark",
    "load_benchmark",
    "benchmark_dir",
    "style_table",
    "SEVERITY_STEPS",
]

# ---------------------------------------------------------------------------------------------
# styles: one per site
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DomainStyle:
    """Camera and population traits of one site.

    Colour and geometry fields are interpolated by :func:`style_at`; ``name``, ``camera`` and
    ``description`` are labels.

    Attributes:
        rgb_gain: per-channel gain applied to the linear image (colour balance).
        gamma: output gamma (``x ** gamma``); > 1 darkens mid-tones.
        contrast: contrast around mid-grey.
        brightness: additive offset after contrast.
        illumination: strength of a linear illumination gradient across the field.
        illumination_angle: direction of that gradient, degrees.
        vignetting: radial fall-off towards the edge of the field of view (0 = none).
        fov_radius: radius of the circular field of view, as a fraction of the image side.
        blur_sigma: Gaussian blur (pixels at 256 px; scaled with the image size).
        noise_sigma: additive Gaussian sensor noise.
        jpeg_quality: JPEG re-compression quality; 100 means no compression.
        disc_radius: mean optic-disc radius as a fraction of the image side.
        disc_radius_sd: its standard deviation.
        glaucoma_fraction: share of eyes drawn from the glaucomatous (large-cup) population.
        vessel_contrast: how dark the vessels are against the retina (0..1).
    """

    name: str
    camera: str
    description: str
    rgb_gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    gamma: float = 1.0
    contrast: float = 1.0
    brightness: float = 0.0
    illumination: float = 0.1
    illumination_angle: float = 0.0
    vignetting: float = 0.15
    fov_radius: float = 0.80
    blur_sigma: float = 0.5
    noise_sigma: float = 0.01
    jpeg_quality: float = 100.0
    disc_radius: float = 0.14
    disc_radius_sd: float = 0.012
    glaucoma_fraction: float = 0.1
    vessel_contrast: float = 0.75

    def __post_init__(self) -> None:
        if not (0 < self.fov_radius and 0 < self.disc_radius < 0.3):
            raise ValueError(f"domain {self.name}: fov_radius and disc_radius must be positive, disc_radius < 0.3")
        if not 0 <= self.glaucoma_fraction <= 1:
            raise ValueError(f"domain {self.name}: glaucoma_fraction must be in [0, 1]")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"domain {self.name}: jpeg_quality must be in [1, 100]")


SOURCE_DOMAIN = "refuge_train"

DOMAINS: dict[str, DomainStyle] = {
    d.name: d
    for d in (
        DomainStyle(
            name="refuge_train", camera="Zeiss Visucam 500 (like REFUGE train)",
            description="source domain: warm, evenly lit, moderate contrast, 10% glaucoma",
        ),
        DomainStyle(
            name="refuge_test", camera="Canon CR-2 (like REFUGE test)",
            description="brighter, yellow-green cast, crisper, higher contrast, smaller discs",
            rgb_gain=(0.98, 1.30, 1.45), gamma=0.80, contrast=1.25, brightness=0.04,
            illumination=0.05, illumination_angle=90.0, vignetting=0.10, fov_radius=0.85,
            blur_sigma=0.2, noise_sigma=0.008, disc_radius=0.115, disc_radius_sd=0.010,
            glaucoma_fraction=0.1, vessel_contrast=0.85,
        ),
        DomainStyle(
            name="riga_binrushed", camera="Canon CR-1 (like RIGA+ BinRushed)",
            description="dark and red, low contrast, strong vignetting, noisy, mild JPEG",
            rgb_gain=(1.10, 0.72, 0.60), gamma=1.35, contrast=0.80, brightness=-0.06,
            illumination=0.30, illumination_angle=200.0, vignetting=0.55, fov_radius=0.70,
            blur_sigma=1.0, noise_sigma=0.030, jpeg_quality=80.0, disc_radius=0.13,
            disc_radius_sd=0.014, glaucoma_fraction=0.35, vessel_contrast=0.60,
        ),
        DomainStyle(
            name="riga_messidor", camera="Topcon TRC NW6 (like RIGA+ MESSIDOR)",
            description="uneven illumination, soft focus, heavy JPEG blocks, narrow field",
            rgb_gain=(1.05, 0.90, 1.10), gamma=1.10, contrast=0.90, brightness=0.0,
            illumination=0.50, illumination_angle=135.0, vignetting=0.35, fov_radius=0.64,
            blur_sigma=1.6, noise_sigma=0.015, jpeg_quality=30.0, disc_radius=0.10,
            disc_radius_sd=0.010, glaucoma_fraction=0.2, vessel_contrast=0.65,
        ),
    )
}
TARGET_DOMAINS = [name for name in DOMAINS if name != SOURCE_DOMAIN]

#: Severities shown when a notebook sweeps the domain-shift knob.
SEVERITY_STEPS = (0.0, 0.5, 1.0, 1.5, 2.0)

_INTERPOLATED = [f.name for f in dataclasses.fields(DomainStyle) if f.name not in ("name", "camera", "description")]


def style_at(domain: str | DomainStyle, severity: float = 1.0) -> DomainStyle:
    """The style of ``domain`` with its shift from the source scaled by ``severity``.

    ``style_at(d, 0)`` equals the source style (with ``d``'s name); ``style_at(d, 1)`` is ``d``.
    Values are extrapolated for ``severity > 1`` and clipped to valid ranges.
    """
    if isinstance(domain, str) and domain not in DOMAINS:
        raise ValueError(f"unknown synthetic domain {domain!r}; known: {sorted(DOMAINS)}")
    style = DOMAINS[domain] if isinstance(domain, str) else domain
    if severity < 0:
        raise ValueError(f"severity must be >= 0, got {severity}")
    source = DOMAINS[SOURCE_DOMAIN]
    values = {}
    for name in _INTERPOLATED:
        s, t = np.asarray(getattr(source, name), float), np.asarray(getattr(style, name), float)
        v = s + severity * (t - s)
        values[name] = tuple(float(x) for x in v) if v.ndim else float(v)
    # extrapolation (severity > 1) stays inside what a real, if poor, camera produces
    values["rgb_gain"] = tuple(float(np.clip(g, 0.35, 2.0)) for g in values["rgb_gain"])
    values["gamma"] = float(np.clip(values["gamma"], 0.5, 2.0))
    values["contrast"] = float(np.clip(values["contrast"], 0.4, 2.0))
    values["brightness"] = float(np.clip(values["brightness"], -0.1, 0.1))
    values["jpeg_quality"] = float(np.clip(values["jpeg_quality"], 20, 100))
    values["glaucoma_fraction"] = float(np.clip(values["glaucoma_fraction"], 0, 1))
    values["disc_radius"] = float(np.clip(values["disc_radius"], 0.06, 0.2))
    values["fov_radius"] = max(values["fov_radius"], 0.5)
    values["vignetting"] = float(np.clip(values["vignetting"], 0.0, 0.75))
    values["blur_sigma"] = float(np.clip(values["blur_sigma"], 0.0, 2.5))
    values["noise_sigma"] = float(np.clip(values["noise_sigma"], 0.0, 0.05))
    values["vessel_contrast"] = float(np.clip(values["vessel_contrast"], 0.4, 1.0))
    for name in ("illumination", "disc_radius_sd"):
        values[name] = max(values[name], 0.0)
    return dataclasses.replace(style, **values)


def style_table(severity: float = 1.0):
    """A ``pandas.DataFrame`` of every domain's traits at ``severity`` (rows: domains)."""
    import pandas as pd

    rows = []
    for name in DOMAINS:
        st = style_at(name, severity)
        row = {"domain": name, "camera": st.camera.split(" (")[0]}
        row.update({f: getattr(st, f) for f in _INTERPOLATED if f != "rgb_gain"})
        row["rgb_gain"] = "/".join(f"{g:.2f}" for g in st.rgb_gain)
        rows.append(row)
    return pd.DataFrame(rows).set_index("domain").round(3)


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


# ---------------------------------------------------------------------------------------------
# the benchmark on disk: load if present (manifest + checksums), else generate
# ---------------------------------------------------------------------------------------------

_MANIFEST = "benchmark.json"
_VERSION = 2  # bump when the renderer changes, so stale benchmarks are regenerated


def benchmark_dir(root: str | Path, *, size: int, severity: float, seed: int, train_per_domain: int,
                  test_per_domain: int) -> Path:
    """The folder for one benchmark configuration under ``root`` (profiles never share one)."""
    return Path(root) / (f"synthetic_fundus_v{_VERSION}_{size}px_sev{severity:g}_seed{seed}"
                         f"_{train_per_domain}x{test_per_domain}")


def _config(domains, train_per_domain, test_per_domain, size, severity, seed) -> dict:
    return {"version": _VERSION, "domains": list(domains), "train_per_domain": train_per_domain,
            "test_per_domain": test_per_domain, "size": size, "severity": float(severity), "seed": seed}


def _verify(out: Path, config: dict) -> bool:
    """True when ``out`` holds a complete benchmark of ``config`` whose files match their checksums."""
    manifest_path = out / _MANIFEST
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError:
        return False
    if manifest.get("config") != config:
        return False
    for rel, digest in manifest["sha256"].items():
        path = out / rel
        if not path.is_file() or sha256_file(path) != digest:
            return False
    return True


def generate_benchmark(root: str | Path, *, domains: Sequence[str] | None = None, train_per_domain: int = 40,
                       test_per_domain: int = 20, size: int = 256, severity: float = 1.0, seed: int = 0,
                       overwrite: bool = False, progress: bool = True) -> Path:
    """Write the synthetic benchmark in the kit's folder layout; reuse it when already complete.

    Layout: ``<out>/<domain>/<split>/ROIs/{image,mask}/<id>.png`` and ``<out>/<domain>/<split>/meta.csv``,
    with ``<out> = benchmark_dir(root, ...)``. A ``benchmark.json`` manifest (configuration and
    SHA-256 of every file) is written last: a run interrupted before it is simply regenerated.

    Returns:
        The benchmark folder ``<out>``.
    """
    domains = list(domains or DOMAINS)
    unknown = [d for d in domains if d not in DOMAINS]
    if unknown:
        raise ValueError(f"unknown synthetic domain(s) {unknown}; known: {sorted(DOMAINS)}")
    out = benchmark_dir(root, size=size, severity=severity, seed=seed, train_per_domain=train_per_domain,
                        test_per_domain=test_per_domain)
    config = _config(domains, train_per_domain, test_per_domain, size, severity, seed)
    if not overwrite and _verify(out, config):
        return out
    if out.exists():
        shutil.rmtree(out)
    checksums: dict[str, str] = {}
    jobs = [(d, s, i) for d in domains for s, n in (("train", train_per_domain), ("test", test_per_domain))
            for i in range(n)]
    rows: dict[tuple[str, str], list[dict]] = {}
    for domain, split, index in tqdm(jobs, desc=f"synthetic fundus (severity {severity:g})", disable=not progress):
        sample = generate_sample(domain, index, split=split, size=size, severity=severity, seed=seed)
        base = Path(domain) / split / "ROIs"
        for rel, array in ((base / "image" / f"{sample.sample_id}.png", sample.image),
                           (base / "mask" / f"{sample.sample_id}.png", encode_label_map(sample.disc, sample.cup))):
            save_png(out / rel, array)
            checksums[str(rel)] = sha256_file(out / rel)
        rows.setdefault((domain, split), []).append(
            {"id": sample.sample_id, "glaucoma": sample.glaucoma, "vcdr": sample.meta["vcdr"],
             "severity": severity, "camera": sample.meta["camera"]})
    for (domain, split), split_rows in rows.items():
        rel = Path(domain) / split / "meta.csv"
        with atomic_write(out / rel, "w") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(split_rows[0]))
            writer.writeheader()
            writer.writerows(split_rows)
        checksums[str(rel)] = sha256_file(out / rel)
    atomic_write_json(out / _MANIFEST, {"config": config, "sha256": checksums})
    return out


def load_benchmark(out: str | Path, split: str = "test", domains: Sequence[str] | None = None) -> FundusDataset:
    """Load a generated benchmark folder (from :func:`generate_benchmark`) as one dataset."""
    out = Path(out)
    if not (out / _MANIFEST).is_file():
        raise DataError(f"{out} is not a complete synthetic benchmark (no {_MANIFEST}); run generate_benchmark")
    domains = list(domains or json.loads((out / _MANIFEST).read_text())["config"]["domains"])
    datasets = [load_folder_domain(out, d, split) for d in domains]
    result = datasets[0]
    for ds in datasets[1:]:
        result = result + ds
    result.name = f"synthetic/{split}"
    return result
