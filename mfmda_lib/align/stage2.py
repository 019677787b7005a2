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

Sections: config -> model -> cached prefix features -> the loop (HF Accelerate, resumable
atomic checkpoints) -> prediction.

Accelerate: :func:`train_stage2` takes an ``accelerate.Accelerator``; one process by default,
``accelerate launch`` runs it data-parallel on several GPUs without code changes (each process
takes every ``world_size``-th pair of a shared seeded permutation; only the main process writes
checkpoints). The frozen prefix features are computed before the loop (once per image, cached
on disk), so the loop only runs the Rein tokens, the blocks after them, and the head.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..io import atomic_write
from ..models.base import PromptableSegmenter
from ..models.cache import EmbeddingCache
from .losses import channel_spatial_alignment, segmentation_loss
from .pyramid import PyramidEncoder, PyramidHead
from .rein import PREFIX, ReinConfig

__all__ = ["STEPS", "TINYVIT_TAPS", "OPTIMIZERS", "Stage2Config", "Stage2Model", "build_model", "FeatureBank",
           "encode_prefix", "level_shapes", "mask_targets", "Stage2History", "poly_lr", "token_parameters",
           "make_optimizers", "align_indices", "three_step_update", "train_stage2", "predict_logits", "logits_to_masks"]

#: The three optimizer steps of one batch, in order.
STEPS = ("align", "source", "translated")

#: Pyramid levels of LiteMedSAM's TinyViT, shallow to deep (for a 256 px input: 128x128x128,
#: 64x64x160, 64x64x160, 64x64x320).
TINYVIT_TAPS = ("layers.1.blocks.1", "layers.2.blocks.2", "layers.2.blocks.5", "layers.3.blocks.1")

FeatureBank = dict  # name -> (N, ...) float16 CPU tensor: the cached prefix outputs of N images


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
            of TinyViT). ``None``: no tokens, everything frozen and cached.
        rein_placement: ``"blocks"``: after every block from ``rein_from``, each change feeding the
            next blocks (the paper; the kit's default in every profile); ``"levels"``: on each tapped
            level only, the frozen blocks seeing unchanged features, so the whole encoder is cached and a
            step costs only the tokens and the head (an ablation: each level's alignment then has a
            trivial solution, the tokens of that level alone). See :class:`PyramidEncoder`.
        use_rein: ``False``: no tokens, only the head trains (the "no Rein" ablation; same cut).
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
        if "align" in self.steps and (self.rein_from is None or not self.use_rein):
            raise ValueError("Stage2Config: the 'align' step trains the Rein tokens; set rein_from and use_rein, "
                             "or drop 'align'")
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
# cached prefix features
# ---------------------------------------------------------------------------------------------

def _prefix_cache(segmenter: PromptableSegmenter, encoder: PyramidEncoder, root: str | Path) -> EmbeddingCache:
    signature = hashlib.sha256(encoder.cache_signature().encode()).hexdigest()[:8]
    return EmbeddingCache(root, f"{segmenter.cache_key}-prefix-{signature}")


def _prefix_names(encoder: PyramidEncoder) -> list[str]:
    return list(encoder.frozen_taps) + (["h"] if encoder.boundary is not None else [])


def encode_prefix(segmenter: PromptableSegmenter, encoder: PyramidEncoder, images: Sequence[np.ndarray], *,
                  cache_root: str | Path | None = None, batch_size: int = 4, progress: bool = True,
                  desc: str = "frozen prefix") -> FeatureBank:
    """Run the frozen prefix once per image (cache misses only) and stack its outputs.

    Args:
        segmenter: gives ``preprocess`` (resizing, normalisation) and ``cache_key``.
        encoder: the :class:`PyramidEncoder` around ``segmenter.image_encoder``.
        images: ``N`` arrays ``(H, W, 3)`` uint8.
        cache_root: folder of an on-disk :class:`EmbeddingCache` (float16, atomic); ``None``: no cache.
        batch_size: images per forward pass.

    Returns:
        ``{name: (N, ...) float16}`` on the CPU: each frozen tap as a map ``(N, C, H, W)`` and,
        with Rein tokens, ``"h"``: the first adapted block's frozen output.
    """
    names = _prefix_names(encoder)
    cache = _prefix_cache(segmenter, encoder, cache_root) if cache_root is not None else None
    rows: list[dict[str, torch.Tensor] | None] = [None] * len(images)
    keys = [EmbeddingCache.key(np.ascontiguousarray(img)) for img in images]
    if cache is not None:
        for i, key in enumerate(keys):
            found = [cache.load(f"{key}-{j}") for j in range(len(names))]
            if all(f is not None for f in found):
                rows[i] = {n: torch.from_numpy(f) for n, f in zip(names, found)}
    todo = [i for i, r in enumerate(rows) if r is None]
    bar = tqdm(total=len(todo), desc=desc, unit="img", disable=not progress or not todo)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        out = encoder.prefix(segmenter.preprocess([images[i] for i in chunk]))
        for j, i in enumerate(chunk):
            rows[i] = {n: out[n][j].to("cpu", torch.float16) for n in names}
            if cache is not None:
                for k, n in enumerate(names):
                    cache.save(f"{keys[i]}-{k}", rows[i][n].numpy())
        bar.update(len(chunk))
    bar.close()
    return {n: torch.stack([r[n] for r in rows]) for n in names}


def level_shapes(encoder: PyramidEncoder, bank: FeatureBank) -> list[tuple[int, int]]:
    """``(channels, side)`` of each pyramid level, from one cached image."""
    with torch.no_grad():
        levels = encoder({k: v[:1] for k, v in bank.items()})
    return [(int(f.shape[1]), int(f.shape[-1])) for f in levels]


def mask_targets(segmenter: PromptableSegmenter, samples: Sequence) -> torch.Tensor:
    """Disc and cup masks in the model's input frame: ``(N, 2, S, S)`` float32 in {0, 1} on the CPU."""
    disc = segmenter.preprocess_masks([s.disc for s in samples]).cpu()
    cup = segmenter.preprocess_masks([s.cup for s in samples]).cpu()
    return torch.cat([disc, cup], dim=1)


def _take(bank: FeatureBank, index: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v[index].to(device) for k, v in bank.items()}


def _cat(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([a[k], b[k]]) for k in a}


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------

@dataclass
class Stage2History:
    """Per-epoch logs of each step, seconds, and where the run resumed.

    Each epoch's record holds ``loss_<step>`` (mean over its batches) and, with the ``align`` step:
    ``loss_align_before`` and ``loss_align_after`` (``L_align`` of the epoch's first batch just before
    and just after its step (1)), and the tokens' update sizes ``update_align`` (the summed norm of
    what step (1) changed over the epoch) and ``update_seg`` (the same for steps (2)-(3)), so a
    notebook can show whether the alignment acts.
    """

    epochs: list[dict] = field(default_factory=list)
    resumed_from: int = 0

    def seconds(self) -> float:
        return float(sum(e["seconds"] for e in self.epochs))


def poly_lr(lr: float, epoch: int, epochs: int, power: float = 0.9) -> float:
    """The authors' poly decay, applied at the start of each epoch: ``lr (1 - epoch / epochs)^power``."""
    return lr * (1 - min(epoch, epochs - 1) / epochs) ** power


def token_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable Rein parameters (tokens, scales, shared projections): what step (1) updates."""
    return [p for n, p in model.named_parameters() if PREFIX in n and p.requires_grad]


def make_optimizers(model: Stage2Model, config: Stage2Config
                    ) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer | None]:
    """The two optimisers of the authors' loop.

    Returns:
        ``(optimizer, align_optimizer)``: SGD (or AdamW, ``config.optimizer``) over every trainable
        parameter for steps (2)-(3), and SGD over the Rein parameters only for step (1) (``None``
        without an ``align`` step).
    """
    nesterov = config.momentum > 0
    params = model.trainable_parameters()
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=nesterov,
                                    weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    align_optimizer = None
    if "align" in config.steps:
        tokens = token_parameters(model)
        if not tokens:
            raise ValueError("make_optimizers: the 'align' step needs trainable Rein tokens (use_rein, rein_from)")
        align_optimizer = torch.optim.SGD(tokens, lr=config.align_lr or config.lr, momentum=config.momentum,
                                          nesterov=nesterov)
    return optimizer, align_optimizer


def _snapshot(params: Sequence[nn.Parameter]) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def _moved(params: Sequence[nn.Parameter], before: Sequence[torch.Tensor]) -> float:
    """``||theta - theta_before||`` over a parameter list."""
    return float(torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(params, before))))


def three_step_update(model, source: dict[str, torch.Tensor], translated: dict[str, torch.Tensor] | None,
                      y: torch.Tensor, optimizer: torch.optim.Optimizer,
                      align_optimizer: torch.optim.Optimizer | None = None, *, steps: Sequence[str] = STEPS,
                      align_levels: Sequence[int] = (), dice_weight: float = 0.0,
                      backward: Callable[[torch.Tensor], None] | None = None,
                      clip: Callable[[], None] | None = None, log_after: bool = True) -> dict[str, float]:
    """MFM-DA's update for one batch of pairs: (1) align on the tokens, (2) source BCE, (3) translated BCE.

    Args:
        model: anything with ``encoder`` (cached prefix dict -> pyramid levels), ``head``, ``head_taps``
            and ``out_size``: a :class:`Stage2Model` (or its accelerator-prepared parts).
        source, translated: cached prefix outputs of the ``B`` source images and their translations.
        y: ``(B, 2, S, S)`` disc and cup masks (the translations share them).
        optimizer: steps (2)-(3), over every trainable parameter.
        align_optimizer: step (1), over the Rein parameters only (needed when ``"align" in steps``).
        steps: which of :data:`STEPS` run.
        align_levels: indices of the pyramid levels entering ``L_align``.
        dice_weight: soft Dice weight added to BCE (0: the authors' loss).
        backward: ``loss -> None`` (default ``loss.backward()``; pass ``accelerator.backward``).
        clip: called between backward and each optimizer step (gradient clipping), optional.
        log_after: also measure ``L_align`` on the batch right after step (1) (one more forward pass).

    Returns:
        ``loss_<step>`` for each step run; with ``align``: ``update_align`` and ``update_seg`` (how far
        step (1) and steps (2)-(3) moved the Rein parameters) and, with ``log_after``, ``loss_align_before``
        and ``loss_align_after`` (``L_align`` of this batch just before and just after step (1)).
    """
    backward = backward or (lambda loss: loss.backward())
    optimizers = [o for o in (optimizer, align_optimizer) if o is not None]
    tokens = [p for o in optimizers[1:] for g in o.param_groups for p in g["params"]]
    logs: dict[str, float] = {}

    def step(loss: torch.Tensor, opt: torch.optim.Optimizer) -> float:
        for o in optimizers:
            o.zero_grad(set_to_none=True)
        backward(loss)
        if clip is not None:
            clip()
        opt.step()
        return float(loss.detach())

    def logits(cached: dict[str, torch.Tensor]) -> torch.Tensor:
        levels = model.encoder(cached)
        return model.head([levels[i] for i in model.head_taps], model.out_size)

    def align_loss() -> torch.Tensor:
        levels = model.encoder({k: torch.cat([source[k], translated[k]]) for k in source})  # one pass, 2B images
        b = len(y)
        return channel_spatial_alignment([levels[i][:b] for i in align_levels], [levels[i][b:] for i in align_levels])

    if "align" in steps:  # (1) L_align, on the tokens only
        if align_optimizer is None or not align_levels:
            raise ValueError("three_step_update: the 'align' step needs an align_optimizer and align_levels")
        before = _snapshot(tokens)
        logs["loss_align"] = step(align_loss(), align_optimizer)
        logs["update_align"] = _moved(tokens, before)
        if log_after:
            with torch.no_grad():
                logs["loss_align_before"], logs["loss_align_after"] = logs["loss_align"], float(align_loss())
        before = _snapshot(tokens)
    if "source" in steps:  # (2) BCE on the source image
        logs["loss_source"] = step(segmentation_loss(logits(source), y, dice_weight), optimizer)
    if "translated" in steps:  # (3) the same on its translation, with the same label
        logs["loss_translated"] = step(segmentation_loss(logits(translated), y, dice_weight), optimizer)
    if "align" in steps and ("source" in steps or "translated" in steps):
        logs["update_seg"] = _moved(tokens, before)
    return logs


def _save(path: Path, model: Stage2Model, optimizers: Sequence[torch.optim.Optimizer | None],
          history: Stage2History) -> None:
    payload = {"model": model.trainable_state(), "epochs": history.epochs,
               "optimizers": [o.state_dict() if o is not None else None for o in optimizers]}
    with atomic_write(path) as handle:
        torch.save(payload, handle)


def train_stage2(model: Stage2Model, optimizer: torch.optim.Optimizer, source: FeatureBank, labels: torch.Tensor,
                 config: Stage2Config, *, align_optimizer: torch.optim.Optimizer | None = None,
                 translated: FeatureBank | None = None, accelerator=None, checkpoint: str | Path | None = None,
                 progress: bool = True, desc: str = "stage 2",
                 on_epoch_end: Callable[[int], None] | None = None) -> Stage2History:
    """Train the Rein tokens and the head with the three-step loop; resumable.

    Args:
        model: from :func:`build_model`.
        optimizer, align_optimizer: from :func:`make_optimizers` (the caller builds them);
            ``align_optimizer`` is required when ``config.steps`` has ``"align"``.
        source: cached prefix outputs of the ``N`` source images (:func:`encode_prefix`).
        labels: ``(N, 2, S, S)`` disc and cup masks of the source images (:func:`mask_targets`).
        config: what runs.
        translated: the prefix outputs of the ``N`` translated images, paired by position
            (needed by the ``align`` and ``translated`` steps).
        accelerator: an ``accelerate.Accelerator`` (default: a new one-process accelerator).
        checkpoint: file saved atomically after every epoch and resumed from when present
            (a finished run's file is simply loaded: no step is repeated).
        on_epoch_end: called with the finished epoch's index after its checkpoint is written.

    Returns:
        The :class:`Stage2History`; ``model`` holds the trained weights, in eval mode.
    """
    n = len(labels)
    if any(len(v) != n for v in source.values()):
        raise ValueError(f"train_stage2: source features and labels differ in length ({n} labels)")
    needs_pairs = "align" in config.steps or "translated" in config.steps
    if needs_pairs and (translated is None or any(len(v) != n for v in translated.values())):
        raise ValueError("train_stage2: the 'align' and 'translated' steps need `translated` features, "
                         f"one per source image ({n})")
    if ("align" in config.steps) != (align_optimizer is not None):
        raise ValueError("train_stage2: pass align_optimizer exactly when config.steps has 'align' "
                         "(build both with make_optimizers)")
    if accelerator is None:
        from accelerate import Accelerator

        accelerator = Accelerator()
    align_idx = align_indices(model, config) if "align" in config.steps else []

    history = Stage2History()
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_trainable_state(state["model"])
        for opt, saved in zip((optimizer, align_optimizer), state.get("optimizers", [])):
            if opt is not None and saved is not None:
                opt.load_state_dict(saved)
        history.epochs, history.resumed_from = list(state["epochs"]), len(state["epochs"])

    # Only modules with trainable parameters go through prepare (DDP rejects a fully frozen module).
    has_rein = any(p.requires_grad for p in model.encoder.parameters())
    encoder = accelerator.prepare(model.encoder) if has_rein else model.encoder.to(accelerator.device)
    head, optimizer = accelerator.prepare(model.head, optimizer)
    if align_optimizer is not None:
        align_optimizer = accelerator.prepare(align_optimizer)
    parts = SimpleNamespace(encoder=encoder, head=head, head_taps=model.head_taps, out_size=model.out_size)
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    params = model.trainable_parameters()
    clip = (lambda: accelerator.clip_grad_norm_(params, config.grad_clip)) if config.grad_clip is not None else None
    device, world, rank = accelerator.device, accelerator.num_processes, accelerator.process_index
    per_process = (n // world) if world > 1 else n
    if per_process < 1:
        raise ValueError(f"train_stage2: {n} pairs cannot be shared by {world} processes")
    steps_per_epoch = -(-per_process // config.batch_size)

    bar = tqdm(range(history.resumed_from, config.epochs), desc=desc, unit="epoch",
               disable=not progress or not accelerator.is_main_process)
    for epoch in bar:
        encoder.train()
        head.train()
        start = time.perf_counter()
        for group in optimizer.param_groups:  # steps (2)-(3) decay per epoch; step (1) keeps its rate
            group["lr"] = poly_lr(group["initial_lr"], epoch, config.epochs)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed * 100003 + epoch))
        mine = order[:per_process * world][rank::world]
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for b in range(steps_per_epoch):
            idx = mine[b * config.batch_size:(b + 1) * config.batch_size]
            with accelerator.autocast():
                logs = three_step_update(parts, _take(source, idx, device),
                                         _take(translated, idx, device) if needs_pairs else None,
                                         labels[idx].to(device), optimizer, align_optimizer, steps=config.steps,
                                         align_levels=align_idx, dice_weight=config.dice_weight,
                                         backward=accelerator.backward, clip=clip, log_after=b == 0)
            for k, v in logs.items():
                sums[k], counts[k] = sums.get(k, 0.0) + v, counts.get(k, 0) + 1
        record = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"],
                  **{k: (v if k.startswith("update_") else v / counts[k]) for k, v in sums.items()},
                  "seconds": time.perf_counter() - start}
        history.epochs.append(record)
        bar.set_postfix({k: f"{v:.4f}" for k, v in record.items() if k.startswith("loss_")})
        if path is not None:
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                _save(path, model, (optimizer, align_optimizer), history)
        if on_epoch_end is not None:
            on_epoch_end(epoch)
    model.eval()
    return history


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
    out = [model(_take(bank, torch.arange(i, min(i + batch_size, n)), device)).cpu() for i in range(0, n, batch_size)]
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
