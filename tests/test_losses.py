"""The kit's one Dice + BCE loss reproduces, to the bit, each of the losses it replaced."""
import pytest
import torch
from torch.nn import functional as F

from mfmda_lib.losses import dice_bce_loss, soft_dice


def _dice(p, y, dims, eps=1.0):
    return (2 * (p * y).sum(dim=dims) + eps) / (p.sum(dim=dims) + y.sum(dim=dims) + eps)


# the five hand-written copies as they stood before the kit had one loss
def _finetune_task_loss(x, y):
    return F.binary_cross_entropy_with_logits(x, y) + (1 - _dice(torch.sigmoid(x), y, (2, 3))).mean()


def _stage2_loss(x, y, w):
    bce = F.binary_cross_entropy_with_logits(x, y, reduction="none").mean(dim=(0, 2, 3)).sum()
    return bce + w * (1 - _dice(torch.sigmoid(x), y, (2, 3))).mean() if w else bce


def _medsam_loss(x, y):
    return (1 - _dice(torch.sigmoid(x), y, (1, 2, 3))).mean() + F.binary_cross_entropy_with_logits(x, y)


def _tta_source_loss(x, y):
    return F.binary_cross_entropy_with_logits(x, y) + 1 - _dice(torch.sigmoid(x), y, (2, 3)).mean()


def _ssl_downstream_loss(x, y):
    return F.binary_cross_entropy_with_logits(x, y) + (1 - _dice(torch.sigmoid(x), y, (2, 3)).mean())


def _value_and_grad(fn, x, y):
    x = x.clone().requires_grad_()
    loss = fn(x, y)
    loss.backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize("soft", [True, False])
def test_dice_bce_loss_is_each_former_loss_bit_for_bit(soft):
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        x = torch.randn(3, 2, 12, 12, generator=g) * 3
        y = torch.rand(3, 2, 12, 12, generator=g)
        y = y if soft else (y > 0.5).float()
        single = (x[:, :1], y[:, :1])
        exact = [(_finetune_task_loss, lambda a, b: dice_bce_loss(a, b), (x, y)),
                 (lambda a, b: _stage2_loss(a, b, 1.0), lambda a, b: dice_bce_loss(a, b, bce="channel_sum"), (x, y)),
                 (lambda a, b: _stage2_loss(a, b, 0.5),
                  lambda a, b: dice_bce_loss(a, b, bce="channel_sum", dice_weight=0.5), (x, y)),
                 (lambda a, b: _stage2_loss(a, b, 0),
                  lambda a, b: dice_bce_loss(a, b, bce="channel_sum", dice_weight=0), (x, y)),
                 (_medsam_loss, lambda a, b: dice_bce_loss(a, b, dims=(1, 2, 3)), single)]
        for old, new, (a, b) in exact:
            (v_old, g_old), (v_new, g_new) = _value_and_grad(old, a, b), _value_and_grad(new, a, b)
            assert torch.equal(v_old, v_new) and torch.equal(g_old, g_new)
        # ``1 - mean(Dice)`` and ``mean(1 - Dice)``: the same gradients to the bit, values within rounding
        for old in (_tta_source_loss, _ssl_downstream_loss):
            (v_old, g_old), (v_new, g_new) = _value_and_grad(old, x, y), _value_and_grad(dice_bce_loss, x, y)
            assert torch.equal(g_old, g_new)
            assert float(v_old) == pytest.approx(float(v_new), rel=1e-6)


def test_soft_dice_is_one_for_a_confident_perfect_prediction_and_bce_reductions_are_checked():
    y = (torch.rand(2, 2, 8, 8, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    assert torch.allclose(soft_dice(y * 40 - 20, y), torch.ones(2, 2))
    assert soft_dice(y * 40 - 20, y, dims=(1, 2, 3)).shape == (2,)
    assert float(dice_bce_loss(y * 40 - 20, y)) < 1e-6 < float(dice_bce_loss(-(y * 40 - 20), y))
    with pytest.raises(ValueError, match="channel_sum"):
        dice_bce_loss(y, y, bce="sum")
