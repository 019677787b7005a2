"""The source DDPM of a profile: its config, its training images, and load-if-present-else-train.

Where the weights come from, in order:

1. the **shipped** checkpoint ``checkpoints/source_ddpm_64px.pt`` when its architecture equals the
   profile's (``ci`` and ``cpu``), verified against the SHA-256 in its sidecar;
2. a checkpoint this kit trained before, under ``<cache>/mfmda/source_ddpm/`` (also verified);
3. otherwise it is trained now (``ddpm_train_steps`` steps on ``ddpm_train_images`` source
   images, then ``ddpm_fusion_steps`` steps of the fusion block), resumably, and saved to (2).

``data_scripts/train_source_ddpm.py --profile cpu`` is the command that made the shipped file.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from ..data import SOURCE_DOMAIN
from ..data.synthetic import generate_sample
from ..environment import paths
from ..profiles import Profile
from .checkpoint import SHIPPED_DIR, load_ddpm, read_sidecar, save_ddpm
from .conditioned import ContentConditionedUNet
from .ddpm import DDPMConfig, alphas_cumprod, build_unet, to_signed_tensor
from .training import DDPMTrainConfig, make_accelerator, train_ddpm, train_fusion

__all__ = ["SHIPPED_NAME", "ddpm_config", "ddpm_train_config", "fusion_train_config", "source_training_images",
           "source_ddpm_path", "train_source_ddpm", "load_source_ddpm"]

SHIPPED_NAME = "source_ddpm_64px.pt"


def ddpm_config(profile: Profile) -> DDPMConfig:
    """The profile's DDPM architecture: ``ddpm_image_size``, levels of ``ddpm_base_channels`` x (1, 2, 4, 4)."""
    c = profile.ddpm_base_channels
    return DDPMConfig(image_size=profile.ddpm_image_size, block_out_channels=(c, 2 * c, 4 * c, 4 * c))


def ddpm_train_config(profile: Profile, steps: int | None = None) -> DDPMTrainConfig:
    """Training of the source DDPM: ``ddpm_train_steps`` (or ``steps``) of ``ddpm_batch_size`` images."""
    steps = profile.ddpm_train_steps if steps is None else steps
    return DDPMTrainConfig(steps=steps, batch_size=profile.ddpm_batch_size, seed=profile.seed,
                           checkpoint_every=max(1, min(100, steps)), warmup_steps=min(50, steps))


def fusion_train_config(profile: Profile) -> DDPMTrainConfig:
    """Pretraining of the fusion block: ``ddpm_fusion_steps`` steps, no EMA."""
    return DDPMTrainConfig(steps=profile.ddpm_fusion_steps, batch_size=profile.ddpm_batch_size, lr=1e-3,
                           ema_decay=0.0, seed=profile.seed + 1, checkpoint_every=max(1, min(100, profile.ddpm_fusion_steps)),
                           warmup_steps=min(20, profile.ddpm_fusion_steps))


def source_training_images(profile: Profile, n: int | None = None, *, progress: bool = True) -> torch.Tensor:
    """The first ``n`` (default ``ddpm_train_images``) synthetic source-domain training images.

    They are rendered at the benchmark's ``image_size`` (the first ones are exactly the
    benchmark's source training images) and area-downsampled to ``ddpm_image_size``.

    Returns:
        ``(n, 3, S, S)`` float32 in ``[-1, 1]``.
    """
    n = profile.ddpm_train_images if n is None else n
    size = profile.ddpm_image_size
    images = [to_signed_tensor([generate_sample(SOURCE_DOMAIN, i, split="train", size=profile.image_size,
                                         severity=profile.severity, seed=profile.seed).image], size)
              for i in tqdm(range(n), desc="source images for the DDPM", disable=not progress, leave=False)]
    return torch.cat(images)


def _config_key(profile: Profile) -> str:
    blob = json.dumps({"ddpm": ddpm_config(profile).to_dict(), "train": vars(ddpm_train_config(profile)),
                       "fusion": vars(fusion_train_config(profile)), "images": profile.ddpm_train_images,
                       "image_size": profile.image_size, "severity": profile.severity, "seed": profile.seed},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def source_ddpm_path(profile: Profile, shipped_dir: str | Path | None = None) -> Path:
    """The checkpoint the profile uses: the shipped one if its architecture matches, else one in the cache."""
    shipped = Path(shipped_dir or SHIPPED_DIR) / SHIPPED_NAME
    side = read_sidecar(shipped)
    if side is not None and side.get("config") == ddpm_config(profile).to_dict():
        return shipped
    return paths().cache / "mfmda" / "source_ddpm" / f"source_ddpm_{profile.ddpm_image_size}px_{_config_key(profile)}.pt"


def train_source_ddpm(profile: Profile, out: str | Path, *, accelerator: Accelerator | None = None,
                      progress: bool = True, command: str | None = None) -> str:
    """Train the profile's source DDPM and its fusion block, resumably, and save them to ``out``.

    Intermediate checkpoints (``<out>.ddpm-train.pt``, ``<out>.fusion-train.pt``) let a killed
    run resume; they are deleted once ``out`` is written.

    Returns:
        the SHA-256 of ``out``.
    """
    out = Path(out)
    accelerator = accelerator or make_accelerator()
    config = ddpm_config(profile)
    images = source_training_images(profile, progress=progress)
    alpha_bar = alphas_cumprod(config)
    torch.manual_seed(profile.seed)
    unet = build_unet(config)
    start = time.perf_counter()
    ddpm_ckpt, fusion_ckpt = out.with_name(out.name + ".ddpm-train.pt"), out.with_name(out.name + ".fusion-train.pt")
    train_cfg = ddpm_train_config(profile)
    hist = train_ddpm(unet, images, alpha_bar, train_cfg, accelerator=accelerator, checkpoint=ddpm_ckpt,
                      progress=progress)
    model = ContentConditionedUNet(unet)  # the content path is a copy of the trained (EMA) U-Net
    fusion_cfg = fusion_train_config(profile)
    fusion_hist = train_fusion(model, images, alpha_bar, fusion_cfg, accelerator=accelerator,
                               checkpoint=fusion_ckpt, progress=progress)
    tail = lambda h: float(np.mean(h.series()[-50:]))  # noqa: E731
    digest = save_ddpm(out, model, config, profile=profile.name, train_images=len(images),
                       train=vars(train_cfg) | {"final_loss_mean_last_50": tail(hist)},
                       fusion=vars(fusion_cfg) | {"final_loss_mean_last_50": tail(fusion_hist)},
                       seconds=round(time.perf_counter() - start, 1),
                       torch_threads=torch.get_num_threads(), device=str(accelerator.device),
                       command=command or f"python data_scripts/train_source_ddpm.py --profile {profile.name}")
    for ckpt in (ddpm_ckpt, fusion_ckpt):
        ckpt.unlink(missing_ok=True)
    return digest


def load_source_ddpm(profile: Profile, *, accelerator: Accelerator | None = None, progress: bool = True,
                     shipped_dir: str | Path | None = None) -> tuple[ContentConditionedUNet, DDPMConfig, Path]:
    """The profile's conditioned source DDPM: loaded (checksum verified) if present, else trained and saved.

    Returns:
        ``(model, config, path)``: the model in eval mode on the CPU and the checkpoint it came from.
    """
    path = source_ddpm_path(profile, shipped_dir)
    if read_sidecar(path) is None:
        if path.parent == Path(shipped_dir or SHIPPED_DIR):  # pragma: no cover - shipped files come in pairs
            raise FileNotFoundError(f"{path} has no sidecar")
        train_source_ddpm(profile, path, accelerator=accelerator, progress=progress)
    model, config = load_ddpm(path, rebuild_hint=f"Rebuild: python data_scripts/train_source_ddpm.py "
                                                  f"--profile {profile.name} --out {path}")
    return model, config, path
