"""Saving and loading a source DDPM (U-Net + fusion block) with a checksummed sidecar.

A checkpoint is two files::

    <name>.pt     {"config": DDPMConfig.to_dict(), "unet": state_dict, "fusion": state_dict}  (float16)
    <name>.json   {"file": "<name>.pt", "sha256": ..., "config": ..., and free metadata: the
                   command that made it, training steps, seconds, final loss}

Loading verifies the SHA-256 first (a :class:`~mfmda_lib.models.ChecksumError` names the file
and how to rebuild it), then ``torch.load(..., weights_only=True)``. Weights are stored as
float16 (half the size; the model runs in float32) and written atomically.

The kit ships one such checkpoint, ``checkpoints/source_ddpm_64px.pt`` (the ``cpu`` profile's
source DDPM), so the ``ci`` and ``cpu`` profiles never need to train it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..io import TORCH, save_artefact, sha256_file
from ..models.base import ChecksumError
from .conditioned import ContentConditionedUNet
from .ddpm import DDPMConfig, build_unet

__all__ = ["SHIPPED_DIR", "save_ddpm", "load_ddpm", "read_sidecar", "sidecar_path"]

#: the repository's ``checkpoints/`` folder (shipped weights)
SHIPPED_DIR = Path(__file__).resolve().parents[2] / "checkpoints"


def sidecar_path(path: str | Path) -> Path:
    """``<name>.json`` beside ``<name>.pt``."""
    return Path(path).with_suffix(".json")


def read_sidecar(path: str | Path) -> dict | None:
    """The sidecar of a checkpoint, or None when the checkpoint or its sidecar is missing."""
    path = Path(path)
    side = sidecar_path(path)
    if not path.is_file() or not side.is_file():
        return None
    return json.loads(side.read_text())


def save_ddpm(path: str | Path, model: ContentConditionedUNet, config: DDPMConfig, **meta) -> str:
    """Write the U-Net and fusion weights (float16) and the sidecar; returns the file's SHA-256."""
    path = Path(path)
    half = lambda m: {k: v.detach().cpu().half() if v.is_floating_point() else v.cpu()  # noqa: E731
                      for k, v in m.state_dict().items()}
    save_artefact(path, {"config": config.to_dict(), "unet": half(model.unet), "fusion": half(model.fusion)}, TORCH,
                  meta={"file": path.name, "config": config.to_dict(), **meta})  # the sidecar, with the sha256
    return read_sidecar(path)["sha256"]


def load_ddpm(path: str | Path, sha256: str | None = None, *, rebuild_hint: str = "") -> tuple[ContentConditionedUNet, DDPMConfig]:
    """Load a conditioned source DDPM after checking its SHA-256.

    Args:
        path: the ``.pt`` file.
        sha256: expected digest; default: the one in the sidecar (which must then exist).
        rebuild_hint: how to recreate the file, appended to error messages.

    Returns:
        ``(model, config)``: float32 weights, eval mode, the content path copied from the U-Net.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DDPM checkpoint {path} not found. {rebuild_hint}".strip())
    if sha256 is None:
        side = read_sidecar(path)
        if side is None:
            raise ChecksumError(f"DDPM checkpoint {path} has no sidecar {sidecar_path(path).name} with its "
                                f"sha256, so it cannot be verified. {rebuild_hint}".strip())
        sha256 = side["sha256"]
    got = sha256_file(path)
    if got != sha256:
        raise ChecksumError(f"DDPM checkpoint {path} has sha256 {got}, expected {sha256}: the file is corrupt "
                            f"or from another version. Delete it and rebuild it. {rebuild_hint}".strip())
    state = torch.load(path, map_location="cpu", weights_only=True)
    config = DDPMConfig.from_dict(state["config"])
    model = ContentConditionedUNet(build_unet(config))
    model.unet.load_state_dict({k: v.float() for k, v in state["unet"].items()})
    model.fusion.load_state_dict({k: v.float() for k, v in state["fusion"].items()})
    model.reload_content_encoder()
    return model.eval(), config
