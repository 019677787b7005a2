"""One interface for every promptable foundation segmenter: SAM-style encoder, prompt encoder, decoder.

A :class:`PromptableSegmenter` *wraps* the three SAM parts (it does not subclass any model), so
LiteMedSAM, SAM and MedSAM look the same to the rest of the kit: ``preprocess`` an image list,
``encode`` it once (the expensive, frozen part), ``decode`` as many box prompts as you like.

Geometry and intensity conventions differ between the models and live in :class:`InputSpec`:

- SAM and LiteMedSAM resize the longest side to ``S`` and pad bottom/right with zeros;
  MedSAM squashes the image to ``S x S`` (no padding).
- SAM normalises with ImageNet mean/std on the 0..255 scale; MedSAM and LiteMedSAM rescale
  each image to [0, 1] by its own min and max.

The module also holds the safe checkpoint helpers every model file uses: checksums (memoised by
file size and modification time) and ``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import functools
import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..io import sha256_file

__all__ = [
    "ModelUnavailableError",
    "ChecksumError",
    "file_digest",
    "verify_checksum",
    "load_state_dict_file",
    "InputSpec",
    "PromptableSegmenter",
    "check_images",
]


# ---------------------------------------------------------------------------------------------
# errors and safe checkpoint loading
# ---------------------------------------------------------------------------------------------

class ModelUnavailableError(RuntimeError):
    """A model's weights are missing, cannot be downloaded, or cannot be loaded; the message says what to do."""


class ChecksumError(ModelUnavailableError):
    """A weights file exists but its checksum is not the expected one (corrupt or another version)."""


@functools.lru_cache(maxsize=64)
def _digest_cached(path: str, size: int, mtime_ns: int, algorithm: str) -> str:
    # size and mtime_ns are part of the key only: a changed file gets hashed again.
    if algorithm == "sha256":
        return sha256_file(path)
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file, memoised per (path, size, mtime) so a 375 MB checkpoint is hashed once.

    Args:
        path: the file.
        algorithm: ``"sha256"`` or ``"md5"``.
    """
    if algorithm not in ("sha256", "md5"):
        raise ValueError(f"algorithm must be 'sha256' or 'md5', got {algorithm!r}")
    path = Path(path).resolve()
    stat = path.stat()
    return _digest_cached(str(path), stat.st_size, stat.st_mtime_ns, algorithm)


def verify_checksum(path: str | os.PathLike, expected: str, *, model: str, url: str | None = None) -> None:
    """Raise :class:`ChecksumError` unless the file's digest equals ``expected``.

    Args:
        path: the weights file.
        expected: ``"sha256:<hex>"`` or ``"md5:<hex>"``.
        model: model name, for the message.
        url: where a good copy can be downloaded, for the message.
    """
    algorithm, _, want = expected.partition(":")
    if not want:
        raise ValueError(f"checksum must look like 'sha256:<hex>' or 'md5:<hex>', got {expected!r}")
    got = file_digest(path, algorithm)
    if got != want.lower():
        where = f" Download a good copy from {url}" if url else ""
        raise ChecksumError(
            f"{model}: weights file {path} has {algorithm} {got}, expected {want}. The file is corrupt, "
            f"truncated or a different version: delete it and fetch it again.{where}"
        )


def load_state_dict_file(path: str | os.PathLike, *, model: str) -> dict[str, torch.Tensor]:
    """Load a state dict with ``torch.load(weights_only=True)`` on the CPU (no arbitrary pickles).

    Checkpoints that wrap the weights as ``{"model": ...}`` or ``{"state_dict": ...}`` are unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelUnavailableError(f"{model}: checkpoint file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise ModelUnavailableError(
            f"{model}: cannot load {path} safely with torch.load(weights_only=True) ({exc}). The file is "
            "corrupt, or it pickles Python objects: re-save just its state_dict with torch.save."
        ) from exc
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise ModelUnavailableError(f"{model}: {path} holds a {type(state).__name__}, not a state dict")
    return state


# ---------------------------------------------------------------------------------------------
# input conventions
# ---------------------------------------------------------------------------------------------

#: SAM's ImageNet statistics on the 0..255 scale (segment_anything/build_sam.py).
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class InputSpec:
    """How an RGB image becomes the model's square input.

    Attributes:
        size: side ``S`` of the square input (256 LiteMedSAM, 1024 SAM / MedSAM).
        keep_aspect: ``True``: resize the longest side to ``S`` and zero-pad bottom/right
            (SAM, LiteMedSAM). ``False``: resize to ``S x S``, no padding (MedSAM).
        intensity: ``"minmax"``: rescale each image to [0, 1] by its own min and max
            (MedSAM, LiteMedSAM); ``"imagenet"``: ``(x - mean) / std`` with SAM's statistics.
    """

    size: int
    keep_aspect: bool = True
    intensity: str = "minmax"

    def __post_init__(self) -> None:
        if self.size < 16:
            raise ValueError(f"InputSpec.size must be >= 16, got {self.size}")
        if self.intensity not in ("minmax", "imagenet"):
            raise ValueError(f"InputSpec.intensity must be 'minmax' or 'imagenet', got {self.intensity!r}")

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """``(new_h, new_w)`` of an ``height x width`` image inside the ``S x S`` input."""
        if not self.keep_aspect:
            return self.size, self.size
        scale = self.size / max(height, width)
        return int(height * scale + 0.5), int(width * scale + 0.5)  # SAM's rounding


def check_images(images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The images as a list, each checked to be ``(H, W, 3)`` uint8; ``ValueError`` names the bad one."""
    if isinstance(images, np.ndarray) and images.ndim == 3:
        raise ValueError("pass a list of images (or a (B, H, W, 3) array), not a single (H, W, 3) image")
    checked = list(images)
    if not checked:
        raise ValueError("no images given")
    for i, img in enumerate(checked):
        if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            got = f"{img.shape} {img.dtype}" if isinstance(img, np.ndarray) else type(img).__name__
            raise ValueError(f"image {i} must be an (H, W, 3) uint8 RGB array, got {got}")
    return checked


# ---------------------------------------------------------------------------------------------
# the wrapper
# ---------------------------------------------------------------------------------------------

class PromptableSegmenter(nn.Module):
    """A SAM-style box-promptable segmenter: frozen-able encoder, prompt encoder, mask decoder.

    Args:
        image_encoder: ``(B, 3, S, S) -> (B, C, h, w)``.
        prompt_encoder: a SAM ``PromptEncoder`` (``forward(points, boxes, masks)``, ``get_dense_pe()``).
        mask_decoder: a SAM ``MaskDecoder``.
        name: registry name, e.g. ``"litemedsam"``.
        spec: input geometry and intensity convention.
        cache_key: identifies architecture + weights for the embedding cache, e.g.
            ``"litemedsam-79d8c9dc"``. Change it whenever the encoder's weights change.

    The parts keep SAM's attribute names, so ``state_dict()`` keys match SAM / LiteMedSAM
    checkpoints and adapters can be injected by module path.
    """

    def __init__(self, image_encoder: nn.Module, prompt_encoder: nn.Module, mask_decoder: nn.Module, *,
                 name: str, spec: InputSpec, cache_key: str) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.name = name
        self.spec = spec
        self.input_size = spec.size
        self.cache_key = cache_key

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.parameters()).device

    def extra_repr(self) -> str:
        return f"name={self.name!r}, input_size={self.input_size}, cache_key={self.cache_key!r}"

    def load_weights(self, state: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
        """``load_state_dict(strict=True)`` with a message naming ``source`` and the mismatched keys."""
        expected = set(self.state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(
                f"{self.name}: checkpoint {source} does not fit the architecture: {len(missing)} missing "
                f"keys (e.g. {missing[:3]}), {len(unexpected)} unexpected keys (e.g. {unexpected[:3]}). "
                "Pass a state dict of this model (keys image_encoder.*, prompt_encoder.*, mask_decoder.*)."
            )
        try:
            self.load_state_dict(state, strict=True)
        except RuntimeError as exc:  # same keys, different tensor shapes
            raise ValueError(f"{self.name}: checkpoint {source} does not fit the architecture: {exc}") from exc

    # -- geometry: original image <-> S x S input ------------------------------------------------

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Resize, normalise and pad RGB images into the model's input.

        Args:
            images: ``B`` arrays ``(H_i, W_i, 3)`` uint8, any sizes.

        Returns:
            ``(B, 3, S, S)`` float32 on the model's device.
        """
        images = check_images(images)
        size = self.input_size
        batch = torch.zeros(len(images), 3, size, size)  # resized on the CPU: antialias works everywhere
        for i, img in enumerate(images):
            new_h, new_w = self.spec.resized_shape(*img.shape[:2])
            x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()  # (1, 3, H, W)
            if x.shape[-2:] != (new_h, new_w):
                x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
            batch[i, :, :new_h, :new_w] = self._normalise(x)[0]  # padding stays 0, as in SAM
        return batch.to(self.device)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.intensity == "imagenet":
            mean = torch.tensor(SAM_PIXEL_MEAN, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(SAM_PIXEL_STD, device=x.device).view(1, 3, 1, 1)
            return (x - mean) / std
        lo, hi = x.amin(), x.amax()
        return (x - lo) / torch.clamp(hi - lo, min=1e-8)

    def preprocess_masks(self, masks: Sequence[np.ndarray]) -> torch.Tensor:
        """Bring binary masks into the input frame (resize + pad like :meth:`preprocess`).

        Args:
            masks: ``B`` arrays ``(H_i, W_i)``, bool or 0/1.

        Returns:
            ``(B, 1, S, S)`` float32 in {0, 1} on the model's device.
        """
        size = self.input_size
        out = torch.zeros(len(masks), 1, size, size)
        for i, mask in enumerate(masks):
            if mask.ndim != 2:
                raise ValueError(f"mask {i} must be (H, W), got shape {mask.shape}")
            new_h, new_w = self.spec.resized_shape(*mask.shape)
            m = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None]  # (1, 1, H, W)
            m = F.interpolate(m, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
            out[i, :, :new_h, :new_w] = (m[0] >= 0.5).float()
        return out.to(self.device)

    def boxes_to_input(self, boxes: np.ndarray, sizes: Sequence[tuple[int, int]]) -> torch.Tensor:
        """Map ``[x0, y0, x1, y1]`` boxes from original pixels to input pixels.

        Args:
            boxes: ``(B, 4)`` xyxy in each original image's pixel coordinates.
            sizes: ``B`` original ``(H, W)``.

        Returns:
            ``(B, 4)`` float32 on the model's device.
        """
        boxes = np.asarray(boxes, dtype=np.float32)
        if boxes.shape != (len(sizes), 4):
            raise ValueError(f"boxes must have shape ({len(sizes)}, 4) (one xyxy box per image), got {boxes.shape}")
        if not np.isfinite(boxes).all() or (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any():
            raise ValueError("boxes must be finite [x0, y0, x1, y1] with x1 >= x0 and y1 >= y0")
        scale = np.empty_like(boxes)
        for i, (h, w) in enumerate(sizes):
            new_h, new_w = self.spec.resized_shape(h, w)
            scale[i] = (new_w / w, new_h / h, new_w / w, new_h / h)
        return torch.from_numpy(boxes * scale).to(self.device)

    def postprocess_logits(self, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Undo padding and resizing of one mask: ``(1, S, S)`` input-frame logits -> ``(H, W)`` logits."""
        new_h, new_w = self.spec.resized_shape(*size)
        cropped = logits[None, :, :new_h, :new_w]  # (1, 1, new_h, new_w)
        return F.interpolate(cropped, size=tuple(size), mode="bilinear", align_corners=False)[0, 0]

    # -- the model --------------------------------------------------------------------------------

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Image embeddings: ``(B, 3, S, S)`` -> ``(B, C, h, w)`` (256 x 64 x 64 for the SAM family)."""
        if x.ndim != 4 or x.shape[1:] != (3, self.input_size, self.input_size):
            raise ValueError(f"{self.name}.encode expects (B, 3, {self.input_size}, {self.input_size}), "
                             f"got {tuple(x.shape)}: use preprocess() first")
        return self.image_encoder(x)

    def decode(self, embeddings: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Mask logits for one box per image.

        Args:
            embeddings: ``(B, C, h, w)`` from :meth:`encode` (moved to the model's device).
            boxes: ``(B, 4)`` xyxy in input (``S x S``) pixels.

        Returns:
            ``(B, 1, S, S)`` mask logits in the input frame.
        """
        if embeddings.ndim != 4 or boxes.ndim != 2 or boxes.shape != (embeddings.shape[0], 4):
            raise ValueError(f"decode expects embeddings (B, C, h, w) and boxes (B, 4), "
                             f"got {tuple(embeddings.shape)} and {tuple(boxes.shape)}")
        embeddings = embeddings.to(self.device)
        boxes = boxes.to(self.device, torch.float32)
        image_pe = self.prompt_encoder.get_dense_pe()  # (1, C, h, w)
        low_res = []
        # One image per call: segment_anything's MaskDecoder repeats the image embedding once per
        # prompt, so a batch of B images with B boxes would give B * B masks.
        for i in range(embeddings.shape[0]):
            sparse, dense = self.prompt_encoder(points=None, boxes=boxes[i:i + 1], masks=None)
            masks, _iou = self.mask_decoder(
                image_embeddings=embeddings[i:i + 1], image_pe=image_pe,
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False,
            )  # (1, 1, 4h, 4w)
            low_res.append(masks)
        logits = torch.cat(low_res)  # (B, 1, 4h, 4w)
        if logits.shape[-1] != self.input_size:  # SAM 1024: 256 -> 1024; LiteMedSAM is already 256
            logits = F.interpolate(logits, size=(self.input_size, self.input_size), mode="bilinear",
                                   align_corners=False)  # (B, 1, S, S)
        return logits

    def forward(self, x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """``decode(encode(x), boxes)``: ``(B, 3, S, S)``, ``(B, 4)`` -> ``(B, 1, S, S)`` logits."""
        return self.decode(self.encode(x), boxes)
