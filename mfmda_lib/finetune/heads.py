"""Task heads on a foundation encoder, and the model every fine-tuning run trains: encoder suffix + head.

Two tasks on the same encoder output ``z`` (``(B, 256, 64, 64)`` for LiteMedSAM):

* ``"segmentation"``: disc and cup logits from a **linear** head, one ``1 x 1`` convolution per
  embedding cell (``(B, C, h, w) -> (B, 2, h, w)``), upsampled bilinearly to the image. A linear
  head keeps "linear probing" literal: whatever the head cannot express must come from the encoder.
* ``"vcdr"``: the vertical cup-to-disc ratio regressed from the global average of ``z`` by one
  linear layer and a sigmoid (a ratio lies in [0, 1]; ``(B, C, h, w) -> (B,)``); its threshold at
  :data:`~mfmda_lib.data.sample.GLAUCOMA_SUSPECT_VCDR` is the glaucoma-suspect label (scored by AUROC).

:class:`TaskModel` runs an encoder from unit ``start`` (see :mod:`mfmda_lib.models.prefix`: the
units before it are a frozen prefix whose outputs are cached) and then the head. It keeps every
BatchNorm in eval mode: a few images per step cannot estimate batch statistics, so fine-tuning
trains weights and biases, never running statistics.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import dice_bce_loss
from ..models.prefix import encoder_units

__all__ = ["TASKS", "HEAD_LR", "FeatureMapSegmentationHead", "FeatureMapVCDRHead", "build_head", "TaskModel", "task_loss",
           "unit_groups"]

TASKS = ("segmentation", "vcdr")
#: AdamW learning rate of each task's head: a linear head on normalised features converges in the few
#: dozen steps of a cpu run at 3e-2 for segmentation; the one-output vCDR head overshoots above ~3e-3.
HEAD_LR = {"segmentation": 3e-2, "vcdr": 3e-3}


# ---------------------------------------------------------------------------------------------
# heads
# ---------------------------------------------------------------------------------------------

class FeatureMapSegmentationHead(nn.Module):
    """Linear disc/cup head on a feature map: ``(B, C, h, w)`` embedding -> ``(B, 2, h, w)`` logits (a ``1 x 1``
    convolution). The ViT's token heads are :class:`mfmda_lib.ssl.downstream.TokenSegmentationHead` and
    :class:`~mfmda_lib.ssl.downstream.TokenVCDRHead`."""

    def __init__(self, channels: int, n_classes: int = 2) -> None:
        super().__init__()
        self.classifier = nn.Conv2d(channels, n_classes, kernel_size=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.classifier(z)  # (B, 2, h, w)


class FeatureMapVCDRHead(nn.Module):
    """vCDR regression: global average pool, linear, sigmoid: ``(B, C, h, w)`` -> ``(B,)`` in (0, 1)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.regressor = nn.Linear(channels, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.regressor(z.mean(dim=(2, 3))).squeeze(-1))  # (B,)


def build_head(task: str, channels: int) -> nn.Module:
    """The head of ``task`` (one of :data:`TASKS`) for a ``channels``-wide embedding."""
    if task == "segmentation":
        return FeatureMapSegmentationHead(channels)
    if task == "vcdr":
        return FeatureMapVCDRHead(channels)
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def task_loss(task: str, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Training loss: BCE + soft Dice for ``(B, 2, h, w)`` logits vs soft masks of that size; MSE for vCDR ``(B,)``."""
    if task == "vcdr":
        return F.mse_loss(out, target)
    return dice_bce_loss(out, target)


# ---------------------------------------------------------------------------------------------
# the encoder as groups of units
# ---------------------------------------------------------------------------------------------

def unit_groups(names: list[str]) -> list[tuple[str, list[str]]]:
    """Group unit names by stage, input to output: ``layers.2.blocks.0 .. layers.2.downsample`` -> ``layers.2``.

    Gradual unfreezing and layer-wise learning rates treat each group as one layer of the network.
    """
    groups: list[tuple[str, list[str]]] = []
    for name in names:
        parts = name.split(".")
        # TinyViT: a stage (layers.i) is a group; SAM ViT blocks.i, patch_embed, neck: each its own group
        key = ".".join(parts[:2]) if parts[0] == "layers" else name
        if groups and groups[-1][0] == key:
            groups[-1][1].append(name)
        else:
            groups.append((key, [name]))
    return groups


# ---------------------------------------------------------------------------------------------
# the model a run trains
# ---------------------------------------------------------------------------------------------

class TaskModel(nn.Module):
    """An image encoder read from unit ``start`` on, with a task head.

    Args:
        encoder: the image encoder (a private copy: the run changes it); all of it is registered, so
            parameter counts and percentages refer to the whole foundation encoder plus the head.
        head: ``(B, C, h, w) -> output`` (see :func:`build_head`).
        task: one of :data:`TASKS`.
        start: name or index of the first unit this model runs; inputs are the prefix's outputs there.

    ``forward(h, from_unit=None)`` runs units ``[from_unit, end)`` then the head; ``from_unit``
    defaults to ``start`` and may be later (the units in between must then be frozen: their
    outputs come from a cache).
    """

    def __init__(self, encoder: nn.Module, head: nn.Module, task: str, start: str | int) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.encoder, self.head, self.task = encoder, head, task
        self._units = encoder_units(encoder)  # a plain list: the modules are registered through ``encoder``
        self.names = [name for name, _ in self._units]
        self.start = self.unit_index(start)

    def unit_index(self, unit: str | int) -> int:
        """Index of a unit name (an int is checked and returned); ``len(names)`` means "after the encoder"."""
        if isinstance(unit, str):
            if unit not in self.names:
                raise ValueError(f"unknown encoder unit {unit!r}; units are {self.names}")
            return self.names.index(unit)
        if not 0 <= unit <= len(self.names):
            raise ValueError(f"unit index must be in [0, {len(self.names)}], got {unit}")
        return unit

    @property
    def end(self) -> int:
        """Index after the last unit (the head's input)."""
        return len(self.names)

    @property
    def suffix_names(self) -> list[str]:
        """Units this model runs (from ``start``)."""
        return self.names[self.start:]

    def unit_modules(self, names: list[str] | None = None) -> list[nn.Module]:
        """The modules of ``names`` (default: the suffix)."""
        wanted = self.suffix_names if names is None else names
        return [module for name, module in self._units if name in wanted]

    def train(self, mode: bool = True) -> "TaskModel":
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()  # frozen running statistics: a few images cannot estimate them
        return self

    def features(self, h: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """Run units ``[lo, hi)`` on their input ``h``."""
        for _, module in self._units[lo:hi]:
            h = module(h)
        return h

    def forward(self, h: torch.Tensor, from_unit: int | None = None) -> torch.Tensor:
        """``h``: the encoder's activation at ``from_unit`` (default ``start``) -> head output."""
        lo = self.start if from_unit is None else from_unit
        if lo < self.start:
            raise ValueError(f"from_unit {lo} is before this model's start {self.start}")
        return self.head(self.features(h, lo, self.end))
