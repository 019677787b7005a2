"""One fine-tuning run: train a :class:`~.heads.TaskModel` on cached prefix features, then score it.

:func:`train_run` wraps the kit's one loop (:func:`mfmda_lib.train.fit`: tqdm, early stopping on
the validation loss, a resumable atomic checkpoint) and adds what the comparisons need:

* each epoch starts running the encoder at the unit a schedule names (``first_unit(epoch)``);
  the frozen units before it are run once per phase on the cached features (:func:`.features.advance`),
  never inside a step;
* the training memory of :mod:`.memory` (saved activations + gradients + optimizer state);
* a small JSON file beside the checkpoint marks a finished run: a second call loads the best
  weights and the recorded history and memory instead of training again.

:func:`predict` and :func:`score_rows` turn features into per-image rows (disc/cup Dice, or vCDR
error with the glaucoma-suspect label for AUROC).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.sample import GLAUCOMA_SUSPECT_VCDR, FundusSample
from ..evaluation.metrics import dice
from ..io import atomic_write_json
from ..models import PromptableSegmenter
from ..train import FitConfig, History, fit
from .features import advance
from .heads import task_loss
from .memory import SavedTensorMeter, TrainingMemory, training_memory
from .peft_methods import task_model

__all__ = ["TaskData", "task_targets", "RunResult", "train_run", "predict", "score_rows"]


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------

@dataclass
class TaskData:
    """What a run reads for one split.

    Attributes:
        samples: the ``N`` images' samples (for scoring and labels).
        features: ``(N, ...)`` float16 activations entering the model's ``start`` unit.
        targets: ``(N, 2, h, w)`` soft disc/cup masks at the embedding grid, or ``(N,)`` vCDR.
    """

    samples: list[FundusSample]
    features: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return len(self.samples)


def task_targets(segmenter: PromptableSegmenter, task: str, samples: Sequence[FundusSample],
                 grid: int) -> torch.Tensor:
    """Training targets: disc and cup masks in the model's input frame, area-pooled to ``grid x grid``
    (``(N, 2, grid, grid)`` in [0, 1]), or the vCDR ``(N,)``."""
    if task == "vcdr":
        return torch.tensor([s.vcdr for s in samples], dtype=torch.float32)
    masks = torch.cat([segmenter.preprocess_masks([getattr(s, k) for s in samples]).cpu()
                       for k in ("disc", "cup")], dim=1)  # (N, 2, S, S)
    return F.adaptive_avg_pool2d(masks, grid)  # (N, 2, grid, grid)


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------

@dataclass
class RunResult:
    """One trained (or reloaded) run.

    Attributes:
        history: per-epoch ``train_loss``, ``val_score`` (the validation loss) and ``seconds``.
        memory: training memory of the run (``None`` if it was never measured).
        trainable, total: parameter counts of the trained module (encoder + head, + the method's).
        from_checkpoint: the weights were loaded from a finished run, nothing trained now.
        rows: per-image scores, filled by the caller.
    """

    history: History
    memory: TrainingMemory | None
    trainable: int
    total: int
    from_checkpoint: bool
    rows: list[dict] = field(default_factory=list)

    @property
    def seconds_per_epoch(self) -> float:
        """Mean wall time of a training epoch (validation excluded; a gradual-unfreezing epoch that opens a
        new group includes running the still-frozen units once on the cached features)."""
        secs = [e["seconds"] for e in self.history.epochs]
        return float(np.mean(secs)) if secs else math.nan


def _load_finished(net: nn.Module, checkpoint: Path) -> History:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    net.load_state_dict(state["best_state"] or state["model"], strict=False)
    net.eval()
    return History(epochs=state["epochs"], best_epoch=state["best_epoch"], best_score=state["best_score"],
                   resumed_from=len(state["epochs"]))


def train_run(net: nn.Module, param_groups: list[dict], train: TaskData, val: TaskData, *, epochs: int,
              batch_size: int, seed: int, patience: int | None, weight_decay: float,
              first_unit: Callable[[int], int] | None = None, checkpoint: str | Path | None = None,
              desc: str = "run", progress: bool = True) -> RunResult:
    """Train ``net`` (a TaskModel, or a PeftModel around one) with AdamW and early stopping on ``val`` loss.

    Args:
        net: the module to train; its ``requires_grad`` flags are set (see :mod:`.strategies`, :mod:`.peft_methods`).
        param_groups: AdamW groups ``[{"name", "params", "lr"}, ...]``.
        train, val: :class:`TaskData` whose features enter the model's ``start`` unit.
        epochs, batch_size: from the profile; ``seed``: shuffling of epoch ``e`` uses ``seed + e``.
        patience: epochs without a lower validation loss before stopping (None: never).
        first_unit: ``epoch -> index`` of the first unit run with gradients (default: the model's start).
        checkpoint: the run's checkpoint file (resumed; a finished run is loaded instead of trained).

    Returns:
        A :class:`RunResult`; ``net`` holds the best validation epoch's weights, in eval mode.
    """
    model = task_model(net)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    total = sum(p.numel() for p in net.parameters())
    done = None if checkpoint is None else Path(f"{checkpoint}.json")
    if done is not None and done.is_file() and Path(checkpoint).is_file():
        record = json.loads(done.read_text())
        memory = TrainingMemory(**record["memory"]) if record.get("memory") else None
        return RunResult(_load_finished(net, Path(checkpoint)), memory, trainable, total, True)

    device = next(net.parameters()).device
    first_unit = first_unit or (lambda epoch: model.start)
    bank: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    current = {"unit": model.start}

    def features_at(unit: int) -> tuple[torch.Tensor, torch.Tensor]:
        if unit not in bank:  # the units in [start, unit) are still frozen and unchanged: run them once
            bank.clear()
            bank[unit] = (advance(model, train.features, unit, batch_size=batch_size),
                          advance(model, val.features, unit, batch_size=batch_size))
        return bank[unit]

    def batches(epoch: int):
        current["unit"] = first_unit(epoch)
        features_at(current["unit"])
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + epoch))
        for lo in range(0, len(order), batch_size):
            yield order[lo:lo + batch_size]

    def loss_fn(m: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        h = features_at(current["unit"])[0][idx].float().to(device)  # a copy: (b, ...)
        return task_loss(model.task, m(h, from_unit=current["unit"]), train.targets[idx].to(device))

    def validate(m: nn.Module) -> float:
        h_val = features_at(current["unit"])[1]
        losses = [float(task_loss(model.task, m(h_val[i:i + batch_size].float().to(device), from_unit=current["unit"]),
                                  val.targets[i:i + batch_size].to(device))) * len(h_val[i:i + batch_size])
                  for i in range(0, len(h_val), batch_size)]
        return sum(losses) / len(h_val)

    features_at(first_unit(0))  # the frozen units before the first trained one: once, before the timed epochs
    optimizer = torch.optim.AdamW(param_groups, weight_decay=weight_decay)
    meter = SavedTensorMeter(net)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    history = fit(net, optimizer, batches, meter.wrap(loss_fn),
                  FitConfig(epochs=epochs, patience=patience, higher_is_better=False),
                  validate=validate, checkpoint=checkpoint, desc=desc, progress=progress)
    cuda_peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else math.nan
    memory = training_memory(meter, net, optimizer, cuda_peak) if meter.calls else None
    if done is not None:
        atomic_write_json(done, {"memory": None if memory is None else
                                 {k: v for k, v in memory.as_dict().items() if k != "total_mb"},
                                 "epochs_run": len(history.epochs), "stopped_early": history.stopped_early})
    return RunResult(history, memory, trainable, total, False)


# ---------------------------------------------------------------------------------------------
# prediction and scores
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def predict(net: nn.Module, features: torch.Tensor, *, from_unit: int | None = None,
            batch_size: int = 4) -> torch.Tensor:
    """Head outputs on CPU: ``(N, 2, h, w)`` logits or ``(N,)`` vCDR, from features entering ``from_unit``."""
    net.eval()
    device = next(net.parameters()).device
    return torch.cat([net(features[i:i + batch_size].float().to(device), from_unit=from_unit).float().cpu()
                      for i in range(0, len(features), batch_size)])


def score_rows(segmenter: PromptableSegmenter, task: str, outputs: torch.Tensor,
               samples: Sequence[FundusSample], **tags) -> list[dict]:
    """One row per sample: ``tags``, ``domain``, ``sample_id`` and disc/cup Dice or the vCDR scores.

    Segmentation logits are upsampled to the input frame, mapped back to the image (padding
    removed), thresholded at 0; the cup is clipped to the disc. vCDR rows carry ``vcdr_true``,
    ``vcdr_pred``, ``vcdr_abs_err`` and ``suspect`` (true vCDR >= ``GLAUCOMA_SUSPECT_VCDR``).
    """
    rows = []
    size = segmenter.input_size
    for out, s in zip(outputs, samples):
        row = {**tags, "domain": s.domain, "sample_id": s.sample_id}
        if task == "vcdr":
            row.update(vcdr_true=s.vcdr, vcdr_pred=float(out), vcdr_abs_err=abs(float(out) - s.vcdr),
                       suspect=int(s.vcdr >= GLAUCOMA_SUSPECT_VCDR))
        else:
            up = F.interpolate(out[None], size=(size, size), mode="bilinear", align_corners=False)[0]  # (2, S, S)
            disc = (segmenter.postprocess_logits(up[0:1], s.image.shape[:2]) > 0).numpy()
            cup = (segmenter.postprocess_logits(up[1:2], s.image.shape[:2]) > 0).numpy() & disc
            row.update(disc_dice=dice(disc, s.disc), cup_dice=dice(cup, s.cup))
        rows.append(row)
    return rows


