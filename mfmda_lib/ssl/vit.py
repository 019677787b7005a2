"""A small Vision Transformer encoder (Dosovitskiy et al. 2021) for self-supervised pretraining.

Built from timm's transformer ``Block`` so it reads like any timm ViT, but small enough to
pretrain on two CPU cores in minutes: 64 px images, 8 px patches (an 8 x 8 grid of 64 tokens),
width 128, depth 4. Both self-supervised methods of the kit (:mod:`.mae`, :mod:`.dino`) and
the downstream heads (:mod:`.downstream`) take an :class:`ViTEncoder` as a dependency.

The encoder standardises every image per colour channel before embedding it
(:func:`standardize_images`): each hospital's camera multiplies and shifts the channels
differently, and an encoder pretrained on all hospitals would otherwise spend its features on
telling the cameras apart, features that a head trained on one hospital's labels then misreads
on the others (notebook 02 measures this).

Sections: config, helpers (patchify, positional embedding, standardisation), model, weights on disk.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from timm.models.vision_transformer import Block
from torch import nn
from torch.nn import functional as F

from ..io import TORCH, load_artefact, save_artefact

__all__ = ["ViTConfig", "ViTEncoder", "patchify", "unpatchify", "standardize_images", "save_encoder", "load_encoder"]


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ViTConfig:
    """Shape of the encoder.

    Attributes:
        image_size: input side in pixels (square images).
        patch_size: side of one patch; ``image_size`` must be a multiple of it.
        dim: token width.
        depth: number of transformer blocks.
        heads: attention heads per block (``dim`` must be a multiple of it).
        mlp_ratio: hidden width of each block's MLP relative to ``dim``.
        standardize_input: standardise each image per channel (zero mean, unit variance) before
            the patch embedding; removes a camera's per-channel gain and offset.
    """

    image_size: int = 64
    patch_size: int = 8
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    standardize_input: bool = True

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})")
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be a multiple of heads ({self.heads})")
        if min(self.patch_size, self.dim, self.depth, self.heads) < 1:
            raise ValueError("patch_size, dim, depth and heads must all be >= 1")

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid ** 2


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """Images ``(B, C, H, W)`` -> patches ``(B, N, p*p*C)`` in row-major patch order."""
    b, c, h, w = x.shape
    if h % p or w % p:
        raise ValueError(f"patchify: image {h}x{w} is not a multiple of patch size {p}")
    x = x.reshape(b, c, h // p, p, w // p, p)  # (B, C, gh, p, gw, p)
    x = x.permute(0, 2, 4, 3, 5, 1)  # (B, gh, gw, p, p, C)
    return x.reshape(b, (h // p) * (w // p), p * p * c)  # (B, N, p*p*C)


def unpatchify(patches: torch.Tensor, p: int, channels: int) -> torch.Tensor:
    """Patches ``(B, N, p*p*C)`` -> images ``(B, C, H, W)``; the inverse of :func:`patchify` (square grid)."""
    b, n, _ = patches.shape
    g = math.isqrt(n)
    if g * g != n:
        raise ValueError(f"unpatchify: {n} patches do not form a square grid")
    x = patches.reshape(b, g, g, p, p, channels)  # (B, gh, gw, p, p, C)
    x = x.permute(0, 5, 1, 3, 2, 4)  # (B, C, gh, p, gw, p)
    return x.reshape(b, channels, g * p, g * p)  # (B, C, H, W)


def standardize_images(x: torch.Tensor, eps: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image, per-channel standardisation: ``x (B, C, H, W)`` -> ``((x - mean) / std, mean, std)``.

    ``mean`` and ``std`` are ``(B, C, 1, 1)``, so ``x == out * std + mean``; ``eps`` keeps flat images finite.
    """
    mean = x.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
    std = x.std(dim=(2, 3), keepdim=True) + eps  # (B, C, 1, 1)
    return (x - mean) / std, mean, std


def sincos_pos_embed(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine positional embedding ``(grid*grid, dim)`` (as in MAE)."""
    if dim % 4:
        raise ValueError(f"sincos_pos_embed: dim must be a multiple of 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # (D/4,)
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                            indexing="ij")
    out = [f(pos.reshape(-1, 1) * omega) for pos in (ys, xs) for f in (torch.sin, torch.cos)]  # 4 x (N, D/4)
    return torch.cat(out, dim=1).float()  # (N, D)


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------

class ViTEncoder(nn.Module):
    """Per-image standardisation, patch embedding, a class token, fixed positional embeddings, ``depth`` timm blocks.

    ``forward(x)`` returns all tokens ``(B, 1 + N, D)`` (class token first); pass ``ids_keep``
    ``(B, K)`` to encode only the kept patches, as MAE's encoder does.
    """

    def __init__(self, config: ViTConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or ViTConfig()
        self.patch_embed = nn.Conv2d(3, config.dim, kernel_size=config.patch_size, stride=config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.dim))
        self.register_buffer("pos_embed", sincos_pos_embed(config.dim, config.grid), persistent=False)
        self.blocks = nn.ModuleList(Block(config.dim, config.heads, config.mlp_ratio, qkv_bias=True)
                                    for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.dim)
        nn.init.normal_(self.cls_token, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def pos_embed_for(self, grid: int) -> torch.Tensor:
        """Positional embedding ``(grid*grid, D)`` of a ``grid x grid`` input: the encoder's own, bicubically
        interpolated when ``grid`` differs (as DINO's ``interpolate_pos_encoding`` does for its local crops)."""
        g = self.config.grid
        if grid == g:
            return self.pos_embed
        pe = self.pos_embed.reshape(1, g, g, -1).permute(0, 3, 1, 2)  # (1, D, g, g)
        pe = F.interpolate(pe, size=(grid, grid), mode="bicubic", align_corners=False)
        return pe.permute(0, 2, 3, 1).reshape(grid * grid, -1)  # (grid*grid, D)

    def forward(self, x: torch.Tensor, ids_keep: torch.Tensor | None = None, *, any_size: bool = False) -> torch.Tensor:
        """Encode images ``x (B, 3, S, S)``; returns tokens ``(B, 1 + K, D)`` (``K = N`` without ``ids_keep``).

        ``any_size=True`` accepts a square side other than ``config.image_size`` (a multiple of the patch
        size, e.g. DINO's small local crops) and interpolates the positional embedding to its grid.
        """
        side, p = x.shape[-1], self.config.patch_size
        if any_size:
            if x.shape[-2] != side or side % p:
                raise ValueError(f"ViTEncoder: a crop must be square with a side that is a multiple of {p}, "
                                 f"got {tuple(x.shape[-2:])}")
        elif side != self.config.image_size or x.shape[-2] != self.config.image_size:
            raise ValueError(f"ViTEncoder expects {self.config.image_size} px images, got {tuple(x.shape[-2:])}; "
                             "resize them (or build the encoder with a matching ViTConfig.image_size)")
        if self.config.standardize_input:
            x = standardize_images(x)[0]
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed_for(side // p)  # (B, N, D)
        if ids_keep is not None:
            tokens = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))  # (B, K, D)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1)  # (B, 1 + K, D)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens only: ``(B, 3, S, S)`` -> ``(B, N, D)``."""
        return self(x)[:, 1:]

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """One vector per image, the mean of the patch tokens: ``(B, 3, S, S)`` -> ``(B, D)``."""
        return self.patch_tokens(x).mean(dim=1)


# ---------------------------------------------------------------------------------------------
# weights on disk
# ---------------------------------------------------------------------------------------------

def save_encoder(path: str | Path, encoder: ViTEncoder, info: dict | None = None,
                 extras: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the encoder's weights, its config and ``info`` (plain numbers and strings) atomically."""
    payload = {"model": encoder.state_dict(), "config": asdict(encoder.config), "info": info or {},
               "extras": extras or {}}
    return save_artefact(path, payload, TORCH)


def load_encoder(path: str | Path, config: ViTConfig | None = None) -> tuple[ViTEncoder, dict, dict] | None:
    """``(encoder, info, extras)`` from ``path`` (``weights_only`` load), or None when the file is absent or
    unreadable (then with a warning naming it, so that the caller trains again).

    Raises ValueError when the file was written for another :class:`ViTConfig` than ``config``.
    """
    payload = load_artefact(path, TORCH)
    if payload is None:
        return None
    saved = ViTConfig(**{"standardize_input": False, **payload["config"]})  # files older than the flag
    if config is not None and saved != config:
        raise ValueError(f"{path}: saved for {saved}, not {config}; delete the file or use its config")
    encoder = ViTEncoder(saved)
    encoder.load_state_dict(payload["model"])
    return encoder.eval(), payload["info"], payload["extras"]
