"""Self-supervised pretraining: masking, MAE loss, DINO update rules, downstream heads, weights on disk,
input standardisation, camera augmentation, the collapse check, the unlabelled pool and the verdict."""
import math

import numpy as np
import pytest
import torch

from mfmda_lib.data import FundusSample
from mfmda_lib.profiles import get_profile
from mfmda_lib.ssl import (DINO, LABEL_BUDGETS, MAE, DINOConfig, DownstreamModel, MAEConfig, ViTConfig, ViTEncoder,
                           budget_subset, camera_jitter, evaluate, label_mean_vcdr, load_encoder,
                           local_crop_side, multi_crop,
                           masked_reconstruction_loss, patchify, pretrained_encoder, random_masking, save_encoder, smallest_budget_comparison,
                           run_label_budgets, select_encoder_lr, standardize_images, teacher_entropy, trainable_share,
                           train_downstream, unlabelled_pool, unpatchify, update_center, validation_samples, verdict,
                           warmup_cosine)
from mfmda_lib.data.synthetic import generate_sample
from mfmda_lib.ssl.dino import dino_loss
from mfmda_lib.ssl.downstream import DownstreamConfig, encoder_param_groups
from mfmda_lib.ssl.experiment import SSLBenchmark, _per_draw
from mfmda_lib.ssl.pool import pool_path

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


def test_multi_crop_local_views_reach_the_student_only():
    """DINO's multi-crop (main_dino.py): 2 global views to teacher and student, small local views to the student."""
    cfg = DINOConfig(out_dim=16, hidden_dim=16, bottleneck_dim=8, local_crops_number=3)
    assert local_crop_side(32, 8, cfg.local_crop_fraction) == 16 and local_crop_side(224, 16, 96 / 224) == 96
    global_views, local_views = multi_crop(torch.randn(4, 3, 32, 32), cfg, torch.Generator().manual_seed(0), 8)
    assert [v.shape for v in global_views] == [(4, 3, 32, 32)] * 2 and [v.shape for v in local_views] == [(4, 3, 16, 16)] * 3
    dino = DINO(ViTEncoder(TINY), cfg, total_steps=10)
    seen = {"student": [], "teacher": []}
    for name in seen:
        getattr(dino, name).encoder.register_forward_pre_hook(lambda m, args, name=name: seen[name].append(
            tuple(args[0].shape)))
    dino(torch.randn(4, 3, 32, 32), torch.Generator().manual_seed(0))
    assert seen["teacher"] == [(8, 3, 32, 32)]  # the two global views, in one batch
    assert seen["student"] == [(8, 3, 32, 32), (12, 3, 16, 16)]  # + the three local views, one pass per resolution
    off = DINO(ViTEncoder(TINY), DINOConfig(out_dim=16, hidden_dim=16, bottleneck_dim=8, local_crops_number=0))
    assert len(multi_crop(torch.randn(2, 3, 32, 32), off.config, torch.Generator(), 8)[1]) == 0
    with pytest.raises(ValueError, match="local_crops_scale"):
        DINOConfig(local_crops_scale=(0.5, 0.1))


def test_dino_loss_matches_every_student_view_with_every_other_teacher_view():
    g = torch.Generator().manual_seed(0)
    teacher = [torch.randn(3, 5, generator=g) for _ in range(2)]
    student = [torch.randn(3, 5, generator=g) for _ in range(2 + 4)]
    center = torch.zeros(1, 5)
    terms = [(-torch.softmax(t / 0.04, -1) * torch.log_softmax(s / 0.1, -1)).sum(-1).mean()
             for i, t in enumerate(teacher) for j, s in enumerate(student) if i != j]
    assert len(terms) == 2 * (2 + 4) - 2  # as DINOLoss: n_loss_terms
    assert dino_loss(student, teacher, center, 0.1, 0.04) == pytest.approx(float(torch.stack(terms).mean()))


def test_encoder_reads_a_smaller_crop_with_an_interpolated_positional_embedding():
    enc = ViTEncoder(TINY).eval()  # 32 px, 8 px patches: a 4 x 4 grid
    assert torch.equal(enc.pos_embed_for(4), enc.pos_embed)
    assert enc.pos_embed_for(2).shape == (4, TINY.dim)
    assert enc(torch.randn(2, 3, 16, 16), any_size=True).shape == (2, 1 + 4, TINY.dim)
    with pytest.raises(ValueError, match="expects 32 px"):
        enc(torch.randn(1, 3, 16, 16))  # the default stays strict
    with pytest.raises(ValueError, match="multiple of 8"):
        enc(torch.randn(1, 3, 12, 12), any_size=True)


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


# ---------------------------------------------------------------------------------------------
# input standardisation: a camera's per-channel gain and offset do not reach the tokens
# ---------------------------------------------------------------------------------------------

def test_encoder_ignores_per_channel_gain_and_offset():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    gain, offset = torch.rand(2, 3, 1, 1) + 0.5, torch.randn(2, 3, 1, 1)
    enc = ViTEncoder(TINY).eval()
    assert torch.allclose(enc(x), enc(x * gain + offset), atol=5e-3)  # up to the eps of the std
    raw = ViTEncoder(ViTConfig(image_size=32, patch_size=8, dim=32, depth=1, heads=2, standardize_input=False)).eval()
    assert not torch.allclose(raw(x), raw(x * gain + offset), atol=1e-2)  # without it the cast shows
    z, mean, std = standardize_images(x)
    assert torch.allclose(z * std + mean, x, atol=1e-5) and torch.allclose(z.mean(dim=(2, 3)), torch.zeros(2, 3), atol=1e-5)


def test_mae_target_is_standardised_and_reconstruction_keeps_visible_pixels():
    mae = MAE(ViTEncoder(TINY), MAEConfig(decoder_dim=16, decoder_depth=1, decoder_heads=2, norm_pix_loss=False))
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(mae.target(x * 3 + 1), mae.target(x), atol=5e-3)  # up to the eps of the std
    visible, pasted = mae.reconstruct(x, torch.Generator().manual_seed(0))
    kept = visible != 0  # hidden patches are blank, visible ones are the input itself
    assert kept.float().mean() == pytest.approx(0.25, abs=0.01)
    assert torch.allclose(visible[kept], x[kept], atol=1e-4) and torch.allclose(pasted[kept], x[kept], atol=1e-4)


def test_camera_jitter_survives_standardisation():
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    g = torch.Generator().manual_seed(0)
    v = camera_jitter(x, DINOConfig(), g)
    assert v.shape == x.shape and torch.isfinite(v).all()
    assert (standardize_images(v)[0] - standardize_images(x)[0]).abs().mean() > 0.05  # not undone by the encoder
    off = DINOConfig(gamma_jitter=0.0, blur_sigma=0.0, noise_sigma=0.0)
    assert torch.allclose(camera_jitter(x, off, g), x, atol=1e-5)  # pixels in (0, 1): nothing changes


def test_teacher_entropy_detects_both_collapses():
    k = 16
    uniform = teacher_entropy(torch.zeros(8, k), torch.zeros(1, k), 0.04)
    assert uniform == pytest.approx((math.log(k), math.log(k)), rel=1e-4)  # everything flat
    one = torch.zeros(8, k)
    one[:, 3] = 10.0
    h_sample, h_mean = teacher_entropy(one, torch.zeros(1, k), 0.04)
    assert h_sample < 1e-3 and h_mean < 1e-3  # every image on one prototype
    diverse = torch.eye(k)[:8] * 10
    h_sample, h_mean = teacher_entropy(diverse, torch.zeros(1, k), 0.04)
    assert h_sample < 1e-3 and h_mean == pytest.approx(math.log(8), rel=1e-3)  # sharp and spread: healthy


def test_collapse_check_reads_the_last_epoch():
    from mfmda_lib.ssl import collapse_check

    log_k = math.log(256)
    assert "uniform" in collapse_check({"teacher_entropy": [[1.0, 5.0], [5.5, 5.54]], "log_k": log_k})
    assert "one prototype" in collapse_check({"teacher_entropy": [[1.0, 5.0], [0.01, 0.02]], "log_k": log_k})
    assert "no collapse" in collapse_check({"teacher_entropy": [[5.5, 5.5], [1.0, 5.0]], "log_k": log_k})


def test_dino_head_fixes_the_prototype_norms_at_one_as_norm_last_layer():
    from mfmda_lib.ssl.dino import DINOHead

    head = DINOHead(32, DINOConfig(out_dim=16, hidden_dim=16, bottleneck_dim=8))
    g = head.last_layer.parametrizations.weight.original0
    assert torch.equal(g, torch.ones(16, 1)) and not g.requires_grad
    assert torch.allclose(head.last_layer.weight.norm(dim=1), torch.ones(16))  # logits are cosines
    assert head(torch.randn(3, 32)).abs().max() <= 1 + 1e-5
    free = DINOHead(32, DINOConfig(out_dim=16, hidden_dim=16, bottleneck_dim=8, norm_last_layer=False))
    assert free.last_layer.parametrizations.weight.original0.requires_grad


def test_warmup_cosine_schedule():
    f = warmup_cosine(100, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(54) == pytest.approx(0.5, abs=0.02) and f(99) < 0.01
    assert all(f(t) >= f(t + 1) for t in range(10, 99))


# ---------------------------------------------------------------------------------------------
# the unlabelled pool and pretraining: cached, checksummed, reloaded
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def tiny_profile(tmp_path, monkeypatch):
    monkeypatch.setenv("MFMDA_CACHE", str(tmp_path / "cache"))
    return get_profile("ci").replace(image_size=64, ssl_image_size=32, ssl_pool_per_domain=2, ssl_batch_size=4,
                                     ssl_mae_steps=3, ssl_dino_steps=2)


def test_pool_is_cached_and_rendered_again_when_corrupted(tiny_profile, one_torch_thread):
    pool = unlabelled_pool(tiny_profile, progress=False)
    assert pool.shape == (8, 3, 32, 32)
    path = pool_path(tiny_profile)
    payload = torch.load(path, weights_only=True)
    assert torch.equal(unlabelled_pool(tiny_profile, progress=False), pool)  # from the cache
    payload["images"][0] = 0  # corrupt the file: the checksum no longer matches
    torch.save(payload, path)
    with pytest.warns(UserWarning, match="validity check"):
        assert torch.equal(unlabelled_pool(tiny_profile, progress=False), pool)  # rendered again...
    assert not torch.equal(torch.load(path, weights_only=True)["images"][0], payload["images"][0])  # ...and saved


def test_pretrained_encoder_trains_once_then_loads(tiny_profile, one_torch_thread):
    enc, info, extras = pretrained_encoder(tiny_profile, "dino", progress=False)
    assert info["trained"] and info["steps"] == 2 and len(info["teacher_entropy"]) == len(info["loss"])
    assert all(0 <= h <= info["log_k"] + 1e-4 for pair in info["teacher_entropy"] for h in pair)
    again, info2, _ = pretrained_encoder(tiny_profile, "dino", progress=False)
    assert not info2["trained"] and info2["checkpoint"] == info["checkpoint"]
    x = torch.randn(1, 3, 32, 32)
    assert torch.allclose(again(x), enc(x))
    mae, minfo, mextras = pretrained_encoder(tiny_profile, "mae", progress=False)
    assert minfo["steps"] == 3 and mextras["reconstruction"].shape[1:] == (4, 3, 32, 32)


# ---------------------------------------------------------------------------------------------
# the verdict is computed from the numbers
# ---------------------------------------------------------------------------------------------

def _fake_rows(target_disc: dict[str, list[float]], n_images: int = 6) -> list[dict]:
    """Segmentation rows (disc = cup * 2) and vCDR rows per init and draw; image i of a hospital adds 0.01 * i."""
    rows = []
    for init, per_draw in target_disc.items():
        for draw, value in enumerate(per_draw):
            for domain, dice in (("refuge_train", 0.9), ("riga_messidor", value)):
                for i in range(n_images):
                    base = {"protocol": "finetune", "budget": 0.1, "init": init, "draw": draw, "domain": domain,
                            "sample_id": f"{domain}{i}", "n_labels": 4}
                    rows.append({**base, "task": "segmentation", "disc_dice": dice + 0.01 * i,
                                 "cup_dice": (dice + 0.01 * i) / 2})
                    suspect = i % 2
                    pred = 0.5 + (0.1 if suspect else -0.1) * (1 if init == "mae" else -1) + 0.001 * i  # mae ranks
                    rows.append({**base, "task": "vcdr", "vcdr_pred": pred, "vcdr_abs_err": 0.1, "suspect": suspect})
    return rows


def test_verdict_says_better_only_when_the_interval_of_the_paired_gain_excludes_zero():
    # mae wins every draw; dino wins on average (+0.067) but in one draw only: its interval includes 0
    rows = _fake_rows({"random": [0.5, 0.5, 0.5], "mae": [0.6, 0.58, 0.55], "dino": [0.9, 0.4, 0.4]})
    per_draw = _per_draw(rows)
    table = per_draw.groupby(level=["protocol", "budget", "init"]).mean()
    result = SSLBenchmark(rows, per_draw, table, table, {"draws_at_smallest_budget": 3})
    cmp = smallest_budget_comparison(result)
    mae, dino = cmp.loc[("finetune", "mae", "target_disc_dice")], cmp.loc[("finetune", "dino", "target_disc_dice")]
    assert (mae.wins, mae.draws, mae.images) == (3, 3, 6) and mae.gain == pytest.approx(0.0767, abs=1e-3)
    assert mae.verdict == "better" and 0 < mae.gain_lo < mae.gain < mae.gain_hi
    assert dino.gain == pytest.approx(0.0667, abs=1e-3) and dino.wins == 1
    assert dino.verdict == "no difference measured" and dino.gain_lo < 0 < dino.gain_hi
    # vCDR: the same error (no difference); mae ranks suspects perfectly and random inversely: AUROC 1 vs 0
    assert cmp.loc[("finetune", "mae", "target_vcdr_abs_err"), "verdict"] == "no difference measured"
    auroc = cmp.loc[("finetune", "mae", "suspect_auroc")]
    assert auroc.gain == pytest.approx(1.0) and auroc.verdict == "better"
    lines = verdict(result, comparison=cmp)
    assert any("segmentation | finetune | mae: BEATS" in line for line in lines)
    assert any("segmentation | finetune | dino: does not beat" in line for line in lines)
    assert "=> segmentation: pretraining beats random initialisation at the smallest budget: mae (finetune)." in lines
    assert any("vcdr | finetune | mae: does not beat" in line for line in lines)  # the error is not better


def test_layer_decay_groups_and_cached_linear_probe():
    enc = ViTEncoder(ViTConfig(image_size=32, patch_size=8, dim=32, depth=3, heads=2))
    groups = encoder_param_groups(enc, 1e-3, 0.5)
    assert [g["lr"] for g in groups] == pytest.approx([1.25e-4, 2.5e-4, 5e-4, 1e-3, 1e-3])  # embed, 3 blocks, norm
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in enc.parameters())
    with pytest.raises(ValueError, match="layer_decay"):
        DownstreamConfig(layer_decay=0.0)
    samples = [_sample(i, 32) for i in range(4)]
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    probe = train_downstream(enc, "segmentation", "linear_probe", samples, epochs=2, steps_per_epoch=3)
    assert all(torch.equal(before[k], v) for k, v in probe.encoder.state_dict().items())  # frozen, on cached tokens
    assert any(p.grad is not None for p in probe.head.parameters())  # the head trained


# ---------------------------------------------------------------------------------------------
# each encoder's learning rate is chosen on validation images, never on the test split
# ---------------------------------------------------------------------------------------------

def test_validation_samples_are_their_own_stream():
    profile = get_profile("ci").replace(image_size=64)
    val = validation_samples(profile, 2)
    assert len(val) == 2 * 4 and all("_val_" in s.sample_id for s in val)
    test = generate_sample(val[0].domain, 0, split="test", size=64, severity=profile.severity, seed=profile.seed)
    assert not np.array_equal(val[0].image, test.image)


def test_select_encoder_lr_gives_each_encoder_its_best_rate(monkeypatch):
    import mfmda_lib.ssl.experiment as ssl_experiment

    profile = get_profile("ci")
    best = {"random": 3e-4, "mae": 1e-3}  # the rate at which each fake encoder does best
    seen = []
    monkeypatch.setattr(ssl_experiment, "benchmark_samples", lambda *a, **k: [_sample(i) for i in range(10)])

    def fake_train(encoder, task, protocol, train, *, config, seed, **_):
        seen.append((task, protocol, seed))
        return (encoder, config.lr_encoder)

    def fake_evaluate(model, samples, **tags):
        init, lr = model
        dice = 0.9 - abs(math.log10(lr) - math.log10(best[init]))
        return [{**tags, "domain": s.domain, "disc_dice": dice, "cup_dice": dice} for s in samples]

    monkeypatch.setattr(ssl_experiment, "train_downstream", fake_train)
    monkeypatch.setattr(ssl_experiment, "evaluate", fake_evaluate)
    target = _sample(0)
    target.domain = "riga_messidor"
    validation = [_sample(1), target]  # the source image is left out of the score
    selection = select_encoder_lr(profile, {"random": "random", "mae": "mae"}, grid=(3e-4, 1e-3), draws=2,
                                  validation=validation, progress=False)
    assert selection.best == best
    assert {init: c.lr_encoder for init, c in selection.configs.items()} == best
    assert selection.table.loc[("mae", 1e-3), "score"] == pytest.approx(0.9)
    assert all(task == "segmentation" and protocol == "finetune" for task, protocol, _ in seen)
    assert min(seed for *_, seed in seen) >= profile.seed + 100  # never the reported draws' seeds
    with pytest.raises(ValueError, match="no DownstreamConfig"):
        run_label_budgets(profile, {"random": "random", "mae": "mae"}, config={"random": DownstreamConfig()})


def test_encoder_lr_configs_reads_notebook_02s_selection_else_selects(monkeypatch, tmp_path):
    import pandas as pd

    import mfmda_lib.ssl.experiment as ssl_experiment
    from mfmda_lib.experiments import save_result
    from mfmda_lib.ssl import ENCODER_LR_GRID, LR_SELECTION_RESULT, LRSelection, encoder_lr_configs

    monkeypatch.setenv("MFMDA_RESULTS", str(tmp_path / "results"))
    profile = get_profile("ci")
    encoders = {"random": "random", "mae": "mae"}
    selected_now = []

    def fake_select(profile, encoders, *, config, progress):
        selected_now.append(sorted(encoders))
        best = {init: ENCODER_LR_GRID[0] for init in encoders}
        return LRSelection(pd.DataFrame(), best, {i: DownstreamConfig(lr_encoder=lr) for i, lr in best.items()})

    monkeypatch.setattr(ssl_experiment, "select_encoder_lr", fake_select)
    configs, origin = encoder_lr_configs(profile, encoders)  # nothing saved: selects now
    assert origin == "selected now" and selected_now == [["mae", "random"]]
    assert {i: c.lr_encoder for i, c in configs.items()} == {"random": ENCODER_LR_GRID[0], "mae": ENCODER_LR_GRID[0]}

    chosen = {"random": ENCODER_LR_GRID[0], "mae": ENCODER_LR_GRID[-1], "dino": ENCODER_LR_GRID[0]}
    save_result(LR_SELECTION_RESULT, profile, pd.DataFrame({"x": [1]}),
                meta={"chosen": chosen, "grid": list(ENCODER_LR_GRID)})  # as notebook 02 saves it
    configs, origin = encoder_lr_configs(profile, encoders, config=DownstreamConfig(lr_head=1e-2))
    assert origin.endswith(f"{LR_SELECTION_RESULT}_ci.json") and len(selected_now) == 1  # read, not selected again
    assert {i: c.lr_encoder for i, c in configs.items()} == {"random": chosen["random"], "mae": chosen["mae"]}
    assert all(c.lr_head == 1e-2 for c in configs.values())  # every other field from the given config

    save_result(LR_SELECTION_RESULT, profile, pd.DataFrame({"x": [1]}), meta={"chosen": chosen, "grid": [1e-2]})
    encoder_lr_configs(profile, encoders)  # made on another grid: not trusted, selected again
    assert len(selected_now) == 2


def test_label_mean_vcdr_uses_the_reported_draws_and_scores_per_hospital(monkeypatch):
    import mfmda_lib.ssl.experiment as ssl_experiment

    profile = get_profile("ci").replace(ssl_label_draws=2)
    source = [_sample(i) for i in range(10)]
    test = [_sample(0), _sample(1), _sample(2), _sample(7)]
    test[2].domain = test[3].domain = "riga_messidor"
    monkeypatch.setattr(ssl_experiment, "benchmark_samples",
                        lambda profile, split, *a, **k: source if split == "train" else test)
    trained_on = []

    def fake_train(encoder, task, protocol, train, **_):
        trained_on.append([s.sample_id for s in train])
        return None

    def fake_evaluate(model, samples, **tags):
        return [{**tags, "domain": "refuge_train", "vcdr_abs_err": 0.1, "vcdr_pred": 0.5, "suspect": 0}]

    monkeypatch.setattr(ssl_experiment, "train_downstream", fake_train)
    monkeypatch.setattr(ssl_experiment, "evaluate", fake_evaluate)
    run_label_budgets(profile, {"random": None, "mae": None}, budgets=(min(LABEL_BUDGETS),), tasks=("vcdr",),
                      protocols=("finetune",), progress=False)
    baseline = label_mean_vcdr(profile)
    assert list(baseline.index) == [0, 1] and trained_on[:2] == trained_on[2:]  # random's draws, then mae's
    for draw, ids in enumerate(trained_on[:2]):  # the constant is the mean of the very images the heads trained on
        constant = np.mean([source[int(i)].vcdr for i in ids])
        assert baseline.loc[draw, "label_mean"] == pytest.approx(constant)
        source_err = np.mean([abs(s.vcdr - constant) for s in test[:2]])
        target_err = np.mean([abs(s.vcdr - constant) for s in test[2:]])
        assert baseline.loc[draw, "source_vcdr_abs_err"] == pytest.approx(source_err)
        assert baseline.loc[draw, "target_vcdr_abs_err"] == pytest.approx(target_err)
    assert trained_on[0] != trained_on[1]  # two draws, two different sets of labelled images


def test_lora_protocol_trains_only_low_rank_factors_and_the_head():
    enc = ViTEncoder(ViTConfig(image_size=32, patch_size=8, dim=32, depth=2, heads=2))
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    samples = [_sample(i, 32) for i in range(4)]
    model = train_downstream(enc, "segmentation", "lora", samples, epochs=2, steps_per_epoch=3,
                             config=DownstreamConfig(lora_rank=2))
    assert all(torch.equal(v, before[k]) for k, v in enc.state_dict().items())  # the caller's encoder untouched
    state = model.encoder.state_dict()
    lora = {k: v for k, v in state.items() if "lora_" in k}
    assert len(lora) == 2 * 2 and all(v.shape[0] == 2 or v.shape[1] == 2 for v in lora.values())  # A, B per block
    assert any(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k)  # B starts at 0: it trained
    base = {k.replace(".base_layer", ""): v for k, v in state.items() if "lora_" not in k}
    assert all(torch.equal(base[k], v) for k, v in before.items())  # frozen base weights
    n_lora, share = trainable_share(enc, "segmentation", "lora", lora_rank=2)
    n_full, full = trainable_share(enc, "segmentation", "finetune")
    assert full == 1.0 and n_lora < n_full and share < 0.5
