"""MFM-DA stage 2 as one call: every method, baseline and ablation of notebook 09, trained and scored.

:func:`run_stage2` is what notebook 09 and the ``mfmda`` pipeline call. It takes the labelled
source samples and, per target domain, their translations (stage 1's output, passed in), trains
each requested method on cached frozen features, and scores Dice, IoU and HD95 of disc and cup on
every target's test images.

Methods (:data:`METHODS`; all share the frozen LiteMedSAM encoder, the pyramid head, the profile's
epochs and batch size, and the seed):

=======================  ==============================================================================
``source_only``          head (+ Rein tokens) trained on the source images only
``fda``                  source + Fourier-domain-adapted copies (L = 0.01) to the K target images
``histogram_matching``   source + copies histogram-matched to the K target images
``tent``                 ``source_only`` + Tent at test time (entropy, the head's BatchNorm affine params)
``sam_decoder_adapter``  reference row read from notebook 05's results (box-prompted: another protocol)
``translation_only``     source + stage-1 translations, steps 2 and 3 (no alignment)
``alignment_only``       the three steps with a photometric jitter of the source instead of a translation
``mfmda``                the method: source + translations, the three steps
``mfmda_no_rein``        ablation: no Rein tokens (only the head trains; nothing to align)
``mfmda_last_level``     ablation: head and alignment on the deepest level only (no pyramid)
``mfmda_align_last``     ablation: pyramid head, alignment on the deepest level only
=======================  ==============================================================================

Methods that do not depend on the target (``source_only``, ``tent``, ``alignment_only``) train once
and are scored on every target. Trained weights are checkpointed (named by config and data
hashes) and reused; a killed run resumes from its last epoch.

Warm start (the kit's choice for a CPU budget; MFM-DA trains each model from scratch for 100
epochs): the head first trains ``profile.stage2_warmup_epochs`` epochs on the source only, without
tokens (shared by every method with the same head, trained once); then each method adds fresh Rein
tokens and trains ``profile.stage2_epochs`` epochs of its own objective. ``source_only`` continues
on the source, so every method gets the same number of epochs.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..adapt.tta import Tent
from ..adapt.tta_base import TTAConfig
from ..data import SOURCE_DOMAIN, TARGET_DOMAINS, FundusSample, benchmark_samples
from ..diffusion.stage1 import translated_source
from ..evaluation.metrics import per_domain_table, segmentation_scores
from ..evaluation.stats import Comparison, compare, gap_closed, seed_table
from ..models import EmbeddingCache, PromptableSegmenter, load_model
from ..profiles import Profile, get_device, paths
from .baselines import fda_samples, histogram_matched_samples, jittered_samples
from .pyramid import PyramidEncoder
from .rein import ReinConfig
from .stage2 import (FeatureBank, Stage2Config, Stage2History, Stage2Model, build_model, encode_prefix, level_shapes,
                     logits_to_masks, make_optimizers, mask_targets, predict_logits, train_stage2)

__all__ = ["Method", "METHODS", "BASELINES", "UNSUPERVISED_BASELINES", "ABLATIONS", "HEADLINE", "DEFAULT_METHODS",
           "PIPELINE_METHODS", "stage2_seeds",
           "METRICS", "stage2_config", "oracle_samples",
           "source_samples", "target_images", "test_samples", "translations", "Stage2Result", "run_stage2",
           "predict_target_masks", "sam_reference_rows"]

METRICS = ("disc_dice", "disc_iou", "disc_hd95", "cup_dice", "cup_iou", "cup_hd95")


# ---------------------------------------------------------------------------------------------
# methods
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Method:
    """One row of the comparison.

    Attributes:
        name: key in :data:`METHODS`.
        label: what it is, in a few words.
        images: what is paired with each source image: ``"none"``, ``"stage1"`` (the translations
            passed to :func:`run_stage2`), ``"fda"``, ``"histogram"`` or ``"jitter"``; ``"oracle"``:
            no pairing, the model trains on the target's own labelled images instead of the source.
        steps: which of the three steps run.
        changes: :class:`Stage2Config` fields changed from the profile's base config
            (``align_taps="last"`` means the deepest tap).
        kind: ``"train"``, ``"tent"`` (test-time adaptation of ``source_only``) or ``"reference"``.
        warm_up: start from the kit's warm-up of the head (``False``: from scratch, as the authors).
    """

    name: str
    label: str
    images: str = "none"
    steps: tuple[str, ...] = ("source",)
    changes: tuple[tuple[str, object], ...] = ()
    kind: str = "train"
    warm_up: bool = True

    @property
    def per_target(self) -> bool:
        """Whether a model is trained for each target (it sees target-derived images)."""
        return self.images in ("stage1", "fda", "histogram", "oracle")

    def config(self, base: Stage2Config) -> Stage2Config:
        """The method's :class:`Stage2Config`."""
        changes = dict(self.changes)
        if changes.get("align_taps") == "last":
            changes["align_taps"] = (base.taps[-1],)
        return base.replace(steps=self.steps, **changes)


_ALL = ("align", "source", "translated")
_PAIR = ("source", "translated")
METHODS: dict[str, Method] = {m.name: m for m in (
    Method("source_only", "trained on the source only"),
    Method("fda", "source + FDA to the K targets (L = 0.01)", "fda", _PAIR),
    Method("histogram_matching", "source + histogram matching to the K targets", "histogram", _PAIR),
    Method("tent", "source_only + Tent at test time", kind="tent"),
    Method("sam_decoder_adapter", "notebook 05's decoder adapter, box-prompted (reference)", kind="reference"),
    Method("translation_only", "source + translations, no alignment", "stage1", _PAIR),
    Method("alignment_only", "alignment to a photometric jitter, no translation", "jitter", _ALL),
    Method("mfmda", "MFM-DA: translations + hierarchical alignment", "stage1", _ALL),
    Method("mfmda_no_rein", "ablation: no Rein tokens (head only)", "stage1", _PAIR, (("use_rein", False),)),
    Method("mfmda_last_level", "ablation: deepest level only (no pyramid)", "stage1", _ALL,
           (("head_levels", "last"), ("align_taps", "last"))),
    Method("mfmda_align_last", "ablation: align the deepest level only", "stage1", _ALL, (("align_taps", "last"),)),
    Method("mfmda_adamw", "ablation: AdamW (lr 1e-2) in steps 2-3, the kit's earlier optimiser", "stage1", _ALL,
           (("optimizer", "adamw"), ("lr", 1e-2))),
    Method("mfmda_levels", "ablation: tokens on the pyramid levels only (not after every block)", "stage1", _ALL,
           (("rein_placement", "levels"),)),
    Method("mfmda_no_warmup", "ablation: no warm-up of the head (the authors' from-scratch start, in this budget)",
           "stage1", _ALL, warm_up=False),
    Method("oracle", "trained on the target's own labelled images (upper bound, not UDA)", "oracle"),
)}
BASELINES = ("source_only", "fda", "histogram_matching", "tent", "sam_decoder_adapter", "translation_only",
             "alignment_only")
#: the baselines MFM-DA must beat: unsupervised, not the box-prompted reference row
UNSUPERVISED_BASELINES = tuple(m for m in BASELINES if METHODS[m].kind != "reference")
ABLATIONS = ("mfmda_no_rein", "mfmda_last_level", "mfmda_align_last", "mfmda_adamw", "mfmda_levels",
             "mfmda_no_warmup")
#: the comparison every verdict rests on: trained with every seed of the profile (ablations: the first seed)
HEADLINE = ("source_only", *[m for m in UNSUPERVISED_BASELINES if m != "source_only"], "mfmda", "oracle")
DEFAULT_METHODS = (*BASELINES, "mfmda", "oracle", *ABLATIONS)
#: what ``mfmda run`` trains on the benchmark: the headline comparison and the (free) reference row; the
#: ablations are notebook 09's, on one target
PIPELINE_METHODS = (*HEADLINE, "sam_decoder_adapter")


def stage2_config(profile: Profile, seed: int | None = None) -> Stage2Config:
    """The base :class:`Stage2Config` of a profile (every method changes only what it names).

    Args:
        seed: seeds the tokens, the head and the pair order (default ``profile.seed``).
    """
    seed = profile.seed if seed is None else seed
    return Stage2Config(taps=tuple(profile.stage2_taps), rein_from=profile.stage2_rein_from,
                        rein_placement=profile.stage2_rein_placement, rein=ReinConfig(seed=seed),
                        epochs=profile.stage2_epochs, batch_size=profile.stage2_batch_size, seed=seed)


def stage2_seeds(profile: Profile) -> list[int]:
    """The seeds of the headline comparison: ``profile.seed``, ``profile.seed + 1``, ... (``stage2_seeds`` of them)."""
    return [profile.seed + i for i in range(profile.stage2_seeds)]


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------

def source_samples(profile: Profile) -> list[FundusSample]:
    """The labelled source images of stage 2: the first ``stage2_pairs`` of stage 1's list (source train split)."""
    return benchmark_samples(profile, "train", profile.stage2_pairs, domains=[SOURCE_DOMAIN])


def target_images(profile: Profile, target: str) -> list[np.ndarray]:
    """The K = ``profile.stage1_k_target`` unlabelled images of a target: the first of its train split."""
    return [s.image for s in benchmark_samples(profile, "train", profile.stage1_k_target, domains=[target])]


def oracle_samples(profile: Profile, target: str) -> list[FundusSample]:
    """The oracle's labelled target images: the first ``stage2_pairs`` of the target's train split."""
    return benchmark_samples(profile, "train", profile.stage2_pairs, domains=[target])


def test_samples(profile: Profile, domains: Sequence[str]) -> dict[str, list[FundusSample]]:
    """The scored test images of each domain (``eval_per_domain`` of the test split)."""
    return {d: benchmark_samples(profile, "test", profile.stage2_test_per_domain, domains=[d]) for d in domains}


def translations(profile: Profile, targets: Sequence[str] = TARGET_DOMAINS, *, source: Sequence[FundusSample] | None = None,
                 progress: bool = True) -> tuple[dict[str, list[FundusSample]], str]:
    """Stage 1's translations of the source to each target (trained or loaded by stage 1's own cache).

    Stage 1 translates every source training image; the first ``len(source)`` translations are
    kept (same order), so they pair with ``source`` (default :func:`source_samples`) by position.
    Nothing stands in for stage 1: an error in it stops the run.

    Returns:
        ``({target: translated samples}, "stage1")`` (the origin is recorded in the results).
    """
    source = list(source) if source is not None else source_samples(profile)
    out = {}
    for t in targets:
        translated = translated_source(profile, t, variant="mfmda", progress=progress)[:len(source)]
        mismatch = [s.sample_id for s, x in zip(source, translated) if s.sample_id != x.sample_id]
        if len(translated) != len(source) or mismatch:
            raise ValueError(f"stage 1's translations to {t} do not pair with the source samples "
                             f"({len(translated)} for {len(source)}; mismatched ids {mismatch[:3]})")
        out[t] = translated
    return out, "stage1"


def sam_reference_rows(profile: Profile, domains: Sequence[str]) -> list[dict]:
    """Per-image rows of notebook 05's supervised decoder adapter (``results/sam_decoder_adapter_<profile>.json``).

    Box-prompted with the ground-truth box, so not comparable as a UDA method: a reference of
    what a prompted foundation model reaches. Empty when the file is absent.
    """
    path = paths().results / f"sam_decoder_adapter_{profile.name}.json"
    if not path.is_file():
        return []
    rows = json.loads(path.read_text()).get("rows", [])
    return [{**r, "method": "sam_decoder_adapter"} for r in rows
            if r.get("method") == "decoder_adapter" and r.get("domain") in domains]


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


# ---------------------------------------------------------------------------------------------
# result
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------

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


def _score(method: str, model: Stage2Model, segmenter: PromptableSegmenter, bank: FeatureBank,
           samples: Sequence[FundusSample], logits: torch.Tensor | None = None) -> tuple[list[dict], list]:
    """Per-image score rows and the predicted ``(disc, cup)`` masks."""
    logits = predict_logits(model, bank) if logits is None else logits
    masks = logits_to_masks(segmenter, logits, [s.image.shape[:2] for s in samples])
    rows = [{"method": method, "domain": s.domain, "sample_id": s.sample_id, **segmentation_scores(d, c, s)}
            for (d, c), s in zip(masks, samples)]
    return rows, masks


def _tent_rows(profile: Profile, model: Stage2Model, segmenter: PromptableSegmenter, bank: FeatureBank,
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
    return _score("tent", model, segmenter, bank, samples, torch.cat(out))


class _Runner:
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


#: how the kit's warm-up of the head departs from the method's own epochs (see :meth:`_Runner.warm_start`)
WARMUP_CHANGES = {"optimizer": "adamw", "lr": 1e-2, "weight_decay": 1e-4, "dice_weight": 1.0, "grad_clip": 1.0}


def _with_mean_dice(rows: list[dict]) -> list[dict]:
    """Each row gains ``dice``: the mean of its disc and cup Dice (the headline metric)."""
    return [{**r, "dice": (r["disc_dice"] + r["cup_dice"]) / 2} if "disc_dice" in r and "cup_dice" in r else r
            for r in rows]


def run_stage2(profile: Profile, source: Sequence[FundusSample], translated_by_target: dict[str, list[FundusSample]],
               *, methods: Sequence[str] = DEFAULT_METHODS, seeds: Sequence[int] | None = None,
               segmenter: PromptableSegmenter | None = None,
               target_images_by_target: dict[str, list[np.ndarray]] | None = None,
               oracle_by_target: dict[str, list[FundusSample]] | None = None,
               test: dict[str, list[FundusSample]] | None = None, checkpoint_dir: str | Path | None = None,
               cache_root: str | Path | bool | None = None, accelerator=None, translation_origin: str = "stage1",
               progress: bool = True) -> Stage2Result:
    """Train and score MFM-DA stage 2 and its baselines and ablations on every target.

    Args:
        profile: sizes (epochs, batch size, Rein placement, K, TTA steps).
        source: the ``N`` labelled source samples.
        translated_by_target: ``{target: N translated samples}``, paired with ``source`` by position
            (stage 1's :func:`~mfmda_lib.diffusion.stage1.translated_source`, or a stand-in).
        methods: names from :data:`METHODS`, in the order of the table.
        seeds: the seeds every :data:`HEADLINE` method trains with (ablations: the first one only);
            default :func:`stage2_seeds` of the profile.
        segmenter: the foundation model (default: LiteMedSAM on the accelerator's device).
        target_images_by_target: the K unlabelled images of each target, for FDA and histogram
            matching (default: :func:`target_images`).
        oracle_by_target: the labelled target images of the ``oracle`` method (default: :func:`oracle_samples`).
        test: ``{domain: samples}`` to score (default: :func:`test_samples` of the targets and the source).
        checkpoint_dir: trained weights (default ``<cache>/mfmda/<profile>/stage2``, shared by notebook 09 and
            ``mfmda run``: file names hash the config and the data, so a model trained by one is reused by the other).
        cache_root: folder of the frozen-feature cache (default ``<cache>/embeddings``); ``False``:
            keep the features in memory only.
        accelerator: an ``accelerate.Accelerator`` (default: one process on the kit's device).
        translation_origin: recorded in the result (``"stage1"``).

    Returns:
        A :class:`Stage2Result`; every row carries its ``seed``.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"run_stage2: unknown method(s) {unknown}; choose from {list(METHODS)}")
    targets = list(translated_by_target)
    bad = [t for t, v in translated_by_target.items() if len(v) != len(source)]
    if not targets or bad:
        raise ValueError(f"run_stage2: give one translated sample per source sample for each target (bad: {bad})")
    seeds = list(seeds) if seeds is not None else stage2_seeds(profile)
    if not seeds:
        raise ValueError("run_stage2: give at least one seed")
    start_all = time.perf_counter()
    run = _Runner(profile, source, segmenter, checkpoint_dir, cache_root, accelerator, progress)
    segmenter = run.segmenter
    test = test if test is not None else test_samples(profile, [*targets, SOURCE_DOMAIN])

    def paired(method: Method, target: str | None) -> list[FundusSample] | None:
        if method.images == "stage1":
            return translated_by_target[target]
        if method.images in ("fda", "histogram"):
            k = (target_images_by_target or {}).get(target) or target_images(profile, target)
            return fda_samples(source, k) if method.images == "fda" else histogram_matched_samples(source, k)
        if method.images == "jitter":
            return jittered_samples(source, profile.seed)
        return None

    trained: dict[tuple, Stage2Model] = {}
    rows, masks = [], {}

    def train(method: Method, target: str | None, seed: int) -> Stage2Model:
        key = (method.name, target or "all", seed)
        if key not in trained:
            if method.images == "oracle":
                labelled = (oracle_by_target or {}).get(target) or oracle_samples(profile, target)
                trained[key] = run.train(method, key, None, target, seed=seed, oracle=labelled)
            else:
                name = f"{method.images}:{target}" if method.per_target else method.images
                trained[key] = run.train(method, key, paired(method, target), name, seed=seed)
        return trained[key]

    def score(method: Method, model: Stage2Model, domains: Sequence[str], seed: int) -> None:
        for d in domains:
            bank = run.banks.get(run.prefix_for(model_config(method, seed)), f"test:{d}", test[d])
            if method.kind == "tent":
                new, found = _tent_rows(profile, model, segmenter, bank, test[d])
            else:
                new, found = _score(method.name, model, segmenter, bank, test[d])
            rows.extend({**r, "seed": seed} for r in new)
            masks[(method.name, d) if seed == seeds[0] else (method.name, d, seed)] = found

    def model_config(method: Method, seed: int) -> Stage2Config:
        return (METHODS["source_only"] if method.kind == "tent" else method).config(stage2_config(profile, seed))

    # seed-major: every method's first seed is done before any second seed (an interrupted run has a whole seed)
    for seed in seeds:
        for name in methods:
            method = METHODS[name]
            if seed != seeds[0] and (name not in HEADLINE or method.kind == "reference"):
                continue
            if method.kind == "reference":
                rows.extend(sam_reference_rows(profile, targets))
            elif method.kind == "tent":
                score(method, train(METHODS["source_only"], None, seed), targets, seed)
            elif method.per_target:
                for t in targets:
                    score(method, train(method, t, seed), [t], seed)
            else:
                domains = [*targets, SOURCE_DOMAIN] if SOURCE_DOMAIN in test else targets
                score(method, train(method, None, seed), domains, seed)
    total = time.perf_counter() - start_all
    return Stage2Result(_with_mean_dice(rows), run.costs, run.histories, targets, translation_origin,
                        {"total": round(total, 1), "prefix": round(run.banks.seconds, 1)}, masks, test, seeds)


def predict_target_masks(profile: Profile, source: Sequence[FundusSample], translated: Sequence[FundusSample],
                         images: Sequence[np.ndarray], *, target_name: str = "target", method: str = "mfmda",
                         segmenter: PromptableSegmenter | None = None, checkpoint_dir: str | Path | None = None,
                         cache_root: str | Path | bool | None = None, accelerator=None,
                         progress: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
    """Train ``method`` on ``source`` + ``translated`` (a user's own target) and segment unlabelled ``images``.

    Args:
        profile: sizes.
        source: labelled source samples; ``translated``: their translations to the target, same order.
        images: ``(H, W, 3)`` uint8 images of the target hospital (no labels needed).
        target_name: names the target in checkpoints and progress bars.
        method: a trained method of :data:`METHODS` that uses ``translated`` (default ``mfmda``).

    Returns:
        One ``(disc, cup)`` pair of ``(H, W)`` bool masks per image.
    """
    m = METHODS.get(method)
    if m is None or m.kind != "train" or m.images != "stage1":
        raise ValueError(f"predict_target_masks: method must be one trained on the translations, e.g. 'mfmda'; got {method!r}")
    if len(translated) != len(source):
        raise ValueError(f"predict_target_masks: {len(translated)} translations for {len(source)} source samples")
    run = _Runner(profile, source, segmenter, checkpoint_dir, cache_root, accelerator, progress)
    model = run.train(m, (method, target_name, profile.seed), translated, f"stage1:{target_name}")
    images = [np.ascontiguousarray(img) for img in images]
    bank = encode_prefix(run.segmenter, run.prefix, images, cache_root=None, batch_size=profile.encoder_batch_size,
                         progress=progress, desc=f"frozen prefix: {target_name}")
    return logits_to_masks(run.segmenter, predict_logits(model, bank), [img.shape[:2] for img in images])
