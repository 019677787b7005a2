"""Test-time adaptation (TTA) of a segmentation model, behind one interface.

Every method wraps a *copy* of a trained segmenter (``(B, 3, H, W)`` images -> ``(B, 2, H, W)``
disc and cup logits) and exposes the same verbs, so a notebook compares them in one loop:

- ``adapt(x)``: update on the unlabelled test batch ``x``, then return its logits;
- ``predict(x)``: logits with the current state, no update (e.g. to measure forgetting);
- ``reset()``: back to the state right after wrapping (weights, statistics, optimizer).

Members, each one job (the structure follows Tent's ``configure_model`` / ``collect_params`` /
``forward_and_adapt`` / ``reset``, DequanWang/tent):

=================  ============================================================================
``SourceOnly``     no adaptation: the source model with its running BatchNorm statistics
``NormStats``      BN adaptation: normalise with the test batch's statistics, no gradient
                   (Schneider et al., NeurIPS 2020; Nado et al., 2020)
``Tent``           + minimise per-pixel prediction entropy over the BN affine parameters only
                   (Wang et al., ICLR 2021)
``PseudoLabel``    + self-training: BCE on the model's own confident pixels (Lee, 2013)
``MEMO``           marginal entropy of the prediction averaged over augmentations of each image
                   (Zhang et al., NeurIPS 2022), source BN statistics
``MeanTeacher``    an EMA teacher, augmentation-averaged, supervises the student; stochastic
                   restore to the source weights (CoTTA, Wang et al., CVPR 2022), for continual use
=================  ============================================================================

The outputs are two independent sigmoid channels, so "entropy" is the binary entropy of each
channel's probability, averaged over pixels and channels.

Sections: helpers -> config -> interface -> methods.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["TTAConfig", "TTAMethod", "SourceOnly", "NormStats", "Tent", "PseudoLabel", "MEMO", "MeanTeacher",
           "METHODS", "configure_norm", "collect_norm_params", "binary_entropy", "augment", "ema_update"]

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


def _entropy_of_probs(p: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Binary entropy of probabilities ``p`` (any shape), elementwise."""
    p = p.clamp(eps, 1 - eps)
    return -(p * p.log() + (1 - p) * (1 - p).log())


def augment(x: torch.Tensor, k: int, *, jitter: float, generator: torch.Generator | None = None):
    """``k`` views of each image: flips (undone on the output) and a small brightness/contrast jitter.

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


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, alpha: float) -> None:
    """Mean-teacher update: ``theta_teacher <- alpha * theta_teacher + (1 - alpha) * theta_student``."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(alpha).add_(s.detach(), alpha=1 - alpha)


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TTAConfig:
    """Hyperparameters of every TTA method (each method reads the fields it needs).

    Attributes:
        lr: Adam learning rate of the default optimizer; ``None``: the method's ``default_lr``
            (1e-3, Tent's reference, for the BN affine parameters and the mean teacher; 1e-5 for
            MEMO, which moves every weight by its own entropy and collapses at 1e-3).
        steps: gradient steps per test batch (Tent: 1). The notebook passes ``profile.tta_steps``.
        params: what gradient methods update, ``"norm"`` (BN affine) or ``"all"``; ``None``:
            the method's own default (Tent and PseudoLabel: norm; MEMO and MeanTeacher: all).
        threshold: PseudoLabel confidence; a pixel is a label when ``p > threshold`` or
            ``p < 1 - threshold``.
        n_augmentations: views per image for MEMO and the mean teacher.
        jitter: relative brightness/contrast jitter of the augmented views.
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
    n_augmentations: int = 4
    jitter: float = 0.1
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
        if not 0 <= self.ema_alpha <= 1 or not 0 <= self.restore_prob <= 1:
            raise ValueError("TTAConfig: ema_alpha and restore_prob must be in [0, 1]")


# ---------------------------------------------------------------------------------------------
# interface
# ---------------------------------------------------------------------------------------------

class TTAMethod(nn.Module):
    """Wrap a copy of ``model``; ``adapt(x)`` updates on a test batch and returns its logits.

    Subclasses set ``use_batch_stats`` and ``default_params`` and implement :meth:`loss` (gradient
    methods) or nothing (statistics-only methods). The caller may pass ``optimizer_factory``
    (``params -> optimizer``); the default is Adam with ``config.lr``.
    """

    name = "tta"
    use_batch_stats = True
    default_params: str | None = None  # None: no gradient step
    default_lr = 1e-3

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
            factory = optimizer_factory or (lambda ps: torch.optim.Adam(ps, lr=lr))
            self.optimizer = factory(self.params)
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

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Unsupervised loss on the test batch ``x (B, 3, H, W)``; a scalar."""
        raise NotImplementedError

    def after_step(self) -> None:
        """Hook after each optimizer step (the mean teacher updates its teacher here)."""

    # -- the public verbs --------------------------------------------------------------------

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        """Take ``config.steps`` steps on ``x (B, 3, H, W)``, then return logits ``(B, 2, H, W)``."""
        if self.optimizer is not None:
            for _ in range(self.config.steps):
                loss = self.loss(x)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.after_step()
        return self.predict(x)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, 2, H, W)`` for ``x (B, 3, H, W)`` with the current state, no update."""
        return self.model(x)

    def reset(self) -> None:
        """Restore the weights, statistics and optimizer state of right after wrapping."""
        self.load_state_dict(self._initial_model)
        if self.optimizer is not None:
            self.optimizer.load_state_dict(self._initial_optimizer)
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

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        return binary_entropy(self.model(x)).mean()


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

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        labels, mask = self.pseudo_labels(logits)
        bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")  # (B, 2, H, W)
        return (bce * mask).sum() / mask.sum().clamp_min(1.0)


class MEMO(TTAMethod):
    """MEMO: minimise the entropy of the prediction averaged over augmented views of each image.

    MEMO adapts every weight and keeps the source BN statistics, so it works on a single image.
    """

    name = "memo"
    use_batch_stats = False
    default_params = "all"
    default_lr = 1e-5

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        views, undo = augment(x, self.config.n_augmentations, jitter=self.config.jitter, generator=self.generator)
        probs = undo(torch.sigmoid(self.model(views)))  # (k, B, 2, H, W)
        return _entropy_of_probs(probs.mean(0)).mean()  # marginal entropy over views


class MeanTeacher(TTAMethod):
    """CoTTA-style mean teacher for continual TTA.

    The teacher (an EMA of the student) predicts on augmented views; their average is the soft
    target of the student (binary cross-entropy). After each step the teacher follows the student
    (:func:`ema_update`) and a random ``restore_prob`` fraction of the student's weights returns
    to the source weights, which limits drift and forgetting. Predictions come from the teacher.
    """

    name = "mean_teacher"
    default_params = "all"

    def build_extras(self, model: nn.Module) -> None:
        self.teacher = configure_norm(copy.deepcopy(model), self.use_batch_stats).requires_grad_(False)
        self.source = copy.deepcopy(self.teacher)  # theta_0, the target of the stochastic restore

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            views, undo = augment(x, self.config.n_augmentations, jitter=self.config.jitter, generator=self.generator)
            target = undo(torch.sigmoid(self.teacher(views))).mean(0)  # (B, 2, H, W)
        return F.binary_cross_entropy_with_logits(self.model(x), target)

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
METHODS: dict[str, type[TTAMethod]] = {cls.name: cls for cls in
                                       (SourceOnly, NormStats, Tent, PseudoLabel, MEMO, MeanTeacher)}
