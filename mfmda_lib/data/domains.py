"""The synthetic benchmark's hospitals: each camera's :class:`DomainStyle` (colour, blur, noise, vignetting, lesion
and cup statistics), the source and target domains, and the styles between the source and a target (severity)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

__all__ = ["DomainStyle", "SOURCE_DOMAIN", "DOMAINS", "TARGET_DOMAINS", "SEVERITY_STEPS", "TRAIT_STAGES", "style_at",
           "style_table"]


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


#: How a synthetic image is made, stage by stage: which :class:`DomainStyle` traits act at each (every trait once;
#: the anatomy draws the disc and cup masks, the camera acts on the image only, so the masks stay the labels).
TRAIT_STAGES: dict[str, dict[str, tuple[str, ...]]] = {
    "anatomy": {"disc and cup": ("disc_radius", "disc_radius_sd", "glaucoma_fraction"),
                "vessels": ("vessel_contrast",)},
    "camera": {"colour": ("rgb_gain", "gamma", "contrast", "brightness"),
               "light": ("illumination", "illumination_angle", "vignetting"),
               "field of view": ("fov_radius",),
               "optics and sensor": ("blur_sigma", "noise_sigma", "jpeg_quality")},
}


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
