"""Rein-style low-rank tokens after the blocks of a frozen foundation encoder (MFM-DA stage 2).

MFM-DA adapts its medical foundation model with learnable *tokens* placed after every encoder
block (the "LoRA" of the paper is Rein's token mechanism with low-rank tokens, ``LoRAReins`` in the
authors' code). For block ``l`` with output features ``f`` (``(B, N, d)``: ``N`` tokens of width ``d``):

    T_l      = A_l B_l                              (m, d)   low-rank tokens, A_l (m, r), B_l (r, d)
    attn     = softmax(f T_l^T / sqrt(d))           (B, N, m)
    T'_l     = T_l[1:] W_T                          (m-1, d) token-to-feature projection
    delta_f  = W_delta(attn[..., 1:] T'_l + f)      (B, N, d)
    f       <- f + s * delta_f                      s learnable, initialised at 1e-3

As in the authors' code: ``W_T``, ``W_delta`` and the scale ``s`` are shared by all adapted blocks
(of the same width: TinyViT has three); the first token takes part in the softmax but adds nothing
(``attn[..., 1:]``), so attention can fall on "no change"; ``A_l`` and ``B_l`` start uniform in
``+-sqrt(6 / (3 * 16**2 + sqrt(d r)))``. Because ``s`` starts at 1e-3 an untrained Rein leaves the
encoder's features almost unchanged, so training starts from the foundation model.

The adapter *wraps* each block (:class:`ReinBlock`): ``ReinBlock(block)(x) == rein(block(x))``.
Every adapter parameter's name starts with ``rein_``, so freezing, counting and saving filter by
name. Verbs: :func:`inject` (wrap the blocks of a unit list) and :func:`remove` (unwrap them).

Features may be TinyViT tokens ``(B, N, d)`` or SAM-ViT maps ``(B, H, W, d)``: the channel is
always the last dimension.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

__all__ = ["ReinConfig", "ReinProjections", "ReinTokens", "ReinBlock", "block_width", "is_block", "inject",
           "new_tokens", "remove", "rein_parameters", "mark_only_rein_trainable"]

PREFIX = "rein_"

# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReinConfig:
    """Size of the Rein tokens.

    Attributes:
        n_tokens: ``m``, tokens per adapted block (MFM-DA: 100).
        rank: ``r`` of the low-rank factorisation ``T_l = A_l B_l`` (MFM-DA: 16).
        scale_init: initial value of the shared learnable scale ``s`` (MFM-DA: 1e-3).
        seed: seed of the token initialisation (the global RNG is left untouched).
    """

    n_tokens: int = 100
    rank: int = 16
    scale_init: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_tokens < 2 or self.rank < 1:
            raise ValueError(f"ReinConfig: n_tokens must be >= 2 and rank >= 1, got {self.n_tokens}, {self.rank}")
        if not 0 <= self.scale_init < 1:
            raise ValueError(f"ReinConfig.scale_init must be in [0, 1), got {self.scale_init}")


# ---------------------------------------------------------------------------------------------
# blocks
# ---------------------------------------------------------------------------------------------


#: the authors' ``patch_size`` in their token initialisation bound (a ViT-L/16 constant, kept as is)
INIT_PATCH = 16


class ReinProjections(nn.Module):
    """``W_T`` (tokens -> features), ``W_delta`` (the output projection) and the scale ``s``, shared by
    the adapted blocks of width ``d``."""

    def __init__(self, width: int, scale_init: float = 1e-3) -> None:
        super().__init__()
        self.rein_token_proj = nn.Linear(width, width)  # W_T
        self.rein_delta_proj = nn.Linear(width, width)  # W_delta
        self.rein_scale = nn.Parameter(torch.tensor(float(scale_init)))  # s


class ReinTokens(nn.Module):
    """The low-rank tokens ``T_l = A_l B_l`` of one block.

    Args:
        width: ``d``, the block's feature width.
        config: :class:`ReinConfig`.
        generator: RNG of the initialisation.
    """

    def __init__(self, width: int, config: ReinConfig, generator: torch.Generator) -> None:
        super().__init__()
        if config.n_tokens < 2:
            raise ValueError("ReinTokens: need n_tokens >= 2 (the first token only absorbs attention)")
        m, r = config.n_tokens, config.rank
        bound = math.sqrt(6.0 / (3 * INIT_PATCH ** 2 + math.sqrt(width * r)))  # the authors' LoRAReins bound
        self.rein_A = nn.Parameter((torch.rand(m, r, generator=generator) * 2 - 1) * bound)
        self.rein_B = nn.Parameter((torch.rand(r, width, generator=generator) * 2 - 1) * bound)
        self.width = width

    @property
    def tokens(self) -> torch.Tensor:
        """``T_l = A_l B_l``: ``(m, d)``."""
        return self.rein_A @ self.rein_B

    def forward(self, f: torch.Tensor, proj: ReinProjections) -> torch.Tensor:
        """``f + s * W_delta(softmax(f T^T / sqrt(d))[..., 1:] T[1:] W_T + f)`` for ``f (..., d)``; same shape."""
        if f.shape[-1] != self.width:
            raise ValueError(f"Rein tokens of width {self.width} got features of width {f.shape[-1]}")
        tokens = self.tokens                                                              # (m, d)
        attn = torch.softmax(f @ tokens.t() / math.sqrt(self.width), dim=-1)             # (..., m)
        delta = proj.rein_delta_proj(attn[..., 1:] @ proj.rein_token_proj(tokens[1:]) + f)  # (..., d)
        return f + proj.rein_scale * delta


class ReinBlock(nn.Module):
    """A frozen block followed by its Rein tokens: ``forward(x) = rein(block(x))``.

    Args:
        block: the wrapped encoder block (kept as ``.block``; its parameters stay the encoder's).
        tokens: this block's :class:`ReinTokens` (registered here: ``rein_tokens``).
        proj: the shared :class:`ReinProjections` of this width (not registered here: it is
            owned by whoever called :func:`inject`, so the shared weights are saved once).
    """

    def __init__(self, block: nn.Module, tokens: ReinTokens, proj: ReinProjections) -> None:
        super().__init__()
        self.block = block
        self.rein_tokens = tokens
        self._proj = [proj]  # a list: do not register the shared module twice

    @property
    def proj(self) -> ReinProjections:
        return self._proj[0]

    def adapt(self, f: torch.Tensor) -> torch.Tensor:
        """The Rein step alone, on the block's output ``f (..., d)``."""
        return self.rein_tokens(f, self.proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapt(self.block(x))


# ---------------------------------------------------------------------------------------------
# the method: inject / remove
# ---------------------------------------------------------------------------------------------

_BLOCK_NAME = re.compile(r"(^|\.)blocks\.\d+$")


def is_block(name: str) -> bool:
    """Whether a unit name (see :func:`mfmda_lib.models.prefix.encoder_units`) is a transformer block."""
    return bool(_BLOCK_NAME.search(name))


def block_width(block: nn.Module) -> int:
    """Feature width ``d`` of a transformer block: its ``dim`` attribute, else its first LayerNorm's size."""
    dim = getattr(block, "dim", None)
    if isinstance(dim, int):
        return dim
    for m in block.modules():
        if isinstance(m, nn.LayerNorm):
            return int(m.normalized_shape[-1])
    raise ValueError(f"block_width: cannot tell the width of a {type(block).__name__} (no `dim`, no LayerNorm)")


def inject(units: Sequence[tuple[str, nn.Module]], start: str, config: ReinConfig,
           stop: str | None = None) -> tuple[list[tuple[str, nn.Module]], nn.ModuleDict]:
    """Wrap every transformer block from unit ``start`` to unit ``stop`` (inclusive) in a :class:`ReinBlock`.

    Args:
        units: ``(name, module)`` pairs of an encoder (:func:`~mfmda_lib.models.prefix.encoder_units`).
        start: name of the first unit that may be adapted (earlier blocks stay plain).
        config: :class:`ReinConfig`.
        stop: last unit that may be adapted (default: the last unit).

    Returns:
        ``(new_units, projections)``: the unit list with wrapped blocks (other units unchanged),
        and the shared projections keyed by width (``str(d)``), which the caller must own
        (register as a submodule) so they train and save.
    """
    names = [n for n, _ in units]
    for label, value in (("start", start), ("stop", stop)):
        if value is not None and value not in names:
            raise ValueError(f"rein.inject: unknown {label} unit {value!r}; units are {names}")
    lo, hi = names.index(start), names.index(stop) if stop is not None else len(names) - 1
    chosen = [(name, m) for i, (name, m) in enumerate(units) if lo <= i <= hi and is_block(name)]
    if not chosen:
        raise ValueError(f"rein.inject: no transformer block between {start!r} and {stop or names[-1]!r}")
    done = [name for name, m in chosen if isinstance(m, ReinBlock)]
    if done:
        raise ValueError(f"rein.inject: unit(s) {done} already have Rein tokens")
    tokens, projections = new_tokens({name: block_width(m) for name, m in chosen}, config)
    out = [(name, ReinBlock(m, tokens[name], projections[str(tokens[name].width)]) if name in tokens else m)
           for name, m in units]
    return out, projections


def new_tokens(widths: dict[str, int], config: ReinConfig) -> tuple[dict[str, ReinTokens], nn.ModuleDict]:
    """Fresh tokens for each named place of width ``d`` and one shared projection per width (seeded).

    Returns:
        ``({name: ReinTokens}, projections)`` with ``projections`` keyed by ``str(d)``.
    """
    generator = torch.Generator().manual_seed(config.seed)
    tokens, projections = {}, nn.ModuleDict()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # nn.Linear's default init uses the global RNG
        for name, width in widths.items():
            if str(width) not in projections:
                projections[str(width)] = ReinProjections(width, config.scale_init)
            tokens[name] = ReinTokens(width, config, generator)
    return tokens, projections


def remove(units: Sequence[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    """Undo :func:`inject`: the unit list with every :class:`ReinBlock` replaced by its block."""
    return [(name, m.block if isinstance(m, ReinBlock) else m) for name, m in units]


def rein_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Every parameter whose name contains ``rein_`` (tokens, scales, shared projections)."""
    return [p for n, p in module.named_parameters() if PREFIX in n]


def mark_only_rein_trainable(module: nn.Module) -> int:
    """``requires_grad`` True for ``rein_*`` parameters, False for all others; returns the trainable count."""
    total = 0
    for n, p in module.named_parameters():
        p.requires_grad_(PREFIX in n)
        total += p.numel() if PREFIX in n else 0
    return total
