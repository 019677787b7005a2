"""DINO: self-distillation with no labels (Caron et al. 2021, "Emerging Properties in
Self-Supervised Vision Transformers").

A *joint-embedding* method, the other family from MAE: nothing is reconstructed. Two augmented
views of each image go through a student and a teacher network of the same architecture; the
student is trained so that its softmax output on one view matches the teacher's on the other
view (cross-entropy, Eq. 1). The teacher receives no gradient: its weights are an exponential
moving average of the student's (Sec. 3.1, "Teacher network"), and collapse is avoided by
*centering* the teacher's output with a running mean ``c`` and *sharpening* it with a low
temperature (Sec. 3.1, "Avoiding collapse"; Eq. 4 for the centre update).

**Multi-crop** (Sec. 3.1 and the authors' ``main_dino.py``): each image gives two *global* views
(random resized crops over ``crop_scale`` of the area, at full resolution) and several small
*local* views (``local_crops_scale`` of the area, resized to ``local_crop_fraction`` of the side:
96 px for 224 px images in the paper). All views go through the student; only the two global
views go through the teacher, so the student learns to predict, from a small part of the eye, what
the teacher says about the whole ("local-to-global" correspondence). The encoder reads a local
crop with its positional embedding interpolated to the crop's smaller grid
(:meth:`ViTEncoder.pos_embed_for`), as DINO's ``interpolate_pos_encoding`` does.

What DINO learns to ignore is what its augmentations change. The paper's colour jitter (a gain
and an offset per channel) is a no-op for an encoder that standardises each image per channel
(:attr:`ViTConfig.standardize_input`), so the views here differ by what a camera changes and
standardisation does not undo: a per-channel gamma, blur and sensor noise (:func:`camera_jitter`),
on top of random resized crops and flips.

Sections: config, helpers (augmentation, the three update rules), model (:class:`DINO` wraps a
:class:`ViTEncoder`).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..data import PIXEL_MEAN, PIXEL_STD
from ..train import ema_update
from .vit import ViTEncoder

__all__ = ["DINOConfig", "DINO", "DINOHead", "random_view", "camera_jitter", "local_crop_side", "multi_crop",
           "update_center", "dino_loss", "teacher_entropy"]


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DINOConfig:
    """Projection head, temperatures, momenta and augmentation of DINO pretraining.

    Attributes:
        out_dim: prototypes ``K`` of the softmax output.
        hidden_dim: width of the projection MLP.
        bottleneck_dim: width before the weight-normalised last layer.
        norm_last_layer: fix the norm ``g`` of every row of the weight-normalised last layer at 1 and do
            not train it (DINO's default ``--norm_last_layer True``): logits are then cosines of the
            bottleneck with the prototypes. A trainable ``g`` can shrink every logit to 0: a uniform
            output that centering cannot undo.
        student_temp: ``tau_s``.
        teacher_temp: ``tau_t`` (lower: sharper teacher targets).
        center_momentum: ``m`` of the centre's running mean (Eq. 4).
        ema_momentum: ``lambda`` of the teacher's EMA of the student, at the start of training;
            raised to 1 along a cosine schedule as in the paper.
        crop_scale: range of the area fraction of the two global crops (DINO's ``global_crops_scale``).
        local_crops_number: small local crops per image, seen by the student only (DINO: 8; 0 turns
            multi-crop off).
        local_crops_scale: range of the area fraction of the local crops (DINO's ``local_crops_scale``).
        local_crop_fraction: side of a local crop relative to the image side (DINO: 96 / 224), rounded
            to a whole number of patches (at least one).
        gamma_jitter: per-channel gamma drawn log-uniformly in ``exp(+-gamma_jitter)`` (0: none).
        blur_sigma: largest Gaussian blur of a view, in pixels (0: none).
        noise_sigma: largest sensor noise of a view, in pixel units of [0, 1] (0: none).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
    """

    out_dim: int = 256
    hidden_dim: int = 256
    bottleneck_dim: int = 64
    norm_last_layer: bool = True
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    center_momentum: float = 0.9
    ema_momentum: float = 0.99
    crop_scale: tuple[float, float] = (0.4, 1.0)
    local_crops_number: int = 8
    local_crops_scale: tuple[float, float] = (0.05, 0.4)
    local_crop_fraction: float = 96 / 224
    gamma_jitter: float = 0.4
    blur_sigma: float = 1.2
    noise_sigma: float = 0.02
    lr: float = 5e-4
    weight_decay: float = 0.04

    def __post_init__(self) -> None:
        if not (0 < self.teacher_temp and 0 < self.student_temp):
            raise ValueError("temperatures must be > 0")
        for name in ("center_momentum", "ema_momentum"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("crop_scale", "local_crops_scale"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"{name} must satisfy 0 < lo <= hi <= 1, got {getattr(self, name)}")
        if self.local_crops_number < 0 or not 0 < self.local_crop_fraction <= 1:
            raise ValueError(f"local_crops_number must be >= 0 and local_crop_fraction in (0, 1], got "
                             f"{self.local_crops_number}, {self.local_crop_fraction}")
        if min(self.gamma_jitter, self.blur_sigma, self.noise_sigma) < 0:
            raise ValueError("gamma_jitter, blur_sigma and noise_sigma must be >= 0")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def random_view(x: torch.Tensor, scale: tuple[float, float], g: torch.Generator, size: int | None = None
                ) -> torch.Tensor:
    """One random resized square crop and horizontal flip per image: ``(B, 3, S, S)`` -> ``(B, 3, size, size)``
    (``size`` defaults to ``S``)."""
    b, size = len(x), size or x.shape[-1]
    area = torch.empty(b).uniform_(*scale, generator=g)  # (B,) area fraction of the crop
    side = area.sqrt()  # square crops
    cx = (torch.rand(b, generator=g) * 2 - 1) * (1 - side)  # crop centre stays inside the image
    cy = (torch.rand(b, generator=g) * 2 - 1) * (1 - side)
    flip = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = side * flip, side
    theta[:, 0, 2], theta[:, 1, 2] = cx, cy
    grid = F.affine_grid(theta, [b, x.shape[1], size, size], align_corners=False)  # (B, size, size, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one ``sigma (B,)`` per image: ``(B, C, H, W)`` -> same shape."""
    b, c, h, w = x.shape
    radius = max(1, math.ceil(2 * float(sigma.max())))
    k = torch.arange(-radius, radius + 1, dtype=x.dtype)  # (K,)
    kernel = torch.exp(-k ** 2 / (2 * sigma.clamp_min(1e-3)[:, None] ** 2))  # (B, K)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (B*C, K)
    z = x.reshape(1, b * c, h, w)  # (1, B*C, H, W): one group per image channel
    z = F.conv2d(F.pad(z, (radius, radius, 0, 0), mode="reflect"), kernel[:, None, None, :], groups=b * c)
    z = F.conv2d(F.pad(z, (0, 0, radius, radius), mode="reflect"), kernel[:, None, :, None], groups=b * c)
    return z.reshape(b, c, h, w)


def camera_jitter(x: torch.Tensor, config: "DINOConfig", g: torch.Generator) -> torch.Tensor:
    """What another camera would make of the same eye: per-channel gamma, blur and noise.

    ``x (B, 3, S, S)`` normalised with the kit's ``PIXEL_MEAN`` / ``PIXEL_STD`` -> same shape and scale.
    """
    b = len(x)
    pixels = (x * PIXEL_STD + PIXEL_MEAN).clamp(1e-4, 1)  # (B, 3, S, S) in (0, 1]
    gamma = torch.exp(config.gamma_jitter * (torch.rand(b, 3, 1, 1, generator=g) * 2 - 1))  # (B, 3, 1, 1)
    pixels = pixels ** gamma
    if config.blur_sigma > 0:
        pixels = _gaussian_blur(pixels, torch.rand(b, generator=g) * config.blur_sigma)
    if config.noise_sigma > 0:
        level = torch.rand(b, 1, 1, 1, generator=g) * config.noise_sigma  # (B, 1, 1, 1)
        pixels = pixels + torch.randn(pixels.shape, generator=g) * level
    return (pixels - PIXEL_MEAN) / PIXEL_STD


def local_crop_side(image_size: int, patch_size: int, fraction: float) -> int:
    """Side of a local crop: ``fraction`` of ``image_size``, rounded to whole patches (at least one)."""
    return patch_size * max(1, round(fraction * image_size / patch_size))


def multi_crop(x: torch.Tensor, config: DINOConfig, generator: torch.Generator, patch_size: int
               ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """DINO's multi-crop of a batch ``(B, 3, S, S)``: ``(global_views, local_views)``.

    Two global views ``(B, 3, S, S)`` over ``crop_scale`` and ``local_crops_number`` local views
    ``(B, 3, s, s)`` over ``local_crops_scale`` (``s``: :func:`local_crop_side`); each view gets its
    own crop, flip and :func:`camera_jitter`.
    """
    side = local_crop_side(x.shape[-1], patch_size, config.local_crop_fraction)

    def view(scale, size=None):
        return camera_jitter(random_view(x, scale, generator, size), config, generator)

    return ([view(config.crop_scale) for _ in range(2)],
            [view(config.local_crops_scale, side) for _ in range(config.local_crops_number)])


@torch.no_grad()
def update_center(center: torch.Tensor, teacher_out: torch.Tensor, momentum: float) -> torch.Tensor:
    """Eq. 4: ``c <- m * c + (1 - m) * mean_batch(g_t(x))``; ``center (1, K)``, ``teacher_out (B, K)``."""
    return center * momentum + teacher_out.mean(dim=0, keepdim=True) * (1 - momentum)


def dino_loss(student_out: list[torch.Tensor], teacher_out: list[torch.Tensor], center: torch.Tensor,
              student_temp: float, teacher_temp: float) -> torch.Tensor:
    """Eq. 1 over all pairs of different views: ``- sum P_t(x') log P_s(x)``, averaged.

    Args:
        student_out: one ``(B, K)`` logit tensor per view the student saw: the global views first,
            in the teacher's order, then the local views.
        teacher_out: one ``(B, K)`` logit tensor per global view.
        center: ``(1, K)``, subtracted from the teacher's logits before its sharp softmax.

    Every student view is matched with every teacher view but its own (a global view is never
    matched with itself): ``2 * (2 + n_local) - 2`` terms, as in DINO's ``DINOLoss``.
    """
    targets = [F.softmax((t - center) / teacher_temp, dim=-1).detach() for t in teacher_out]  # centre + sharpen
    log_probs = [F.log_softmax(s / student_temp, dim=-1) for s in student_out]
    total, pairs = 0.0, 0
    for i, target in enumerate(targets):
        for j, log_p in enumerate(log_probs):
            if i != j:  # never match a view with itself
                total = total + (-target * log_p).sum(dim=-1).mean()
                pairs += 1
    return total / pairs


@torch.no_grad()
def teacher_entropy(teacher_out: torch.Tensor, center: torch.Tensor, teacher_temp: float) -> tuple[float, float]:
    """Collapse check, as in the paper's collapse study: entropies of the teacher's centred, sharpened targets.

    Args:
        teacher_out: ``(B, K)`` teacher logits; ``center``: ``(1, K)``.

    Returns:
        ``(h_sample, h_mean)``: the mean entropy of each image's target and the entropy of the
        batch-averaged target, in nats (at most ``log K``). Collapse to one prototype drives both
        to 0; collapse to the uniform output drives ``h_sample`` to ``log K``. Healthy training keeps
        ``h_sample`` well below ``h_mean``: sharp per image, diverse over the batch.
    """
    p = F.softmax((teacher_out - center) / teacher_temp, dim=-1)  # (B, K)
    h_sample = -(p * p.clamp_min(1e-12).log()).sum(dim=-1).mean()
    mean = p.mean(dim=0)  # (K,)
    h_mean = -(mean * mean.clamp_min(1e-12).log()).sum()
    return float(h_sample), float(h_mean)


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------

class DINOHead(nn.Module):
    """Projection head: MLP, L2-normalised bottleneck, weight-normalised linear layer to ``K`` logits
    (its row norms fixed at 1 with ``norm_last_layer``, as DINO's default)."""

    def __init__(self, in_dim: int, config: DINOConfig) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, config.hidden_dim), nn.GELU(),
                                 nn.Linear(config.hidden_dim, config.bottleneck_dim))
        self.last_layer = nn.utils.parametrizations.weight_norm(nn.Linear(config.bottleneck_dim, config.out_dim,
                                                                          bias=False))
        g = self.last_layer.parametrizations.weight.original0  # (K, 1): the norm of each prototype row
        with torch.no_grad():
            g.fill_(1.0)  # as DINO's DINOHead: weight_g.data.fill_(1)
        g.requires_grad_(not config.norm_last_layer)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` -> ``(B, K)``."""
        return self.last_layer(F.normalize(self.mlp(z), dim=-1))


class _Branch(nn.Module):
    """Encoder + head, reading the class token."""

    def __init__(self, encoder: ViTEncoder, head: DINOHead) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x, any_size=True)[:, 0])  # (B, K)


class DINO(nn.Module):
    """Student and EMA teacher around ``encoder`` (the student's encoder: pretrained weights live there).

    ``loss = dino(x, generator)`` draws the multi-crop views (:func:`multi_crop`), runs the student on
    all of them and the teacher on the two global ones, records the teacher's
    :func:`teacher_entropy` in ``dino.entropy`` and updates the centre;
    call :meth:`update_teacher` after every optimizer step (or let :meth:`forward` do it for the
    previous step, as :func:`mfmda_lib.train.fit` has no after-step hook: ``lazy_teacher=True``).
    """

    def __init__(self, encoder: ViTEncoder, config: DINOConfig | None = None, *, total_steps: int = 1,
                 lazy_teacher: bool = True) -> None:
        super().__init__()
        self.config = config or DINOConfig()
        self.encoder = encoder
        self.student = _Branch(encoder, DINOHead(encoder.config.dim, self.config))
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, self.config.out_dim))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.total_steps, self.lazy_teacher = max(1, total_steps), lazy_teacher
        self.entropy: tuple[float, float] | None = None  # (h_sample, h_mean) of the last batch: see teacher_entropy

    @property
    def teacher_encoder(self) -> ViTEncoder:
        """The teacher's encoder: the one DINO evaluates and keeps (Sec. 3.1)."""
        return self.teacher.encoder

    def momentum(self) -> float:
        """Cosine schedule of the teacher momentum from ``ema_momentum`` to 1 over ``total_steps``."""
        t = min(1.0, float(self.step) / self.total_steps)
        base = self.config.ema_momentum
        return 1 - (1 - base) * (math.cos(math.pi * t) + 1) / 2

    def update_teacher(self) -> None:
        """EMA step of the teacher towards the student."""
        ema_update(self.teacher, self.student, self.momentum())
        self.step += 1

    def forward(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``x (B, 3, S, S)`` -> scalar DINO loss over its multi-crop views."""
        if self.lazy_teacher and self.training and int(self.step) > 0:
            self.update_teacher()  # the student has changed since the last call
        elif self.lazy_teacher and self.training:
            self.step += 1
        global_views, local_views = multi_crop(x, self.config, generator, self.encoder.config.patch_size)
        # one forward pass per resolution, as DINO's MultiCropWrapper does (no batch statistics in a ViT)
        student_out = list(self.student(torch.cat(global_views)).chunk(len(global_views)))
        if local_views:
            student_out += list(self.student(torch.cat(local_views)).chunk(len(local_views)))
        with torch.no_grad():
            teacher_out = list(self.teacher(torch.cat(global_views)).chunk(len(global_views)))
        loss = dino_loss(student_out, teacher_out, self.center, self.config.student_temp, self.config.teacher_temp)
        self.entropy = teacher_entropy(torch.cat(teacher_out), self.center, self.config.teacher_temp)
        if self.training:
            self.center.copy_(update_center(self.center, torch.cat(teacher_out), self.config.center_momentum))
        return loss
