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
retrained, when it has finished before. The config, the shared data and the result are in :mod:`.comparison`.
"""
from __future__ import annotations

import copy
import hashlib
from dataclasses import asdict
from typing import Callable, Sequence

from torch import nn

from ..environment import paths, seed_everything
from ..evaluation import stats
from ..models import EmbeddingCache, PromptableSegmenter
from ..profiles import Profile
from .comparison import Comparison, ComparisonConfig, FinetuneData, prepare_data
from .features import advance
from .heads import TaskModel, build_head
from .peft_methods import PEFT_METHODS, PeftConfig, inject
from .runs import RunResult, predict, score_rows, train_run
from .strategies import STRATEGIES, StrategyConfig, configure, first_trained_unit

__all__ = ["peft_configs", "run_strategies", "run_peft"]


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
