"""MFM-DA stage 2 building blocks: Rein tokens, the pyramid encoder and head, the losses, the image baselines."""
import numpy as np
import pytest
import torch
from torch import nn

from mfmda_lib.align.baselines import fda_translate, histogram_match, jittered_samples, photometric_jitter
from mfmda_lib.align.losses import channel_spatial_alignment, segmentation_loss
from mfmda_lib.align.pyramid import PyramidEncoder, PyramidHead, to_map
from mfmda_lib.align.rein import ReinBlock, ReinConfig, inject, mark_only_rein_trainable, rein_parameters, remove
from mfmda_lib.data import FundusSample
from mfmda_lib.models.prefix import encoder_units

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TAPS = ("layers.1.blocks.1", "layers.2.blocks.5", "layers.3.blocks.0", "layers.3.blocks.1")


# ---------------------------------------------------------------------------------------------
# a tiny TinyViT-like encoder (same unit names as LiteMedSAM's, 32 px input)
# ---------------------------------------------------------------------------------------------

class _Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.norm, self.fc = nn.LayerNorm(dim), nn.Linear(dim, dim)

    def forward(self, x):  # (B, N, d)
        return x + self.fc(self.norm(x))


class _Layer(nn.Module):
    def __init__(self, dim: int, depth: int, out: int | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([_Block(dim) for _ in range(depth)])
        self.downsample = nn.Linear(dim, out) if out else None


class _Tokens(nn.Module):
    def forward(self, x):  # (B, C, H, W) -> (B, HW, C)
        return x.flatten(2).transpose(1, 2)


class TinyViTLike(nn.Module):
    """patch_embed -> layers.0 (to tokens) -> layers.1-3 (blocks, downsample) -> neck; 32 px -> 8x8 tokens."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.patch_embed = nn.Conv2d(3, 8, 4, stride=4)
        self.layers = nn.ModuleList([_Tokens(), _Layer(8, 2, 12), _Layer(12, 6, 16), _Layer(16, 2, None)])
        self.neck = nn.Conv2d(16, 16, 1)

    def forward(self, x):
        for _, unit in encoder_units(self):
            x = unit(x)
        return x


def tiny_vit() -> TinyViTLike:
    return TinyViTLike().eval()


# ---------------------------------------------------------------------------------------------
# Rein
# ---------------------------------------------------------------------------------------------

def test_untrained_rein_leaves_features_nearly_unchanged_and_only_rein_trains():
    encoder = tiny_vit()
    units = encoder_units(encoder)
    wrapped, projections = inject(units, "layers.2.blocks.0", ReinConfig(n_tokens=5, rank=2))
    names = [n for n, m in wrapped if isinstance(m, ReinBlock)]
    assert names == [f"layers.2.blocks.{i}" for i in range(6)] + ["layers.3.blocks.0", "layers.3.blocks.1"]
    assert set(projections) == {"12", "16"}  # one shared projection per width
    block = dict(wrapped)["layers.2.blocks.3"]
    assert block.proj is projections["12"] and dict(wrapped)["layers.2.blocks.4"].proj is projections["12"]
    assert len([n for n, _ in projections.named_parameters() if n.endswith("rein_scale")]) == 2  # one s per width
    with pytest.raises(ValueError, match="n_tokens"):
        ReinConfig(n_tokens=1)
    x = torch.randn(2, 16, 12)
    with torch.no_grad():
        plain, adapted = block.block(x), block(x)
    rel = (adapted - plain).norm() / plain.norm()
    assert 0 < rel < 1e-2  # s = 1e-3: the foundation model's features, almost exactly

    holder = nn.ModuleDict({"encoder": encoder, "proj": projections,
                            "tokens": nn.ModuleList([m.rein_tokens for _, m in wrapped if isinstance(m, ReinBlock)])})
    n = mark_only_rein_trainable(holder)
    trainable = {name for name, p in holder.named_parameters() if p.requires_grad}
    assert trainable and all("rein_" in name for name in trainable) and n == sum(p.numel() for p in rein_parameters(holder))
    assert not any(p.requires_grad for p in encoder.parameters())
    assert [m for _, m in remove(wrapped)] == [m for _, m in units]
    with pytest.raises(ValueError, match="already have Rein"):
        inject(wrapped, "layers.3.blocks.0", ReinConfig())
    with pytest.raises(ValueError, match="unknown start"):
        inject(units, "nope", ReinConfig())


def test_pyramid_encoder_prefix_plus_suffix_and_gradients():
    encoder = tiny_vit()
    x = torch.randn(2, 3, 32, 32)
    plain = PyramidEncoder(encoder, TAPS, "layers.3.blocks.0", None)  # no tokens: exactly the encoder's taps
    zero = PyramidEncoder(encoder, TAPS, "layers.3.blocks.0", ReinConfig(n_tokens=4, rank=2, scale_init=0.0))
    with torch.no_grad():
        h = x
        expected = {}
        for name, unit in encoder_units(encoder):
            h = unit(h)
            if name in TAPS:
                expected[name] = to_map(h, channels_last=False)
        for enc in (plain, zero):
            levels = enc.pyramid(x)
            for t, level in zip(TAPS, levels):
                torch.testing.assert_close(level, expected[t])
    assert [tuple(f.shape) for f in levels] == [(2, 8, 8, 8), (2, 12, 8, 8), (2, 16, 8, 8), (2, 16, 8, 8)]
    assert plain.cache_signature() == zero.cache_signature()  # one cached prefix serves both
    assert zero.frozen_taps == list(TAPS[:2]) and zero.adapted_units == ["layers.3.blocks.0", "layers.3.blocks.1"]

    rein = PyramidEncoder(encoder, TAPS, "layers.3.blocks.0", ReinConfig(n_tokens=4, rank=2))
    cached = rein.prefix(x)
    assert set(cached) == {"h", *TAPS[:2]} and not cached["h"].requires_grad
    loss = sum(f.square().mean() for f in rein(cached))
    loss.backward()
    grads = {n for n, p in rein.named_parameters() if p.grad is not None}
    assert grads and all("rein_" in n for n in grads)
    assert all(not p.requires_grad for p in encoder.parameters())
    with pytest.raises(ValueError, match="shallow to deep"):
        PyramidEncoder(encoder, TAPS[::-1], None)


def test_levels_placement_caches_the_whole_encoder_and_adapts_every_level():
    encoder = tiny_vit()
    x = torch.randn(2, 3, 32, 32)
    plain = PyramidEncoder(encoder, TAPS, "layers.1.blocks.0", None, "levels")
    levels = PyramidEncoder(encoder, TAPS, "layers.1.blocks.0", ReinConfig(n_tokens=4, rank=2), "levels")
    assert plain.cache_signature() == levels.cache_signature() and levels.frozen_taps == list(TAPS)
    assert levels.adapted_taps == list(TAPS) and plain.adapted_taps == []
    assert set(levels.rein_projections) == {"8", "12", "16"}  # one shared projection per width
    cached = levels.prefix(x)
    assert set(cached) == set(TAPS)  # no "h": nothing of the encoder runs in the suffix
    with torch.no_grad():
        for a, p in zip(levels(cached), plain(cached)):
            assert a.shape == p.shape and 0 < float((a - p).norm() / p.norm()) < 1e-2
    sum(f.square().mean() for f in levels(cached)).backward()
    grads = {n for n, p in levels.named_parameters() if p.grad is not None}
    assert {n.split(".")[1] for n in grads if n.startswith("rein_tokens")} == {t.replace(".", "_") for t in TAPS}
    assert all("rein_" in n for n in grads)
    late = PyramidEncoder(encoder, TAPS, "layers.2.blocks.5", ReinConfig(n_tokens=4, rank=2), "levels")
    assert late.adapted_taps == list(TAPS[1:])
    with pytest.raises(ValueError, match="placement"):
        PyramidEncoder(encoder, TAPS, None, None, "everywhere")


def test_pyramid_head_shapes():
    head = PyramidHead([8, 12, 16], [16, 8, 8], width=4)
    feats = [torch.randn(2, 8, 16, 16), torch.randn(2, 12, 8, 8), torch.randn(2, 16, 8, 8)]
    assert isinstance(head.up[0], nn.ConvTranspose2d) and isinstance(head.up[1], nn.Identity)
    assert head(feats, 32).shape == (2, 2, 32, 32)
    assert PyramidHead([16], [8])([feats[-1]], (20, 24)).shape == (2, 2, 20, 24)
    with pytest.raises(ValueError, match="expects 3 levels"):
        head(feats[:2], 32)


# ---------------------------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------------------------

def test_alignment_loss_is_zero_for_identical_features():
    torch.manual_seed(0)
    fs = [torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8)]
    assert float(channel_spatial_alignment(fs, [f.clone() for f in fs])) == pytest.approx(0.0, abs=1e-6)
    scaled = [f * torch.rand(2, 1, *f.shape[-2:]).add(0.5) for f in fs]  # positive scale per position
    assert float(channel_spatial_alignment(fs, scaled)) == pytest.approx(0.0, abs=1e-6)
    assert float(channel_spatial_alignment(fs, [-f for f in fs])) == pytest.approx(2.0, abs=1e-6)
    other = [torch.randn_like(f) for f in fs]
    assert 0.5 < float(channel_spatial_alignment(fs, other)) < 1.5
    shifted = [f.roll(1, dims=-1) for f in fs]  # same channels, moved: spatial layout matters
    assert float(channel_spatial_alignment(fs, shifted)) > 0.5
    with pytest.raises(ValueError, match="shapes"):
        channel_spatial_alignment(fs, fs[::-1])


def test_segmentation_loss():
    y = (torch.rand(2, 2, 16, 16) > 0.7).float()
    perfect = (y * 2 - 1) * 20
    assert float(segmentation_loss(perfect, y)) < 1e-3
    bce_only = segmentation_loss(torch.zeros_like(y), y, dice_weight=0)
    assert float(bce_only) == pytest.approx(2 * np.log(2), rel=1e-5)  # BCE(disc) + BCE(cup) at p = 0.5
    assert float(segmentation_loss(torch.zeros_like(y), y)) > float(bce_only)
    with pytest.raises(ValueError, match="disc, cup"):
        segmentation_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4))


# ---------------------------------------------------------------------------------------------
# image baselines
# ---------------------------------------------------------------------------------------------

def _image(seed: int, size: int = 32, tint=(1.0, 1.0, 1.0)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.uniform(40, 200, size=(size, size, 3)) * np.asarray(tint)
    return np.clip(base, 0, 255).astype(np.uint8)


def test_fda_swaps_low_frequency_amplitude():
    source, target = _image(0), _image(1, tint=(1.2, 0.8, 0.7))  # no clipping at 0 or 255
    assert np.abs(fda_translate(source, source).astype(int) - source).max() <= 1
    out = fda_translate(source, target, L=0.0)  # only the DC term: the target's mean colour
    np.testing.assert_allclose(out.reshape(-1, 3).mean(0), target.reshape(-1, 3).mean(0), atol=1.5)
    assert np.corrcoef(out[..., 0].ravel(), source[..., 0].ravel())[0, 1] > 0.95  # structure kept
    with pytest.raises(ValueError, match="uint8"):
        fda_translate(source.astype(float), target)


def test_histogram_matching_and_jitter():
    source, ref = _image(0), _image(2, tint=(0.6, 1.0, 1.3))
    np.testing.assert_array_equal(histogram_match(source, [source]), source)
    out = histogram_match(source, [ref])
    for c in range(3):
        assert abs(np.quantile(out[..., c], 0.5) - np.quantile(ref[..., c], 0.5)) <= 2
        assert np.corrcoef(out[..., c].ravel(), source[..., c].ravel())[0, 1] > 0.95  # monotone map
    rng = np.random.default_rng(0)
    assert np.array_equal(photometric_jitter(source, rng, strength=0.0), source)
    mask = np.zeros((32, 32), bool)
    mask[8:20, 8:20] = True
    samples = [FundusSample(image=_image(i), disc=mask, cup=mask & False, domain="refuge_train", sample_id=str(i))
               for i in range(2)]
    a, b = jittered_samples(samples, seed=3), jittered_samples(samples, seed=3)
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
    assert not np.array_equal(a[0].image, samples[0].image) and a[0].meta["translation"] == "jitter"
    assert a[0].sample_id == "0" and np.array_equal(a[0].disc, mask)
