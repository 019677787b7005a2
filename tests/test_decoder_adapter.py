"""SAM-DA decoder adapter: zero gate is the identity on real LiteMedSAM, size, freezing, removal."""
import pytest
import torch

from mfmda_lib.adapt import decoder_adapter as da
from mfmda_lib.data.synthetic import generate_sample
from mfmda_lib.models import build_toy_segmenter, load_model


pytestmark = pytest.mark.usefixtures("one_torch_thread")



@pytest.fixture(scope="module")
def litemedsam_case():
    """Real LiteMedSAM, one synthetic target image's embedding (computed fresh, ~2 s) and its two boxes."""
    model = load_model("litemedsam", device="cpu")
    sample = generate_sample("riga_binrushed", 0, split="test", size=256)
    with torch.no_grad():
        z = model.encode(model.preprocess([sample.image]))  # (1, 256, 64, 64)
    sizes = [sample.image.shape[:2]] * 2
    boxes = model.boxes_to_input(torch.stack([torch.as_tensor(sample.box("disc")),
                                              torch.as_tensor(sample.box("cup"))]).numpy(), sizes)  # (2, 4)
    return model, z.expand(2, -1, -1, -1), boxes


def test_zero_gated_adapter_leaves_litemedsam_exactly_unchanged(litemedsam_case):
    model, z, boxes = litemedsam_case
    with torch.no_grad():
        before = model.decode(z, boxes)  # (2, 1, 256, 256)
    da.inject(model.mask_decoder, da.DecoderAdapterConfig())
    try:
        with torch.no_grad():
            after = model.decode(z, boxes)
        assert torch.equal(before, after)
        assert torch.equal(before > 0, after > 0)  # masks too
        # a moved gate does change the output: the adapter is really in the forward pass
        gates = [m.adapter_gate for m in model.mask_decoder.modules() if isinstance(m, da.AdapterAttention)]
        assert len(gates) == 3  # two TwoWayAttentionBlocks + the final token->image attention
        with torch.no_grad():
            gates[0].fill_(0.5)
            assert not torch.equal(before, model.decode(z, boxes))
            gates[0].zero_()
    finally:
        da.remove(model.mask_decoder)
    with torch.no_grad():
        assert torch.equal(before, model.decode(z, boxes))
    assert not da.is_injected(model.mask_decoder)


def test_adapter_is_under_one_percent_of_litemedsam_and_only_it_trains(litemedsam_case):
    model = litemedsam_case[0]
    total = sum(p.numel() for p in model.parameters())
    da.inject(model.mask_decoder)
    try:
        n_adapter = sum(p.numel() for p in da.adapter_parameters(model))
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert 0 < n_adapter < 0.01 * total
        assert trainable and all(da.ADAPTER_PREFIX in n for n in trainable)
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == n_adapter
    finally:
        da.remove(model.mask_decoder)


def test_remove_restores_the_original_decoder_modules_and_state():
    model = build_toy_segmenter()
    decoder = model.mask_decoder
    originals = [layer.cross_attn_token_to_image for layer in decoder.transformer.layers]
    keys = set(decoder.state_dict())
    da.inject(decoder, da.DecoderAdapterConfig(adapter_dim=8))
    assert set(decoder.state_dict()) != keys
    with pytest.raises(ValueError, match="already holds an adapter"):
        da.inject(decoder)
    da.remove(decoder)
    assert [layer.cross_attn_token_to_image for layer in decoder.transformer.layers] == originals
    assert set(decoder.state_dict()) == keys
    with pytest.raises(ValueError, match="no adapter"):
        da.remove(decoder)


def test_adapter_state_roundtrip_and_errors():
    model = build_toy_segmenter()
    da.inject(model.mask_decoder, da.DecoderAdapterConfig(adapter_dim=8))
    state = da.adapter_state_dict(model.mask_decoder)
    assert state and all(da.ADAPTER_PREFIX in k for k in state)
    with torch.no_grad():
        for p in da.adapter_parameters(model.mask_decoder):
            p.add_(1.0)
    da.load_adapter_state_dict(model.mask_decoder, state)
    assert all(torch.equal(v, da.adapter_state_dict(model.mask_decoder)[k]) for k, v in state.items())
    with pytest.raises(ValueError, match="does not fit"):
        da.load_adapter_state_dict(model.mask_decoder, {k: v for k, v in list(state.items())[1:]})
    with pytest.raises(ValueError, match="mask_decoder"):
        da.inject(build_toy_segmenter())
    with pytest.raises(ValueError, match="divide"):
        da.DecoderAdapterConfig(adapter_dim=10, num_heads=4)


def test_inject_wraps_with_a_given_subclass_and_refuses_other_classes():
    class Halved(da.AdapterAttention):
        def forward(self, q, k, v):
            return self.base_layer(q=q, k=k, v=v) + 0.5 * torch.tanh(self.adapter_gate) * self.adapter_attention(q)

    model = build_toy_segmenter()
    da.inject(model.mask_decoder, da.DecoderAdapterConfig(adapter_dim=8), layer=Halved)
    sites = [m for m in model.mask_decoder.modules() if isinstance(m, da.AdapterAttention)]
    assert sites and all(type(m) is Halved for m in sites)
    with pytest.raises(ValueError, match="subclass"):
        da.inject(build_toy_segmenter().mask_decoder, layer=torch.nn.Linear)
