"""SplitEncoder: prefix + suffix == the encoder, at every cut, for the three encoder families."""
import pytest
import torch

from mfmda_lib.models import build_toy_segmenter, load_model
from mfmda_lib.models.prefix import SplitEncoder, encoder_units

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _every_cut_matches(encoder, x, cuts):
    with torch.no_grad():
        full = encoder(x)
        for start in cuts:
            split = SplitEncoder(encoder, start)
            h, _ = split.prefix(x)
            out, _ = split.suffix(h)
            torch.testing.assert_close(out, full, rtol=1e-5, atol=1e-5)
    return full


def test_toy_encoder_every_cut_and_taps():
    encoder = build_toy_segmenter().image_encoder.eval()
    x = torch.randn(2, 3, 64, 64)
    n = len(encoder_units(encoder))
    _every_cut_matches(encoder, x, range(n + 1))
    split = SplitEncoder(encoder, "3", taps=("1", "5")).freeze_prefix()
    h, early = split.prefix(x)
    _, late = split.suffix(h)
    assert set(early) == {"1"} and set(late) == {"5"}
    assert not any(p.requires_grad for _, m in split.units[:3] for p in m.parameters())
    assert all(p.requires_grad for _, m in split.units[3:] for p in m.parameters())
    with pytest.raises(ValueError, match="unknown unit"):
        SplitEncoder(encoder, "nope")
    with pytest.raises(TypeError, match="do not know how to split"):
        encoder_units(torch.nn.Linear(2, 2))


def test_sam_vit_encoder_every_cut():
    from segment_anything.modeling import ImageEncoderViT

    encoder = ImageEncoderViT(img_size=64, patch_size=16, embed_dim=32, depth=3, num_heads=2, out_chans=16,
                              window_size=2, global_attn_indexes=(2,)).eval()
    names = [n for n, _ in encoder_units(encoder)]
    assert names == ["patch_embed", "blocks.0", "blocks.1", "blocks.2", "neck"]
    _every_cut_matches(encoder, torch.randn(1, 3, 64, 64), range(len(names) + 1))


def test_litemedsam_units_and_a_late_cut():
    encoder = load_model("litemedsam").image_encoder
    names = [n for n, _ in encoder_units(encoder)]
    assert names[:3] == ["patch_embed", "layers.0", "layers.1.blocks.0"] and names[-1] == "neck"
    assert "layers.2.downsample" in names and len(names) == 15
    full = _every_cut_matches(encoder, torch.rand(1, 3, 256, 256), ["layers.3.blocks.0"])
    assert full.shape == (1, 256, 64, 64)
