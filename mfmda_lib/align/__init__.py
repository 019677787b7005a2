"""MFM-DA stage 2: hierarchical alignment of a frozen medical foundation model (notebook 09).

The foundation model (LiteMedSAM's TinyViT encoder) stays frozen. Low-rank Rein tokens after its
blocks, a feature pyramid from four depths and a light U-Net-like head learn disc and cup
segmentation from labelled source images *and* their translations to the target (stage 1),
while a channel-spatial alignment loss pulls the features of each source image and its
translation together.

Modules, one job each:

- ``rein``: the Rein tokens; verbs ``inject`` / ``remove``; parameters named ``rein_*``
- ``pyramid``: the encoder wrapper with a cached frozen prefix and pyramid taps; the head
- ``losses``: channel-spatial alignment, BCE (+ Dice) for disc and cup
- ``baselines``: FDA, histogram matching, photometric jitter (image-level baselines)
- ``stage2``: config, model, prediction
- ``features``: the frozen prefix's outputs, computed once per image and cached on disk
- ``training``: the two optimisers and the three-step loop (Accelerate, resumable)
- ``methods``: the comparison's rows (:class:`Method`, :data:`METHODS` and its groups), a profile's base config
- ``inputs``: what stage 2 trains on and is scored on (source, K target images, oracle, test, translations)
- ``runner``: training one source set's models (cached features, shared warm-up, checkpoints) and scoring them
- ``result``: :class:`Stage2Result` and its tables (per domain, headline with intervals, verdicts)
- ``experiment``: every method, baseline and ablation in one call, :func:`run_stage2`
"""
from .baselines import fda_samples, fda_translate, histogram_match, histogram_matched_samples, jittered_samples
from .experiment import run_stage2
from .features import encode_prefix
from .inputs import translations
from .losses import channel_spatial_alignment, segmentation_loss
from .methods import ABLATIONS, BASELINES, DEFAULT_METHODS, METHODS, Method, stage2_config
from .pyramid import PyramidEncoder, PyramidHead
from .rein import ReinBlock, ReinConfig, inject, remove
from .result import Stage2Result
from .stage2 import STEPS, TINYVIT_TAPS, Stage2Config, Stage2Model, build_model
from .training import train_stage2

__all__ = [
    "ReinConfig", "ReinBlock", "inject", "remove",
    "PyramidEncoder", "PyramidHead",
    "channel_spatial_alignment", "segmentation_loss",
    "fda_translate", "histogram_match", "fda_samples", "histogram_matched_samples", "jittered_samples",
    "STEPS", "TINYVIT_TAPS", "Stage2Config", "Stage2Model", "build_model", "encode_prefix", "train_stage2",
    "Method", "METHODS", "BASELINES", "ABLATIONS", "DEFAULT_METHODS", "Stage2Result", "run_stage2",
    "stage2_config", "translations",
]
