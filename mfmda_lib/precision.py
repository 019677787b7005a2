"""Mixed precision on CUDA, full precision everywhere else: one helper for every training loop.

On a CUDA device the forward pass and the loss run under :func:`torch.autocast`: ``bfloat16`` where
the GPU computes it natively (Ampere and later: A100, L4, H100/H200), ``float16`` otherwise (a
T4 or V100), with a :class:`torch.amp.GradScaler` so small float16 gradients do not underflow.
On a CPU or Apple MPS nothing changes: :func:`autocast` is a no-op context and :func:`grad_scaler`
is a disabled scaler whose ``scale``, ``unscale_`` and ``step`` are the plain operations, so CPU
training is bit-for-bit what it was without this module (``tests/test_train.py`` checks it).

Used by :func:`mfmda_lib.train.fit` (and so by every loop built on it: the SSL pretraining and
downstream runs, fine-tuning, PEFT, adapters) and by the diffusion step loop
(:mod:`mfmda_lib.diffusion.training`, through Accelerate's matching ``mixed_precision``)::

    with autocast(device):
        loss = loss_fn(model, batch)
    scaler.scale(loss).backward()
"""
from __future__ import annotations

import contextlib

import torch

__all__ = ["amp_dtype", "autocast", "grad_scaler", "accelerate_mixed_precision", "module_device"]


def amp_dtype(device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for ``device``: bfloat16 or float16 on CUDA, ``None`` (full precision) elsewhere."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    native_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.bfloat16 if native_bf16 else torch.float16


def autocast(device: torch.device | str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on CUDA (dtype from :func:`amp_dtype`); a no-op context on any other device."""
    dtype = amp_dtype(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)


def grad_scaler(device: torch.device | str) -> torch.amp.GradScaler:
    """A gradient scaler, enabled only for float16 autocast (bfloat16 and full precision need none)."""
    return torch.amp.GradScaler("cuda", enabled=amp_dtype(device) == torch.float16)


def accelerate_mixed_precision(device: torch.device | str) -> str:
    """The same choice in HF Accelerate's words: ``"bf16"``, ``"fp16"`` or ``"no"``."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "no"}[amp_dtype(device)]


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (CPU for a module without parameters)."""
    first = next(module.parameters(), None)
    return first.device if first is not None else torch.device("cpu")
