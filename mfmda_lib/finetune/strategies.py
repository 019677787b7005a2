"""Four ways to fine-tune a pretrained encoder: which parameters train, at which learning rate, from when.

=======================  =====================================================================
strategy                 what trains
=======================  =====================================================================
``linear_probe``         the head only; the encoder is frozen (its output is cached)
``full_finetune``        head + every encoder unit from ``start``, one learning rate
``gradual_unfreezing``   head first; then one more group of units every ``unfreeze_every``
                         epochs, from the top (ULMFiT, Howard & Ruder 2018, sec. 3.2)
``discriminative_lr``    head + every unit from the start, but group ``g`` (counted from the top,
                         0 = next to the head) at ``lr_encoder * layer_decay ** g`` (ULMFiT's
                         discriminative fine-tuning, eq. 2; BEiT's layer-wise lr decay)
=======================  =====================================================================

A *group* is one stage of the encoder (:func:`~mfmda_lib.finetune.heads.unit_groups`:
``layers.2``, ``layers.3``, ``neck`` for LiteMedSAM's TinyViT).

Frozen means *cached*: a strategy does not only set ``requires_grad``, it says which unit each
epoch starts running from (:func:`first_trained_unit`); the frozen units before it are never run
in a training step (their outputs come from :mod:`.features`). Gradual unfreezing therefore keeps
``requires_grad=True`` on its later groups from the first epoch (so checkpoints and the restored
best epoch always hold every parameter it may change), and they get no gradient until their
epoch comes, because they are not run with autograd before then.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .heads import HEAD_LR, TaskModel, unit_groups

__all__ = ["StrategyConfig", "STRATEGIES", "configure", "first_trained_unit", "group_learning_rates",
           "unit_table", "schedule_table"]


@dataclass(frozen=True)
class StrategyConfig:
    """One fine-tuning strategy.

    Attributes:
        name: label in tables and checkpoint names.
        train_encoder: ``False`` for a linear probe.
        lr_head: AdamW learning rate of the head (``None``: the task's :data:`~.heads.HEAD_LR`).
        lr_encoder: AdamW learning rate of the encoder (of its top group with ``layer_decay``).
        layer_decay: learning-rate factor per group below the top (1: one rate for all).
        unfreeze_every: epochs between unfreezing two groups (None: all trainable from epoch 0).
        weight_decay: AdamW weight decay.
    """

    name: str
    train_encoder: bool = True
    lr_head: float | None = None
    lr_encoder: float = 1e-4
    layer_decay: float = 1.0
    unfreeze_every: int | None = None
    weight_decay: float = 0.01

    def __post_init__(self) -> None:
        if (self.lr_head is not None and self.lr_head <= 0) or self.lr_encoder <= 0 or self.weight_decay < 0:
            raise ValueError(f"{self.name}: learning rates must be > 0 and weight_decay >= 0")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"{self.name}: layer_decay must be in (0, 1], got {self.layer_decay}")
        if self.unfreeze_every is not None and self.unfreeze_every < 1:
            raise ValueError(f"{self.name}: unfreeze_every must be >= 1 or None, got {self.unfreeze_every}")
        if not self.train_encoder and (self.layer_decay != 1.0 or self.unfreeze_every is not None):
            raise ValueError(f"{self.name}: layer_decay and unfreeze_every need train_encoder=True")


#: The four strategies of notebook 03 (ULMFiT divides the rate by 2.6 per layer: decay ~0.38).
STRATEGIES: dict[str, StrategyConfig] = {
    "linear_probe": StrategyConfig("linear_probe", train_encoder=False),
    "full_finetune": StrategyConfig("full_finetune"),
    "gradual_unfreezing": StrategyConfig("gradual_unfreezing", unfreeze_every=1),
    "discriminative_lr": StrategyConfig("discriminative_lr", layer_decay=1 / 2.6),
}


def group_learning_rates(model: TaskModel, strategy: StrategyConfig) -> list[tuple[str, list[str], float]]:
    """``(group, unit names, lr)`` for each group of the suffix, input to output."""
    groups = unit_groups(model.suffix_names)
    depth = len(groups)
    return [(key, names, strategy.lr_encoder * strategy.layer_decay ** (depth - 1 - g))
            for g, (key, names) in enumerate(groups)]


def configure(model: TaskModel, strategy: StrategyConfig) -> list[dict]:
    """Set ``requires_grad`` for ``strategy`` (in place) and return AdamW parameter groups.

    Returns:
        ``[{"name", "params", "lr"}, ...]``: the head, then (unless a linear probe) one group per
        encoder stage. The prefix before ``model.start`` is always frozen.
    """
    model.requires_grad_(False)
    model.head.requires_grad_(True)
    head_lr = strategy.lr_head or HEAD_LR[model.task]
    groups = [{"name": "head", "params": list(model.head.parameters()), "lr": head_lr}]
    if strategy.train_encoder:
        for key, names, lr in group_learning_rates(model, strategy):
            params = [p for m in model.unit_modules(names) for p in m.parameters()]
            for p in params:
                p.requires_grad_(True)
            if params:
                groups.append({"name": key, "params": params, "lr": lr})
    return groups


def first_trained_unit(model: TaskModel, strategy: StrategyConfig, epoch: int) -> int:
    """Index of the first unit that runs with gradients at ``epoch`` (``model.end``: the head only)."""
    if not strategy.train_encoder:
        return model.end
    if strategy.unfreeze_every is None:
        return model.start
    groups = unit_groups(model.suffix_names)
    n_open = min(len(groups), epoch // strategy.unfreeze_every)  # groups unfrozen so far, from the top
    if n_open == 0:
        return model.end
    return model.unit_index(groups[len(groups) - n_open][1][0])



def unit_table(model: TaskModel) -> pd.DataFrame:
    """One row per encoder unit: its stage group, parameters, and whether it is in the cached prefix."""
    groups = {name: key for key, names in unit_groups(model.names) for name in names}
    rows = [{"unit": name, "group": groups[name], "params": sum(p.numel() for p in module.parameters()),
             "role": "frozen prefix (cached)" if i < model.start else "may train"}
            for i, (name, module) in enumerate(model._units)]
    return pd.DataFrame(rows).set_index("unit")


def schedule_table(model: TaskModel, strategies: list[StrategyConfig], epochs: int) -> pd.DataFrame:
    """For each strategy and parameter group: its learning rate and the first epoch it trains (``-`` never)."""
    rows = []
    for strategy in strategies:
        starts = [first_trained_unit(model, strategy, e) for e in range(epochs)]
        rows.append({"strategy": strategy.name, "group": "head", "lr": strategy.lr_head or HEAD_LR[model.task],
                     "trains_from_epoch": 0})
        if not strategy.train_encoder:
            continue
        for key, names, lr in group_learning_rates(model, strategy):
            first = model.unit_index(names[0])
            epoch = next((e for e, s in enumerate(starts) if s <= first), None)
            rows.append({"strategy": strategy.name, "group": key, "lr": lr,
                         "trains_from_epoch": "-" if epoch is None else epoch})
    return pd.DataFrame(rows).set_index(["strategy", "group"])
