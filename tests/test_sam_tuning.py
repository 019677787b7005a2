"""SAM tuning runners on the toy segmenter: training moves the adapter, checkpoints reload, TTA resets."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from mfmda_lib.adapt import decoder_adapter as da
from mfmda_lib.adapt import sam_lora, sam_tuning as st
from mfmda_lib.data.synthetic import generate_sample
from mfmda_lib.models import build_toy_segmenter


pytestmark = pytest.mark.usefixtures("one_torch_thread")



def _toy_set(model, n=4, domain="refuge_train"):
    samples = [generate_sample(domain, i, split="train", size=64) for i in range(n)]
    with torch.no_grad():
        z = model.encode(model.preprocess([s.image for s in samples]))  # (n, 32, 16, 16)
    return st.prompt_set(model, samples, z)


def _adapted_toy(seed=0):
    model = build_toy_segmenter()
    model.requires_grad_(False)
    model.eval()
    torch.manual_seed(seed)
    da.inject(model.mask_decoder, da.DecoderAdapterConfig(n_tokens=4, adapter_dim=8))
    return model


def test_prompt_set_shapes():
    model = build_toy_segmenter()
    data = _toy_set(model, n=3)
    assert data.boxes.shape == (3, 2, 4) and data.masks.shape == (3, 2, 64, 64)
    assert data.embeddings.dtype == torch.float16 and len(data.subset([0, 2])) == 2
    assert (data.masks[:, 0] >= data.masks[:, 1]).all()  # the cup lies inside the disc


def test_training_changes_output_and_reduces_loss(tmp_path):
    model = _adapted_toy()
    data = _toy_set(model)
    before = model.decode(data.embeddings[:1].float(), data.boxes[0, :1]).detach()
    cfg = st.TrainConfig(lr=1e-2, box_jitter=0.0, patience=10)
    history = st.train_decoder(model, data, data.subset([0]), cfg, epochs=4, batch_size=4, seed=0, progress=False)
    after = model.decode(data.embeddings[:1].float(), data.boxes[0, :1]).detach()
    assert not torch.equal(before, after)
    assert history.train_loss[-1] < history.train_loss[0]
    # the frozen parts did not move: only adapter parameters are trainable
    assert all(da.ADAPTER_PREFIX in n for n, p in model.named_parameters() if p.requires_grad)


def test_checkpoint_is_loaded_if_present(tmp_path):
    ckpt = tmp_path / "adapter.pt"
    data = _toy_set(build_toy_segmenter())
    cfg = st.TrainConfig(lr=1e-2, patience=10)
    first = _adapted_toy(seed=0)
    st.train_decoder(first, data, data.subset([0]), cfg, epochs=2, batch_size=4, seed=0, checkpoint=ckpt,
                     progress=False)
    assert ckpt.is_file()
    second = _adapted_toy(seed=1)  # a differently initialised adapter
    assert not all(torch.equal(v, da.adapter_state_dict(second)[k]) for k, v in da.adapter_state_dict(first).items())
    history = st.train_decoder(second, data, data.subset([0]), cfg, epochs=2, batch_size=4, seed=0,
                               checkpoint=ckpt, progress=False)
    assert history.resumed_from == 2  # nothing trained again
    for k, v in da.adapter_state_dict(first).items():
        assert torch.equal(v, da.adapter_state_dict(second)[k])


def test_full_decoder_configuration_trains_only_the_decoder():
    model = st.configure_full_decoder(build_toy_segmenter())
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(n.startswith("mask_decoder.") for n in names)
    assert len(names) == len(list(model.mask_decoder.parameters()))


def test_tta_adapts_then_reset_restores_the_source_adapter():
    model = _adapted_toy()
    with torch.no_grad():  # a "source-trained" adapter: open the gates
        for m in model.mask_decoder.modules():
            if isinstance(m, da.AdapterAttention):
                m.adapter_gate.fill_(0.3)
    source = da.adapter_state_dict(model.mask_decoder)
    data = _toy_set(model, n=1, domain="riga_binrushed")
    opt = torch.optim.Adam(da.adapter_parameters(model.mask_decoder), lr=1e-2)
    tta = st.SingleImageTTA(model, opt, st.TTAConfig(lr=1e-2))
    first = tta.adapt(data.embeddings[:1], data.boxes[0], steps=3, seed=0)
    moved = da.adapter_state_dict(model.mask_decoder)
    assert any(not torch.equal(v, moved[k]) for k, v in source.items())
    second = tta.adapt(data.embeddings[:1], data.boxes[0], steps=3, seed=0)  # episodic: same start, same result
    assert torch.allclose(first, second)
    tta.reset()
    assert all(torch.equal(v, da.adapter_state_dict(model.mask_decoder)[k]) for k, v in source.items())
    with pytest.raises(ValueError, match="no adapter"):
        st.SingleImageTTA(build_toy_segmenter(), opt, st.TTAConfig())


def test_encoder_lora_trains_only_lora_parameters():
    model = build_toy_segmenter()
    model.requires_grad_(False)
    model.eval()
    cfg = sam_lora.LoraConfigLite(r=2, alpha=4, target_modules=r"[036]", lr=1e-2, images_per_step=2)
    sam_lora.inject_encoder_lora(model, cfg)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and n.startswith("image_encoder.") for n in trainable)
    data = _toy_set(model)
    running = [b.running_mean.clone() for b in model.image_encoder.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    history = sam_lora.train_encoder_lora(model, data, cfg, epochs=2, seed=0, progress=False)
    assert len(history.epochs) == 2 and np.isfinite(history.train_loss).all()
    norms = [b.running_mean for b in model.image_encoder.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(running, norms))  # norm statistics stay frozen
    with pytest.raises(ValueError):
        sam_lora.inject_encoder_lora(build_toy_segmenter(), sam_lora.LoraConfigLite(target_modules=r"nothing_here"))


def test_medsam_loss_and_peak_memory():
    masks = torch.zeros(2, 1, 8, 8)
    masks[:, :, 2:6, 2:6] = 1
    good, bad = st.medsam_loss(masks * 20 - 10, masks), st.medsam_loss(-(masks * 20 - 10), masks)
    assert good < 0.01 < bad
    # RSS is measured in a fresh process: inside a long pytest run the allocator may hand back
    # pages freed by earlier tests, so the resident set need not grow at all.
    code = (
        "import time, torch\n"
        "from mfmda_lib.adapt.sam_tuning import PeakMemory\n"
        "with PeakMemory(torch.device('cpu'), interval=0.005) as mem:\n"
        "    block = torch.ones(64, 2**20 // 4)  # 64 MB, touched\n"
        "    block.add_(1)\n"
        "    time.sleep(0.05)\n"
        "print(mem.peak_mb, mem.label)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split(maxsplit=1)
    assert float(out[0]) > 30 and "RSS" in out[1]
