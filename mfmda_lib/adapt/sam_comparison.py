"""The notebook-05 comparison: frozen LiteMedSAM vs. decoder adapter, full decoder, encoder LoRA, adapter TTA.

:func:`run_comparison` trains (or loads, when a checkpoint is present) each method on the labelled
source domain, once per training seed (``profile.verdict_seeds`` of them), scores disc and cup on
every target domain, and records the cost of each method: trainable share, peak memory, training
and test time. :meth:`ComparisonResult.verdicts` compares the methods with a 95% interval over the
seeds and the test images. The methods themselves live in :mod:`mfmda_lib.adapt.sam_tuning` and
:mod:`mfmda_lib.adapt.decoder_adapter`.
"""
from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..data import SOURCE_DOMAIN, TARGET_DOMAINS, FundusSample, benchmark_samples
from ..environment import paths
from ..evaluation import comparisons, stats
from ..evaluation.metrics import segmentation_scores
from ..evaluation.tables import per_domain_table
from ..models import EmbeddingCache, PromptableSegmenter, embed
from ..profiles import Profile
from ..train import History, count_parameters
from .decoder_adapter import DecoderAdapterConfig, adapter_parameters, inject
from .sam_lora import LoraConfigLite, inject_encoder_lora, train_encoder_lora
from .sam_tuning import (PeakMemory, PromptSet, SingleImageTTA, TTAConfig, TrainConfig, configure_full_decoder,
                         prompt_set, train_decoder)

__all__ = ["ComparisonConfig", "ComparisonResult", "predict", "score_rows", "run_comparison", "history_seconds"]

#: TTA's box jitter on image ``i`` with training seed ``s`` is seeded ``TTA_SEED_STRIDE * s + i``.
TTA_SEED_STRIDE = 100_000


@dataclass(frozen=True)
class ComparisonConfig:
    """Every hyperparameter of the notebook-05 comparison (sizes come from the profile).

    Attributes:
        adapter: size of the SAM-DA adapter.
        adapter_train: supervised training of the adapter (lr 1e-2, see the comment below).
        decoder_train: supervised full decoder fine-tuning (lr 1e-4).
        lora: encoder LoRA.
        tta: single-image test-time adaptation.
    """

    adapter: DecoderAdapterConfig = field(default_factory=DecoderAdapterConfig)
    # Adam moves each parameter by about ``lr`` per step: the adapter's gate starts at 0 and must reach
    # O(0.1) within the few dozen steps of the cpu profile, hence 1e-2 (LLaMA-Adapter used 9e-3); the
    # full decoder starts from trained weights and uses MedSAM's 1e-4.
    adapter_train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-2))
    decoder_train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4))
    lora: LoraConfigLite = field(default_factory=LoraConfigLite)
    tta: TTAConfig = field(default_factory=TTAConfig)


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------

def _to_masks(model: PromptableSegmenter, logits: torch.Tensor, sample: FundusSample) -> list[np.ndarray]:
    """``(2, 1, S, S)`` disc and cup logits -> two ``(H, W)`` bool masks at the sample's size."""
    return [(model.postprocess_logits(lg, sample.image.shape[:2]) > 0).cpu().numpy() for lg in logits]


@torch.no_grad()
def predict(model: PromptableSegmenter, data: PromptSet) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Disc and cup masks (``N`` bool ``(H, W)`` each) of ``data`` from its ground-truth boxes."""
    pred_disc, pred_cup = [], []
    for i, s in enumerate(data.samples):
        logits = model.decode(data.embeddings[i:i + 1].float().expand(2, -1, -1, -1), data.boxes[i])  # (2, 1, S, S)
        d, c = _to_masks(model, logits, s)
        pred_disc.append(d)
        pred_cup.append(c)
    return pred_disc, pred_cup


def score_rows(method: str, samples: Sequence[FundusSample], pred_disc, pred_cup, **tags) -> list[dict]:
    """One row per sample: ``method``, ``tags`` (e.g. ``seed``), ``domain``, ``sample_id`` and
    :func:`segmentation_scores`."""
    return [{"method": method, **tags, "domain": s.domain, "sample_id": s.sample_id, **segmentation_scores(d, c, s)}
            for s, d, c in zip(samples, pred_disc, pred_cup)]


# ---------------------------------------------------------------------------------------------
# the comparison of notebook 05
# ---------------------------------------------------------------------------------------------

@dataclass
class ComparisonResult:
    """Everything notebook 05 shows.

    Attributes:
        rows: one dict per (method, seed, target image): scores of :func:`score_rows`. The frozen model
            has no training seed: its (deterministic) rows are repeated under every seed, so that every
            comparison with it stays paired.
        costs: one dict per method: trainable / total parameters, trainable %, peak memory, seconds (first seed).
        histories: method -> training :class:`History` (first seed).
        samples: the evaluated target samples, in order.
        preds: method -> ``(pred_disc, pred_cup)`` lists aligned with ``samples`` (first seed).
        memory_label: what the ``peak_memory_mb`` column measured.
        train_images: method -> labelled source images it trained on (validation images excluded).
        seeds: the training seeds.
    """

    rows: list[dict]
    costs: list[dict]
    histories: dict[str, History]
    samples: list[FundusSample]
    preds: dict[str, tuple[list[np.ndarray], list[np.ndarray]]]
    memory_label: str
    train_images: dict[str, int] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])

    def table(self, metrics: Sequence[str] = ("disc_dice", "cup_dice")) -> pd.DataFrame:
        """Mean ± std (over seeds and images) per (method, target domain) plus each method's mean row."""
        return per_domain_table(self.rows, metrics=metrics, domain_order=list(TARGET_DOMAINS))

    def verdicts(self, pairs: Sequence[tuple[str, str]], metrics: Sequence[str] = ("disc_dice", "cup_dice"), *,
                 per_domain: bool = False) -> pd.DataFrame:
        """Paired ``method - baseline`` differences over the target images pooled (or each target domain),
        with 95% intervals over seeds and images: :func:`mfmda_lib.evaluation.comparisons.compare_table`."""
        if per_domain:
            return comparisons.compare_within(self.rows, metrics, pairs, values=list(TARGET_DOMAINS))
        return comparisons.compare_table(self.rows, metrics, pairs)

    def cost_table(self) -> pd.DataFrame:
        """Costs per method (index ``method``)."""
        return pd.DataFrame(self.costs).set_index("method")

    def result_view(self, method: str):
        """An object with ``rows``, ``samples``, ``pred_disc``, ``pred_cup`` of one method's first seed (for plots)."""
        from types import SimpleNamespace

        rows = [r for r in self.rows if r["method"] == method and r.get("seed", self.seeds[0]) == self.seeds[0]]
        return SimpleNamespace(rows=rows, samples=self.samples,
                               pred_disc=self.preds[method][0], pred_cup=self.preds[method][1])


def _checkpoint(method: str, profile: Profile, model: PromptableSegmenter, seed: int, *parts) -> str:
    """``<cache>/checkpoints/<method>_<profile>_<hash of model, sizes, seed and config>.pt``."""
    key = repr((model.cache_key, profile.train_per_domain, profile.adapter_epochs, profile.adapter_batch_size,
                profile.lora_train_images, profile.lora_epochs, seed, *[asdict(p) for p in parts]))
    folder = paths().cache / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder / f"{method}_{profile.name}_{hashlib.sha256(key.encode()).hexdigest()[:10]}.pt")


def run_comparison(profile: Profile, model: PromptableSegmenter, cache: EmbeddingCache | None,
                   config: ComparisonConfig | None = None, *, seeds: Sequence[int] | None = None,
                   progress: bool = True) -> ComparisonResult:
    """Frozen model vs decoder adapter vs full decoder fine-tuning vs encoder LoRA vs adapter + single-image TTA.

    Trains on ``profile.train_per_domain`` source training images (a ``val_fraction`` held out for
    early stopping), evaluates on ``profile.eval_per_domain`` test images of each target domain.
    Every trained method runs once per seed of ``seeds`` (default
    :func:`~mfmda_lib.evaluation.stats.verdict_seeds`); the seed draws the adapter's and LoRA's
    initial weights, the batch order, the box jitter and TTA's jitter. Trained weights are
    checkpointed under ``paths().cache / "checkpoints"`` and reused when present. ``model`` itself
    stays frozen and untouched: each method adapts a copy.
    """
    config = config or ComparisonConfig()
    device = model.device
    train_samples = benchmark_samples(profile, "train", profile.train_per_domain, domains=[SOURCE_DOMAIN])
    eval_samples = benchmark_samples(profile, "test", profile.eval_per_domain, domains=list(TARGET_DOMAINS))
    bs = profile.encoder_batch_size
    source = prompt_set(model, train_samples, embed(model, [s.image for s in train_samples], cache, bs, progress))
    target = prompt_set(model, eval_samples, embed(model, [s.image for s in eval_samples], cache, bs, progress))
    n_val = max(1, round(config.adapter_train.val_fraction * len(source)))
    train, val = source.subset(range(len(source) - n_val)), source.subset(range(len(source) - n_val, len(source)))

    seeds = stats.verdict_seeds(profile) if seeds is None else list(seeds)
    result = ComparisonResult([], [], {}, eval_samples, {}, PeakMemory(device).label, seeds=seeds)

    # 1. frozen: no training, no seed; its rows are repeated under every seed (paired comparisons)
    start = time.perf_counter()
    out = predict(model, target)
    result.costs.append(_cost("frozen", count_parameters(model), None, time.perf_counter() - start, None))
    result.preds["frozen"] = out
    result.rows += [r for seed in seeds for r in score_rows("frozen", eval_samples, *out, seed=seed)]
    for seed in seeds:
        _run_seed(profile, model, config, result, train, val, target, seed, progress)
    result.train_images = {"decoder_adapter": len(train), "full_decoder": len(train),
                           "encoder_lora": min(profile.lora_train_images, len(train))}
    return result


def _cost(method: str, params: tuple[int, int], history: History | None, test_s: float,
          mem: PeakMemory | None) -> dict:
    """The cost row of one method (training memory only when the training ran in this call)."""
    ran = history is not None and len(history.epochs) > history.resumed_from
    return {"method": method, "trainable_params": params[0], "total_params": params[1],
            "trainable_pct": 100 * params[0] / params[1],
            "peak_memory_mb": mem.peak_mb if mem is not None and (ran or history is None) else float("nan"),
            "train_seconds": 0.0 if history is None else history_seconds(history),
            "test_seconds": test_s, "from_checkpoint": history is not None and not ran}


def _run_seed(profile: Profile, model: PromptableSegmenter, config: ComparisonConfig, result: ComparisonResult,
              train: PromptSet, val: PromptSet, target: PromptSet, seed: int, progress: bool) -> None:
    """Train and score the four adapted methods with ``seed``; add their rows (and, for the first seed, their
    predictions, histories and costs) to ``result``."""
    device, bs, samples = model.device, profile.encoder_batch_size, result.samples
    first = seed == result.seeds[0]

    def record(method: str, params: tuple[int, int], pd_pc, history: History | None, test_s: float,
               mem: PeakMemory | None) -> None:
        result.rows.extend(score_rows(method, samples, *pd_pc, seed=seed))
        if first:
            result.preds[method] = pd_pc
            result.costs.append(_cost(method, params, history, test_s, mem))
            if history is not None:
                result.histories[method] = history

    def timed_predict(net: PromptableSegmenter, data: PromptSet):
        start = time.perf_counter()
        out = predict(net, data)
        return out, time.perf_counter() - start

    # 2. SAM-DA decoder adapter, supervised on the source
    adapted = copy.deepcopy(model)
    torch.manual_seed(seed)  # the adapter tokens' initial values
    inject(adapted.mask_decoder, config.adapter)
    with PeakMemory(device) as mem:
        history = train_decoder(
            adapted, train, val, config.adapter_train, epochs=profile.adapter_epochs,
            batch_size=profile.adapter_batch_size, seed=seed, desc="decoder adapter", progress=progress,
            checkpoint=_checkpoint("decoder_adapter", profile, model, seed, config.adapter, config.adapter_train))
    out, test_s = timed_predict(adapted, target)
    record("decoder_adapter", count_parameters(adapted), out, history, test_s, mem)
    adapter_seconds = history_seconds(history)

    # 3. full decoder fine-tuning
    full = configure_full_decoder(copy.deepcopy(model))
    with PeakMemory(device) as mem:
        history = train_decoder(
            full, train, val, config.decoder_train, epochs=profile.adapter_epochs,
            batch_size=profile.adapter_batch_size, seed=seed, desc="full decoder", progress=progress,
            checkpoint=_checkpoint("full_decoder", profile, model, seed, config.decoder_train))
    out, test_s = timed_predict(full, target)
    record("full_decoder", count_parameters(full), out, history, test_s, mem)
    del full

    # 4. encoder LoRA: trains through the encoder; evaluates by re-encoding (never into the frozen cache)
    torch.manual_seed(seed)  # LoRA's A matrices
    lora = inject_encoder_lora(copy.deepcopy(model), config.lora)
    lora_params = count_parameters(lora)
    lora_train = train.subset(range(min(profile.lora_train_images, len(train))))
    with PeakMemory(device) as mem:
        history = train_encoder_lora(
            lora, lora_train, config.lora, epochs=profile.lora_epochs, seed=seed, progress=progress,
            checkpoint=_checkpoint("encoder_lora", profile, model, seed, config.lora))
    lora.requires_grad_(False)
    start = time.perf_counter()
    lora_target = prompt_set(lora, samples, embed(lora, [s.image for s in samples], None, bs, progress))
    out = predict(lora, lora_target)
    record("encoder_lora", lora_params, out, history, time.perf_counter() - start, mem)
    del lora, lora_target

    # 5. the supervised adapter, adapted again on each single target image (episodic)
    optimizer = torch.optim.Adam(adapter_parameters(adapted.mask_decoder), lr=config.tta.lr)
    tta = SingleImageTTA(adapted, optimizer, config.tta)
    pred_disc, pred_cup = [], []
    with PeakMemory(device) as mem:
        start = time.perf_counter()
        for i, s in enumerate(samples):
            logits = tta.adapt(target.embeddings[i:i + 1], target.boxes[i], profile.sam_tta_steps,
                               seed=TTA_SEED_STRIDE * seed + i)
            d, c = _to_masks(adapted, logits, s)
            pred_disc.append(d)
            pred_cup.append(c)
        test_s = time.perf_counter() - start
    tta.reset()
    record("adapter_tta", count_parameters(adapted), (pred_disc, pred_cup), None, test_s, mem)
    if first:
        result.costs[-1]["train_seconds"] = adapter_seconds  # it starts from the supervised adapter


def history_seconds(history: History) -> float:
    """Total training seconds recorded in a :class:`History` (0 for a checkpoint loaded as-is)."""
    return float(sum(e["seconds"] for e in history.epochs))
