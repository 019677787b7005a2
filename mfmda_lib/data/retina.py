"""Layers of a whole-fundus photograph that the ROI benchmark's renderer does not draw.

Each function renders one anatomical or optical trait, cheaply, in the canonical frame of a
right eye (disc on the right of the macula, so the temporal side is on the left):

- :func:`choroidal_texture`: the orange-red background's mottled, vessel-like choroidal pattern
  (stronger in lightly pigmented eyes and towards the periphery);
- :func:`nerve_fibre_striation`: fine bright streaks radiating from the disc, strongest in the
  superior and inferior arcuate bundles;
- :func:`vessel_tree`: veins and arteries leaving the disc, the temporal arcades arching around
  the macula, branches that taper and never reach the fovea, per-eye tortuosity, and the
  arteries' central light reflex;
- :func:`disc_colours`: the neuroretinal rim's orange-pink, brighter temporally, and its pallor;
- :func:`illumination_artefacts`: a flare of stray light and a bright reflex along the edge of the
  field of view.

All lengths are in pixels; ``disc_d`` (the disc diameter) sets the scale of the anatomy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter

__all__ = ["choroidal_texture", "nerve_fibre_striation", "VesselMaps", "vessel_tree", "disc_colours",
           "illumination_artefacts"]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float, band: bool = False) -> np.ndarray:
    """Zero-mean, unit-variance noise ``(H, W)`` with detail at about ``sigma`` pixels.

    Drawn at a coarser grid (a few samples per ``sigma``) and resized up, so large scales stay cheap;
    ``band``: a difference of Gaussians (a network of ridges and valleys) instead of a blur.
    """
    h, w = shape
    factor = max(int(sigma // 3), 1)
    small = rng.normal(0, 1, (-(-h // factor), -(-w // factor)))
    s = sigma / factor
    out = gaussian_filter(small, s) - gaussian_filter(small, 2.5 * s) if band else gaussian_filter(small, s)
    out = (out / (out.std() + 1e-8)).astype(np.float32)
    if factor > 1:
        out = np.asarray(Image.fromarray(out).resize((w, h), Image.BILINEAR))
    return out


def choroidal_texture(rng: np.random.Generator, shape: tuple[int, int], disc_d: float, fovea: tuple[float, float],
                      xx: np.ndarray, yy: np.ndarray, visibility: float) -> np.ndarray:
    """Multiplicative shading ``(H, W)`` around 1: choroidal vessels and interspaces, mottle and grain.

    ``visibility`` in [0, 1]: 0 for a darkly pigmented fundus (texture barely visible), 1 for a
    blond, tigroid one. The pattern fades towards the macula, where pigment hides the choroid.
    """
    vessels = np.tanh(1.5 * _smooth_noise(rng, shape, disc_d / 14, band=True))  # network of choroidal vessels
    mottle = _smooth_noise(rng, shape, disc_d / 2.5)
    grain = _smooth_noise(rng, shape, max(disc_d / 90, 0.6))
    periphery = np.clip(np.hypot(xx - fovea[0], yy - fovea[1]) / (3.0 * disc_d), 0.2, 1.0)
    return 1.0 + (0.02 + 0.06 * visibility) * periphery * vessels + 0.03 * mottle + 0.02 * grain


def nerve_fibre_striation(rng: np.random.Generator, disc_center: tuple[float, float], disc_d: float,
                          xx: np.ndarray, yy: np.ndarray, strength: float) -> np.ndarray:
    """Additive brightening ``(H, W)`` >= 0: nerve-fibre bundles streaking away from the disc.

    The streaks are radial (a random profile over the angle around the disc), strongest 0.5-2 disc
    diameters out and in the superior and inferior (arcuate) bundles, as a healthy retina's sheen.
    """
    bins = 2048
    profile = gaussian_filter(rng.normal(0, 1, bins), 2.5, mode="wrap")
    profile = np.clip(profile / (profile.std() + 1e-8), 0, None)  # only bright streaks
    dx, dy = xx - disc_center[0], yy - disc_center[1]
    theta = np.arctan2(dy, dx)
    streaks = profile[((theta + np.pi) / (2 * np.pi) * bins).astype(int) % bins]
    r = np.hypot(dx, dy) / disc_d
    radial = np.clip(r - 0.5, 0, None) * np.exp(-np.clip(r - 0.5, 0, None) / 0.9)  # rises past the rim, fades by ~3 D
    arcuate = 0.35 + 0.65 * np.abs(np.sin(theta)) ** 2  # superior and inferior bundles are thickest
    return strength * streaks * radial * arcuate


@dataclass
class VesselMaps:
    """Opacity maps ``(H, W)`` in [0, 1] of a vessel tree: ``veins``, ``arteries`` and the arteries' ``reflex``."""

    veins: np.ndarray
    arteries: np.ndarray
    reflex: np.ndarray


def _walk(draws: tuple[ImageDraw.ImageDraw, ...], rng: np.random.Generator, start: np.ndarray, heading: float,
          curvature: float, width: float, *, disc_d: float, fovea: np.ndarray, shape: tuple[int, int], ss: int,
          tortuosity: float, depth: int) -> None:
    """Draw one vessel as a random walk with tapering width; spawn branches (recursively, depth <= 2)."""
    h, w = shape
    step = max(disc_d / 25, 1.5)
    pos, th, s = start.astype(float), heading, 0.0
    wiggle_phase, wiggle_len = rng.uniform(0, 2 * np.pi), disc_d * rng.uniform(0.4, 0.9)
    next_branch = disc_d * rng.uniform(0.5, 1.5)
    while True:
        wiggle = tortuosity * 0.4 * np.cos(s / wiggle_len + wiggle_phase) * step / wiggle_len
        th_next = th + curvature * step * (1.0 if s < 2.8 * disc_d or depth else 0.35) + wiggle \
            + rng.normal(0, 0.01 + tortuosity * 0.03)
        nxt = pos + step * np.array([np.cos(th_next), np.sin(th_next)])
        px = max(1, int(round(width * ss)))
        draws[0].line([tuple(pos * ss), tuple(nxt * ss)], fill=255, width=px)
        if len(draws) > 1 and width > 2.0:  # the artery's central light reflex
            draws[1].line([tuple(pos * ss), tuple(nxt * ss)], fill=255, width=max(1, int(round(0.3 * width * ss))))
        pos, th, s = nxt, th_next, s + step
        width *= np.exp(-step / (7.0 * disc_d))
        if not (-10 < pos[0] < w + 10 and -10 < pos[1] < h + 10) or width < 0.7:
            return
        if np.hypot(*(pos - fovea)) < 0.45 * disc_d:  # the foveal avascular zone
            return
        if s >= next_branch and depth < 2:
            next_branch = s + disc_d * rng.uniform(0.8, 1.8)
            side = rng.choice([-1.0, 1.0])
            child = width * rng.uniform(0.5, 0.72)
            width *= 0.9
            _walk(draws, rng, pos, th + side * rng.uniform(0.5, 1.1), rng.normal(0, 0.3) / disc_d, child,
                  disc_d=disc_d, fovea=fovea, shape=shape, ss=ss, tortuosity=tortuosity, depth=depth + 1)


def vessel_tree(rng: np.random.Generator, shape: tuple[int, int], disc_center: tuple[float, float], disc_d: float,
                fovea: tuple[float, float], tortuosity: float) -> VesselMaps:
    """Veins and arteries of one eye (canonical right-eye frame: the macula lies to the left of the disc).

    Four vessel pairs leave the disc: the superior and inferior temporal arcades, which bend around
    the macula at about 1.8 disc diameters, and two nasal ones. Widths at the disc: veins ~8.5% and
    arteries ~6.5% of the disc diameter, tapering and halving at branches.

    Args:
        shape: ``(H, W)``. disc_center, fovea: ``(x, y)`` pixels. disc_d: disc diameter, pixels.
        tortuosity: 0 (straight) .. 1 (very tortuous) for this eye.
    """
    ss = 2  # supersampling for smooth edges
    h, w = shape
    canvases = [Image.new("L", (w * ss, h * ss), 0) for _ in range(3)]
    vein_draw, art_draw, reflex_draw = (ImageDraw.Draw(c) for c in canvases)
    centre, fov = np.asarray(disc_center, float), np.asarray(fovea, float)
    to_fovea = np.arctan2(fov[1] - centre[1], fov[0] - centre[0])
    temporal = float(np.sign(np.cos(to_fovea)) or -1.0)  # -1: the macula is to the left
    k = 1.0 / (1.8 * disc_d)  # the arcades bend around the macula on a radius of ~1.8 disc diameters
    for up in (-1.0, 1.0):  # superior (heading up, -y), inferior
        # temporal arcade: leaves upwards (downwards), tilted and bending towards the macula;
        # nasal vessel: tilted and bending gently away from it
        for heading, curvature in ((up * np.pi / 2 + 0.18 * up * -temporal, -up * temporal * k),
                                   (up * np.pi / 2 + 0.6 * up * temporal, up * temporal * 0.25 * k)):
            for draws, width, jitter in (((vein_draw,), 0.085, 0.0), ((art_draw, reflex_draw), 0.065, 0.12)):
                start = centre + rng.normal(0, 0.08, 2) * disc_d
                _walk(draws, rng, start, heading + rng.normal(0, 0.08) + jitter * up * temporal,
                      curvature * rng.uniform(0.85, 1.15), width * disc_d * rng.uniform(0.9, 1.1), disc_d=disc_d,
                      fovea=fov, shape=shape, ss=ss, tortuosity=tortuosity, depth=0)
    maps = [np.asarray(c.resize((w, h), Image.BILINEAR), dtype=np.float32) / 255.0 for c in canvases]
    return VesselMaps(*(gaussian_filter(m, 0.5) for m in maps))


def disc_colours(rng: np.random.Generator, disc_level: np.ndarray, xx: np.ndarray, disc_center: tuple[float, float],
                 disc_d: float, pallor: float, temporal: float) -> np.ndarray:
    """The neuroretinal rim's colour per pixel ``(H, W, 3)``: orange-pink, paler temporally and with ``pallor``.

    ``pallor`` in [0, 1] mixes the rim towards the cup's yellow-white (an atrophic, glaucomatous or
    simply pale disc); ``temporal`` is -1 when the temporal side is to the left.
    """
    rim = np.array([0.95, 0.55, 0.36]) * rng.normal(1.0, 0.03, 3)
    pale = np.array([1.00, 0.86, 0.66])
    side = np.clip(temporal * (xx - disc_center[0]) / (disc_d / 2), -1, 1)  # +1 at the temporal edge
    mix = np.clip(pallor + 0.25 * side, 0, 1)[..., None]
    edge = np.clip(1 - disc_level, 0, 1)[..., None]  # darker towards the margin of the disc
    return (rim * (1 - mix) + pale * mix) * (0.92 + 0.08 * edge)


def illumination_artefacts(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, fov_center: tuple[float, float],
                           fov_radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Stray light of an imperfectly aligned flash: ``(gain, haze)``, both ``(H, W)``.

    ``gain`` multiplies the image (uneven, low-frequency illumination); ``haze`` is added (a whitish
    flare off-centre and a bright reflex crescent along part of the field-of-view edge).
    """
    h, w = xx.shape
    gain = 1.0 + 0.06 * _smooth_noise(rng, (h, w), max(h, w) / 8)
    angle = rng.uniform(0, 2 * np.pi)
    fx, fy = fov_center[0] + 0.5 * fov_radius * np.cos(angle), fov_center[1] + 0.5 * fov_radius * np.sin(angle)
    flare = rng.uniform(0.0, 0.08) * np.exp(-((xx - fx) ** 2 + (yy - fy) ** 2) / (2 * (0.35 * fov_radius) ** 2))
    rr = np.hypot(xx - fov_center[0], yy - fov_center[1]) / fov_radius
    phi = np.arctan2(yy - fov_center[1], xx - fov_center[0])
    crescent = np.clip(np.cos(phi - rng.uniform(0, 2 * np.pi)), 0, None) ** 3
    ring = np.exp(-((rr - 0.97) / 0.025) ** 2) * crescent * rng.uniform(0.05, 0.25)
    return gain, flare + ring
