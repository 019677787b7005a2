"""Self-supervised pretraining: masking, MAE loss, DINO update rules, downstream heads, weights on disk."""
import numpy as np
import pytest
import torch

from mfmda_lib.data import FundusSample
from mfmda_lib.ssl import (DINO, LABEL_BUDGETS, MAE, DINOConfig, DownstreamModel, MAEConfig, ViTConfig, ViTEncoder,
                           budget_subset, ema_update, evaluate, load_encoder, masked_reconstruction_loss, patchify,
                           random_masking, save_encoder, train_downstream, unpatchify, update_center)
from mfmda_lib.ssl.dino import dino_loss

TINY = ViTConfig(image_size=32, patch_size=8, dim=32, depth=1, heads=2)


def _sample(i: int, size: int = 64) -> FundusSample:
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    image = np.full((size, size, 3), 40 + 10 * i, np.uint8)
    image[r < 12] = 220
    return FundusSample(image=image, disc=r < 12, cup=r < 4 + i, domain="refuge_train", sample_id=str(i))


def test_patchify_roundtrip_and_order():
    x = torch.randn(2, 3, 32, 32)
    patches = patchify(x, 8)
    assert patches.shape == (2, 16, 8 * 8 * 3)
    assert torch.equal(unpatchify(patches, 8, 3), x)
    assert torch.equal(patches[0, 1].reshape(8, 8, 3).permute(2, 0, 1), x[0, :, :8, 8:16])  # row-major


def test_random_masking_ratio_and_shapes():
    ids_keep, mask, ids_restore = random_masking(5, 64, 0.75, generator=torch.Generator().manual_seed(0))
    assert ids_keep.shape == (5, 16) and mask.shape == (5, 64) and ids_restore.shape == (5, 64)
    assert torch.all(mask.sum(1) == 48)
    for b in range(5):  # the kept patches are exactly the unmasked ones
        assert set(ids_keep[b].tolist()) == set(torch.nonzero(mask[b] == 0).flatten().tolist())
    with pytest.raises(ValueError, match="at least one patch"):
        random_masking(1, 4, 0.99)


def test_mae_loss_counts_masked_patches_only():
    pred, target = torch.zeros(1, 4, 3), torch.zeros(1, 4, 3)
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    pred[0, 2:] = 100.0  # wrong only on visible patches: no loss
    assert masked_reconstruction_loss(pred, target, mask) == 0
    pred[0, 0] = 2.0  # wrong on one of two masked patches: mean of (4, 0)
    assert masked_reconstruction_loss(pred, target, mask).item() == pytest.approx(2.0)


def test_mae_forward_and_gradient_reaches_encoder():
    mae = MAE(ViTEncoder(TINY), MAEConfig(decoder_dim=16, decoder_depth=1, decoder_heads=2))
    loss, pred, mask = mae(torch.randn(3, 3, 32, 32), torch.Generator().manual_seed(0))
    assert pred.shape == (3, 16, 8 * 8 * 3) and mask.shape == (3, 16) and mask.sum().item() == 3 * 12
    loss.backward()
    assert mae.encoder.patch_embed.weight.grad.abs().sum() > 0
    visible, recon = mae.reconstruct(torch.randn(2, 3, 32, 32))
    assert visible.shape == recon.shape == (2, 3, 32, 32)


def test_ema_update_math():
    student, teacher = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = teacher.weight.detach().clone()
    ema_update(teacher, student, 0.9)
    assert torch.allclose(teacher.weight, 0.9 * before + 0.1 * student.weight)


def test_center_update_and_centering():
    center = torch.zeros(1, 3)
    out = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    assert torch.allclose(update_center(center, out, 0.9), torch.tensor([[0.2, 0.2, 0.2]]))
    # a teacher output equal to the centre gives a uniform target: loss = log K for any student view
    s = [torch.zeros(2, 3), torch.zeros(2, 3)]
    loss = dino_loss(s, [out, out], center=out, student_temp=0.1, teacher_temp=0.04)
    assert loss.item() == pytest.approx(np.log(3), rel=1e-5)


def test_dino_teacher_gets_no_gradient_and_follows_student():
    dino = DINO(ViTEncoder(TINY), DINOConfig(out_dim=16, hidden_dim=16, bottleneck_dim=8), total_steps=10)
    g = torch.Generator().manual_seed(0)
    loss = dino(torch.randn(4, 3, 32, 32), g)
    loss.backward()
    assert all(p.grad is None for p in dino.teacher.parameters())
    assert dino.center.abs().sum() > 0  # centre moved
    with torch.no_grad():
        dino.student.encoder.cls_token.add_(1.0)
    m = dino.momentum()
    before = dino.teacher.encoder.cls_token.clone()
    dino.update_teacher()
    assert torch.allclose(dino.teacher.encoder.cls_token, m * before + (1 - m) * dino.student.encoder.cls_token)


def test_downstream_heads_shapes_and_probe_freezes_encoder():
    enc = ViTEncoder(TINY)
    x = torch.randn(2, 3, 32, 32)
    assert DownstreamModel(enc, "vcdr", "finetune")(x).shape == (2,)
    probe = DownstreamModel(enc, "segmentation", "linear_probe")
    assert probe(x).shape == (2, 2, 32, 32)
    assert not any(p.requires_grad for p in probe.encoder.parameters())
    assert not probe.train().encoder.training
    with pytest.raises(ValueError, match="task must be"):
        DownstreamModel(enc, "grading", "finetune")


def test_budget_subset_nested_and_train_evaluate():
    samples = [_sample(i) for i in range(10)]
    small, big = (budget_subset(samples, f, min_images=2) for f in (0.1, 0.5))
    assert len(small) == 2 and len(big) == 5 and {s.sample_id for s in small} <= {s.sample_id for s in big}
    assert LABEL_BUDGETS[-1] == 1.0 and list(LABEL_BUDGETS) == sorted(LABEL_BUDGETS)
    enc = ViTEncoder(TINY)
    model = train_downstream(enc, "segmentation", "finetune", small, epochs=1, steps_per_epoch=2)
    assert all(p.requires_grad for p in enc.parameters())  # the caller's encoder is left untouched
    rows = evaluate(model, samples[:3], init="random")
    assert len(rows) == 3 and {"disc_dice", "cup_dice", "init", "domain"} <= set(rows[0])
    vrows = evaluate(train_downstream(enc, "vcdr", "linear_probe", small, epochs=1, steps_per_epoch=1), samples[:3])
    assert {"vcdr_abs_err", "suspect"} <= set(vrows[0])


def test_encoder_weights_load_if_present(tmp_path):
    path = tmp_path / "enc.pt"
    assert load_encoder(path, TINY) is None
    enc = ViTEncoder(TINY)
    save_encoder(path, enc, {"loss": [1.0]}, {"snapshot_epochs": torch.tensor([0, 1])})
    loaded, info, extras = load_encoder(path, TINY)
    assert info == {"loss": [1.0]} and extras["snapshot_epochs"].tolist() == [0, 1]
    x = torch.randn(1, 3, 32, 32)
    assert torch.allclose(loaded(x), enc.eval()(x))
    with pytest.raises(ValueError, match="saved for"):
        load_encoder(path, ViTConfig(image_size=32, patch_size=8, dim=64, depth=1, heads=2))
