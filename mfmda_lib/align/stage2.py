"""MFM-DA stage 2: the frozen foundation model with Rein tokens, a pyramid head, and the three-step loop.

For each batch of labelled source images ``x_S`` (masks ``y``) and their translations ``x_{S->T}``
(from stage 1, or a stand-in), MFM-DA takes **three optimizer steps** (methods.md, "Stage 2"):

1. ``L_align(F(x_S), F(x_{S->T}))`` on the Rein tokens only (the head is not in the graph);
2. ``BCE(disc) + BCE(cup)`` on the source image;
3. the same loss on its translation, with the same label.

Optimisers, as in the authors' ``train_MFM_DA_Seg_RETFound.py``: one SGD (lr 1e-3, momentum 0.99,
Nesterov) over every trainable parameter (tokens and head) for steps (2)-(3), poly-decayed, and a
second SGD with the same settings over the tokens only for step (1), not decayed. Both optimisers
being SGD matters: the tokens' output is scaled by ``s`` (initially 1e-3), so their gradients are
tiny; SGD moves them in proportion to those gradients in every step, whereas an Adam-family
optimiser in steps (2)-(3) would move them by about ``lr`` per step whatever the gradient, and
step (1)'s SGD update would be orders of magnitude smaller: the alignment would do nothing.
:func:`make_optimizers` builds both; ``Stage2Config.optimizer="adamw"`` keeps the kit's earlier
AdamW choice as a named ablation. Every epoch logs the size of the tokens' update from step (1)
against steps (2)-(3), and ``L_align`` on each batch before and after its step (1).

:class:`Stage2Config` switches steps, tokens, pyramid levels and aligned levels, so every
baseline and ablation of notebook 09 is this one loop with a different config.

This module: config -> model -> prediction. The cached prefix features are in :mod:`.features`, the
loop (HF Accelerate, resumable atomic checkpoints) in :mod:`.training`.

Accelerate: :func:`train_stage2` takes an ``accelerate.Accelerator``; one process by default,
``accelerate launch`` runs it data-parallel on several GPUs without code changes (each process
takes every ``world_size``-th pair of a shared seeded permutation; only the main process writes
checkpoints). The frozen prefix features are computed before the loop (once per image, cached
on disk), so the loop only runs the Rein tokens, the blocks after them, and the head.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..models.base import PromptableSegmenter
from .features import FeatureBank, take_batch
from .pyramid import PyramidEncoder, PyramidHead
from .rein import PREFIX, ReinConfig

__all__ = [
    "STEPS", "TINYVIT_TAPS", "OPTIMIZERS", "Stage2Config", "Stage2Model", "build_model", "align_indices",
    "predict_logits", "logits_to_masks",
]

#: The three optimizer steps of one batch, in order.
STEPS = ("align", "source", "translated")

#: Pyramid levels of LiteMedSAM's TinyViT, shallow to deep (for a 256 px input: 128x128x128,
#: 64x64x160, 64x64x160, 64x64x320).
TINYVIT_TAPS = ("layers.1.blocks.1", "layers.2.blocks.2", "layers.2.blocks.5", "layers.3.blocks.1")


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Stage2Config:
    """One stage-2 run: which parts train, which steps run, how they are optimised, for how long.

    The defaults are the authors' (``train_MFM_DA_Seg_RETFound.py``) unless a field says otherwise.

    Attributes:
        taps: encoder units read out as pyramid levels, shallow to deep.
        rein_from: first unit that gets Rein tokens (``layers.1.blocks.0``: every attention block
            of TinyViT), and the cut between the cached prefix and the blocks run at each step. ``None``: no
            cut, the whole frozen encoder cached (only with ``use_rein=False``: it does not say "no Rein").
        rein_placement: ``"blocks"``: after every block from ``rein_from``, each change feeding the
            next blocks (the paper; the kit's default in every profile); ``"levels"``: on each tapped
            level only, the frozen blocks seeing unchanged features, so the whole encoder is cached and a
            step costs only the tokens and the head (an ablation: each level's alignment then has a
            trivial solution, the tokens of that level alone). See :class:`PyramidEncoder`.
        use_rein: ``False``: no tokens, only the head trains (the "no Rein" ablation; same cut). The one
            way to say "no Rein".
        rein: size of the tokens.
        head_levels: ``"pyramid"`` (every tap) or ``"last"`` (the deepest tap only, an ablation).
        head_width: channels inside the head.
        align_taps: levels entering ``L_align``; ``None``: every level the tokens can change
            (a frozen level's alignment is a constant). Must be levels after adapted blocks.
        steps: which of :data:`STEPS` run for each batch.
        epochs: passes over the source/translation pairs.
        batch_size: pairs per step (per process).
        optimizer: ``"sgd"`` (the authors': SGD with ``momentum``, Nesterov, for both optimisers) or
            ``"adamw"`` (the kit's earlier choice for steps (2)-(3), kept as an ablation; step (1)
            still uses SGD).
        lr: learning rate of steps (2)-(3) at the start of the poly decay ``lr (1 - t/T)^0.9`` (authors: 1e-3).
        momentum: SGD momentum of both optimisers (authors: 0.99, Nesterov).
        align_lr: step (1)'s SGD learning rate on the tokens, constant (the authors never decay it);
            ``None``: the same as ``lr``.
        weight_decay: weight decay of the steps-(2)-(3) optimiser (authors: none).
        dice_weight: weight of a soft Dice term added to BCE (authors: 0, BCE only).
        grad_clip: gradient-norm clip of each step (authors: None).
        seed: seed of the pair order and of the head's initialisation.
    """

    taps: tuple[str, ...] = TINYVIT_TAPS
    rein_from: str | None = "layers.1.blocks.0"
    rein_placement: str = "blocks"
    use_rein: bool = True
    rein: ReinConfig = field(default_factory=ReinConfig)
    head_levels: str = "pyramid"
    head_width: int = 16
    align_taps: tuple[str, ...] | None = None
    steps: tuple[str, ...] = STEPS
    epochs: int = 10
    batch_size: int = 4
    optimizer: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.99
    align_lr: float | None = None
    weight_decay: float = 0.0
    dice_weight: float = 0.0
    grad_clip: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.taps:
            raise ValueError("Stage2Config.taps: give at least one encoder unit")
        if self.rein_placement not in ("blocks", "levels"):
            raise ValueError(f"Stage2Config.rein_placement must be 'blocks' or 'levels', got {self.rein_placement!r}")
        if self.head_levels not in ("pyramid", "last"):
            raise ValueError(f"Stage2Config.head_levels must be 'pyramid' or 'last', got {self.head_levels!r}")
        bad = [s for s in self.steps if s not in STEPS]
        if bad or not self.steps:
            raise ValueError(f"Stage2Config.steps must be a non-empty subset of {STEPS}, got {self.steps}")
        if self.rein_from is None and self.use_rein:
            raise ValueError("Stage2Config: rein_from=None (the whole encoder cached) has no unit for the Rein tokens; "
                             "say 'no Rein' with use_rein=False, or name rein_from")
        if "align" in self.steps and not self.use_rein:
            raise ValueError("Stage2Config: the 'align' step trains the Rein tokens; set use_rein, or drop 'align'")
        if self.align_taps is not None and (not self.align_taps or any(t not in self.taps for t in self.align_taps)):
            raise ValueError(f"Stage2Config.align_taps {self.align_taps} must be a non-empty subset of taps {self.taps}")
        if self.epochs < 1 or self.batch_size < 1 or self.head_width < 1:
            raise ValueError("Stage2Config: epochs, batch_size and head_width must be >= 1")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"Stage2Config.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.align_lr is not None and self.align_lr <= 0:
            raise ValueError(f"Stage2Config.align_lr must be > 0 or None, got {self.align_lr}")
        if self.lr <= 0 or not 0 <= self.momentum < 1 or self.weight_decay < 0 or self.dice_weight < 0:
            raise ValueError("Stage2Config: lr must be > 0, momentum in [0, 1), weight_decay and dice_weight >= 0")

    def replace(self, **changes) -> "Stage2Config":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def digest(self) -> str:
        """A short hash of every field (names checkpoints)."""
        return hashlib.sha256(repr(self).encode()).hexdigest()[:10]


#: ``Stage2Config.optimizer`` values: the authors' SGD, and AdamW (an ablation).
OPTIMIZERS = ("sgd", "adamw")


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------

class Stage2Model(nn.Module):
    """The frozen encoder with Rein tokens (:class:`PyramidEncoder`) and the head (:class:`PyramidHead`).

    Args:
        encoder: the pyramid encoder.
        head: the head over the levels ``head_taps``.
        head_taps: indices into ``encoder.taps`` that the head reads.
        out_size: side of the logits (the model input's side).
    """

    def __init__(self, encoder: PyramidEncoder, head: PyramidHead, head_taps: Sequence[int], out_size: int) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head
        self.head_taps, self.out_size = tuple(head_taps), int(out_size)

    def head_input(self, pyramid: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [pyramid[i] for i in self.head_taps]

    def forward(self, cached: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits ``(B, 2, S, S)`` from cached prefix outputs."""
        return self.head(self.head_input(self.encoder(cached)), self.out_size)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """CPU copies of the Rein parameters and the head's parameters and buffers."""
        state = {f"encoder.{n}": p for n, p in self.encoder.named_parameters() if PREFIX in n}
        state.update({f"head.{n}": t for n, t in self.head.state_dict().items()})
        return {k: v.detach().cpu().clone() for k, v in state.items()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load what :meth:`trainable_state` returned (every key must exist)."""
        own = dict(self.named_parameters()) | dict(self.named_buffers())
        missing = [k for k in state if k not in own]
        if missing:
            raise ValueError(f"Stage2Model: checkpoint keys {missing[:3]} do not fit this model (another config?)")
        with torch.no_grad():
            for k, v in state.items():
                own[k].copy_(v)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


def build_model(encoder_module: nn.Module, config: Stage2Config, level_shapes: Sequence[tuple[int, int]],
                out_size: int) -> Stage2Model:
    """Wrap a frozen encoder with Rein tokens and a fresh head (seeded by ``config.seed``).

    Args:
        encoder_module: e.g. ``load_model("litemedsam").image_encoder`` (frozen here, never modified).
        config: :class:`Stage2Config`.
        level_shapes: ``(channels, side)`` of each tap (see :func:`level_shapes`).
        out_size: side of the logits.
    """
    encoder = PyramidEncoder(encoder_module, config.taps, config.rein_from, config.rein if config.use_rein else None,
                             config.rein_placement)
    head_taps = list(range(len(config.taps))) if config.head_levels == "pyramid" else [len(config.taps) - 1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        head = PyramidHead([level_shapes[i][0] for i in head_taps], [level_shapes[i][1] for i in head_taps],
                           width=config.head_width)
    return Stage2Model(encoder, head, head_taps, out_size)


def align_indices(model: Stage2Model, config: Stage2Config) -> list[int]:
    """Indices of the pyramid levels entering ``L_align`` (``config.align_taps``, or every level after tokens)."""
    changed = [config.taps.index(t) for t in model.encoder.adapted_taps]
    if config.align_taps is None:
        return changed
    chosen = [config.taps.index(t) for t in config.align_taps]
    frozen = [config.taps[i] for i in chosen if i not in changed]
    if frozen:
        raise ValueError(f"Stage2Config.align_taps: {frozen} have no Rein tokens before them (rein_from="
                         f"{config.rein_from!r}); aligning a frozen level cannot change anything")
    return chosen


# ---------------------------------------------------------------------------------------------
# prediction
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def predict_logits(model: Stage2Model, bank: FeatureBank, *, batch_size: int = 8,
                   device: torch.device | None = None) -> torch.Tensor:
    """Logits ``(N, 2, S, S)`` (float32, CPU) of cached images, model in eval mode."""
    model.eval()
    device = device or next(model.head.parameters()).device
    n = len(next(iter(bank.values())))
    out = [model(take_batch(bank, torch.arange(i, min(i + batch_size, n)), device)).cpu() for i in range(0, n, batch_size)]
    return torch.cat(out)


def logits_to_masks(segmenter: PromptableSegmenter, logits: torch.Tensor,
                    sizes: Sequence[tuple[int, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(N, 2, S, S)`` logits -> ``N`` ``(disc, cup)`` bool masks at each original image size ``(H, W)``."""
    out = []
    for lg, size in zip(logits, sizes):
        disc = segmenter.postprocess_logits(lg[0:1], size) > 0
        cup = segmenter.postprocess_logits(lg[1:2], size) > 0
        out.append((disc.numpy(), cup.numpy()))
    return out
