"""Source DDPM pieces: config, conditioned U-Net, sampling/SDEdit, translation, resumable training, checkpoints."""
import json

import numpy as np
import pytest
import torch

from mfmda_lib.diffusion.checkpoint import load_ddpm, save_ddpm
from mfmda_lib.diffusion.conditioned import ContentConditionedUNet, time_gate
from mfmda_lib.diffusion.ddpm import (DDPMConfig, alphas_cumprod, build_scheduler, build_unet, predict_x0, q_sample,
                                      resize, to_signed_tensor, to_uint8)
from mfmda_lib.diffusion.sampling import sample, sdedit, timesteps_from, unconditional
from mfmda_lib.diffusion.source import SHIPPED_NAME, ddpm_config, source_ddpm_path
from mfmda_lib.diffusion.training import DDPMTrainConfig, make_accelerator, train_ddpm
from mfmda_lib.diffusion.translate import TranslateConfig, to_full_resolution, translate
from mfmda_lib.models import ChecksumError
from mfmda_lib.profiles import PROFILES

TINY = DDPMConfig(image_size=16, block_out_channels=(8, 16), norm_num_groups=4)


@pytest.fixture(scope="module", autouse=True)
def _threads(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def accelerator():
    return make_accelerator(torch.device("cpu"))


def _tiny_model(seed=0):
    torch.manual_seed(seed)
    return ContentConditionedUNet(build_unet(TINY))


def _images(n=6, seed=0):
    return torch.rand((n, 3, 16, 16), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_config_is_validated():
    with pytest.raises(ValueError, match="divisible"):
        DDPMConfig(image_size=18, block_out_channels=(8, 16, 32))
    with pytest.raises(ValueError, match="norm_num_groups"):
        DDPMConfig(block_out_channels=(12, 24), norm_num_groups=8)
    assert DDPMConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(ValueError, match="unknown field"):
        DDPMConfig.from_dict({**TINY.to_dict(), "dropout": 0.1})


def test_forward_process_and_x0_prediction_invert_each_other():
    ab = alphas_cumprod(TINY)
    x0, noise, t = _images(4), torch.randn(4, 3, 16, 16), torch.tensor([0, 10, 500, 900])
    x_t = q_sample(x0, t, noise, ab)
    assert torch.allclose(predict_x0(x_t, t, noise, ab), x0, atol=1e-3)
    assert ab[0] > 0.99 and ab[-1] < 1e-3  # almost no noise at t=0, almost pure noise at T-1


def test_conditioned_unet_equals_the_unet_until_the_fusion_trains():
    model = _tiny_model()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([100, 700])
    with torch.no_grad():
        plain = model.unet(x, t).sample
        assert torch.allclose(model(x, t), plain, atol=1e-6)
        assert torch.allclose(model(x, t, torch.randn_like(x)), plain, atol=1e-6)  # zero-initialised fusion
    gate = time_gate(torch.tensor([0, 290, 300, 310, 999])).flatten()
    assert gate[0] < 1e-6 and gate[1] < 1e-4 and abs(gate[2] - 0.5) < 1e-6 and gate[3] > 1 - 1e-4
    assert not any(p.requires_grad for p in model.content_encoder.parameters())


def test_sdedit_at_t0_returns_the_input_and_sampling_shapes():
    model = _tiny_model()
    ddim = build_scheduler(TINY, "ddim")
    x = _images(2)
    assert torch.equal(sdedit(unconditional(model.unet), ddim, x, 0, steps=5), x)
    out = sdedit(unconditional(model.unet), ddim, x, 300, steps=4, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and not torch.equal(out, x) and out.abs().max() <= 1
    ts = timesteps_from(ddim, 600, 25)
    assert ts[0] <= 600 and ts[-1] == 0 and 20 <= len(ts) <= 30
    g = torch.Generator().manual_seed(0)
    for kind in ("ddpm", "ddim"):
        s = sample(unconditional(model.unet), build_scheduler(TINY, kind), 2, 16, steps=3, generator=g, progress=False)
        assert s.shape == (2, 3, 16, 16)


def test_translation_is_per_image_and_full_resolution_keeps_unchanged_images():
    model = _tiny_model().eval()
    ddim, ab = build_scheduler(TINY, "ddim"), alphas_cumprod(TINY)
    x = _images(3)
    a = translate(model, ddim, x, ab, TranslateConfig(steps=3, batch_size=2, guide_factor=4), progress=False)
    b = translate(model, ddim, x, ab, TranslateConfig(steps=3, batch_size=3, guide_factor=4), progress=False)
    assert torch.allclose(a, b, atol=1e-5)  # image i does not depend on its batch
    images = [np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8) for i in range(2)]
    lo = resize(to_signed_tensor(images), 16)  # "translation" that changed nothing
    assert all(np.array_equal(o, i) for o, i in zip(to_full_resolution(images, lo), images))
    brighter = to_full_resolution(images, (lo + 0.2).clamp(-1, 1))
    assert np.mean([o.astype(float).mean() - i.mean() for o, i in zip(brighter, images)]) > 15
    assert to_uint8(lo).shape == (2, 16, 16, 3)


def test_killed_training_resumes_to_the_same_weights(tmp_path, accelerator):
    images, ab = _images(8), alphas_cumprod(TINY)
    config = DDPMTrainConfig(steps=5, batch_size=2, checkpoint_every=2, warmup_steps=2)

    def run(ckpt, kill_at=None):
        torch.manual_seed(0)
        unet = build_unet(TINY)

        def callback(step, logs):
            if step == kill_at:
                raise KeyboardInterrupt

        try:
            hist = train_ddpm(unet, images, ab, config, accelerator=accelerator, checkpoint=ckpt,
                              callback=callback, progress=False)
        except KeyboardInterrupt:
            return None, None
        return unet, hist

    full, _ = run(tmp_path / "a.pt")
    assert run(tmp_path / "b.pt", kill_at=2) == (None, None)  # killed after step 2; checkpoint holds 2 steps
    assert torch.load(tmp_path / "b.pt", weights_only=True)["step"] == 2
    resumed, hist = run(tmp_path / "b.pt")
    assert hist.resumed_from == 2 and len(hist.steps) == 5
    for p, q in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(p, q)  # EMA weights identical to the uninterrupted run


def test_checkpoint_roundtrip_and_checksum_mismatch(tmp_path):
    model = _tiny_model(seed=3)
    path = tmp_path / "ddpm.pt"
    digest = save_ddpm(path, model, TINY, command="test")
    loaded, config = load_ddpm(path)
    assert config == TINY and json.loads(path.with_suffix(".json").read_text())["sha256"] == digest
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([500])
    with torch.no_grad():
        assert torch.allclose(loaded(x, t, x), model.half().float()(x, t, x), atol=1e-4)  # float16 storage
    with pytest.raises(ChecksumError, match="sha256 .* expected"):
        load_ddpm(path, sha256="0" * 64)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="corrupt"):
        load_ddpm(path)


def test_profiles_use_the_shipped_checkpoint_only_when_the_architecture_matches(tmp_path):
    cpu = PROFILES["cpu"]
    (tmp_path / SHIPPED_NAME).write_bytes(b"x")
    (tmp_path / SHIPPED_NAME).with_suffix(".json").write_text(json.dumps({"config": ddpm_config(cpu).to_dict()}))
    for profile in PROFILES.values():  # every profile models 64 px with the shipped architecture
        assert source_ddpm_path(profile, tmp_path) == tmp_path / SHIPPED_NAME
    big = cpu.replace(ddpm_image_size=128, ddpm_base_channels=64)
    assert source_ddpm_path(big, tmp_path).parent.name == "source_ddpm"  # 128 px: trained and cached
