"""The comparisons of notebooks 03 (fine-tuning strategies) and 04 (PEFT), each in one call.

Both train on ``profile.ft_train_images`` labelled images of the source hospital (``refuge_train``,
train split), stop early on the loss of ``profile.ft_val_images`` further source images, and score
``profile.ft_eval_per_domain`` test images of every hospital: the source's own test split is the
**in-domain** score, the mean over the three target hospitals the **cross-domain** score. Every run
is repeated with ``profile.verdict_seeds`` training seeds (head initialisation, batch order), and
:meth:`Comparison.verdicts` compares methods with a 95% interval over those seeds and the test images.

The encoder is LiteMedSAM's TinyViT. Units before ``profile.ft_first_unit`` (notebook 03) or
``profile.peft_first_unit`` (notebook 04) form a frozen prefix, run once per image and cached on
disk (:mod:`.features`); every method may change the units from there on. Each run has its own
checkpoint (``<cache>/checkpoints/ft_<task>_<method>_<profile>_<hash>.pt``) and is loaded, not
retrained, when it has finished before.
"""
from __future__ import annotations

import copy
import hashlib
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..data import DOMAINS, SOURCE_DOMAIN, TARGET_DOMAINS, FundusSample, benchmark_samples
from ..evaluation import stats
from ..evaluation.comparisons import compare_auroc, compare_table, compare_within
from ..evaluation.metrics import auroc
from ..evaluation.tables import per_domain_table
from ..models import EmbeddingCache, PromptableSegmenter
from ..profiles import Profile, paths, seed_everything
from .features import advance, prefix_features
from .heads import TaskModel, build_head
from .peft_methods import PEFT_METHODS, PeftConfig, inject
from .runs import RunResult, TaskData, predict, score_rows, task_targets, train_run
from .strategies import STRATEGIES, StrategyConfig, configure, first_trained_unit

__all__ = ["ComparisonConfig", "FinetuneData", "Comparison", "prepare_data", "peft_configs", "run_strategies",
           "run_peft"]


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


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# one run
# ---------------------------------------------------------------------------------------------

Builder = Callable[[TaskModel], tuple[nn.Module, list[dict], Callable[[int], int], int]]


def _checkpoint(profile: Profile, segmenter: PromptableSegmenter, task: str, label: str, start: str,
                epochs: int, seed: int, *parts) -> str:
    key = repr((segmenter.cache_key, task, start, profile.ft_train_images, profile.ft_val_images,
                profile.ft_batch_size, epochs, seed, *[asdict(p) if hasattr(p, "__dataclass_fields__") else p
                                                       for p in parts]))
    folder = paths().cache / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder / f"ft_{task}_{label}_{profile.name}_{hashlib.sha256(key.encode()).hexdigest()[:10]}.pt")


def _run(profile: Profile, segmenter: PromptableSegmenter, data: FinetuneData, task: str, label: str,
         build: Builder, *, epochs: int, patience: int, weight_decay: float, checkpoint: str, seed: int,
         progress: bool) -> tuple[RunResult, int, nn.Module]:
    """Build a fresh TaskModel, prepare it with ``build``, train with ``seed``, score; returns the run, base size,
    net. Every random draw of the run (head initialisation, method parameters, batch order) follows ``seed``."""
    seed_everything(seed)
    encoder = copy.deepcopy(segmenter.image_encoder)
    model = TaskModel(encoder, build_head(task, data.channels), task, data.start)
    base = sum(p.numel() for p in model.parameters())
    net, groups, first_unit, eval_from = build(model)
    result = train_run(net, groups, data.task_data(segmenter, task, "train"), data.task_data(segmenter, task, "val"),
                       epochs=epochs, batch_size=profile.ft_batch_size, seed=seed, patience=patience,
                       weight_decay=weight_decay, first_unit=first_unit, checkpoint=checkpoint,
                       desc=f"{task} {label}", progress=progress)
    if eval_from == model.end:  # a frozen encoder: evaluate the head on the cached encoder outputs
        if "evaluation" not in data._frozen_outputs:
            data._frozen_outputs["evaluation"] = advance(model, data.features["evaluation"], model.end)
        features = data._frozen_outputs["evaluation"]
    else:
        features = data.features["evaluation"]
    outputs = predict(net, features, from_unit=eval_from, batch_size=profile.ft_batch_size)
    result.rows = score_rows(segmenter, task, outputs, data.evaluation, method=label, seed=seed)
    return result, base, net


def _strategy_builder(strategy: StrategyConfig) -> Builder:
    def build(model: TaskModel):
        groups = configure(model, strategy)
        eval_from = model.start if strategy.train_encoder else model.end
        return model, groups, lambda epoch: first_trained_unit(model, strategy, epoch), eval_from
    return build


def _peft_builder(config: PeftConfig, head_state: dict | None = None) -> Builder:
    def build(model: TaskModel):
        if head_state is not None:
            model.head.load_state_dict(head_state)
        net, groups = inject(model, config)
        return net, groups, lambda epoch: model.start, model.start
    return build


# ---------------------------------------------------------------------------------------------
# the two comparisons
# ---------------------------------------------------------------------------------------------

def _keep(comparison: Comparison, key: str, run: RunResult) -> None:
    """File ``run`` under ``key``: the first seed's in ``runs``, the others in ``repeats``."""
    if key in comparison.runs:
        comparison.repeats.setdefault(key, []).append(run)
    else:
        comparison.runs[key] = run


def run_strategies(profile: Profile, segmenter: PromptableSegmenter, cache: EmbeddingCache | None,
                   config: ComparisonConfig | None = None, *, seeds: Sequence[int] | None = None,
                   progress: bool = True) -> Comparison:
    """Notebook 03: linear probe, full fine-tuning, gradual unfreezing, discriminative learning rates (segmentation),
    each trained once per seed of ``seeds`` (default :func:`~mfmda_lib.evaluation.stats.verdict_seeds`)."""
    config = config or ComparisonConfig()
    data = prepare_data(profile, segmenter, cache, profile.ft_first_unit, progress=progress)
    result = Comparison({}, {}, data)
    for seed in stats.verdict_seeds(profile) if seeds is None else seeds:
        for strategy in config.strategies:
            ckpt = _checkpoint(profile, segmenter, "segmentation", strategy.name, data.start, profile.ft_epochs, seed,
                               strategy, config.patience)
            run, result.base_params["segmentation"], _ = _run(
                profile, segmenter, data, "segmentation", strategy.name, _strategy_builder(strategy),
                epochs=profile.ft_epochs, patience=config.patience, weight_decay=strategy.weight_decay,
                checkpoint=ckpt, seed=seed, progress=progress)
            _keep(result, f"segmentation/{strategy.name}", run)
    return result


def peft_configs(profile: Profile, config: ComparisonConfig, task: str) -> list[PeftConfig]:
    """Notebook 04's PEFT runs for ``task``: the LoRA rank sweep and target choice (segmentation), then the others."""
    template = asdict(config.peft)

    def make(**changes) -> PeftConfig:
        return PeftConfig(**{**template, **changes})

    out: list[PeftConfig] = []
    methods = config.classification_methods
    if task == "segmentation":
        out += [make(method="lora", r=r, targets="attn") for r in profile.peft_lora_ranks]
        out.append(make(method="lora", r=config.lora_rank, targets="attn_mlp"))
        methods = PEFT_METHODS
    chosen = {"lora": {"r": config.lora_rank, "targets": "attn"}, "full": {"lr": config.full_lr}}
    for method in methods:
        cfg = make(method=method, **chosen.get(method, {}))
        if cfg not in out:
            out.append(cfg)
    return out


def run_peft(profile: Profile, segmenter: PromptableSegmenter, cache: EmbeddingCache | None,
             config: ComparisonConfig | None = None, *, tasks: tuple[str, ...] = ("segmentation", "vcdr"),
             seeds: Sequence[int] | None = None, progress: bool = True
             ) -> tuple[Comparison, dict[str, tuple[PeftConfig, nn.Module]]]:
    """Notebook 04: linear probe, LoRA (rank sweep, targets), adapter, visual prompt, BitFit, full fine-tuning.

    Per task, a linear probe trains first (``profile.peft_probe_epochs`` epochs on the cached encoder
    outputs: cheap); every other method starts from its head and trains for ``profile.peft_epochs``
    epochs (LP-FT, Kumar et al. 2022: a random head's first gradients would distort the pretrained
    features, and the few steps of a CPU run would go to fitting the head). Each seed of ``seeds``
    (default :func:`~mfmda_lib.evaluation.stats.verdict_seeds`) repeats all of it: its own probe, and
    every method from that probe's head.

    Returns:
        The :class:`Comparison` and, per task, the LoRA config and trained ``PeftModel`` of rank
        ``config.lora_rank`` of the first seed (for the save / load / merge demonstration).
    """
    config = config or ComparisonConfig()
    data = prepare_data(profile, segmenter, cache, profile.peft_first_unit, progress=progress)
    result, lora_nets = Comparison({}, {}, data), {}
    probe = STRATEGIES["linear_probe"]
    for seed in stats.verdict_seeds(profile) if seeds is None else seeds:
        for task in tasks:
            ckpt = _checkpoint(profile, segmenter, task, "linear_probe", data.start, profile.peft_probe_epochs, seed,
                               probe, config.patience)
            run, result.base_params[task], probed = _run(
                profile, segmenter, data, task, "linear_probe", _strategy_builder(probe),
                epochs=profile.peft_probe_epochs, patience=config.patience, weight_decay=probe.weight_decay,
                checkpoint=ckpt, seed=seed, progress=progress)
            _keep(result, f"{task}/linear_probe", run)
            head = copy.deepcopy(probed.head.state_dict())
            for cfg in peft_configs(profile, config, task):
                ckpt = _checkpoint(profile, segmenter, task, cfg.label, data.start, profile.peft_epochs, seed, cfg,
                                   config.patience, "lp-ft", profile.peft_probe_epochs)
                run, _, net = _run(profile, segmenter, data, task, cfg.label, _peft_builder(cfg, head),
                                   epochs=profile.peft_epochs, patience=config.patience,
                                   weight_decay=cfg.weight_decay, checkpoint=ckpt, seed=seed, progress=progress)
                _keep(result, f"{task}/{cfg.label}", run)
                if cfg.method == "lora" and cfg.r == config.lora_rank and cfg.targets == "attn":
                    lora_nets.setdefault(task, (cfg, net))
    return result, lora_nets
