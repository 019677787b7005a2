"""Self-supervised pretraining of a small ViT on unlabelled fundus images (notebook 02).

Two families, one encoder:

* :mod:`.mae`: masked autoencoding, a *reconstruction* method (He et al. 2022);
* :mod:`.dino`: self-distillation with an EMA teacher, a *joint-embedding* method (Caron et al. 2021);

then :mod:`.downstream` measures what pretraining buys with few labels (linear probe and
fine-tuning; vCDR / glaucoma suspect and disc/cup segmentation), and :mod:`.experiment` runs it
all for a profile, caching the pretrained weights for later notebooks.

Verbs: ``pretrained_encoder`` (load if present, else pretrain), ``train_downstream``,
``evaluate``, ``run_label_budgets``.
"""
from .dino import DINO, DINOConfig, dino_loss, ema_update, two_views, update_center
from .downstream import (LABEL_BUDGETS, DownstreamConfig, DownstreamModel, SegmentationHead, VCDRHead,
                         budget_subset, evaluate, train_downstream)
from .experiment import (METHODS, SSLBenchmark, pretrained_encoder, run_label_budgets, to_uint8, unlabelled_pool,
                         vit_config)
from .mae import MAE, MAEConfig, masked_reconstruction_loss, random_masking
from .vit import ViTConfig, ViTEncoder, load_encoder, patchify, save_encoder, unpatchify

__all__ = [
    "ViTConfig", "ViTEncoder", "patchify", "unpatchify", "save_encoder", "load_encoder",
    "MAEConfig", "MAE", "random_masking", "masked_reconstruction_loss",
    "DINOConfig", "DINO", "two_views", "ema_update", "update_center", "dino_loss",
    "LABEL_BUDGETS", "DownstreamConfig", "DownstreamModel", "VCDRHead", "SegmentationHead", "budget_subset",
    "train_downstream", "evaluate",
    "METHODS", "SSLBenchmark", "pretrained_encoder", "run_label_budgets", "to_uint8", "unlabelled_pool", "vit_config",
]
