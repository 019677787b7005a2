"""One comparison of notebooks 03 and 04 apart from its runs: its hyperparameters (:class:`ComparisonConfig`), the
labelled images and cached prefix features every run shares (:func:`prepare_data`), and what it returns
(:class:`Comparison`: per-image scores, tables, verdicts over seeds and images, costs, learning curves)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..data import DOMAINS, SOURCE_DOMAIN, TARGET_DOMAINS, FundusSample, benchmark_samples
from ..environment import paths
from ..evaluation.comparisons import compare_auroc, compare_table, compare_within
from ..evaluation.metrics import auroc
from ..evaluation.tables import per_domain_table
from ..models import EmbeddingCache, PromptableSegmenter
from ..profiles import Profile
from .features import prefix_features
from .peft_methods import PeftConfig
from .runs import RunResult, TaskData, task_targets
from .strategies import STRATEGIES, StrategyConfig

__all__ = ["ComparisonConfig", "FinetuneData", "prepare_data", "Comparison"]


@dataclass(frozen=True)
class ComparisonConfig:
    """Hyperparameters of both comparisons (sizes come from the profile).

    Attributes:
        patience: epochs without a lower validation loss before a run stops.
        strategies: notebook 03's strategies.
        lora_rank: LoRA rank of the target comparison (attention vs attention + MLP) and of the
            classification runs.
        peft: template of every PEFT run (learning rates, adapter and prompt sizes).
        full_lr: learning rate of full fine-tuning in notebook 04 (as ``full_finetune`` in 03).
        classification_methods: PEFT methods also run for the vCDR / glaucoma-suspect task.
    """

    patience: int = 3
    strategies: tuple[StrategyConfig, ...] = tuple(STRATEGIES.values())
    lora_rank: int = 8
    peft: PeftConfig = field(default_factory=lambda: PeftConfig("lora"))
    full_lr: float = 1e-4
    classification_methods: tuple[str, ...] = ("lora", "adapter", "visual_prompt", "bitfit", "full")


@dataclass
class FinetuneData:
    """Samples and cached prefix features of one comparison.

    Attributes:
        start: the first unit the methods may change.
        train, val, evaluation: the samples; ``features``: split -> ``(N, ...)`` float16 entering ``start``.
        grid: side of the encoder's output grid (64 for LiteMedSAM); ``channels``: its width (256).
    """

    start: str
    train: list[FundusSample]
    val: list[FundusSample]
    evaluation: list[FundusSample]
    features: dict[str, torch.Tensor]
    grid: int
    channels: int
    _frozen_outputs: dict[str, torch.Tensor] = field(default_factory=dict)

    def task_data(self, segmenter: PromptableSegmenter, task: str, split: str) -> TaskData:
        samples = getattr(self, split)
        return TaskData(samples, self.features[split], task_targets(segmenter, task, samples, self.grid))


def prepare_data(profile: Profile, segmenter: PromptableSegmenter, cache: EmbeddingCache | None, start: str, *,
                 progress: bool = True) -> FinetuneData:
    """Load the profile's samples and their frozen-prefix features entering ``start`` (cached on disk)."""
    n_train, n_val = profile.ft_train_images, profile.ft_val_images
    source = benchmark_samples(profile, "train", n_train + n_val, domains=[SOURCE_DOMAIN])
    if len(source) < n_train + n_val:
        raise ValueError(f"profile {profile.name}: ft_train_images + ft_val_images = {n_train + n_val} exceeds the "
                         f"{len(source)} source training images (train_per_domain)")
    evaluation = benchmark_samples(profile, "test", profile.ft_eval_per_domain)
    splits = {"train": source[:n_train], "val": source[n_train:], "evaluation": evaluation}
    features = {k: prefix_features(segmenter, [s.image for s in v], start, cache_root=paths().cache / "prefix",
                                   embedding_cache=cache, batch_size=profile.encoder_batch_size, progress=progress)
                for k, v in splits.items()}
    grid = int(segmenter.prompt_encoder.image_embedding_size[0])
    channels = int(segmenter.prompt_encoder.embed_dim)
    return FinetuneData(start, splits["train"], splits["val"], evaluation, features, grid, channels)


@dataclass
class Comparison:
    """Runs of one comparison, keyed ``"<task>/<method>"``, with their scores and costs.

    Attributes:
        runs: key -> the :class:`RunResult` of the first seed (``rows``: per-image scores); its learning
            curves and costs are the ones shown.
        base_params: task -> parameters of the foundation encoder + head (the denominator of ``trainable_pct``).
        data: the samples and cached features the runs used.
        repeats: key -> the runs of the further seeds (their rows enter every score and verdict).
    """

    runs: dict[str, RunResult]
    base_params: dict[str, int]
    data: FinetuneData
    repeats: dict[str, list[RunResult]] = field(default_factory=dict)

    @property
    def start(self) -> str:
        """The first unit the methods may change."""
        return self.data.start

    def rows(self, task: str) -> list[dict]:
        """Per-image rows of every method and seed of ``task`` (keys ``method``, ``seed``, ``domain``, ``sample_id``)."""
        return [r for key, run in self.runs.items() if key.startswith(f"{task}/")
                for one in (run, *self.repeats.get(key, [])) for r in one.rows]

    @property
    def n_seeds(self) -> int:
        """Training seeds behind every score."""
        return 1 + max((len(v) for v in self.repeats.values()), default=0)

    def _scoped_rows(self, task: str, domains: Sequence[str] | None = None) -> tuple[list[dict], list[str]]:
        """Rows whose metrics are renamed ``in_domain_<m>`` (source) or ``cross_domain_<m>`` (targets)."""
        metrics = ("disc_dice", "cup_dice") if task == "segmentation" else ("vcdr_abs_err",)
        out = []
        for r in self.rows(task):
            if domains is not None and r["domain"] not in domains:
                continue
            scope = "in_domain" if r["domain"] == SOURCE_DOMAIN else "cross_domain"
            out.append({**{k: r[k] for k in ("method", "seed", "domain", "sample_id")},
                        **{f"{scope}_{m}": r[m] for m in metrics},
                        **({"scope": scope, "vcdr_pred": r["vcdr_pred"], "suspect": r["suspect"]}
                           if task == "vcdr" else {})})
        return out, [f"{s}_{m}" for s in ("in_domain", "cross_domain") for m in metrics]

    def verdicts(self, task: str, pairs: Sequence[tuple[str, str]]) -> pd.DataFrame:
        """Paired ``method - baseline`` differences of each pair, with a 95% interval over seeds and test images.

        Scores: in-domain (the source's test images) and cross-domain (the three target hospitals' images
        pooled: the same number each, so their mean is the table's mean over hospitals); for ``vcdr`` also
        the AUROC of the glaucoma-suspect screen in each scope. Errors are lower-is-better.

        Returns:
            :func:`mfmda_lib.evaluation.comparisons.compare_table`'s table (``verdict``: ``better`` / ``worse`` /
            ``no difference measured``).
        """
        rows, metrics = self._scoped_rows(task)
        table = compare_table(rows, metrics, pairs, lower_is_better=[m for m in metrics if m.endswith("err")])
        if task != "vcdr":
            return table
        extra = [compare_auroc([r for r in rows if r["scope"] == scope], "vcdr_pred", "suspect", m, b).as_dict()
                 | {"metric": f"{scope}_auroc"} for m, b in pairs for scope in ("in_domain", "cross_domain")]
        extra = pd.DataFrame(extra).set_index(["method", "baseline", "metric"])[table.columns]
        return pd.concat([table, extra]).sort_index(level=["method", "baseline"], sort_remaining=False)

    def domain_verdicts(self, task: str, baseline: str) -> pd.DataFrame:
        """Every method against ``baseline`` on each hospital separately (a mean can hide a hospital that got
        worse): index ``(method, domain, metric)``, columns as :meth:`verdicts`."""
        metrics = ("disc_dice", "cup_dice") if task == "segmentation" else ("vcdr_abs_err",)
        rows = self.rows(task)
        methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m != baseline]
        table = compare_within(rows, metrics, [(m, baseline) for m in methods], lower_is_better=["vcdr_abs_err"],
                                     values=[d for d in DOMAINS if any(r["domain"] == d for r in rows)])
        return table.droplevel("baseline")

    def per_domain(self, task: str) -> pd.DataFrame:
        """Mean ± std per (method, domain) of the task's per-image scores."""
        metrics = ("disc_dice", "cup_dice") if task == "segmentation" else ("vcdr_abs_err",)
        present = list(dict.fromkeys(r["domain"] for r in self.rows(task)))
        return per_domain_table(self.rows(task), metrics=metrics, domain_order=[d for d in DOMAINS if d in present])

    def table(self, task: str) -> pd.DataFrame:
        """One row per method: cost columns (first seed), then in-domain and cross-domain (target mean)
        scores, averaged over every seed."""
        records = []
        for key, run in self.runs.items():
            t, method = key.split("/", 1)
            if t != task:
                continue
            frame = pd.DataFrame([r for one in (run, *self.repeats.get(key, [])) for r in one.rows])
            source, target = frame[frame.domain == SOURCE_DOMAIN], frame[frame.domain.isin(TARGET_DOMAINS)]
            rec = {"method": method, "trainable_params": run.trainable,
                   "trainable_pct": 100 * run.trainable / self.base_params[task],
                   "train_memory_mb": np.nan if run.memory is None else run.memory.total_mb,
                   "s_per_epoch": run.seconds_per_epoch, "epochs": len(run.history.epochs),
                   "best_epoch": run.history.best_epoch}
            if run.memory is not None and not np.isnan(run.memory.cuda_peak_mb):
                rec["cuda_peak_mb"] = run.memory.cuda_peak_mb
            if task == "segmentation":
                for m in ("disc_dice", "cup_dice"):
                    rec[f"in_domain_{m}"] = source[m].mean()
                    rec[f"cross_domain_{m}"] = target.groupby("domain")[m].mean().mean()
            else:
                rec["in_domain_vcdr_err"] = source.vcdr_abs_err.mean()
                rec["cross_domain_vcdr_err"] = target.groupby("domain").vcdr_abs_err.mean().mean()
                rec["in_domain_auroc"] = source.groupby("seed").apply(
                    lambda d: auroc(d.suspect, d.vcdr_pred), include_groups=False).mean()
                rec["cross_domain_auroc"] = target.groupby("seed").apply(
                    lambda d: auroc(d.suspect, d.vcdr_pred), include_groups=False).mean()
            records.append(rec)
        return pd.DataFrame(records).set_index("method")

    def curves(self, task: str) -> dict[str, dict[str, list[float]]]:
        """method -> ``{"train_loss": [...], "val_loss": [...]}`` per epoch (the first seed's run)."""
        return {key.split("/", 1)[1]: {"train_loss": run.history.train_loss, "val_loss": run.history.val_score}
                for key, run in self.runs.items() if key.startswith(f"{task}/")}

    def memory_table(self, task: str) -> pd.DataFrame:
        """Training memory per method (MB): saved activations, gradients, optimizer state, total (first seed)."""
        return pd.DataFrame([{"method": key.split("/", 1)[1], **run.memory.as_dict()}
                             for key, run in self.runs.items() if key.startswith(f"{task}/") and run.memory is not None]
                            ).set_index("method")

    def signatures(self, task: str, *, rise: float = 0.05, rigid: float = 1.25) -> dict[str, str]:
        """A sentence per method naming the failure signature its learning curves show.

        *Overfitting*: the validation loss ends more than ``rise`` (relative) above its minimum while
        the training loss kept falling. *Rigidity*: the final training loss is more than ``rigid``
        times the lowest final training loss of the comparison (the model cannot fit its data).
        """
        curves = self.curves(task)
        lowest = min(c["train_loss"][-1] for c in curves.values())
        out = {}
        for method, c in curves.items():
            train, val = c["train_loss"], c["val_loss"]
            best = int(np.argmin(val))
            notes = []
            if val[-1] > val[best] * (1 + rise) and train[-1] < train[best]:
                notes.append(f"overfits: validation loss rose from {val[best]:.3f} (epoch {best}) to {val[-1]:.3f} "
                             f"while training loss fell from {train[best]:.3f} to {train[-1]:.3f}")
            if train[-1] > rigid * lowest:
                notes.append(f"rigid: its final training loss {train[-1]:.3f} is {train[-1] / lowest:.1f}x the "
                             f"lowest of the comparison ({lowest:.3f})")
            neither = (f"neither signature in {len(train)} epochs (final train loss {train[-1]:.3f}, "
                       f"best validation loss {val[best]:.3f} at epoch {best})")
            out[method] = "; ".join(notes) or neither
        return out
