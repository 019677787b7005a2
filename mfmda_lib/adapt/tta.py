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

Sections: helpers -> MEMO's parts (AugMix views, BN prior) -> config -> interface -> methods.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..train import ema_update

__all__ = ["TTAConfig", "TTAMethod", "SourceOnly", "NormStats", "Tent", "PseudoLabel", "MEMO", "MeanTeacher",
           "TTA_METHODS", "REFERENCE_NOTES", "configure_norm", "collect_norm_params", "binary_entropy",
           "marginal_binary_entropy", "augment", "augmix", "PriorBatchNorm2d", "use_prior_norm"]

OptimizerFactory = Callable[[Sequence[nn.Parameter]], torch.optim.Optimizer]
_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def configure_norm(model: nn.Module, use_batch_stats: bool) -> nn.Module:
    """Set every BatchNorm to normalise with the current batch's statistics (or the source's).

    With ``use_batch_stats`` the layers are put in train mode and their running statistics are
    dropped (``track_running_stats=False``), as in Tent: the forward pass then always uses the
    test batch's mean and variance, and nothing is accumulated. Every other layer is left in eval
    mode. Returns ``model`` (changed in place).
    """
    model.eval()
    if not use_batch_stats:
        return model
    found = 0
    for m in model.modules():
        if isinstance(m, _NORM_TYPES):
            m.train()
            m.track_running_stats = False
            m.running_mean, m.running_var, m.num_batches_tracked = None, None, None
            found += 1
    if not found:
        raise ValueError("configure_norm: the model has no BatchNorm layer; batch-statistics methods need one")
    return model


def collect_norm_params(model: nn.Module) -> tuple[list[nn.Parameter], list[str]]:
    """The affine parameters (gamma = ``weight``, beta = ``bias``) of every BatchNorm, and their names."""
    params, names = [], []
    for module_name, m in model.named_modules():
        if isinstance(m, _NORM_TYPES) and m.affine:
            for p_name, p in m.named_parameters(recurse=False):
                params.append(p)
                names.append(f"{module_name}.{p_name}")
    return params, names


def _select_params(model: nn.Module, which: str) -> list[nn.Parameter]:
    """Freeze ``model`` except ``which`` (``"norm"``: BN affine; ``"all"``: every parameter)."""
    if which not in ("norm", "all"):
        raise ValueError(f"params must be 'norm' or 'all', got {which!r}")
    model.requires_grad_(which == "all")
    if which == "all":
        return list(model.parameters())
    params, _ = collect_norm_params(model)
    for p in params:
        p.requires_grad_(True)
    return params


def binary_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-element entropy (nats) of independent sigmoid outputs: ``(B, C, H, W) -> (B, C, H, W)``."""
    p = torch.sigmoid(logits)
    # -p log p - (1-p) log(1-p), written with log-sigmoid for stability at large |logits|
    return -(p * F.logsigmoid(logits) + (1 - p) * F.logsigmoid(-logits))


def marginal_binary_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the prediction averaged over views: ``(K, B, C, H, W)`` logits -> ``(B, C, H, W)``.

    ``p_bar = mean_k sigmoid(logits_k)``, then ``H(p_bar)``. As MEMO's ``marginal_entropy`` the
    average is taken in log space (``log p_bar = logsumexp_k log p_k - log K``), which stays finite
    where every view is confident.
    """
    log_k = math.log(logits.shape[0])
    log_p = torch.logsumexp(F.logsigmoid(logits), dim=0) - log_k       # log p_bar
    log_q = torch.logsumexp(F.logsigmoid(-logits), dim=0) - log_k      # log (1 - p_bar)
    return -(log_p.exp() * log_p + log_q.exp() * log_q)


def augment(x: torch.Tensor, k: int, *, jitter: float, generator: torch.Generator | None = None):
    """``k`` views of each image: flips (undone on the output) and a small brightness/contrast jitter.

    The mean teacher's views (CoTTA's augmentations are richer: see :data:`REFERENCE_NOTES`).

    Args:
        x: ``(B, 3, H, W)`` images.
        k: number of views; view 0 is the image itself, views 1-3 add h/v/hv flips, later ones
            repeat the flips; every view after the first gets the colour jitter.
        jitter: relative brightness and contrast change, drawn uniformly in ``[-jitter, jitter]``.

    Returns:
        ``(views (k*B, 3, H, W), undo)`` where ``undo((k*B, C, H, W)) -> (k, B, C, H, W)`` flips
        each view's output back so pixels line up with ``x``.
    """
    flips = [(), (-1,), (-2,), (-1, -2)]
    views = []
    for i in range(k):
        v = x.flip(flips[i % 4]) if flips[i % 4] else x
        if i:
            shape = (x.shape[0], 1, 1, 1)
            scale = 1 + jitter * (2 * torch.rand(shape, generator=generator) - 1).to(x)
            shift = jitter * (2 * torch.rand(shape, generator=generator) - 1).to(x)
            mean = v.mean(dim=(1, 2, 3), keepdim=True)
            v = (v - mean) * scale + mean + shift
        views.append(v)

    def undo(out: torch.Tensor) -> torch.Tensor:
        out = out.reshape(k, x.shape[0], *out.shape[1:])  # (k, B, C, H, W)
        return torch.stack([o.flip(flips[i % 4]) if flips[i % 4] else o for i, o in enumerate(out)])

    return torch.cat(views), undo  # (k*B, 3, H, W)


# ---------------------------------------------------------------------------------------------
# MEMO's parts: AugMix views and the BatchNorm prior
# ---------------------------------------------------------------------------------------------

def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """An integer in ``[low, high)``."""
    return int(torch.randint(low, high, (1,), generator=generator))


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand(1, generator=generator))


def _solarize(img: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    from torchvision.transforms.v2 import functional as TF

    level = int(_uniform(0.1, 1.0, generator) * 256 / 10)  # MEMO: int_parameter(rand_lvl(1), 256), 2..25
    return TF.solarize(img, (256 - level) / 255)


def _augmix_op(name: str, img: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One of MEMO's pixel-wise AugMix operations on a ``(3, H, W)`` image in ``[0, 1]``."""
    from torchvision.transforms.v2 import functional as TF

    if name == "autocontrast":
        return TF.autocontrast(img)
    if name == "equalize":
        return TF.equalize(img)
    if name == "posterize":  # MEMO: posterize(4 - int_parameter(rand_lvl(1), 4)) = 4 bits, whatever the draw
        return TF.posterize(img, 4)
    return _solarize(img, generator)


#: MEMO's AugMix operations that keep every pixel where it is (its geometric ones are left out:
#: the marginal is taken per pixel, see :data:`REFERENCE_NOTES`).
AUGMIX_OPS = ("autocontrast", "equalize", "posterize", "solarize")


def augmix(pixels: torch.Tensor, generator: torch.Generator | None = None, *, width: int = 3,
           max_depth: int = 3) -> torch.Tensor:
    """One AugMix view of a ``(3, H, W)`` image in ``[0, 1]``, as MEMO's ``_augmix_aug``.

    ``width`` chains of 1 to ``max_depth`` random operations each; the chains are mixed with
    Dirichlet(1, ..., 1) weights ``w`` and the mixture blended with the image by ``m ~ Beta(1, 1)``:
    ``m * x + (1 - m) * sum_i w_i chain_i(x)``.
    """
    e = -torch.log(torch.rand(width, generator=generator))  # Dirichlet(1) = normalised Exponential(1)
    w = (e / e.sum()).tolist()
    m = float(torch.rand(1, generator=generator))              # Beta(1, 1) = Uniform(0, 1)
    mix = torch.zeros_like(pixels)
    for i in range(width):
        chain = pixels
        for _ in range(_randint(1, max_depth + 1, generator)):
            chain = _augmix_op(AUGMIX_OPS[_randint(0, len(AUGMIX_OPS), generator)], chain, generator)
        mix = mix + w[i] * chain
    return m * pixels + (1 - m) * mix


class PriorBatchNorm2d(nn.BatchNorm2d):
    """MEMO's test-time BatchNorm: statistics ``prior * source + (1 - prior) * batch``.

    ``prior = N / (N + 1)`` for a prior strength ``N`` (MEMO: 16), as MEMO's ``_modified_bn_forward``
    (after Schneider et al.): the batch's mean and unbiased variance are computed without gradient,
    mixed with the running (source) statistics, and the input normalised with the mixture in any
    mode. Used on the views during adaptation and on the single test image at prediction.
    """

    prior: float = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            dims = [d for d in range(x.dim()) if d != 1]
            batch_mean, batch_var = x.mean(dim=dims), x.var(dim=dims, unbiased=True)
            mean = self.prior * self.running_mean + (1 - self.prior) * batch_mean
            var = self.prior * self.running_var + (1 - self.prior) * batch_var
        return F.batch_norm(x, mean, var, self.weight, self.bias, False, 0.0, self.eps)


def use_prior_norm(model: nn.Module, prior: float) -> nn.Module:
    """Swap every ``BatchNorm2d`` of ``model`` (in place) for a :class:`PriorBatchNorm2d` with ``prior``."""
    if not 0 <= prior <= 1:
        raise ValueError(f"use_prior_norm: prior must be in [0, 1], got {prior}")
    found = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d) and not isinstance(child, PriorBatchNorm2d):
                if child.running_mean is None:
                    raise ValueError(f"use_prior_norm: BatchNorm {name!r} has no running statistics to use as a prior")
                new = PriorBatchNorm2d(child.num_features, eps=child.eps, momentum=child.momentum,
                                       affine=child.affine).to(child.running_mean.device)
                new.load_state_dict(child.state_dict())
                new.prior = prior
                setattr(parent, name, new)
                found += 1
    if not found:
        raise ValueError("use_prior_norm: the model has no BatchNorm2d layer; MEMO's BN prior needs one")
    return model


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TTAConfig:
    """Hyperparameters of every TTA method (each method reads the fields it needs).

    Attributes:
        lr: learning rate of the method's reference optimizer; ``None``: the method's
            ``default_lr`` (Adam 1e-3 for Tent, pseudo-labels and the mean teacher, as tent's
            and CoTTA's configs; SGD 2.5e-4 for MEMO, its setting for a BatchNorm ResNet-50).
        steps: optimisation steps per test batch (MEMO: per test image). 1, the default, is
            every reference's setting (tent ``OPTIM.STEPS``, CoTTA ``OPTIM.STEPS``, MEMO
            ``niter``). More is the named multi-step option; the returned logits are still the
            outputs of the last forward pass that made an update.
        params: what gradient methods update, ``"norm"`` (BN affine) or ``"all"``; ``None``:
            the method's own default (Tent and PseudoLabel: norm; MEMO and MeanTeacher: all).
        threshold: PseudoLabel confidence; a pixel is a label when ``p > threshold`` or
            ``p < 1 - threshold``.
        n_augmentations: views per image: MEMO's AugMix batch (64 in MEMO's ImageNet runs, 32 in
            its CIFAR ones) and the mean teacher's augmented predictions (CoTTA: 32). Notebook 06
            passes ``profile.tta_views``.
        jitter: relative brightness/contrast jitter of the mean teacher's views.
        prior_strength: MEMO's BN prior ``N``: normalisation statistics are
            ``N/(N+1) * source + 1/(N+1) * batch`` (MEMO: 16).
        pixel_mean, pixel_std: how the model's inputs map back to ``[0, 1]`` pixels
            (``pixels = x * pixel_std + pixel_mean``), for MEMO's AugMix operations, which act on
            pixels. The defaults are the kit's fixed input normalisation (notebook 06).
        ema_alpha: mean-teacher EMA decay (CoTTA: 0.999 over thousands of steps; our streams are
            tens of steps long, so the teacher must move faster).
        restore_prob: mean-teacher stochastic restore: each weight element returns to its
            source value with this probability after every step (CoTTA: 0.01; 0 turns it off).
        seed: seed of the augmentations and of the stochastic restore.
    """

    lr: float | None = None
    steps: int = 1
    params: str | None = None
    threshold: float = 0.9
    n_augmentations: int = 32
    jitter: float = 0.1
    prior_strength: float = 16.0
    pixel_mean: float = 0.5
    pixel_std: float = 0.25
    ema_alpha: float = 0.99
    restore_prob: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.lr is not None and self.lr <= 0) or self.steps < 1:
            raise ValueError(f"TTAConfig: lr must be > 0 and steps >= 1, got lr={self.lr}, steps={self.steps}")
        if self.params not in (None, "norm", "all"):
            raise ValueError(f"TTAConfig.params must be None, 'norm' or 'all', got {self.params!r}")
        if not 0.5 < self.threshold < 1:
            raise ValueError(f"TTAConfig.threshold must be in (0.5, 1), got {self.threshold}")
        if self.n_augmentations < 1 or not 0 <= self.jitter < 1:
            raise ValueError("TTAConfig: n_augmentations must be >= 1 and jitter in [0, 1)")
        if self.prior_strength < 0 or self.pixel_std <= 0:
            raise ValueError(f"TTAConfig: prior_strength must be >= 0 and pixel_std > 0, got "
                             f"{self.prior_strength}, {self.pixel_std}")
        if not 0 <= self.ema_alpha <= 1 or not 0 <= self.restore_prob <= 1:
            raise ValueError("TTAConfig: ema_alpha and restore_prob must be in [0, 1]")


# ---------------------------------------------------------------------------------------------
# interface
# ---------------------------------------------------------------------------------------------

_OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}


class TTAMethod(nn.Module):
    """Wrap a copy of ``model``; ``adapt(x)`` updates on a test batch and returns its logits.

    Subclasses set ``use_batch_stats``, ``default_params`` (``None``: no gradient step),
    ``default_lr`` and ``optimizer_kind`` (the reference's optimizer, ``"adam"`` or ``"sgd"``)
    and implement :meth:`loss` (gradient methods) or nothing (statistics-only methods). The
    caller may pass ``optimizer_factory`` (``params -> optimizer``) to replace the default.
    """

    name = "tta"
    use_batch_stats = True
    default_params: str | None = None
    default_lr = 1e-3
    optimizer_kind = "adam"
    #: True when ``adapt`` restores the source after every image (MEMO): predictions then do not
    #: depend on the regime or the batch size.
    episodic_per_image = False

    def __init__(self, model: nn.Module, config: TTAConfig | None = None,
                 optimizer_factory: OptimizerFactory | None = None) -> None:
        super().__init__()
        self.config = config or TTAConfig()
        self.model = self.configure_model(copy.deepcopy(model))
        self.build_extras(model)
        self.params = self.collect_params()
        self.optimizer = None
        if self.params:
            lr = self.config.lr or self.default_lr
            self.optimizer = (optimizer_factory or partial(_OPTIMIZERS[self.optimizer_kind], lr=lr))(self.params)
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self._initial_model = copy.deepcopy(self.state_dict())
        self._initial_optimizer = copy.deepcopy(self.optimizer.state_dict()) if self.optimizer else None

    # -- the steps of Tent's wrapper ---------------------------------------------------------

    def configure_model(self, model: nn.Module) -> nn.Module:
        """Normalisation mode of the wrapped copy (batch or source statistics)."""
        return configure_norm(model, self.use_batch_stats)

    def build_extras(self, model: nn.Module) -> None:
        """Hook for extra copies of the source ``model`` (the mean teacher's teacher)."""

    def collect_params(self) -> list[nn.Parameter]:
        """Unfreeze and return the parameters to update (none for statistics-only methods)."""
        which = self.config.params or self.default_params
        if self.default_params is None:
            self.model.requires_grad_(False)
            return []
        return _select_params(self.model, which)

    def loss(self, outputs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Unsupervised loss (a scalar) from the forward pass's ``outputs (B, 2, H, W)`` on ``x (B, 3, H, W)``."""
        raise NotImplementedError

    def after_step(self) -> None:
        """Hook after each optimizer step (the mean teacher updates its teacher here)."""

    def step(self, loss: torch.Tensor) -> None:
        """One update: gradients of ``loss``, the optimizer's step, then :meth:`after_step`."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.after_step()

    @torch.enable_grad()
    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        """Tent's ``forward_and_adapt``: forward ``x``, loss on those outputs, one update; returns the outputs."""
        outputs = self.model(x)  # (B, 2, H, W): the prediction, made before the update it drives
        self.step(self.loss(outputs, x))
        return outputs

    # -- the public verbs --------------------------------------------------------------------

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        """Adapt on ``x (B, 3, H, W)`` (``config.steps`` updates) and return logits ``(B, 2, H, W)``.

        The logits are those of the last forward pass that made an update (statistics-only
        methods: a forward pass with the batch's statistics).
        """
        if self.optimizer is None:
            return self.predict(x)
        for _ in range(self.config.steps):
            outputs = self.forward_and_adapt(x)
        return outputs.detach()

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, 2, H, W)`` for ``x (B, 3, H, W)`` with the current state, no update."""
        return self.model(x)

    def restore(self) -> None:
        """Weights, statistics and optimizer state of right after wrapping (the random stream goes on)."""
        self.load_state_dict(self._initial_model)
        if self.optimizer is not None:
            self.optimizer.load_state_dict(self._initial_optimizer)

    def reset(self) -> None:
        """:meth:`restore`, and the random stream (augmentations, restore masks) reseeded."""
        self.restore()
        self.generator.manual_seed(self.config.seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapt(x)


# ---------------------------------------------------------------------------------------------
# methods
# ---------------------------------------------------------------------------------------------

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


class MEMO(TTAMethod):
    """MEMO, as its authors' ImageNet code: episodic, one test image at a time.

    For each image: restore the source weights, take ``config.steps`` SGD steps on the marginal
    entropy of the predictions over ``config.n_augmentations`` AugMix views (each view
    horizontally flipped with probability 1/2, the flip undone on its output), then predict the
    un-augmented image. Every BatchNorm mixes its source statistics with the current batch's by the
    prior ``N/(N+1)`` (:class:`PriorBatchNorm2d`), in adaptation (the views) and prediction (the
    image alone). Every weight is adapted. After the image the weights return to the source, so
    the regime (episodic, online, continual) and the batch size do not change MEMO's predictions.
    """

    name = "memo"
    use_batch_stats = False
    default_params = "all"
    default_lr = 2.5e-4
    optimizer_kind = "sgd"
    episodic_per_image = True

    def configure_model(self, model: nn.Module) -> nn.Module:
        prior = self.config.prior_strength / (self.config.prior_strength + 1)
        return use_prior_norm(model.eval(), prior)

    def views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(views (K, 3, H, W), flipped (K,) bool)``: AugMix views of one image ``x (3, H, W)``."""
        c = self.config
        pixels = (x * c.pixel_std + c.pixel_mean).clamp(0, 1).cpu()
        flipped = torch.rand(c.n_augmentations, generator=self.generator) < 0.5
        out = [augmix(pixels.flip(-1) if f else pixels, self.generator) for f in flipped.tolist()]
        return ((torch.stack(out) - c.pixel_mean) / c.pixel_std).to(x), flipped.to(x.device)

    @torch.enable_grad()
    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        """One step on one image ``x (1, 3, H, W)``; returns the views' logits ``(K, 2, H, W)``, flips undone."""
        views, flipped = self.views(x[0])
        logits = self.model(views)  # (K, 2, H, W)
        logits = torch.where(flipped[:, None, None, None], logits.flip(-1), logits)
        self.step(marginal_binary_entropy(logits[:, None]).mean())
        return logits

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(len(x)):
            self.restore()
            for _ in range(self.config.steps):
                self.forward_and_adapt(x[i:i + 1])
            out.append(self.predict(x[i:i + 1]))
        self.restore()  # episodic: the next test point starts from the source model again
        return torch.cat(out)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """One image at a time (the BN prior mixes in that image's statistics only)."""
        return torch.cat([self.model(x[i:i + 1]) for i in range(len(x))])


class MeanTeacher(TTAMethod):
    """CoTTA-style mean teacher for continual TTA.

    In the forward pass that makes the update, the teacher (an EMA of the student) predicts on
    ``config.n_augmentations`` augmented views of the batch (one forward pass per view, as CoTTA);
    the average of its logits is the soft target of the student's binary cross-entropy and the
    prediction returned, as CoTTA's ``outputs_ema``. After each step the teacher follows the
    student (:func:`mfmda_lib.train.ema_update`) and a random ``restore_prob`` fraction of the student's weights
    returns to the source weights, which limits drift and forgetting. ``predict`` uses the teacher.
    """

    name = "mean_teacher"
    default_params = "all"

    def build_extras(self, model: nn.Module) -> None:
        self.teacher = configure_norm(copy.deepcopy(model), self.use_batch_stats).requires_grad_(False)
        self.source = copy.deepcopy(self.teacher)  # theta_0, the target of the stochastic restore

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's logits ``(B, 2, H, W)`` averaged over augmented views of ``x``."""
        k = self.config.n_augmentations
        views, undo = augment(x, k, jitter=self.config.jitter, generator=self.generator)
        return undo(torch.cat([self.teacher(v) for v in views.chunk(k)])).mean(0)

    @torch.enable_grad()
    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        outputs = self.model(x)
        target = self.teacher_logits(x)
        self.step(F.binary_cross_entropy_with_logits(outputs, torch.sigmoid(target)))
        return target

    @torch.no_grad()
    def after_step(self) -> None:
        ema_update(self.teacher, self.model, self.config.ema_alpha)
        if self.config.restore_prob > 0:
            for p, p0 in zip(self.model.parameters(), self.source.parameters()):
                keep = torch.rand(p.shape, generator=self.generator) >= self.config.restore_prob
                p.copy_(torch.where(keep.to(p.device), p, p0))

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher(x)


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
