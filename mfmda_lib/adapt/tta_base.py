"""The interface every test-time adaptation method shares: BatchNorm configuration, the entropy losses, the
hyperparameters (:class:`TTAConfig`) and the base class :class:`TTAMethod` (adapt / predict / reset)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["configure_norm", "collect_norm_params", "binary_entropy", "marginal_binary_entropy", "TTAConfig",
           "TTAMethod"]

OptimizerFactory = Callable[[Sequence[nn.Parameter]], torch.optim.Optimizer]
_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


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
