"""Adapting SAM's decoder or encoder to fundus disc/cup segmentation (the comparison: ``sam_comparison``).

Four ways to adapt a box-promptable segmenter (LiteMedSAM here; SAM / MedSAM share the decoder):

=====================  ======================================================  ===================
method                 what trains                                             encoder runs
=====================  ======================================================  ===================
``decoder_adapter``    SAM-DA adapter tokens in the mask decoder (< 1%)        never (cached)
``full_decoder``       every mask-decoder weight (~41%)                        never (cached)
``encoder_lora``       LoRA on the TinyViT ``qkv`` layers (peft)               every step (slow)
``adapter_tta``        the source-trained adapter, again, on ONE test image    never (cached)
=====================  ======================================================  ===================

Supervised training follows MedSAM's recipe: Dice + BCE between the decoder's ``256 x 256``
logits and the masks in the same frame, one box prompt per structure (disc, cup) per image,
boxes jittered by a few pixels. Training runs on cached encoder embeddings (the frozen encoder
costs ~1.5 s per image; recomputing it in a loop would cost hours).

Single-image test-time adaptation (episodic, :class:`SingleImageTTA`): our objective (the paper's
was not recoverable) is ``L = H(p(b~)) + lambda * BCE(p(b~), p0(b))``: the mean binary entropy of
the mask predicted from a jittered box ``b~``, plus consistency with the prediction ``p0`` the
source-trained model makes from the given box ``b`` before adapting. Entropy sharpens the mask;
the consistency term keeps it from drifting to an empty or full mask and makes it robust to the box.

Sections: configs -> data and losses -> supervised training -> test-time adaptation. Encoder LoRA is in
:mod:`.sam_lora`.
"""
from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data import FundusSample
from ..losses import dice_bce_loss
from ..models import PromptableSegmenter
from ..train import FitConfig, History, fit
from .decoder_adapter import adapter_parameters, adapter_state_dict, load_adapter_state_dict

__all__ = [
    "TrainConfig", "TTAConfig", "PromptSet", "prompt_set", "jitter_boxes", "medsam_loss", "PeakMemory",
    "train_decoder", "configure_full_decoder", "SingleImageTTA", "STRUCTURES",
]

STRUCTURES = ("disc", "cup")


# ---------------------------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainConfig:
    """Supervised training of decoder parameters on cached embeddings.

    Attributes:
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        box_jitter: each box coordinate moves by up to this many input pixels (augmentation).
        val_fraction: share of the source training images held out for early stopping (>= 1 image).
        patience: epochs without a better validation Dice before stopping.
    """

    lr: float = 1e-3
    weight_decay: float = 1e-4
    box_jitter: float = 4.0
    val_fraction: float = 0.1
    patience: int = 4

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.weight_decay < 0 or self.box_jitter < 0 or self.patience < 1:
            raise ValueError(f"TrainConfig needs lr > 0, weight_decay >= 0, box_jitter >= 0, patience >= 1: {self}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")


@dataclass(frozen=True)
class TTAConfig:
    """Single-image, episodic test-time adaptation of a decoder adapter.

    Attributes:
        lr: Adam learning rate of the adapter parameters during adaptation.
        box_jitter: input pixels of box jitter (the augmentation of the consistency term).
        consistency_weight: ``lambda`` of the consistency term.
    """

    lr: float = 1e-3
    box_jitter: float = 4.0
    consistency_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.box_jitter < 0 or self.consistency_weight < 0:
            raise ValueError(f"TTAConfig needs lr > 0, box_jitter >= 0, consistency_weight >= 0: {self}")


# ---------------------------------------------------------------------------------------------
# data, losses, memory
# ---------------------------------------------------------------------------------------------

@dataclass
class PromptSet:
    """Images prepared for decoder training: embeddings, one box and one mask per structure.

    Attributes:
        samples: the ``N`` samples.
        boxes: ``(N, 2, 4)`` disc and cup boxes in input pixels.
        masks: ``(N, 2, S, S)`` float {0, 1} disc and cup masks in the input frame.
        embeddings: ``(N, C, h, w)`` float16 encoder outputs, or ``None`` (encoder LoRA re-encodes).
    """

    samples: list[FundusSample]
    boxes: torch.Tensor
    masks: torch.Tensor
    embeddings: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, index: Sequence[int]) -> "PromptSet":
        """The samples at ``index``."""
        idx = torch.as_tensor(list(index), dtype=torch.long)
        return PromptSet([self.samples[i] for i in idx.tolist()], self.boxes[idx], self.masks[idx],
                         None if self.embeddings is None else self.embeddings[idx])


def prompt_set(model: PromptableSegmenter, samples: Sequence[FundusSample],
               embeddings: torch.Tensor | None = None) -> PromptSet:
    """Ground-truth boxes and masks of ``samples`` in ``model``'s input frame (+ their ``(N, C, h, w)`` embeddings)."""
    samples = list(samples)
    if embeddings is not None and len(embeddings) != len(samples):
        raise ValueError(f"{len(embeddings)} embeddings for {len(samples)} samples")
    sizes = [s.image.shape[:2] for s in samples]
    boxes = torch.stack([model.boxes_to_input(np.stack([s.box(k) for s in samples]), sizes).cpu()
                         for k in STRUCTURES], dim=1)  # (N, 2, 4)
    masks = torch.cat([model.preprocess_masks([getattr(s, k) for s in samples]).cpu()
                       for k in STRUCTURES], dim=1)  # (N, 2, S, S)
    return PromptSet(samples, boxes, masks, None if embeddings is None else embeddings.half())


def jitter_boxes(boxes: torch.Tensor, pixels: float, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Move each coordinate of ``(M, 4)`` xyxy boxes by up to ``pixels``, kept inside ``[0, size - 1]`` and ordered."""
    noise = (torch.rand(boxes.shape, generator=generator) * 2 - 1) * pixels  # (M, 4)
    out = (boxes + noise).clamp(0, size - 1)
    lo, hi = torch.minimum(out[:, :2], out[:, 2:]), torch.maximum(out[:, :2], out[:, 2:])
    return torch.cat([lo, hi], dim=1)  # (M, 4)


def medsam_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """MedSAM's loss: soft Dice (one per mask) + BCE, ``(M, 1, S, S)`` logits vs ``(M, 1, S, S)`` {0, 1} masks -> scalar."""
    return dice_bce_loss(logits, masks, dims=(1, 2, 3))


def _frame_dice(logits: torch.Tensor, masks: torch.Tensor) -> float:
    """Mean hard Dice in the input frame, ``(M, 1, S, S)`` each (validation score)."""
    pred, masks = (logits > 0).float(), masks.float()
    inter = (pred * masks).sum(dim=(1, 2, 3))
    return float((2 * inter / (pred.sum(dim=(1, 2, 3)) + masks.sum(dim=(1, 2, 3))).clamp(min=1e-8)).mean())


class PeakMemory:
    """Peak memory of a block: ``torch.cuda.max_memory_allocated`` on CUDA, else sampled process RSS.

    On CPU a thread samples the resident set size every ``interval`` seconds with ``psutil`` and
    reports the peak *increase* over the RSS at entry (``label`` says which was measured).
    """

    def __init__(self, device: torch.device, interval: float = 0.02) -> None:
        self.device, self.interval, self.peak_mb = torch.device(device), interval, float("nan")
        self.label = "peak CUDA allocated (MB)" if self.device.type == "cuda" else "peak RSS increase (MB, sampled)"

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        import psutil

        proc, self._stop = psutil.Process(), threading.Event()
        self._proc = proc
        self._base = self._peak = proc.memory_info().rss

        def sample() -> None:
            while not self._stop.wait(self.interval):
                self._peak = max(self._peak, proc.memory_info().rss)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_mb = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
            return
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._proc.memory_info().rss)  # a last sample: the thread may not have run
        self.peak_mb = (self._peak - self._base) / 2**20


# ---------------------------------------------------------------------------------------------
# supervised training on cached embeddings (adapter or full decoder)
# ---------------------------------------------------------------------------------------------

def configure_full_decoder(model: PromptableSegmenter) -> PromptableSegmenter:
    """Make every mask-decoder parameter trainable and everything else frozen (in place)."""
    model.requires_grad_(False)
    model.mask_decoder.requires_grad_(True)
    return model


def _decode_pairs(model: PromptableSegmenter, data: PromptSet, pairs: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Logits ``(M, 1, S, S)`` for ``(M, 2)`` (image, structure) pairs prompted with ``(M, 4)`` boxes."""
    z = data.embeddings[pairs[:, 0]].float()  # (M, C, h, w)
    return model.decode(z, boxes)


def train_decoder(model: PromptableSegmenter, train: PromptSet, val: PromptSet, config: TrainConfig, *,
                  epochs: int, batch_size: int, seed: int, checkpoint=None, desc: str = "decoder",
                  progress: bool = True) -> History:
    """Train the trainable decoder parameters of ``model`` on cached embeddings with Dice + BCE.

    Args:
        model: a segmenter whose trainable parameters (adapter, or the whole decoder) are set.
        train, val: :class:`PromptSet` with embeddings; ``val`` drives early stopping (mean Dice).
        config: :class:`TrainConfig`.
        epochs, batch_size: from the profile (``adapter_epochs``, ``adapter_batch_size`` prompts per step).
        seed: shuffling and jitter of epoch ``e`` use ``seed + e`` (so a resumed run is the same run).
        checkpoint: file for :func:`mfmda_lib.train.fit`: resumed, or loaded as-is when complete.

    Returns:
        The :class:`History`; the best validation epoch's weights are loaded into ``model``.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters: inject an adapter or configure_full_decoder first")
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    pairs = torch.cartesian_prod(torch.arange(len(train)), torch.arange(len(STRUCTURES)))  # (2N, 2)
    size = model.input_size

    def batches(epoch: int):
        g = torch.Generator().manual_seed(seed + epoch)
        order = pairs[torch.randperm(len(pairs), generator=g)]
        for start in range(0, len(order), batch_size):
            p = order[start:start + batch_size]  # (M, 2)
            yield p, jitter_boxes(train.boxes[p[:, 0], p[:, 1]], config.box_jitter, size, g)

    def loss_fn(m: PromptableSegmenter, batch) -> torch.Tensor:
        p, boxes = batch
        return medsam_loss(_decode_pairs(m, train, p, boxes), train.masks[p[:, 0], p[:, 1]][:, None])

    val_pairs = torch.cartesian_prod(torch.arange(len(val)), torch.arange(len(STRUCTURES)))

    def validate(m: PromptableSegmenter) -> float:
        logits = _decode_pairs(m, val, val_pairs, val.boxes[val_pairs[:, 0], val_pairs[:, 1]])
        return _frame_dice(logits, val.masks[val_pairs[:, 0], val_pairs[:, 1]][:, None])

    return fit(model, optimizer, batches, loss_fn, FitConfig(epochs=epochs, patience=config.patience),
               validate=validate, checkpoint=checkpoint, desc=desc, progress=progress)


# ---------------------------------------------------------------------------------------------
# single-image test-time adaptation of the decoder adapter
# ---------------------------------------------------------------------------------------------

class SingleImageTTA:
    """Episodic single-image TTA of an injected decoder adapter (tent-style verbs).

    Args:
        model: a segmenter with an adapter in ``model.mask_decoder`` (trained on the source).
        optimizer: built by the caller over :func:`adapter_parameters` ``(model.mask_decoder)``.
        config: :class:`TTAConfig`.

    :meth:`adapt` first :meth:`reset` s the adapter and optimizer to their state at construction
    (the source-trained adapter), so every image is adapted from the same start.
    """

    def __init__(self, model: PromptableSegmenter, optimizer: torch.optim.Optimizer, config: TTAConfig) -> None:
        self.model, self.optimizer, self.config = model, optimizer, config
        adapter_parameters(model.mask_decoder)  # fails loudly without an adapter
        self.source_state = adapter_state_dict(model.mask_decoder)
        self.optimizer_state = copy.deepcopy(optimizer.state_dict())

    def reset(self) -> None:
        """Restore the source-trained adapter and a fresh optimizer state."""
        load_adapter_state_dict(self.model.mask_decoder, self.source_state)
        self.optimizer.load_state_dict(self.optimizer_state)

    def objective(self, logits: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
        """``H(p) + lambda * BCE(p, p0)``: ``(K, 1, S, S)`` logits from jittered boxes, ``(K, 1, S, S)`` anchor probabilities."""
        p = torch.sigmoid(logits)
        entropy = -(p * F.logsigmoid(logits) + (1 - p) * F.logsigmoid(-logits)).mean()
        return entropy + self.config.consistency_weight * F.binary_cross_entropy_with_logits(logits, anchor)

    def adapt(self, embedding: torch.Tensor, boxes: torch.Tensor, steps: int, seed: int = 0) -> torch.Tensor:
        """Adapt on one image, then predict it.

        Args:
            embedding: ``(1, C, h, w)`` the image's (cached) embedding.
            boxes: ``(K, 4)`` its prompts in input pixels (disc and cup).
            steps: optimisation steps (``profile.sam_tta_steps`` in notebook 05).

        Returns:
            ``(K, 1, S, S)`` logits of the adapted model for ``boxes``.
        """
        self.reset()
        z = embedding.float().expand(len(boxes), -1, -1, -1)  # (K, C, h, w)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            anchor = torch.sigmoid(self.model.decode(z, boxes))  # (K, 1, S, S) p0 from the given boxes
        for _ in range(steps):
            loss = self.objective(self.model.decode(z, jitter_boxes(boxes, self.config.box_jitter,
                                                                     self.model.input_size, g)), anchor)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        with torch.no_grad():
            return self.model.decode(z, boxes)
