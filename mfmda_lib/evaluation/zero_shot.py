"""Zero-shot, box-prompted optic disc and cup segmentation with a frozen foundation model.

The model sees each image once (the encoder output is cached on disk) and is prompted twice:
with a box around the disc and with a box around the cup, both taken from the ground truth
(the standard MedSAM evaluation protocol: a clinician draws the box, the model draws the mask).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from ..data.sample import FundusSample
from ..models import EmbeddingCache, PromptableSegmenter, segment
from .metrics import segmentation_scores
from .tables import per_domain_table

__all__ = ["ZeroShotResult", "zero_shot_segmentation", "box_margin_sweep", "BOX_MARGINS"]

#: Box margins (pixels) of the prompt-sensitivity sweep.
BOX_MARGINS = (0, 4, 8, 16, 32)


@dataclass
class ZeroShotResult:
    """Per-sample scores and the predicted masks of one zero-shot run.

    Attributes:
        rows: one dict per sample: ``domain``, ``sample_id`` and the metrics of
            :func:`mfmda_lib.evaluation.segmentation_scores`.
        samples: the evaluated samples, in order.
        pred_disc: ``N`` bool predicted disc masks, each the size of its image.
        pred_cup: ``N`` bool predicted cup masks.
    """

    rows: list[dict]
    samples: list[FundusSample]
    pred_disc: list[np.ndarray]
    pred_cup: list[np.ndarray]
    meta: dict = field(default_factory=dict)

    def table(self, metrics: Sequence[str] = ("disc_dice", "cup_dice", "disc_hd95", "cup_hd95", "vcdr_abs_err"),
              domain_order: Sequence[str] | None = None) -> pd.DataFrame:
        """Mean ± std per domain plus a ``mean`` row (see :func:`per_domain_table`)."""
        return per_domain_table(self.rows, metrics=metrics, domain_order=domain_order)


def zero_shot_segmentation(model: PromptableSegmenter, samples: Sequence[FundusSample],
                           cache: EmbeddingCache | None = None, *, box_margin: int = 0, batch_size: int = 4,
                           progress: bool = True) -> ZeroShotResult:
    """Segment disc and cup of every sample from ground-truth boxes and score them.

    Args:
        model: a frozen promptable segmenter (e.g. ``load_model("litemedsam")``).
        samples: fundus samples of one or several domains (all images the same size).
        cache: frozen-encoder cache; each image is encoded at most once across runs.
        box_margin: pixels added around the tight ground-truth boxes.
        batch_size: images per encoder pass.

    Returns:
        A :class:`ZeroShotResult`.
    """
    samples = list(samples)
    if not samples:
        raise ValueError("zero_shot_segmentation: no samples given")
    boxes = np.stack([np.stack([s.box("disc", box_margin), s.box("cup", box_margin)]) for s in samples])  # (N, 2, 4)
    probs = segment(model, [s.image for s in samples], boxes, cache=cache, batch_size=batch_size,
                    progress=progress)  # (N, 2, H, W), or a list of (2, H_i, W_i) for mixed sizes
    pred_disc = [np.asarray(p[0]) > 0.5 for p in probs]  # N x (H_i, W_i) bool
    pred_cup = [np.asarray(p[1]) > 0.5 for p in probs]
    rows = [{"domain": s.domain, "sample_id": s.sample_id, **segmentation_scores(d, c, s)}
            for s, d, c in zip(samples, pred_disc, pred_cup)]
    return ZeroShotResult(rows=rows, samples=samples, pred_disc=pred_disc, pred_cup=pred_cup,
                          meta={"model": model.name, "box_margin": box_margin})


def box_margin_sweep(model: PromptableSegmenter, samples: Sequence[FundusSample],
                     cache: EmbeddingCache | None = None, margins: Sequence[int] = BOX_MARGINS,
                     batch_size: int = 4) -> pd.DataFrame:
    """Mean disc and cup Dice over ``samples`` for each box margin (rows: margin).

    Only the prompt encoder and mask decoder run per margin; image embeddings come from ``cache``.
    """
    rows = []
    for margin in margins:
        res = zero_shot_segmentation(model, samples, cache, box_margin=margin, batch_size=batch_size, progress=False)
        rows.append({"margin": margin, "disc_dice": float(np.mean([r["disc_dice"] for r in res.rows])),
                     "cup_dice": float(np.mean([r["cup_dice"] for r in res.rows]))})
    return pd.DataFrame(rows).set_index("margin")
