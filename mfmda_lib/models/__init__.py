"""Promptable foundation segmenters behind one interface, and a cache for their frozen encoders.

Typical use::

    from mfmda_lib.models import load_model, EmbeddingCache, segment

    model = load_model("litemedsam")                 # frozen, eval mode, verified weights
    cache = EmbeddingCache.for_model(model)          # encoder outputs kept on disk
    probs = segment(model, images, boxes, cache=cache)   # (B, H, W) disc probabilities
"""
from .base import ChecksumError, InputSpec, ModelUnavailableError, PromptableSegmenter
from .cache import EmbeddingCache, embed, pooled_embeddings, segment
from .registry import available_models, load_model, model_and_cache
from .sam import build_toy_segmenter

__all__ = [
    "PromptableSegmenter",
    "InputSpec",
    "load_model",
    "model_and_cache",
    "available_models",
    "EmbeddingCache",
    "embed",
    "pooled_embeddings",
    "segment",
    "ModelUnavailableError",
    "ChecksumError",
    "build_toy_segmenter",
]
