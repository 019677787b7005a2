"""SAM ViT-B and MedSAM ViT-B from the ``segment-anything`` package, their weights, and a toy SAM.

Both models share SAM's ViT-B architecture (1024 x 1024 input, 256 x 64 x 64 embedding) and
differ in weights and preprocessing:

- SAM (Kirillov et al. 2023): longest side to 1024, zero-pad bottom/right, ImageNet mean/std
  on the 0..255 scale (``segment_anything.Sam.preprocess``).
- MedSAM (Ma et al. 2024, ``bowang-lab/MedSAM`` ``MedSAM_Inference.py``): resize to 1024 x 1024
  *without* keeping the aspect ratio, rescale to [0, 1] by the image's min and max, no mean/std.

Weights are never fetched at import time. ``download=True`` fetches them into
``paths().cache / "weights"`` and checks their checksum; offline, a
:class:`~mfmda_lib.models.base.ModelUnavailableError` says where to put the file by hand.

:func:`build_toy_segmenter` is a randomly initialised SAM-style model at toy width (64 px input):
real SAM prompt encoder and mask decoder, a small conv encoder. It exists so tests of adapters,
test-time adaptation and caching run in milliseconds; its masks are meaningless.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..environment import paths
from ..io import sha256_bytes
from .base import (ChecksumError, InputSpec, ModelUnavailableError, PromptableSegmenter, file_digest,
                   load_state_dict_file, verify_checksum)

__all__ = [
    "WeightsSource",
    "SAM_VIT_B_WEIGHTS",
    "MEDSAM_VIT_B_WEIGHTS",
    "SAM_SPEC",
    "MEDSAM_SPEC",
    "TOY_SPEC",
    "default_weights_path",
    "resolve_weights",
    "build_sam_vit_b",
    "build_medsam_vit_b",
    "build_toy_segmenter",
]


# ---------------------------------------------------------------------------------------------
# where the weights come from
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WeightsSource:
    """An official weights file.

    Attributes:
        filename: name of the file under ``paths().cache / "weights"``.
        urls: download locations, tried in order.
        checksum: ``"sha256:<hex>"`` or ``"md5:<hex>"`` of the file.
        size_mb: approximate size, for messages.
    """

    filename: str
    urls: tuple[str, ...]
    checksum: str
    size_mb: int

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError(f"WeightsSource {self.filename}: give at least one URL")
        if self.checksum.partition(":")[0] not in ("sha256", "md5"):
            raise ValueError(f"WeightsSource {self.filename}: checksum must start with 'sha256:' or 'md5:'")


#: The official SAM ViT-B checkpoint (facebookresearch/segment-anything README).
SAM_VIT_B_WEIGHTS = WeightsSource(
    filename="sam_vit_b_01ec64.pth",
    urls=("https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",),
    checksum="sha256:ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
    size_mb=375,
)

#: MedSAM ViT-B: the authors' Zenodo record 10689643 (its published MD5), then a Hugging Face copy.
MEDSAM_VIT_B_WEIGHTS = WeightsSource(
    filename="medsam_vit_b.pth",
    urls=(
        "https://zenodo.org/records/10689643/files/medsam_vit_b.pth?download=1",
        "https://huggingface.co/wanglab/medsam-vit-base/resolve/main/medsam_vit_b.pth",
    ),
    checksum="md5:3bb6db55bd0c9ca30b61248bca72f8d6",
    size_mb=375,
)

SAM_SPEC = InputSpec(size=1024, keep_aspect=True, intensity="imagenet")
MEDSAM_SPEC = InputSpec(size=1024, keep_aspect=False, intensity="minmax")
TOY_SPEC = InputSpec(size=64, keep_aspect=True, intensity="minmax")


def default_weights_path(source: WeightsSource) -> Path:
    """Where the kit looks for (and downloads) an official weights file."""
    return paths().cache / "weights" / source.filename


def _unavailable_message(model: str, source: WeightsSource, path: Path, errors: list[str]) -> str:
    lines = [f"{model}: weights not found at {path}."]
    if errors:
        lines.append("Download failed:\n  " + "\n  ".join(errors))
    lines.append(
        f"To fix, either call load_model({model!r}, download=True) to fetch {source.size_mb} MB from "
        f"{source.urls[0]}; or download that URL on a machine with internet and place the file at "
        f"{path} (the folder follows MFMDA_CACHE); or pass load_model({model!r}, "
        f"checkpoint='/path/to/{source.filename}'). Expected checksum: {source.checksum}."
    )
    return "\n".join(lines)


def _download(model: str, source: WeightsSource, path: Path) -> None:
    """Fetch ``source`` into ``path``: try each URL, verify, then move into place (never half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    errors: list[str] = []
    for url in source.urls:
        try:
            torch.hub.download_url_to_file(url, str(part), progress=True)
            verify_checksum(part, source.checksum, model=model, url=url)
            os.replace(part, path)
            return
        except (OSError, ChecksumError) as exc:  # URLError, HTTPError and timeouts are OSErrors
            errors.append(f"{url}: {exc}")
        finally:
            part.unlink(missing_ok=True)
    raise ModelUnavailableError(_unavailable_message(model, source, path, errors))


def resolve_weights(model: str, source: WeightsSource, *, checkpoint: str | Path | None = None,
                    download: bool = False) -> Path:
    """Path of the weights to load.

    Args:
        model: model name, for messages.
        source: the official file.
        checkpoint: an explicit file (e.g. fine-tuned weights): used as is, no official checksum.
        download: fetch the official file if it is missing.

    Returns:
        an existing file; the official one has been checksum-verified.
    """
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise ModelUnavailableError(f"{model}: checkpoint file not found: {path}")
        return path
    path = default_weights_path(source)
    if not path.is_file():
        if not download:
            raise ModelUnavailableError(_unavailable_message(model, source, path, []))
        _download(model, source, path)
    verify_checksum(path, source.checksum, model=model, url=source.urls[0])
    return path


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------

def _build_vit_b(name: str, source: WeightsSource, spec: InputSpec, checkpoint: str | Path | None,
                 download: bool) -> PromptableSegmenter:
    path = resolve_weights(name, source, checkpoint=checkpoint, download=download)
    state = load_state_dict_file(path, model=name)
    from segment_anything import sam_model_registry  # imported late: only SAM users pay for it

    sam = sam_model_registry["vit_b"]()  # random init, overwritten below (0.6 s on 2 CPU cores)
    model = PromptableSegmenter(sam.image_encoder, sam.prompt_encoder, sam.mask_decoder, name=name,
                                spec=spec, cache_key=f"{name}-{file_digest(path)[:8]}")
    model.load_weights(state, source=path)
    return model


def build_sam_vit_b(checkpoint: str | Path | None = None, download: bool = False) -> PromptableSegmenter:
    """SAM ViT-B (ImageNet-normalised, aspect-preserving 1024 px input) as a :class:`PromptableSegmenter`."""
    return _build_vit_b("sam_vit_b", SAM_VIT_B_WEIGHTS, SAM_SPEC, checkpoint, download)


def build_medsam_vit_b(checkpoint: str | Path | None = None, download: bool = False) -> PromptableSegmenter:
    """MedSAM ViT-B (min-max normalised, squashed 1024 x 1024 input) as a :class:`PromptableSegmenter`."""
    return _build_vit_b("medsam_vit_b", MEDSAM_VIT_B_WEIGHTS, MEDSAM_SPEC, checkpoint, download)


def build_toy_segmenter(seed: int = 0) -> PromptableSegmenter:
    """A tiny, randomly initialised SAM-style segmenter for fast tests (64 px input, ~0.2 M parameters).

    Encoder: three convolutions with BatchNorm, ``(B, 3, 64, 64) -> (B, 32, 16, 16)``; prompt encoder
    and mask decoder: segment_anything's, at width 32. Deterministic in ``seed``; the global RNG
    is left untouched.
    """
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    dim = 32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = nn.Sequential(
            nn.Conv2d(3, 16, kernel_size=2, stride=2), nn.BatchNorm2d(16), nn.GELU(),   # (B, 16, 32, 32)
            nn.Conv2d(16, dim, kernel_size=2, stride=2), nn.BatchNorm2d(dim), nn.GELU(),  # (B, 32, 16, 16)
            nn.Conv2d(dim, dim, kernel_size=3, padding=1),                               # (B, 32, 16, 16)
        )
        prompt_encoder = PromptEncoder(embed_dim=dim, image_embedding_size=(16, 16), input_image_size=(64, 64),
                                       mask_in_chans=4)
        mask_decoder = MaskDecoder(
            transformer_dim=dim,
            transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=64, num_heads=2),
            num_multimask_outputs=3, iou_head_depth=2, iou_head_hidden_dim=dim,
        )
    model = PromptableSegmenter(encoder, prompt_encoder, mask_decoder, name="toy", spec=TOY_SPEC, cache_key="toy")
    blob = b"".join(t.detach().cpu().numpy().tobytes() for _, t in sorted(model.state_dict().items()))
    model.cache_key = f"toy-{sha256_bytes(blob)[:8]}"
    return model
