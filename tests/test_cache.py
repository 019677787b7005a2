"""The frozen-encoder embedding cache: hits skip the encoder, misses are batched (atomic writes and unreadable
entries: tests/test_cached.py, the helper it stores through)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mfmda_lib.models import EmbeddingCache, build_toy_segmenter, embed, load_model, pooled_embeddings


def random_images(n: int, size: tuple[int, int] = (64, 64), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]


def count_encoder_calls(model, monkeypatch) -> list[int]:
    """Wrap ``model.encode``; the returned list gets the batch size of every call."""
    calls: list[int] = []
    real = model.encode

    def counting(x):
        calls.append(x.shape[0])
        return real(x)

    monkeypatch.setattr(model, "encode", counting)
    return calls


@pytest.fixture
def toy():
    return build_toy_segmenter().eval().requires_grad_(False)


def test_cache_hit_skips_the_litemedsam_encoder(tmp_path, monkeypatch):
    model = load_model("litemedsam", device="cpu")
    cache = EmbeddingCache(tmp_path, model.cache_key)
    calls = count_encoder_calls(model, monkeypatch)
    image = random_images(1, size=(96, 96))[0]

    first = embed(model, [image], cache=cache, progress=False)
    assert first.shape == (1, 256, 64, 64) and first.dtype == torch.float32 and not first.is_inference()
    assert calls == [1] and (cache.hits, cache.misses) == (0, 1)
    key = EmbeddingCache.key(image)
    stored = np.load(tmp_path / model.cache_key / key[:2] / f"{key}.npy")
    assert stored.dtype == np.float16 and stored.shape == (256, 64, 64)

    second = embed(model, [image], cache=cache, progress=False)
    assert calls == [1] and (cache.hits, cache.misses) == (1, 1)
    assert torch.equal(first, second)


def test_misses_are_encoded_in_batches_and_match_the_encoder(toy, tmp_path, monkeypatch):
    images = random_images(5)
    with torch.inference_mode():
        direct = toy.encode(toy.preprocess(images))  # (5, 32, 16, 16)
    cache = EmbeddingCache(tmp_path, toy.cache_key)
    embed(toy, images[1:3], cache=cache, progress=False)  # warm two entries
    calls = count_encoder_calls(toy, monkeypatch)

    cached = embed(toy, images, cache=cache, batch_size=2, progress=False)
    assert sum(calls) == 3 and max(calls) <= 2  # only the 3 misses, in batches of <= 2
    assert (cache.hits, cache.misses) == (2, 5)
    assert torch.allclose(cached, direct, rtol=1e-2, atol=1e-3)  # float16 storage
    assert torch.equal(embed(toy, images, cache=cache, progress=False), cached)  # hits == earlier misses

    calls.clear()
    other = random_images(1, seed=7)
    embed(toy, other, cache=cache, progress=False)  # a different image is a miss
    assert calls == [1] and (cache.hits, cache.misses) == (7, 6) and len(cache) == 6

    calls.clear()
    uncached = embed(toy, images, batch_size=2, progress=False)
    assert calls == [2, 2, 1] and torch.allclose(uncached, direct, atol=1e-6)


def test_keys_depend_on_pixels_and_shape():
    image = random_images(1)[0]
    assert EmbeddingCache.key(image) == EmbeddingCache.key(image.copy())
    changed = image.copy()
    changed[0, 0, 0] ^= 1
    assert EmbeddingCache.key(changed) != EmbeddingCache.key(image)
    assert EmbeddingCache.key(image.reshape(32, 128, 3)) != EmbeddingCache.key(image)


def test_the_cache_refuses_a_wrong_or_unfrozen_model(toy, tmp_path):
    images = random_images(1)
    with pytest.raises(ValueError, match="EmbeddingCache.for_model"):
        embed(toy, images, cache=EmbeddingCache(tmp_path, "litemedsam-79d8c9dc"), progress=False)
    cache = EmbeddingCache.for_model(toy, root=tmp_path)
    toy.image_encoder[0].weight.requires_grad_(True)
    with pytest.raises(ValueError, match="trainable"):
        embed(toy, images, cache=cache, progress=False)
    toy.requires_grad_(False).train()
    with pytest.raises(ValueError, match="train mode"):
        embed(toy, images, cache=cache, progress=False)
    with pytest.raises(ValueError, match="plain folder name"):
        EmbeddingCache(tmp_path, "../elsewhere")


def test_embeddings_feed_a_trainable_head(toy):
    z = embed(toy, random_images(2), progress=False)  # (2, 32, 16, 16)
    head = torch.nn.Conv2d(32, 1, kernel_size=1)
    head(z).mean().backward()  # would fail on inference-mode tensors
    assert head.weight.grad is not None


def test_pooling_ignores_the_padding(toy):
    square, wide = random_images(1, (64, 64))[0], random_images(1, (32, 64), seed=1)[0]
    pooled = pooled_embeddings(toy, [square, wide], progress=False)
    assert pooled.shape == (2, 32) and pooled.dtype == np.float32
    z = embed(toy, [square, wide], progress=False)  # (2, 32, 16, 16); wide fills rows 0..7
    assert np.allclose(pooled[0], z[0].mean(dim=(1, 2)).numpy(), atol=1e-6)
    assert np.allclose(pooled[1], z[1, :, :8, :].mean(dim=(1, 2)).numpy(), atol=1e-6)
    assert not np.allclose(pooled[1], z[1].mean(dim=(1, 2)).numpy(), atol=1e-3)
