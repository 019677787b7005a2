"""Training memory, measured deterministically: what a method must keep to take one optimisation step.

Peak resident memory is a poor way to compare methods on a CPU: the allocator keeps and reuses
freed pages, so the number depends on what ran before. What a method really needs on top of the
model's weights is

* the **activations saved for backward** during the forward pass (counted with
  :func:`torch.autograd.graph.saved_tensors_hooks`, each storage once, parameters excluded),
* the **gradients** of the parameters that receive one,
* the **optimizer state** (AdamW: two tensors per trained parameter).

Their sum is the "training memory (MB)" of the kit's tables. It is exact for the step measured
and the same on every run. On CUDA, ``torch.cuda.max_memory_allocated`` is reported beside it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn

__all__ = ["TrainingMemory", "SavedTensorMeter", "gradient_bytes", "optimizer_state_bytes", "training_memory"]

MB = 2 ** 20


@dataclass
class TrainingMemory:
    """Memory a training step needs beyond the weights (MB), and the CUDA peak when there is one.

    Attributes:
        activations_mb: peak bytes saved for backward in one step's forward pass.
        gradients_mb: gradients of the parameters that received one.
        optimizer_mb: the optimizer's state tensors.
        cuda_peak_mb: ``torch.cuda.max_memory_allocated`` during training (``nan`` off CUDA).
    """

    activations_mb: float
    gradients_mb: float
    optimizer_mb: float
    cuda_peak_mb: float = math.nan

    @property
    def total_mb(self) -> float:
        """Activations + gradients + optimizer state."""
        return self.activations_mb + self.gradients_mb + self.optimizer_mb

    def as_dict(self) -> dict:
        return {**asdict(self), "total_mb": self.total_mb}


class SavedTensorMeter:
    """Counts the bytes autograd saves for backward while a loss is computed.

    Args:
        model: its parameters (and their views) are not counted: they exist whatever the method.

    Use :meth:`wrap` on a ``loss_fn(model, batch)``: every call is measured and :attr:`peak_bytes`
    keeps the largest. Each storage counts once, however many graph nodes save it.
    """

    def __init__(self, model: nn.Module) -> None:
        self._param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.peak_bytes = 0
        self.calls = 0

    def _measure(self, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr not in self._param_storages:
                seen[ptr] = max(seen.get(ptr, 0), storage.nbytes())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = fn()
        self.peak_bytes = max(self.peak_bytes, sum(seen.values()))
        self.calls += 1
        return out

    def wrap(self, loss_fn: Callable) -> Callable:
        """``loss_fn(model, batch)`` measured on every call."""
        def measured(model, batch):
            return self._measure(lambda: loss_fn(model, batch))
        return measured


def gradient_bytes(model: nn.Module) -> int:
    """Bytes of the ``.grad`` tensors currently held by ``model``'s parameters."""
    return sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in the optimizer's per-parameter state (e.g. AdamW's two moments)."""
    return sum(v.numel() * v.element_size() for state in optimizer.state.values()
               for v in state.values() if torch.is_tensor(v))


def training_memory(meter: SavedTensorMeter, model: nn.Module, optimizer: torch.optim.Optimizer,
                    cuda_peak_bytes: float = math.nan) -> TrainingMemory:
    """A :class:`TrainingMemory` after training: the meter's peak, the gradients left by the last step, the state."""
    if meter.calls == 0:
        raise ValueError("the SavedTensorMeter measured no step: wrap the loss_fn that training calls")
    return TrainingMemory(activations_mb=meter.peak_bytes / MB, gradients_mb=gradient_bytes(model) / MB,
                          optimizer_mb=optimizer_state_bytes(optimizer) / MB, cuda_peak_mb=cuda_peak_bytes / MB)
