"""Training the stage-2 models of one source set: cached frozen-prefix features per image set, the kit's shared
warm-up of the head, checkpoints named by config and data hashes (reused, resumed), and scoring a model (Tent included)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..adapt.tta import Tent
from ..adapt.tta_base import TTAConfig
from ..data import FundusSample
from ..environment import get_device, paths
from ..evaluation.metrics import segmentation_scores
from ..models import EmbeddingCache, PromptableSegmenter, load_model
from ..profiles import Profile
from .features import FeatureBank, encode_prefix, level_shapes, mask_targets
from .methods import Method, stage2_config
from .pyramid import PyramidEncoder
from .stage2 import Stage2Config, Stage2Model, build_model, logits_to_masks, predict_logits
from .training import Stage2History, make_optimizers, train_stage2

__all__ = ["WARMUP_CHANGES", "Stage2Runner", "score_model", "tent_rows"]


#: how the kit's warm-up of the head departs from the method's own epochs (see :meth:`Stage2Runner.warm_start`)
WARMUP_CHANGES = {"optimizer": "adamw", "lr": 1e-2, "weight_decay": 1e-4, "dice_weight": 1.0, "grad_clip": 1.0}


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else repr(p).encode())
    return h.hexdigest()[:10]


def _images_digest(samples: Sequence[FundusSample] | None) -> str:
    if samples is None:
        return "none"
    return _digest(*[EmbeddingCache.key(np.ascontiguousarray(s.image)) for s in samples],
                   *[s.sample_id for s in samples])


class _HeadOnLevels(nn.Module):
    """The head as a model of fixed pyramid levels (so Tent adapts only the head)."""

    def __init__(self, model: Stage2Model) -> None:
        super().__init__()
        self.head, self.size = model.head, model.out_size

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        return self.head(levels, self.size)


class _Banks:
    """Cached prefix features of every image set, per encoder signature (computed on first use)."""

    def __init__(self, segmenter: PromptableSegmenter, cache_root: Path | None, batch_size: int, progress: bool):
        self.segmenter, self.cache_root, self.batch_size, self.progress = segmenter, cache_root, batch_size, progress
        self.banks: dict[tuple[str, str], FeatureBank] = {}
        self.seconds = 0.0

    def get(self, encoder: PyramidEncoder, name: str, samples: Sequence[FundusSample]) -> FeatureBank:
        key = (encoder.cache_signature(), name)
        if key not in self.banks:
            start = time.perf_counter()
            self.banks[key] = encode_prefix(self.segmenter, encoder, [s.image for s in samples],
                                            cache_root=self.cache_root, batch_size=self.batch_size,
                                            progress=self.progress, desc=f"frozen prefix: {name}")
            self.seconds += time.perf_counter() - start
        return self.banks[key]


def score_model(method: str, model: Stage2Model, segmenter: PromptableSegmenter, bank: FeatureBank,
           samples: Sequence[FundusSample], logits: torch.Tensor | None = None) -> tuple[list[dict], list]:
    """Per-image score rows and the predicted ``(disc, cup)`` masks."""
    logits = predict_logits(model, bank) if logits is None else logits
    masks = logits_to_masks(segmenter, logits, [s.image.shape[:2] for s in samples])
    rows = [{"method": method, "domain": s.domain, "sample_id": s.sample_id, **segmentation_scores(d, c, s)}
            for (d, c), s in zip(masks, samples)]
    return rows, masks


def tent_rows(profile: Profile, model: Stage2Model, segmenter: PromptableSegmenter, bank: FeatureBank,
               samples: Sequence[FundusSample]) -> tuple[list[dict], list]:
    """Tent, online within one domain: batches of ``tta_batch_size`` test images, one step each, predicting
    with the outputs of the forward pass that made the update (as the authors' ``forward_and_adapt``)."""
    device = next(model.head.parameters()).device
    with torch.no_grad():
        model.eval()
        levels = model.head_input(model.encoder({k: v.to(device) for k, v in bank.items()}))  # fixed features
    tent = Tent(_HeadOnLevels(model), TTAConfig(seed=profile.seed))
    out, b = [], profile.tta_batch_size
    for i in range(0, len(samples), b):
        out.append(tent.adapt([f[i:i + b] for f in levels]).detach())
    return score_model("tent", model, segmenter, bank, samples, torch.cat(out))


class Stage2Runner:
    """Trains (or loads) the models of one source set: shared warm-up, cached features, checkpoints."""

    def __init__(self, profile: Profile, source: Sequence[FundusSample], segmenter: PromptableSegmenter | None,
                 checkpoint_dir: str | Path | None, cache_root: str | Path | bool | None, accelerator, progress: bool):
        if accelerator is None:
            from accelerate import Accelerator

            accelerator = Accelerator(cpu=get_device().type == "cpu")
        self.profile, self.source, self.accelerator, self.progress = profile, list(source), accelerator, progress
        self.segmenter = segmenter or load_model("litemedsam", device=accelerator.device)
        self.base = stage2_config(profile)
        self.checkpoint_dir = Path(checkpoint_dir or paths().cache / "mfmda" / profile.name / "stage2")
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        root = None if cache_root is False else Path(cache_root or paths().cache / "embeddings")
        self.banks = _Banks(self.segmenter, root, profile.encoder_batch_size, progress)
        self.labels = mask_targets(self.segmenter, self.source)
        self.prefixes: dict[str, PyramidEncoder] = {}
        self.prefix = self.prefix_for(self.base)
        self.src_bank = self.banks.get(self.prefix, "source", self.source)
        self.shapes = level_shapes(self.prefix, self.src_bank)
        self.source_digest = _digest(_images_digest(self.source), self.segmenter.cache_key)
        self.costs: list[dict] = []
        self.histories: dict[tuple, Stage2History] = {}
        self._warm: dict[str, tuple[dict, str]] = {}

    def prefix_for(self, cfg: Stage2Config) -> PyramidEncoder:
        """The frozen part of ``cfg``'s encoder (shared by configs with the same cut and taps)."""
        key = f"{cfg.rein_placement}|{cfg.rein_from}|{cfg.taps}"
        if key not in self.prefixes:
            self.prefixes[key] = PyramidEncoder(self.segmenter.image_encoder, cfg.taps, cfg.rein_from, None,
                                                cfg.rein_placement)
        return self.prefixes[key]

    def fit(self, cfg: Stage2Config, pair_bank: FeatureBank | None, name: str, key: tuple,
            init: dict | None = None, source: tuple[FeatureBank, torch.Tensor] | None = None) -> Stage2Model:
        """Train one model (resuming from / loading ``checkpoint_dir / name``) and record its cost.

        Args:
            source: ``(bank, labels)`` to train on instead of the source images (the oracle).
        """
        bank, labels = source if source is not None else (self.banks.get(self.prefix_for(cfg), "source", self.source),
                                                          self.labels)
        model = build_model(self.segmenter.image_encoder, cfg, self.shapes, self.segmenter.input_size)
        if init is not None:
            model.load_trainable_state(init)
        optimizer, align_optimizer = make_optimizers(model, cfg)
        start = time.perf_counter()
        history = train_stage2(model, optimizer, bank, labels, cfg, align_optimizer=align_optimizer,
                               translated=pair_bank, accelerator=self.accelerator,
                               checkpoint=self.checkpoint_dir / name, progress=self.progress,
                               desc=" -> ".join(str(k) for k in key if k != "all"))
        self.histories[key] = history
        self.costs.append({"method": key[0], "target": key[1], "seed": cfg.seed,
                           "trainable_params": sum(p.numel() for p in model.trainable_parameters()),
                           "rein_params": sum(p.numel() for n, p in model.named_parameters() if "rein_" in n),
                           "epochs": cfg.epochs, "train_seconds": round(history.seconds(), 1),
                           "ran_now_seconds": round(time.perf_counter() - start, 1),
                           "from_checkpoint": history.resumed_from == cfg.epochs})
        return model

    def warm_start(self, cfg: Stage2Config, source: tuple[FeatureBank, torch.Tensor], source_name: str,
                   source_samples: Sequence[FundusSample], source_digest: str,
                   pair: Sequence[FundusSample] | None, pair_name: str) -> tuple[dict, str]:
        """Phase 1, the kit's warm-up: the head alone learns to segment the method's own training images.

        The kit's budget device, not the authors' (they train each model from scratch for 100 epochs, a
        budget in which their SGD has thousands of steps to move): :data:`WARMUP_CHANGES` (AdamW, BCE + Dice,
        clipped), no tokens and no alignment, on the whole frozen encoder's cached levels, for
        ``stage2_warmup_epochs``, on the method's segmentation steps (the source, and its paired images if the
        method segments them). Phase 2 (:meth:`train`) is the method as the authors run it. Trained once per
        head, seed and data.
        """
        steps = tuple(s for s in cfg.steps if s != "align")
        wcfg = cfg.replace(steps=steps, epochs=self.profile.stage2_warmup_epochs, align_taps=None, use_rein=False,
                           rein_from=None, align_lr=None, **WARMUP_CHANGES)  # step (1)'s rate: no step (1) here
        pair = pair if "translated" in steps else None
        digest = _digest(wcfg.digest(), source_digest, _images_digest(pair))
        if digest not in self._warm:
            prefix = self.prefix_for(wcfg)
            bank = (self.banks.get(prefix, source_name, source_samples), source[1])
            pair_bank = self.banks.get(prefix, pair_name, pair) if pair is not None else None
            model = self.fit(wcfg, pair_bank, f"warmup_{wcfg.digest()}_{digest}.pt",
                             ("warm-up", f"{source_name}+{pair_name if pair is not None else '-'}", cfg.seed),
                             source=bank)
            self._warm[digest] = (model.trainable_state(), digest)
        return self._warm[digest]

    def train(self, method: Method, key: tuple, pair: Sequence[FundusSample] | None, pair_name: str, *,
              seed: int | None = None, oracle: Sequence[FundusSample] | None = None) -> Stage2Model:
        """Phase 1, the warm-up of the head (:meth:`warm_start`), then phase 2: ``method``'s own epochs
        (Rein tokens, its steps, the authors' optimisers) on the source paired with ``pair``.

        Args:
            seed: the run's seed (default: the profile's).
            oracle: the labelled target samples the ``oracle`` method trains on instead of the source.
        """
        cfg = method.config(stage2_config(self.profile, seed))
        if oracle is not None:
            samples, source_name = list(oracle), f"oracle:{pair_name}"
            source = (self.banks.get(self.prefix_for(cfg), source_name, samples), mask_targets(self.segmenter, samples))
            source_digest = _digest(_images_digest(samples), self.segmenter.cache_key)
        else:
            samples, source_name, source_digest = self.source, "source", self.source_digest
            source = (self.banks.get(self.prefix_for(cfg), "source", samples), self.labels)
        init, init_digest = (self.warm_start(cfg, source, source_name, samples, source_digest, pair, pair_name)
                             if method.warm_up else (None, "scratch"))
        pair_bank = self.banks.get(self.prefix_for(cfg), pair_name, pair) if pair is not None else None
        name = f"{cfg.digest()}_{_digest(init_digest, source_digest, _images_digest(pair))}.pt"
        return self.fit(cfg, pair_bank, name, key, init, source)
