"""Test-time adaptation (TTA) of a segmentation model, behind one interface.

Every method wraps a *copy* of a trained segmenter (``(B, 3, H, W)`` images -> ``(B, 2, H, W)``
disc and cup logits) and exposes the same verbs, so a notebook compares them in one loop:

- ``adapt(x)``: adapt on the unlabelled test batch ``x`` and return its logits. As in Tent's
  ``forward_and_adapt`` (DequanWang/tent), a gradient method takes **one** optimisation step per
  batch by default, and the logits it returns are the outputs of the forward pass that made that
  step. ``TTAConfig(steps=k)`` is the named multi-step option (k steps, the outputs of the last
  updating forward pass, as ``tent.Tent(steps=k)``);
- ``predict(x)``: logits with the current state, no update (e.g. to measure forgetting);
- ``reset()``: back to the state right after wrapping (weights, statistics, optimizer, seeds).

Members, each one job (the structure follows Tent's ``configure_model`` / ``collect_params`` /
``forward_and_adapt`` / ``reset``):

=================  ============================================================================
``SourceOnly``     no adaptation: the source model with its running BatchNorm statistics
``NormStats``      BN adaptation: normalise with the test batch's statistics, no gradient
                   (Schneider et al., NeurIPS 2020; ``norm.py`` of DequanWang/tent)
``Tent``           + minimise per-pixel prediction entropy over the BN affine parameters only
                   (Wang et al., ICLR 2021; ``tent.py``)
``PseudoLabel``    + self-training: BCE on the model's own confident pixels (Lee, 2013)
``MEMO``           episodic: per test image, one SGD step on the marginal entropy of the
                   predictions over AugMix views, BN statistics mixed with the source's by a
                   prior (Zhang et al., NeurIPS 2022; zhangmarvin/memo)
``MeanTeacher``    an EMA teacher, augmentation-averaged, supervises the student; stochastic
                   restore to the source weights (CoTTA, Wang et al., CVPR 2022; qinenergy/cotta)
=================  ============================================================================

The outputs are two independent sigmoid channels, so "entropy" is the binary entropy of each
channel's probability, averaged over pixels and channels. :data:`REFERENCE_NOTES` lists, per
method, what the kit does differently from its authors' code; notebook 06 prints it.

This module holds the batch-statistics and entropy methods and the registry of every method. The shared
interface (:class:`TTAConfig`, :class:`TTAMethod`, the entropy losses) is in :mod:`.tta_base`; MEMO, the mean
teacher and their augmentations are in :mod:`.tta_augmented`.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from .tta_augmented import MEMO, MeanTeacher
from .tta_base import TTAMethod, binary_entropy

__all__ = ["SourceOnly", "NormStats", "Tent", "PseudoLabel", "TTA_METHODS", "REFERENCE_NOTES"]


class SourceOnly(TTAMethod):
    """No adaptation: the source model in eval mode (running BN statistics)."""

    name = "source_only"
    use_batch_stats = False


class NormStats(TTAMethod):
    """BN adaptation: normalise each test batch with its own statistics; no parameter changes."""

    name = "norm_stats"


class Tent(TTAMethod):
    """Tent: batch statistics + minimise mean per-pixel binary entropy over the BN affine params."""

    name = "tent"
    default_params = "norm"

    def loss(self, outputs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return binary_entropy(outputs).mean()


class PseudoLabel(TTAMethod):
    """Self-training: BCE on pixels the model itself is confident about (others are ignored)."""

    name = "pseudo_label"
    default_params = "norm"

    def pseudo_labels(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(labels, mask)``, both ``(B, 2, H, W)`` floats: hard labels and 1 where confident."""
        p = torch.sigmoid(logits.detach())
        t = self.config.threshold
        mask = ((p > t) | (p < 1 - t)).float()
        return (p > 0.5).float(), mask

    def loss(self, outputs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        labels, mask = self.pseudo_labels(outputs)
        bce = F.binary_cross_entropy_with_logits(outputs, labels, reduction="none")  # (B, 2, H, W)
        return (bce * mask).sum() / mask.sum().clamp_min(1.0)


#: Every method by name, in the order the notebook shows them.
TTA_METHODS: dict[str, type[TTAMethod]] = {cls.name: cls for cls in
                                       (SourceOnly, NormStats, Tent, PseudoLabel, MEMO, MeanTeacher)}

#: Per method: its reference code, and what the kit does differently from it (notebook 06 prints this).
REFERENCE_NOTES: dict[str, dict[str, object]] = {
    "norm_stats": {
        "reference": "DequanWang/tent norm.py (Schneider et al. 2020)",
        "differs": ["no running average is kept (norm.py updates one with momentum 0.1 but never uses it in the "
                    "forward pass: the outputs are the same)",
                    "no source prior: Schneider et al.'s N = 0, the batch statistics alone"],
    },
    "tent": {
        "reference": "DequanWang/tent tent.py, cfgs/tent.yaml (Adam 1e-3, 1 step)",
        "differs": ["entropy of two independent sigmoid channels (disc, cup) per pixel, not of a softmax over classes",
                    "layers other than BatchNorm stay in eval mode (tent.py calls model.train(); the U-Net has no "
                    "dropout, so the outputs are the same)"],
    },
    "pseudo_label": {
        "reference": "Lee 2013 (no test-time code): the test-time variant of Tent's baseline",
        "differs": ["test-time only: hard labels from the batch's own confident pixels (threshold), BN affine "
                    "parameters updated, one step per batch; Lee trains every weight on labelled and pseudo-"
                    "labelled data with a ramped weight"],
    },
    "memo": {
        "reference": "zhangmarvin/memo imagenet-exps (SGD 2.5e-4, 1 step, 64 AugMix views, BN prior 16)",
        "differs": ["no random-resized crop and none of AugMix's geometric operations (rotate, shear, translate): "
                    "the marginal is taken per pixel, so every view must map back onto the image's pixels; the "
                    "horizontal flip is kept and undone on the output",
                    "marginal entropy of two sigmoid channels per pixel, averaged over pixels",
                    "views per image from the profile (tta_views), fewer than MEMO's 64 in the ci and cpu profiles"],
    },
    "mean_teacher": {
        "reference": "qinenergy/cotta cifar/cotta.py, cfgs/cifar10/cotta.yaml (Adam 1e-3, EMA 0.999, restore 0.01)",
        "differs": ["EMA decay 0.99 instead of 0.999 (streams of tens of batches, not thousands)",
                    "augmented views are flips and brightness/contrast jitter; CoTTA's CIFAR code adds colour "
                    "jitter, affine warps, blur and noise",
                    "the teacher always averages its augmented views; CoTTA does so only when the source model's "
                    "confidence on the batch is below a threshold (0.92 on CIFAR-10-C)",
                    "views per batch from the profile (tta_views); CoTTA uses 32"],
    },
}
