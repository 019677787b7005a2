"""Frozen-encoder inference with an on-disk embedding cache: ``embed``, ``pooled_embeddings``, ``segment``.

The image encoder is the expensive part of every SAM-style model (about 1.5 s per image for
LiteMedSAM on 2 CPU cores, against milliseconds for the decoder). While it is frozen, its output
for a given image never changes, so the kit computes it once and keeps it on disk:

    <root>/<model.cache_key>/<hash[:2]>/<hash>.npy      float16, (C, h, w)

where ``hash`` is the SHA-256 of the image's shape, dtype and bytes. Files are written atomically,
so an interrupted run leaves no half-written entry. When a cache is used, fresh embeddings are
rounded through float16 too, so a result does not depend on whether it was a hit or a miss.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..environment import paths
from ..io import NUMPY, load_artefact, save_artefact, sha256_bytes
from .base import PromptableSegmenter, check_images

__all__ = ["EmbeddingCache", "embed", "pooled_embeddings", "segment"]


# ---------------------------------------------------------------------------------------------
# the cache
# ---------------------------------------------------------------------------------------------

class EmbeddingCache:
    """On-disk cache of one model's frozen-encoder outputs.

    Args:
        root: cache folder; entries go to ``root / model_key``.
        model_key: the model's ``cache_key`` (architecture + weights), e.g. ``"litemedsam-79d8c9dc"``.

    Attributes:
        hits, misses: lookups answered from disk / not found since creation.
    """

    def __init__(self, root: str | Path, model_key: str) -> None:
        if not model_key or any(sep in model_key for sep in ("/", "\\", "..")):
            raise ValueError(f"model_key must be a plain folder name like 'litemedsam-79d8c9dc', got {model_key!r}")
        self.root = Path(root)
        self.model_key = model_key
        self.directory = self.root / model_key
        self.hits = 0
        self.misses = 0

    @classmethod
    def for_model(cls, model: PromptableSegmenter, root: str | Path | None = None) -> "EmbeddingCache":
        """The cache of ``model`` under ``root`` (default ``paths().cache / "embeddings"``)."""
        return cls(paths().cache / "embeddings" if root is None else root, model.cache_key)

    @staticmethod
    def key(image: np.ndarray) -> str:
        """SHA-256 of an image's shape, dtype and pixel bytes."""
        header = f"{image.shape}|{image.dtype}|".encode()
        return sha256_bytes(header + np.ascontiguousarray(image).tobytes())

    def path(self, key: str) -> Path:
        """File of one entry."""
        return self.directory / key[:2] / f"{key}.npy"

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob("*/*.npy"))

    def __repr__(self) -> str:
        return f"EmbeddingCache({str(self.directory)!r}, hits={self.hits}, misses={self.misses})"

    def load(self, key: str) -> np.ndarray | None:
        """The stored ``(C, h, w)`` float16 embedding, or ``None`` (a miss). Unreadable files count as misses."""
        array = load_artefact(self.path(key), NUMPY)  # None when absent, or unreadable (with a warning)
        if array is None:
            self.misses += 1
        else:
            self.hits += 1
        return array

    def save(self, key: str, embedding: np.ndarray) -> Path:
        """Store a ``(C, h, w)`` embedding as float16, atomically; returns its file."""
        return save_artefact(self.path(key), np.asarray(embedding, dtype=np.float16), NUMPY)


# ---------------------------------------------------------------------------------------------
# the encoder pass, chunk by chunk
# ---------------------------------------------------------------------------------------------

def _check_cacheable(model: PromptableSegmenter, cache: EmbeddingCache) -> None:
    if cache.model_key != model.cache_key:
        raise ValueError(f"the cache holds {cache.model_key!r} embeddings but the model is {model.cache_key!r}: "
                         "use EmbeddingCache.for_model(model)")
    encoder = model.image_encoder
    if encoder.training or any(p.requires_grad for p in encoder.parameters()):
        raise ValueError(
            f"{model.name}: the image encoder is in train mode or has trainable parameters, so its outputs "
            "change and cannot be cached. Pass cache=None, or freeze it (requires_grad_(False), eval()) and "
            "give the model a new cache_key if its weights changed."
        )


def _embedding_chunks(model: PromptableSegmenter, images: list[np.ndarray], cache: EmbeddingCache | None,
                      batch_size: int, progress: bool) -> Iterator[torch.Tensor]:
    """Yield ``(b, C, h, w)`` float32 CPU embeddings of consecutive chunks of ``batch_size`` images."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    keys = [EmbeddingCache.key(img) for img in images] if cache is not None else None
    n_missing = len(images) if cache is None else sum(k not in cache for k in keys)
    bar = tqdm(total=n_missing, desc=f"{model.name} encoder", unit="img",
               disable=not progress or n_missing == 0)
    try:
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            found = [None] * len(chunk) if cache is None else [cache.load(k) for k in keys[start:start + len(chunk)]]
            todo = [i for i, arr in enumerate(found) if arr is None]
            if todo:
                with torch.inference_mode():
                    z = model.encode(model.preprocess([chunk[i] for i in todo]))  # (m, C, h, w)
                    z = z.float().cpu().numpy()
                for j, i in enumerate(todo):
                    if cache is None:
                        found[i] = z[j]
                    else:
                        found[i] = z[j].astype(np.float16)
                        cache.save(keys[start + i], found[i])
                bar.update(len(todo))
            # from_numpy gives ordinary tensors (not inference tensors): safe to feed to trained heads
            yield torch.from_numpy(np.stack(found).astype(np.float32))  # (b, C, h, w)
    finally:
        bar.close()


# ---------------------------------------------------------------------------------------------
# public verbs
# ---------------------------------------------------------------------------------------------

def embed(model: PromptableSegmenter, images: Sequence[np.ndarray], cache: EmbeddingCache | None = None,
          batch_size: int = 4, progress: bool = True) -> torch.Tensor:
    """Frozen-encoder embeddings of images, encoding only the cache misses.

    Args:
        model: the segmenter (its encoder must be frozen and in eval mode when a cache is used).
        images: ``B`` arrays ``(H_i, W_i, 3)`` uint8.
        cache: optional on-disk cache for ``model.cache_key``.
        batch_size: images per encoder forward pass.
        progress: show a tqdm bar over the images that need encoding.

    Returns:
        ``(B, C, h, w)`` float32 on the CPU (``(B, 256, 64, 64)`` for the SAM family).
    """
    images = check_images(images)
    if cache is not None:
        _check_cacheable(model, cache)
    return torch.cat(list(_embedding_chunks(model, images, cache, batch_size, progress)))


def pooled_embeddings(model: PromptableSegmenter, images: Sequence[np.ndarray],
                      cache: EmbeddingCache | None = None, batch_size: int = 4,
                      progress: bool = True) -> np.ndarray:
    """Global-average-pooled embeddings (for domain linear probes and 2-D projections).

    The mean runs over the embedding cells that cover the image, not the zero padding, so images
    of different aspect ratios are pooled over their content only.

    Returns:
        ``(B, C)`` float32.
    """
    images = check_images(images)
    if cache is not None:
        _check_cacheable(model, cache)
    pooled, index = [], 0
    for z in _embedding_chunks(model, images, cache, batch_size, progress):  # (b, C, h, w)
        for emb in z:
            new_h, new_w = model.spec.resized_shape(*images[index].shape[:2])
            rows = -(-new_h * emb.shape[1] // model.input_size)  # ceil: cells touching content
            cols = -(-new_w * emb.shape[2] // model.input_size)
            pooled.append(emb[:, :rows, :cols].mean(dim=(1, 2)).numpy())  # (C,)
            index += 1
    return np.stack(pooled).astype(np.float32)  # (B, C)


def segment(model: PromptableSegmenter, images: Sequence[np.ndarray], boxes: np.ndarray,
            cache: EmbeddingCache | None = None, batch_size: int = 4,
            progress: bool = True) -> np.ndarray | list[np.ndarray]:
    """Box-prompted foreground probabilities at each image's original size.

    Each image is encoded once (or read from ``cache``), however many boxes prompt it.

    Args:
        model: the segmenter.
        images: ``B`` arrays ``(H_i, W_i, 3)`` uint8.
        boxes: ``(B, 4)`` ``[x0, y0, x1, y1]`` in each original image's pixels (e.g.
            :func:`mfmda_lib.data.sample.mask_box`), or ``(B, K, 4)`` for ``K`` prompts per image.
        cache, batch_size, progress: as in :func:`embed`.

    Returns:
        ``(B, H, W)`` float32 probabilities (``(B, K, H, W)`` for ``(B, K, 4)`` boxes) when all
        images share one size; otherwise a list of ``B`` arrays ``(H_i, W_i)`` (or ``(K, H_i, W_i)``).
    """
    images = check_images(images)
    sizes = [img.shape[:2] for img in images]
    boxes = np.asarray(boxes, dtype=np.float32)
    several = boxes.ndim == 3
    boxes_bk = boxes if several else boxes[:, None]  # (B, K, 4)
    if boxes_bk.ndim != 3 or boxes_bk.shape[0] != len(images):
        raise ValueError(f"boxes must be (B, 4) or (B, K, 4) with B = {len(images)} images, got {boxes.shape}")
    boxes_in = [model.boxes_to_input(boxes_bk[:, k], sizes) for k in range(boxes_bk.shape[1])]  # K x (B, 4)
    if cache is not None:
        _check_cacheable(model, cache)
    probs, start = [], 0
    for z in _embedding_chunks(model, images, cache, batch_size, progress):  # (b, C, h, w)
        with torch.inference_mode():
            logits = [model.decode(z, b_in[start:start + len(z)]) for b_in in boxes_in]  # K x (b, 1, S, S)
            for j, size in enumerate(sizes[start:start + len(z)]):
                p = torch.stack([torch.sigmoid(model.postprocess_logits(lg[j], size)) for lg in logits])  # (K, H, W)
                p = p.float().cpu().numpy()
                probs.append(p if several else p[0])
        start += len(z)
    if len(set(sizes)) == 1:
        return np.stack(probs)  # (B, H, W) or (B, K, H, W)
    return probs
