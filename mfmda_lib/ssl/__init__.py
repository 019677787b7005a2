"""Self-supervised pretraining of a small ViT on unlabelled fundus images (notebook 02).

Two families, one encoder:

* :mod:`.mae`: masked autoencoding, a *reconstruction* method (He et al. 2022);
* :mod:`.dino`: self-distillation with an EMA teacher, a *joint-embedding* method (Caron et al. 2021);

both pretrained on :mod:`.pool` (many unlabelled images of every hospital). Then :mod:`.downstream`
measures what pretraining buys with few labels (linear probe and fine-tuning; vCDR / glaucoma
suspect and disc/cup segmentation), :mod:`.pretraining` pretrains (or loads) each encoder, caching
the weights for later notebooks (one loop; ``SSL_METHODS`` holds each method as a strategy: config, steps, view, loss, what is kept), :mod:`.experiment` runs the comparisons for a profile, and
:mod:`.verdict` turns the numbers into sentences with 95% intervals over draws and test images.

Verbs: ``unlabelled_pool``, ``pretrained_encoder`` (load if present, else pretrain),
``train_downstream``, ``evaluate``, ``select_encoder_lr`` (``encoder_lr_configs``: its saved choice),
``run_label_budgets``, ``label_mean_vcdr``, ``verdict``, ``takeaways``.
"""
from .dino import (DINO, DINOConfig, camera_jitter, dino_loss, local_crop_side, multi_crop,
                   teacher_entropy, update_center)
from .downstream import (ALL_PROTOCOLS, LABEL_BUDGETS, DownstreamConfig, DownstreamModel,
                         TokenSegmentationHead, TokenVCDRHead,
                         budget_subset, evaluate, train_downstream, trainable_share)
from .experiment import (ENCODER_LR_GRID, LR_SELECTION_RESULT, TASK_SCORES, LRSelection, SSLBenchmark,
                         encoder_lr_configs, label_mean_rows, label_mean_vcdr, run_label_budgets, select_encoder_lr,
                         validation_samples)
from .pretraining import SSL_METHODS, pretrained_encoder, pretraining_steps, to_uint8, vit_config, warmup_cosine
from .mae import MAE, MAEConfig, masked_reconstruction_loss, random_masking
from .pool import pool_domains, unlabelled_pool
from .verdict import (collapse_check, model_comparison, smallest_budget_comparison, takeaways, vcdr_reference_comparison,
                      verdict)
from .vit import ViTConfig, ViTEncoder, load_encoder, patchify, save_encoder, standardize_images, unpatchify

__all__ = [
    "ViTConfig", "ViTEncoder", "patchify", "unpatchify", "standardize_images", "save_encoder", "load_encoder",
    "MAEConfig", "MAE", "random_masking", "masked_reconstruction_loss",
    "DINOConfig", "DINO", "multi_crop", "local_crop_side", "camera_jitter", "update_center",
    "dino_loss", "teacher_entropy",
    "LABEL_BUDGETS", "DownstreamConfig", "DownstreamModel", "TokenVCDRHead", "TokenSegmentationHead", "budget_subset",
    "train_downstream", "evaluate", "ALL_PROTOCOLS", "trainable_share",
    "unlabelled_pool", "pool_domains",
    "SSL_METHODS", "TASK_SCORES", "SSLBenchmark", "pretrained_encoder", "pretraining_steps", "warmup_cosine",
    "ENCODER_LR_GRID", "LRSelection", "validation_samples", "select_encoder_lr", "LR_SELECTION_RESULT",
    "encoder_lr_configs",
    "run_label_budgets", "label_mean_vcdr", "label_mean_rows", "smallest_budget_comparison", "verdict",
    "model_comparison", "vcdr_reference_comparison", "collapse_check", "takeaways", "to_uint8", "vit_config",
]
