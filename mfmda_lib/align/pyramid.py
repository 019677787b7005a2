"""A feature pyramid from four depths of a frozen encoder (with Rein tokens), and a light U-Net-like head.

MFM-DA taps its foundation model at several depths, turns the token grids into maps and lets a
small U-Net-like head (1x1 reductions, transposed-convolution up-sampling, skip concatenation)
predict two channels, disc and cup. LiteMedSAM's TinyViT is already hierarchical, so the levels
keep their native resolutions, e.g. for a 256 px input::

    layers.1.blocks.1   (B, 128, 128, 128)
    layers.2.blocks.2   (B, 160,  64,  64)
    layers.2.blocks.5   (B, 160,  64,  64)
    layers.3.blocks.1   (B, 320,  64,  64)

:class:`PyramidEncoder` wraps the encoder (it is never modified, only frozen) and adds Rein tokens
(:mod:`mfmda_lib.align.rein`) after its blocks (the paper) or on its tapped levels (the kit's CPU
choice). Everything before the first tokens is the *prefix*, which never changes, so it runs once
per image (:meth:`PyramidEncoder.prefix`, cached by the caller); training runs only the *suffix*
(:meth:`PyramidEncoder.suffix`).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..models.prefix import encoder_units
from .rein import ReinBlock, ReinConfig, block_width, inject, is_block, new_tokens

__all__ = ["to_map", "PLACEMENTS", "PyramidEncoder", "PyramidHead"]


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def to_map(h: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """Block output -> ``(B, C, H, W)`` map.

    ``(B, N, C)`` tokens on a square grid (TinyViT) are reshaped; ``(B, H, W, C)`` (SAM ViT, when
    ``channels_last``) is permuted; ``(B, C, H, W)`` maps (convolutional units) pass through.
    """
    if h.ndim == 3:
        b, n, c = h.shape
        g = int(round(n ** 0.5))
        if g * g != n:
            raise ValueError(f"to_map: {n} tokens do not form a square grid")
        return h.transpose(1, 2).reshape(b, c, g, g)  # (B, C, g, g)
    if h.ndim == 4:
        return h.permute(0, 3, 1, 2) if channels_last else h
    raise ValueError(f"to_map: expected (B, N, C) tokens or a 4-D map, got shape {tuple(h.shape)}")


def _key(name: str) -> str:
    return name.replace(".", "_")  # ModuleDict keys cannot hold dots


# ---------------------------------------------------------------------------------------------
# the encoder with Rein tokens and taps
# ---------------------------------------------------------------------------------------------

PLACEMENTS = ("blocks", "levels")


class PyramidEncoder(nn.Module):
    """A frozen encoder with Rein tokens, and ``taps`` read out as maps.

    Two placements of the tokens:

    - ``"blocks"`` (the paper): after every block from ``rein_from`` to the deepest tap; each
      block's change feeds the next blocks. The cached prefix ends with ``rein_from``'s frozen
      output, so every later block runs (forward and backward) at every step.
    - ``"levels"`` (the kit's CPU choice): on the output of each tapped block from ``rein_from``
      on, for the head and the alignment only; the next frozen blocks still see the unchanged
      features. The whole encoder up to the deepest tap is then frozen prefix, run once per
      image, and a step costs only the tokens and the head.

    Args:
        encoder: TinyViT, SAM ViT or ``nn.Sequential`` (see :func:`~mfmda_lib.models.prefix.encoder_units`).
            It is frozen here (``requires_grad_(False)``, ``eval()``); its modules are not replaced.
        taps: unit names of the pyramid levels, shallow to deep.
        rein_from: first unit that gets tokens; with ``"blocks"`` also the cut between the cached
            prefix and the suffix. ``None``: no cut, everything is prefix (then ``rein`` must be ``None``).
        rein: :class:`ReinConfig`; ``None``: no tokens, the one way to say so (with ``"blocks"`` the suffix then
            runs the frozen units after the cut, so the cached prefix is the same with and without tokens).
        placement: ``"blocks"`` or ``"levels"``.

    Attributes:
        rein_tokens: ``ModuleDict`` of the tokens of each adapted block or level;
            ``rein_projections``: the shared projections by width. Only these train.
    """

    def __init__(self, encoder: nn.Module, taps: Sequence[str], rein_from: str | None,
                 rein: ReinConfig | None = None, placement: str = "blocks") -> None:
        super().__init__()
        units = encoder_units(encoder)
        names = [n for n, _ in units]
        unknown = [t for t in taps if t not in names]
        if not taps or unknown:
            raise ValueError(f"PyramidEncoder: taps must be unit names, got unknown {unknown or 'none'}; units: {names}")
        if [names.index(t) for t in taps] != sorted(names.index(t) for t in taps):
            raise ValueError(f"PyramidEncoder: taps must go from shallow to deep, got {list(taps)}")
        if rein_from is not None and (rein_from not in names or names.index(rein_from) > names.index(taps[-1])):
            raise ValueError(f"PyramidEncoder: rein_from {rein_from!r} must be a unit at or before the deepest tap "
                             f"{taps[-1]!r}; units: {names}")
        if rein_from is None and rein is not None:
            raise ValueError("PyramidEncoder: rein_from=None caches the whole encoder, leaving no unit for the tokens: "
                             "pass rein=None, or name rein_from")
        if placement not in PLACEMENTS:
            raise ValueError(f"PyramidEncoder: placement must be one of {PLACEMENTS}, got {placement!r}")
        self.encoder = encoder.requires_grad_(False).eval()
        self.taps, self.placement, self.rein_from = tuple(taps), placement, rein_from
        units = units[:names.index(taps[-1]) + 1]  # nothing after the deepest tap is ever run
        self.rein_projections = nn.ModuleDict()
        self.rein_tokens = nn.ModuleDict()
        self.boundary = None  # index of the cut: the first unit whose output is not cached as is
        if placement == "blocks" and rein_from is not None:
            self.boundary = names.index(rein_from)
            if rein is not None:
                units, self.rein_projections = inject(units, rein_from, rein, stop=taps[-1])
                for name, m in units:
                    if isinstance(m, ReinBlock):
                        self.rein_tokens[_key(name)] = m.rein_tokens
        elif placement == "levels" and rein_from is not None and rein is not None:
            modules = dict(units)
            chosen = [t for t in taps if names.index(t) >= names.index(rein_from)]
            tokens, self.rein_projections = new_tokens({t: block_width(modules[t]) for t in chosen}, rein)
            for t in chosen:
                self.rein_tokens[_key(t)] = tokens[t]
        self._units = units  # a plain list: the encoder and the tokens are registered above

    # -- what is where -------------------------------------------------------------------------

    @property
    def unit_names(self) -> list[str]:
        return [n for n, _ in self._units]

    @property
    def adapted_units(self) -> list[str]:
        """Units whose output gets tokens (blocks, or tapped levels)."""
        if self.placement == "levels":
            return [t for t in self.taps if _key(t) in self.rein_tokens]
        return [n for n, m in self._units if isinstance(m, ReinBlock)]

    @property
    def frozen_taps(self) -> list[str]:
        """Taps computed in the prefix (cached)."""
        if self.boundary is None:
            return list(self.taps)
        return [t for t in self.taps if self.unit_names.index(t) < self.boundary]

    @property
    def adapted_taps(self) -> list[str]:
        """Taps that training can change (after tokens)."""
        if not len(self.rein_tokens):
            return []
        if self.placement == "levels":
            return self.adapted_units
        return [t for t in self.taps if t not in self.frozen_taps]

    def roles(self) -> list[tuple[str, str]]:
        """``(unit, role)`` for every unit up to the deepest tap, for printing."""
        out = []
        for i, name in enumerate(self.unit_names):
            cached = self.boundary is None or i <= self.boundary
            role = "frozen, cached (runs once per image)" if cached else "frozen, runs every step"
            if name in self.adapted_units:
                role += " + Rein tokens"
            if name in self.taps:
                role += "   <- pyramid level"
            out.append((name, role))
        return out

    def cache_signature(self) -> str:
        """Names the prefix's outputs (same signature, same cached tensors for the same weights)."""
        cut = "none" if self.boundary is None else self.unit_names[self.boundary]
        return f"cut={cut}|taps={','.join(self.frozen_taps)}"

    def train(self, mode: bool = True) -> "PyramidEncoder":
        """Only the tokens change mode; the frozen encoder stays in eval mode (BatchNorm statistics fixed)."""
        super().train(mode)
        self.encoder.eval()
        return self

    def _map(self, name: str, h: torch.Tensor) -> torch.Tensor:
        return to_map(h, channels_last=is_block(name))

    # -- prefix (frozen, cacheable) and suffix (trains) ------------------------------------------

    @torch.no_grad()
    def prefix(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the frozen part on ``(B, 3, S, S)`` inputs.

        Returns:
            ``{tap: (B, C, H, W)}`` for every frozen tap, plus ``"h"``: the frozen output of unit
            ``rein_from`` (its tokens are applied in :meth:`suffix`), absent when ``rein_from`` is None.
        """
        out: dict[str, torch.Tensor] = {}
        h = x
        stop = len(self._units) if self.boundary is None else self.boundary
        for name, module in self._units[:stop]:
            h = module(h)
            if name in self.taps:
                out[name] = self._map(name, h)
        if self.boundary is not None:
            cut = self._units[self.boundary][1]
            out["h"] = cut.block(h) if isinstance(cut, ReinBlock) else cut(h)
        return out

    def suffix(self, cached: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The pyramid from cached prefix outputs: ``[(B, C_k, H_k, W_k)]`` in ``taps`` order (float32)."""
        maps = {t: cached[t].float() for t in self.frozen_taps}
        if self.placement == "levels":
            for t in self.adapted_units:
                tokens = self.rein_tokens[_key(t)]
                b, c, hh, ww = maps[t].shape
                f = maps[t].flatten(2).transpose(1, 2)                                # (B, HW, C)
                f = tokens(f, self.rein_projections[str(tokens.width)])
                maps[t] = f.transpose(1, 2).reshape(b, c, hh, ww)                     # (B, C, H, W)
        if self.boundary is not None:
            name, first = self._units[self.boundary]
            h = cached["h"].float()
            h = first.adapt(h) if isinstance(first, ReinBlock) else h
            if name in self.taps:
                maps[name] = self._map(name, h)
            for name, module in self._units[self.boundary + 1:]:
                h = module(h)
                if name in self.taps:
                    maps[name] = self._map(name, h)
        return [maps[t] for t in self.taps]

    def forward(self, cached: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """:meth:`suffix` (``forward`` so that a distributed wrapper sees the call)."""
        return self.suffix(cached)

    def pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The pyramid of ``(B, 3, S, S)`` inputs: the prefix (no gradient), then the suffix."""
        return self.suffix(self.prefix(x))


# ---------------------------------------------------------------------------------------------
# the head
# ---------------------------------------------------------------------------------------------

def _conv(c_in: int, c_out: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class PyramidHead(nn.Module):
    """A light U-Net-like decoder over pyramid levels: 1x1 reductions, up-sampling, skip concatenation.

    From the deepest level up: ``x = reduce_K(F_K)``; for each shallower level ``k``: up-sample
    ``x`` to its size (a transposed convolution for integer ratios), concatenate ``reduce_k(F_k)``,
    fuse with a 3x3 convolution. A last 3x3 convolution and a 1x1 give the logits, up-sampled
    bilinearly to the requested size.

    Args:
        channels: ``C_k`` of each level, shallow to deep.
        sizes: spatial side ``H_k`` of each level.
        width: channels inside the head.
        out_channels: 2 (disc, cup).
        prior_logit: initial bias of the logits; -3 (sigmoid 0.05) is about the disc's area
            fraction, so training starts from "mostly background" instead of 50/50 noise.
    """

    def __init__(self, channels: Sequence[int], sizes: Sequence[int], width: int = 16, out_channels: int = 2,
                 prior_logit: float = -3.0) -> None:
        super().__init__()
        if len(channels) != len(sizes) or not channels:
            raise ValueError(f"PyramidHead: channels {list(channels)} and sizes {list(sizes)} must match and be non-empty")
        self.sizes = tuple(int(s) for s in sizes)
        self.reduce = nn.ModuleList([_conv(c, width, 1) for c in channels])
        self.up = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for k in range(len(channels) - 1):  # level k receives the decoder state from level k + 1
            ratio = self.sizes[k] / self.sizes[k + 1]
            if ratio > 1 and ratio == int(ratio):
                self.up.append(nn.ConvTranspose2d(width, width, int(ratio), stride=int(ratio)))
            else:
                self.up.append(nn.Identity())  # same size (or a non-integer ratio: interpolated in forward)
            self.fuse.append(_conv(2 * width, width, 3))
        self.refine = _conv(width, width, 3)
        self.out = nn.Conv2d(width, out_channels, 1)
        nn.init.constant_(self.out.bias, prior_logit)  # start at the structures' small area fraction

    def forward(self, features: Sequence[torch.Tensor], size: int | tuple[int, int]) -> torch.Tensor:
        """``features``: the levels ``[(B, C_k, H_k, W_k)]``; returns logits ``(B, 2, *size)``."""
        if len(features) != len(self.reduce):
            raise ValueError(f"PyramidHead expects {len(self.reduce)} levels, got {len(features)}")
        x = self.reduce[-1](features[-1])                              # (B, w, H_K, W_K)
        for k in range(len(features) - 2, -1, -1):
            skip = self.reduce[k](features[k])                         # (B, w, H_k, W_k)
            x = self.up[k](x)
            if x.shape[-2:] != skip.shape[-2:]:
                x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = self.fuse[k](torch.cat([x, skip], dim=1))              # (B, w, H_k, W_k)
        logits = self.out(self.refine(x))                              # (B, 2, H_1, W_1)
        size = (size, size) if isinstance(size, int) else tuple(size)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)  # (B, 2, *size)
