"""Fine-tuning a foundation encoder: strategies (notebook 03) and parameter-efficient methods (notebook 04).

- ``heads``: the linear segmentation head, the vCDR head, and :class:`TaskModel` (encoder from a
  unit on + head, BatchNorm statistics frozen).
- ``features``: the frozen prefix's outputs, computed once per image and cached on disk.
- ``strategies``: linear probe, full fine-tuning, gradual unfreezing, discriminative learning rates.
- ``peft_methods``: LoRA through ``peft`` (rank, targets; save / load / merge / unmerge), and
  hand-written bottleneck adapters, additive visual prompts and BitFit; each method a strategy in
  ``PEFT_STRATEGIES`` (how it injects, which parameters train, how it saves and loads; verb ``inject``).
- ``memory``: training memory measured deterministically (saved activations + gradients + optimizer state).
- ``runs``: one run (train on cached features with :func:`mfmda_lib.train.fit`, checkpoint, score).
- ``comparison``: a comparison's config, shared data (``prepare_data``) and result (:class:`Comparison`).
- ``experiment``: the comparisons of notebooks 03 and 04 (``run_strategies``, ``run_peft``).
- ``speed``: the frozen-cache speed-up benchmark behind ``benchmarks/frozen_cache.py``.
"""
from .comparison import Comparison, ComparisonConfig, FinetuneData, prepare_data
from .experiment import peft_configs, run_peft, run_strategies
from .features import advance, prefix_cache, prefix_features
from .heads import (HEAD_LR, TASKS, FeatureMapSegmentationHead, FeatureMapVCDRHead, TaskModel, build_head, task_loss,
                    unit_groups)
from .memory import SavedTensorMeter, TrainingMemory, training_memory
from .peft_methods import (LORA_TARGETS, PEFT_METHODS, BottleneckAdapter, PeftConfig, VisualPrompts, inject, load_method,
                           lora_target_regex, save_method, task_model, trained_state_dict)
from .runs import RunResult, TaskData, predict, score_rows, task_targets, train_run
from .strategies import (STRATEGIES, StrategyConfig, configure, first_trained_unit, group_learning_rates,
                         schedule_table, unit_table)

__all__ = [
    "TASKS", "HEAD_LR", "FeatureMapSegmentationHead", "FeatureMapVCDRHead", "TaskModel", "build_head", "task_loss",
    "unit_groups",
    "prefix_cache", "prefix_features", "advance",
    "StrategyConfig", "STRATEGIES", "configure", "first_trained_unit", "group_learning_rates", "unit_table",
    "schedule_table",
    "PEFT_METHODS", "LORA_TARGETS", "PeftConfig", "BottleneckAdapter", "VisualPrompts", "inject", "task_model",
    "lora_target_regex", "trained_state_dict", "save_method", "load_method",
    "TrainingMemory", "SavedTensorMeter", "training_memory",
    "TaskData", "RunResult", "task_targets", "train_run", "predict", "score_rows",
    "ComparisonConfig", "Comparison", "FinetuneData", "prepare_data", "peft_configs", "run_strategies", "run_peft",
]
