"""Split an image encoder into a frozen prefix (computed once, cached) and a trainable suffix.

Methods that tune only the late blocks of a foundation encoder (gradual unfreezing, LoRA or
Rein tokens on the last stages, a feature pyramid tapped at several depths) never need the
early blocks' gradients, and the early blocks' outputs never change. So the kit runs the
prefix once per image, keeps its output, and trains on the suffix alone.

The encoder is seen as a flat list of *units*, each ``(name, module)`` with ``module(h) -> h``::

    LiteMedSAM (TinyViT):  patch_embed, layers.0, layers.1.blocks.0, layers.1.blocks.1,
                           layers.1.downsample, layers.2.blocks.0 ... layers.2.blocks.5,
                           layers.2.downsample, layers.3.blocks.0, layers.3.blocks.1, neck  (15 units)
    SAM / MedSAM ViT-B:    patch_embed (+ position embedding), blocks.0 ... blocks.11, neck
    toy segmenter:         0, 1, ... (the children of its ``nn.Sequential``)

Typical use::

    split = SplitEncoder(model.image_encoder, start="layers.3.blocks.0", taps=("layers.1.downsample",))
    with torch.no_grad():
        h, frozen_taps = split.prefix(x)        # once per image: cache these
    out, taps = split.suffix(h)                 # every step: only the suffix runs (and back-propagates)
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["encoder_units", "SplitEncoder"]


class _TokensToMap(nn.Module):
    """TinyViT's final step: ``(B, L, C)`` tokens -> ``(B, C, g, g)`` map -> the neck."""

    def __init__(self, neck: nn.Module) -> None:
        super().__init__()
        self.neck = neck

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, length, c = h.shape
        grid = int(round(length ** 0.5))
        return self.neck(h.view(b, grid, grid, c).permute(0, 3, 1, 2))


class _PatchEmbedWithPosition(nn.Module):
    """SAM ViT's first step: patch embedding ``(B, 3, S, S) -> (B, g, g, C)`` plus the absolute position embedding."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.patch_embed, self.encoder = encoder.patch_embed, [encoder]  # a list: do not re-register the encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.patch_embed(x)
        pos = self.encoder[0].pos_embed
        return h + pos if pos is not None else h


class _ChannelsLastNeck(nn.Module):
    """SAM ViT's last step: ``(B, g, g, C)`` -> ``(B, C, g, g)`` -> the neck."""

    def __init__(self, neck: nn.Module) -> None:
        super().__init__()
        self.neck = neck

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.neck(h.permute(0, 3, 1, 2))


def encoder_units(encoder: nn.Module) -> list[tuple[str, nn.Module]]:
    """The encoder as a flat list of ``(name, module)`` units whose composition is ``encoder.forward``.

    Supports TinyViT (LiteMedSAM), SAM's ``ImageEncoderViT`` (SAM / MedSAM ViT-B) and plain
    ``nn.Sequential`` encoders (the toy segmenter). Unit modules are the encoder's own
    submodules (or thin wrappers around them), so their parameters are the encoder's.
    """
    if isinstance(encoder, nn.Sequential):
        return [(name, module) for name, module in encoder.named_children()]
    if hasattr(encoder, "layers") and hasattr(encoder, "patch_embed") and hasattr(encoder, "neck"):  # TinyViT
        units: list[tuple[str, nn.Module]] = [("patch_embed", encoder.patch_embed), ("layers.0", encoder.layers[0])]
        for i, layer in enumerate(encoder.layers):
            if i == 0:
                continue
            units += [(f"layers.{i}.blocks.{j}", block) for j, block in enumerate(layer.blocks)]
            if layer.downsample is not None:
                units.append((f"layers.{i}.downsample", layer.downsample))
        return units + [("neck", _TokensToMap(encoder.neck))]
    if hasattr(encoder, "blocks") and hasattr(encoder, "patch_embed") and hasattr(encoder, "neck"):  # SAM ViT
        return ([("patch_embed", _PatchEmbedWithPosition(encoder))]
                + [(f"blocks.{i}", block) for i, block in enumerate(encoder.blocks)]
                + [("neck", _ChannelsLastNeck(encoder.neck))])
    raise TypeError(f"encoder_units: do not know how to split a {type(encoder).__name__}; "
                    "supported: TinyViT (LiteMedSAM), SAM ImageEncoderViT, nn.Sequential")


class SplitEncoder(nn.Module):
    """An encoder cut in two at unit ``start``: ``prefix`` (frozen, cacheable) then ``suffix`` (trainable).

    Args:
        encoder: the image encoder (its parameters are shared, not copied).
        start: name (or index) of the first unit of the suffix; ``0`` puts the whole encoder in the suffix.
        taps: unit names whose outputs are also returned (e.g. the depths of a feature pyramid).

    ``forward(x) == encoder(x)`` for every ``start``.
    """

    def __init__(self, encoder: nn.Module, start: str | int, taps: Sequence[str] = ()) -> None:
        super().__init__()
        self.units = encoder_units(encoder)
        names = [name for name, _ in self.units]
        if isinstance(start, str):
            if start not in names:
                raise ValueError(f"SplitEncoder: unknown unit {start!r}; units are {names}")
            start = names.index(start)
        if not 0 <= start <= len(names):
            raise ValueError(f"SplitEncoder: start must be in [0, {len(names)}], got {start}")
        unknown = [t for t in taps if t not in names]
        if unknown:
            raise ValueError(f"SplitEncoder: unknown tap(s) {unknown}; units are {names}")
        self.start, self.taps, self.names = start, tuple(taps), names
        self.encoder = encoder

    @property
    def prefix_names(self) -> list[str]:
        return self.names[:self.start]

    @property
    def suffix_names(self) -> list[str]:
        return self.names[self.start:]

    def freeze_prefix(self) -> "SplitEncoder":
        """``requires_grad_(False)`` and ``eval()`` on every prefix unit (in place)."""
        for _, module in self.units[:self.start]:
            module.requires_grad_(False)
            module.eval()
        return self

    def _run(self, h: torch.Tensor, lo: int, hi: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        taps: dict[str, torch.Tensor] = {}
        for name, module in self.units[lo:hi]:
            h = module(h)
            if name in self.taps:
                taps[name] = h
        return h, taps

    def prefix(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Run units ``[0, start)`` on ``(B, 3, S, S)`` inputs: the prefix output and the taps inside it."""
        return self._run(x, 0, self.start)

    def suffix(self, h: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Run units ``[start, end)`` on a prefix output: the encoder output and the taps inside the suffix."""
        return self._run(h, self.start, len(self.units))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.suffix(self.prefix(x)[0])[0]
