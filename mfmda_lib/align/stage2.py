"""MFM-DA stage 2: the frozen foundation model with Rein tokens, a pyramid head, and the three-step loop.

For each batch of labelled source images ``x_S`` (masks ``y``) and their translations ``x_{S->T}``
(from stage 1, or a stand-in), MFM-DA takes **three optimizer steps** (methods.md, "Stage 2"):

1. ``L_align(F(x_S), F(x_{S->T}))`` on the Rein tokens only (the head is not in the graph);
2. ``BCE(disc) + BCE(cup)`` on the source image;
3. the same loss on its translation, with the same label.

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

__all__ = ["STEPS", "TINYVIT_TAPS", "Stage2Config", "Stage2Model", "build_model", "FeatureBank", "encode_prefix",
           "level_shapes", "mask_targets", "Stage2History", "train_stage2", "predict_logits", "logits_to_masks"]

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
    """One stage-2 run: which parts train, which steps run, for how long.

    Attributes:
        taps: encoder units read out as pyramid levels, shallow to deep.
        rein_from: first unit that gets Rein tokens (``layers.1.blocks.0``: every attention block
            of TinyViT). ``None``: no tokens, everything frozen and cached.
        rein_placement: ``"blocks"``: after every block, each change feeding the next blocks (the
            paper; the kit's ``gpu`` profile); ``"levels"``: on each tapped level only, the frozen
            blocks seeing unchanged features, so the whole encoder is cached and a step costs
            only the tokens and the head (the kit's CPU profiles). See :class:`PyramidEncoder`.
        use_rein: ``False``: no tokens, only the head trains (the "no Rein" ablation; same cut).
        rein: size of the tokens.
        head_levels: ``"pyramid"`` (every tap) or ``"last"`` (the deepest tap only, an ablation).
        head_width: channels inside the head.
        align_taps: levels entering ``L_align``; ``None``: every level the tokens can change
            (a frozen level's alignment is a constant). Must be levels after adapted blocks.
        steps: which of :data:`STEPS` run for each batch.
        epochs: passes over the source/translation pairs.
        batch_size: pairs per step (per process).
        lr: AdamW learning rate at the start of the poly decay ``lr (1 - t/T)^0.9``.
        align_lr: step (1)'s own SGD on the tokens (momentum 0.9, Nesterov, same poly decay; MFM-DA's code
            uses SGD, lr 1e-3); ``None``: step (1) uses the shared AdamW like steps (2)-(3). SGD's
            step shrinks with ``L_align``'s gradient; Adam's does not, so with Adam a nearly aligned pair
            still moves the tokens by about ``lr`` per step, towards features that no longer segment.
        weight_decay: AdamW weight decay.
        dice_weight: weight of the soft Dice term added to BCE (0: the paper's BCE only).
        grad_clip: gradient-norm clip of each step (None: no clipping).
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
    lr: float = 1e-2
    align_lr: float | None = 1e-3
    weight_decay: float = 1e-4
    dice_weight: float = 1.0
    grad_clip: float | None = 1.0
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
        if self.align_lr is not None and self.align_lr <= 0:
            raise ValueError(f"Stage2Config.align_lr must be > 0 or None, got {self.align_lr}")
        if self.lr <= 0 or self.weight_decay < 0 or self.dice_weight < 0:
            raise ValueError("Stage2Config: lr must be > 0, weight_decay and dice_weight >= 0")

    def replace(self, **changes) -> "Stage2Config":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def digest(self) -> str:
        """A short hash of every field (names checkpoints)."""
        return hashlib.sha256(repr(self).encode()).hexdigest()[:10]


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


def _align_indices(model: Stage2Model, config: Stage2Config) -> list[int]:
    """Indices of the levels entering ``L_align``."""
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
    """Per-epoch mean losses of each step, seconds, and where the run resumed."""

    epochs: list[dict] = field(default_factory=list)
    resumed_from: int = 0

    def seconds(self) -> float:
        return float(sum(e["seconds"] for e in self.epochs))


def _poly(lr: float, t: int, total: int, power: float = 0.9) -> float:
    return lr * (1 - min(t, total - 1) / total) ** power


def _save(path: Path, model: Stage2Model, optimizer: torch.optim.Optimizer, history: Stage2History,
          align_optimizer: torch.optim.Optimizer | None = None) -> None:
    payload = {"model": model.trainable_state(), "optimizer": optimizer.state_dict(), "epochs": history.epochs}
    if align_optimizer is not None:
        payload["align_optimizer"] = align_optimizer.state_dict()
    with atomic_write(path) as handle:
        torch.save(payload, handle)


def train_stage2(model: Stage2Model, optimizer: torch.optim.Optimizer, source: FeatureBank, labels: torch.Tensor,
                 config: Stage2Config, *, translated: FeatureBank | None = None, accelerator=None,
                 checkpoint: str | Path | None = None, progress: bool = True, desc: str = "stage 2",
                 on_epoch_end: Callable[[int], None] | None = None) -> Stage2History:
    """Train the Rein tokens and the head with the three-step loop; resumable.

    Args:
        model: from :func:`build_model`; only ``model.trainable_parameters()`` should be in ``optimizer``.
        optimizer: built by the caller (the kit: ``AdamW(model.trainable_parameters(), config.lr, ...)``).
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
    if accelerator is None:
        from accelerate import Accelerator

        accelerator = Accelerator()
    align_idx = _align_indices(model, config) if "align" in config.steps else []
    align_optimizer = None
    if align_idx and config.align_lr is not None:  # step (1) with its own SGD on the tokens (the paper's optimizer)
        tokens = [p for p in model.encoder.parameters() if p.requires_grad]
        align_optimizer = torch.optim.SGD(tokens, lr=config.align_lr, momentum=0.9, nesterov=True)

    history = Stage2History()
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_trainable_state(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if align_optimizer is not None and "align_optimizer" in state:
            align_optimizer.load_state_dict(state["align_optimizer"])
        history.epochs, history.resumed_from = list(state["epochs"]), len(state["epochs"])

    # Only modules with trainable parameters go through prepare (DDP rejects a fully frozen module).
    has_rein = any(p.requires_grad for p in model.encoder.parameters())
    encoder = accelerator.prepare(model.encoder) if has_rein else model.encoder.to(accelerator.device)
    head, optimizer = accelerator.prepare(model.head, optimizer)
    if align_optimizer is not None:
        align_optimizer = accelerator.prepare(align_optimizer)
    optimizers = [optimizer] + ([align_optimizer] if align_optimizer is not None else [])
    groups = [g for o in optimizers for g in o.param_groups]
    for group in groups:
        group.setdefault("initial_lr", group["lr"])
    params = model.trainable_parameters()
    device, world, rank = accelerator.device, accelerator.num_processes, accelerator.process_index
    per_process = (n // world) if world > 1 else n
    if per_process < 1:
        raise ValueError(f"train_stage2: {n} pairs cannot be shared by {world} processes")
    steps_per_epoch = -(-per_process // config.batch_size)
    total = config.epochs * steps_per_epoch

    def step(loss: torch.Tensor, opt: torch.optim.Optimizer = optimizer) -> float:
        for o in optimizers:
            o.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if config.grad_clip is not None:
            accelerator.clip_grad_norm_(params, config.grad_clip)
        opt.step()
        return float(loss.detach())

    def logits(cached: dict[str, torch.Tensor]) -> torch.Tensor:
        return head([encoder(cached)[i] for i in model.head_taps], model.out_size)

    bar = tqdm(range(history.resumed_from, config.epochs), desc=desc, unit="epoch",
               disable=not progress or not accelerator.is_main_process)
    for epoch in bar:
        encoder.train()
        head.train()
        start = time.perf_counter()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed * 100003 + epoch))
        mine = order[:per_process * world][rank::world]
        sums = {s: 0.0 for s in config.steps}
        for b in range(steps_per_epoch):
            t = epoch * steps_per_epoch + b
            for group in groups:
                group["lr"] = _poly(group["initial_lr"], t, total)
            idx = mine[b * config.batch_size:(b + 1) * config.batch_size]
            src, y = _take(source, idx, device), labels[idx].to(device)
            trg = _take(translated, idx, device) if needs_pairs else None
            if "align" in config.steps:  # (1) L_align on the tokens only: one forward over both halves
                levels = encoder(_cat(src, trg))
                k = len(idx)
                sums["align"] += step(channel_spatial_alignment([levels[i][:k] for i in align_idx],
                                                                [levels[i][k:] for i in align_idx]),
                                      align_optimizer or optimizer)
            if "source" in config.steps:  # (2) BCE (+ Dice) on the source image
                sums["source"] += step(segmentation_loss(logits(src), y, config.dice_weight))
            if "translated" in config.steps:  # (3) the same on its translation, same label
                sums["translated"] += step(segmentation_loss(logits(trg), y, config.dice_weight))
        record = {"epoch": epoch, **{f"loss_{s}": v / steps_per_epoch for s, v in sums.items()},
                  "seconds": time.perf_counter() - start}
        history.epochs.append(record)
        bar.set_postfix({k: f"{v:.4f}" for k, v in record.items() if k.startswith("loss_")})
        if path is not None:
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                _save(path, model, optimizer, history, align_optimizer)
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
