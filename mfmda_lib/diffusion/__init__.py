"""Diffusion models and MFM-DA stage 1 (notebooks 07-08): train / sample / translate.

Modules, bottom up (a module imports only those above it):

- ``ddpm``: the DDPM's config, its ``diffusers`` U-Net and schedulers, the forward process q(x_t | x_0)
- ``conditioned``: MFM-DA's content-conditioned U-Net (source image fused at the bottleneck, time-gated)
- ``training``: one resumable step loop under HF Accelerate (EMA, tqdm, atomic checkpoints);
  ``train_ddpm`` and ``train_fusion``
- ``sampling``: ancestral and DDIM generation, SDEdit; ``translate``: structure-guided translation
  and the kit's low-resolution-change-at-full-resolution composition
- ``checkpoint``: float16 checkpoints with a checksummed sidecar; ``source``: a profile's source
  DDPM (shipped checkpoint, else cache, else train)
- ``features`` (the frozen encoder ``f``), ``diaa`` (the Dynamic Instance-Aware Adaptor),
  ``losses`` (L_DC, style, time weights), ``adaptation`` (stage 1; each variant a strategy in
  ``VARIANT_STRATEGIES``: whether a DIAA learns ``Delta``, and one iteration's loss)
- ``stage1``: the contract ``translated_source(profile, target_domain, variant=...)`` and
  ``run_stage1`` for explicit images; ``metrics`` and ``comparison`` (notebook 08); ``figures``
"""
from .adaptation import VARIANTS, Stage1Config, adapt
from .conditioned import ContentConditionedUNet
from .ddpm import DDPMConfig, alphas_cumprod, build_scheduler, build_unet, q_sample
from .diaa import DIAA
from .sampling import sample, sdedit
from .stage1 import run_stage1, translated_source
from .training import DDPMTrainConfig, train_ddpm
from .translate import TranslateConfig, translate

train = train_ddpm  # the family's verbs: train / sample / translate

__all__ = ["DDPMConfig", "build_unet", "build_scheduler", "alphas_cumprod", "q_sample", "ContentConditionedUNet",
           "DDPMTrainConfig", "train", "train_ddpm", "sample", "sdedit", "TranslateConfig", "translate", "DIAA",
           "VARIANTS", "Stage1Config", "adapt", "run_stage1", "translated_source"]
