"""The augmentation-based test-time methods and their parts: MEMO (marginal entropy over AugMix views, a
BatchNorm prior) and the mean teacher (CoTTA: an EMA teacher averaged over flipped, jittered views)."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from ..train import ema_update
from .tta_base import TTAMethod, configure_norm, marginal_binary_entropy

__all__ = ["augment", "augmix", "PriorBatchNorm2d", "use_prior_norm", "MEMO", "MeanTeacher"]


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
