"""What a stage-2 run returns: :class:`Stage2Result` (per-image scores of every method and seed, costs,
histories, masks) and its tables: per-domain means, the headline with 95% intervals, the paired verdicts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from ..data import SOURCE_DOMAIN, FundusSample
from ..evaluation.stats import Comparison, compare, gap_closed, seed_table
from ..evaluation.tables import per_domain_table
from .methods import UNSUPERVISED_BASELINES
from .training import Stage2History

__all__ = ["METRICS", "Stage2Result"]


METRICS = ("disc_dice", "disc_iou", "disc_hd95", "cup_dice", "cup_iou", "cup_hd95")


@dataclass
class Stage2Result:
    """Per-image scores of every method and seed, the training costs and histories.

    Attributes:
        rows: one dict per (method, seed, test image): ``method``, ``seed``, ``domain``, ``sample_id``,
            the :func:`~mfmda_lib.evaluation.metrics.segmentation_scores` keys and ``dice`` (the mean
            of disc and cup Dice).
        costs: one dict per trained model: method, target, seed, trainable parameters, seconds.
        histories: ``(method, target, seed) -> Stage2History``.
        targets: the target domains, in order.
        translation_origin: where the "stage1" images came from (``stage1``).
        seconds: wall time of the call (``total``) and of the frozen-prefix features (``prefix``).
        masks: ``(method, domain) -> [(disc, cup)]`` predicted masks of the first seed, in the order of
            ``test[domain]`` (other seeds: ``(method, domain, seed)``).
        test: the scored samples of each domain.
        seeds: the seeds of the headline methods (ablations ran with the first).
    """

    rows: list[dict]
    costs: list[dict]
    histories: dict[tuple, Stage2History]
    targets: list[str]
    translation_origin: str
    seconds: dict[str, float] = field(default_factory=dict)
    masks: dict[tuple, list] = field(default_factory=dict)
    test: dict[str, list[FundusSample]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])

    def _target_rows(self) -> list[dict]:
        return [r for r in self.rows if r["domain"] in self.targets]

    def table(self, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
        """Mean ± std (over seeds and images) per (method, target domain) and the mean over targets."""
        return per_domain_table(self._target_rows(), metrics, domain_order=self.targets)

    def source_table(self, metrics: Sequence[str] = ("disc_dice", "cup_dice")) -> pd.DataFrame:
        """Scores on the source domain's test images (models scored there)."""
        rows = [r for r in self.rows if r["domain"] == SOURCE_DOMAIN]
        return per_domain_table(rows, metrics) if rows else pd.DataFrame()

    def summary(self) -> pd.DataFrame:
        """One row per method: mean target disc and cup Dice and their average (``dice``)."""
        means = self.table(("disc_dice", "cup_dice")).xs("mean", level="domain")[["disc_dice", "cup_dice"]]
        return means.assign(dice=means.mean(axis=1))

    def headline(self, *, n_resamples: int = 2000) -> pd.DataFrame:
        """Each method's mean target Dice with its 95% interval over seeds and images, and the share of
        the source-only -> oracle gap it closes (``gap_closed``; needs both rows).

        Returns:
            Index ``method``; columns ``n_seeds``, ``n_images``, ``disc_dice``/``cup_dice``/``dice`` with
            ``_lo``/``_hi``, and ``gap_closed``, ``gap_closed_lo``, ``gap_closed_hi``.
        """
        rows = [r for r in self._target_rows() if "dice" in r]
        table = seed_table(rows, ("disc_dice", "cup_dice", "dice"), n_resamples=n_resamples)
        present = set(table.index)
        gaps = {}
        if {"source_only", "oracle"} <= present:
            for m in table.index:
                gaps[m] = gap_closed(rows, "dice", m, "source_only", "oracle", n_resamples=n_resamples)
        for i, col in enumerate(("gap_closed", "gap_closed_lo", "gap_closed_hi")):
            table[col] = [gaps.get(m, (np.nan,) * 3)[i] for m in table.index]
        return table

    def verdicts(self, method: str = "mfmda", against: Sequence[str] = UNSUPERVISED_BASELINES, *,
                 metric: str = "dice", n_resamples: int = 2000) -> list[Comparison]:
        """Paired comparisons ``method - baseline`` on the target images, over the seeds both share."""
        rows = self._target_rows()
        present = {r["method"] for r in rows}
        return [compare(rows, metric, method, b, n_resamples=n_resamples) for b in against
                if b in present and method in present and b != method]

    def cost_table(self) -> pd.DataFrame:
        return pd.DataFrame(self.costs)
