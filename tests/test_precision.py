"""Mixed precision: autocast on CUDA only; on a CPU every training loop is bit-for-bit the float32 one."""
import contextlib
import warnings

import pytest
import torch
from torch import nn

from mfmda_lib import precision
from mfmda_lib.diffusion import training
from mfmda_lib.diffusion.ddpm import DDPMConfig, alphas_cumprod, build_unet
from mfmda_lib.train import FitConfig, fit


def test_the_cpu_gets_no_autocast_and_a_disabled_scaler():
    for device in ("cpu", torch.device("cpu"), "mps"):
        assert precision.amp_dtype(device) is None
        assert isinstance(precision.autocast(device), contextlib.nullcontext)
        assert not precision.grad_scaler(device).is_enabled()
        assert precision.accelerate_mixed_precision(device) == "no"


@pytest.mark.parametrize("native_bf16, dtype, name", [(True, torch.bfloat16, "bf16"), (False, torch.float16, "fp16")])
def test_cuda_gets_bf16_where_native_else_fp16(monkeypatch, native_bf16, dtype, name):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native_bf16)
    assert precision.amp_dtype("cuda:0") == dtype
    assert precision.accelerate_mixed_precision("cuda") == name
    with warnings.catch_warnings():  # this machine has no CUDA: torch warns when the context is built
        warnings.simplefilter("ignore")
        context = precision.autocast("cuda")
    assert isinstance(context, torch.autocast) and context.fast_dtype == dtype


def _reference_fit(model, optimizer, batches, loss_fn, epochs, grad_clip):
    """The loop of mfmda_lib.train.fit as it was before mixed precision: plain float32."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for epoch in range(epochs):
        model.train()
        for batch in batches(epoch):
            loss = loss_fn(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()


def test_fit_on_a_cpu_is_bit_for_bit_the_plain_float32_loop():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(48, 8, generator=g), torch.randn(48, 1, generator=g)

    def batches(epoch):
        return [(x[i:i + 12], y[i:i + 12]) for i in range(0, 48, 12)]

    def loss_fn(m, batch):
        return nn.functional.mse_loss(m(batch[0]), batch[1])

    def run(loop):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 1))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        loop(model, optimizer)
        return [p.detach().clone() for p in model.parameters()]

    ours = run(lambda m, o: fit(m, o, batches, loss_fn, FitConfig(epochs=4, grad_clip=0.5), progress=False))
    plain = run(lambda m, o: _reference_fit(m, o, batches, loss_fn, epochs=4, grad_clip=0.5))
    assert all(torch.equal(a, b) for a, b in zip(ours, plain))
    assert not torch.equal(ours[0], run(lambda m, o: None)[0])  # it trained


def test_the_diffusion_loop_on_a_cpu_is_bit_for_bit_without_autocast(monkeypatch):
    tiny = DDPMConfig(image_size=16, block_out_channels=(8, 16), attention_levels=0, norm_num_groups=4,
                      num_train_timesteps=50)
    images = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    config = training.DDPMTrainConfig(steps=3, batch_size=2, ema_decay=0.0, warmup_steps=1)

    def run():
        torch.manual_seed(0)
        unet = build_unet(tiny)
        training.train_ddpm(unet, images, alphas_cumprod(tiny), config,
                            accelerator=training.make_accelerator(torch.device("cpu")), progress=False)
        return [p.detach().clone() for p in unet.parameters()]

    ours = run()
    monkeypatch.setattr(training, "autocast", lambda device: contextlib.nullcontext())
    assert all(torch.equal(a, b) for a, b in zip(ours, run()))
