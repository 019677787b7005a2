"""Project each notebook's runtime on a T4, an A100 and an H200 from a few steps timed on this CPU.

    python benchmarks/project_gpu.py --profile colab                 # every notebook, colab sizes
    python benchmarks/project_gpu.py --profile gpu --notebooks 02 09
    python benchmarks/project_gpu.py --profile cpu                   # check the method against measured cpu runs

Method. Each notebook is described by its dominant inner steps (:func:`inventory`): a training step
of a model at the profile's sizes, an inference batch, the rendering of a synthetic image, ...,
each with the number of times the notebook runs it in that profile (a formula of profile fields,
printed beside it). Every step is built from the kit's own modules (LiteMedSAM, its encoder split
into prefix and suffix, the SSL ViT, the DDPM and stage-1 U-Nets, the TTA U-Net, the stage-2
pyramid head), run once to warm up and then timed for ``--repeats`` runs on this CPU, at the
profile's batch up to ``--max-batch`` (a larger batch is timed at ``--max-batch`` and its time and
FLOPs scaled linearly: FLOPs exactly, time approximately). For each step the benchmark also counts

- its floating-point operations, with ``torch.utils.flop_counter.FlopCounterMode`` (matrix
  products and convolutions, forward and backward), and
- its aten operator calls (a ``TorchDispatchMode``), a proxy for the kernel launches that bound
  small models on a GPU.

A step of kind ``gpu`` is projected on a device as ``flops / sustained + ops * launch``, with the
device's assumed sustained throughput in mixed precision and per-operator launch cost
(:data:`DEVICES`: assumptions, not measurements); a step of kind ``cpu`` (image rendering,
per-image metrics) keeps its CPU time on every device. A notebook's projection is the sum of
``count * time`` over its steps. Model loading, plotting and Python between steps are left out,
so the projection is a lower bound of the wall time; ``--profile cpu`` prints the same sum for
this CPU beside the runtimes measured on it (README), which checks the inventory. The measured
figures come from ``benchmarks/run_notebooks_gpu.py`` on a GPU.

Writes ``results/gpu_projection_<profile>.{md,json}``.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from mfmda_lib.profiles import PROFILE_NAMES, Profile


@dataclass(frozen=True)
class Device:
    """A GPU as the projection sees it (assumptions, stated in the README)."""

    name: str
    sustained_tflops: float  # matrix/convolution throughput reached by these small models in mixed precision
    launch_us: float  # cost of one operator (kernel launch + PyTorch dispatch) in eager mode
    peak_tflops: float  # dense fp16/bf16 tensor-core peak, for reference

    def seconds(self, flops: float, ops: float) -> float:
        return flops / (self.sustained_tflops * 1e12) + ops * self.launch_us * 1e-6


#: T4: 65 TFLOP/s fp16 peak, ~12% sustained, and a slow Colab host CPU; A100 (312 bf16) and H200 (989
#: bf16) at ~20% and ~15%: small kernels (64-256 px, batch 4-32) keep large GPUs far from peak.
DEVICES = (Device("T4", 8.0, 20.0, 65.0), Device("A100", 60.0, 10.0, 312.0), Device("H200", 150.0, 8.0, 989.0))


class _OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


@dataclass
class Step:
    """One inner step of a notebook: ``count`` runs at ``batch`` of ``build(b)()`` (``build`` returns the step
    function at batch ``b``)."""

    notebook: str
    name: str
    count: float
    formula: str
    build: Callable[[int], Callable[[], None]]
    kind: str = "gpu"  # "gpu": projected from FLOPs and ops; "cpu": keeps its CPU time
    batch: int = 1
    same_as: str = ""  # steps with the same non-empty ``same_as`` run the same computation: measured once


@dataclass
class Measured:
    seconds: float
    flops: float
    ops: float


def measure(fn: Callable[[], None], repeats: int) -> Measured:
    """CPU seconds per call (mean of ``repeats`` calls after a warm-up; 0: the warm-up call itself), FLOPs and
    operator calls of one call."""
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    if repeats > 0:
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        seconds = (time.perf_counter() - start) / repeats
    counter = _OpCounter()
    with FlopCounterMode(display=False) as flops, counter:
        fn()
    return Measured(seconds, float(flops.get_total_flops()), float(counter.ops))


# ---------------------------------------------------------------------------------------------
# step builders: each returns a closure that runs one step on the CPU, in float32
# ---------------------------------------------------------------------------------------------

_SAM = []


def _sam():
    if not _SAM:
        from mfmda_lib.models import load_model

        _SAM.append(load_model("litemedsam", device=torch.device("cpu")).eval())
    return _SAM[0]


def _train(params: list[torch.nn.Parameter], forward: Callable[[], torch.Tensor]) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step() -> None:
        loss = forward().float().square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def _no_grad(forward: Callable[[], object]) -> Callable[[], None]:
    def step() -> None:
        with torch.no_grad():
            forward()
    return step


def encoder_forward(batch: int):
    sam, x = _sam(), torch.randn(batch, 3, 256, 256)
    return _no_grad(lambda: sam.encode(x))


def encoder_suffix_train(start: str, batch: int):
    """Train LiteMedSAM's encoder from unit ``start`` on (cached) prefix outputs: fine-tuning, LoRA, Rein blocks.

    All suffix weights get gradients: an upper bound for LoRA / Rein, which skip the frozen weights' gradients.
    """
    from mfmda_lib.models.prefix import SplitEncoder

    sam = _sam()
    split = SplitEncoder(sam.image_encoder, start)
    with torch.no_grad():
        h = split.prefix(torch.randn(batch, 3, 256, 256))[0]
    params = [p for name, m in split.units[split.start:] for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    return _train(params, lambda: split.suffix(h)[0])


def decoder_train(batch: int):
    sam = _sam()
    emb, boxes = torch.randn(batch, 256, 64, 64), torch.tensor([[48.0, 48.0, 208.0, 208.0]]).repeat(batch, 1)
    params = list(sam.mask_decoder.parameters())
    for p in params:
        p.requires_grad_(True)
    return _train(params, lambda: sam.decode(emb, boxes))


def decoder_forward(batch: int):
    sam = _sam()
    emb, boxes = torch.randn(batch, 256, 64, 64), torch.tensor([[48.0, 48.0, 208.0, 208.0]]).repeat(batch, 1)
    return _no_grad(lambda: sam.decode(emb, boxes))


def _vit(profile: Profile):
    from mfmda_lib.ssl.pretraining import vit_config
    from mfmda_lib.ssl.vit import ViTEncoder

    return ViTEncoder(vit_config(profile))


def mae_step(profile: Profile, batch: int):
    from mfmda_lib.ssl.mae import MAE

    model, g = MAE(_vit(profile)), torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, profile.ssl_image_size, profile.ssl_image_size)
    return _train(list(model.parameters()), lambda: model(x, g)[0])


def dino_step(profile: Profile, batch: int):
    from mfmda_lib.ssl.dino import DINO

    model, g = DINO(_vit(profile), total_steps=10), torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, profile.ssl_image_size, profile.ssl_image_size)
    return _train([p for p in model.parameters() if p.requires_grad], lambda: model(x, g))


def downstream_step(profile: Profile, task: str, protocol: str, batch: int):
    from mfmda_lib.ssl.downstream import DownstreamModel

    model = DownstreamModel(_vit(profile), task, protocol)
    x = torch.rand(batch, 3, profile.ssl_image_size, profile.ssl_image_size)
    return _train([p for p in model.parameters() if p.requires_grad], lambda: model(x))


def downstream_eval(profile: Profile, batch: int):
    from mfmda_lib.ssl.downstream import DownstreamModel

    model = DownstreamModel(_vit(profile), "segmentation", "finetune").eval()
    x = torch.rand(batch, 3, profile.ssl_image_size, profile.ssl_image_size)
    return _no_grad(lambda: model(x))


def tta_unet_train(size: int, batch: int):
    from mfmda_lib.adapt.tta_source import SourceTrainConfig
    from mfmda_lib.models.unet import UNet

    model, x = UNet(SourceTrainConfig().unet), torch.rand(batch, 3, size, size)
    return _train(list(model.parameters()), lambda: model(x))


def tta_unet_forward(size: int, batch: int):
    from mfmda_lib.adapt.tta_source import SourceTrainConfig
    from mfmda_lib.models.unet import UNet

    model, x = UNet(SourceTrainConfig().unet).eval(), torch.rand(batch, 3, size, size)
    return _no_grad(lambda: model(x))


def _ddpm(profile: Profile):
    from mfmda_lib.diffusion.ddpm import build_unet
    from mfmda_lib.diffusion.source import ddpm_config

    config = ddpm_config(profile)
    return build_unet(config), config.image_size


def ddpm_train(profile: Profile, batch: int):
    unet, size = _ddpm(profile)
    b = batch
    x, t = torch.randn(b, 3, size, size), torch.randint(0, 1000, (b,))
    return _train(list(unet.parameters()), lambda: unet(x, t).sample)


def ddpm_forward(profile: Profile, batch: int, conditioned: bool = False):
    from mfmda_lib.diffusion.conditioned import ContentConditionedUNet

    unet, size = _ddpm(profile)
    x, t = torch.randn(batch, 3, size, size), torch.full((batch,), 500)
    if not conditioned:
        return _no_grad(lambda: unet(x, t).sample)
    model = ContentConditionedUNet(unet).eval()
    gate = torch.randn(model.bottleneck_shape(batch))
    return _no_grad(lambda: model(x, t, x, gate))


def stage1_step(profile: Profile, batch: int):
    """One stage-1 iteration: the content-conditioned U-Net forward and backward, plus the frozen encoder f
    (its first ``stage1_encoder_units`` units at ``stage1_feature_size``) forward and backward for L_DC."""
    from mfmda_lib.diffusion.conditioned import ContentConditionedUNet
    from mfmda_lib.models.prefix import SplitEncoder

    unet, size = _ddpm(profile)
    model, b = ContentConditionedUNet(unet), batch
    x, t = torch.randn(b, 3, size, size), torch.randint(0, 1000, (b,))
    gate = torch.randn(model.bottleneck_shape(b))
    split = SplitEncoder(_sam().image_encoder, profile.stage1_encoder_units)
    fs = profile.stage1_feature_size

    def forward() -> torch.Tensor:
        eps = model(x, t, x, gate)
        x0 = torch.nn.functional.interpolate(eps, size=(fs, fs), mode="bilinear", align_corners=False)
        return eps.mean() + split.prefix(x0)[0].float().mean()
    return _train([p for p in model.parameters() if p.requires_grad], forward)


def _pyramid_levels(batch: int) -> list[torch.Tensor]:
    """Stage 2's four LiteMedSAM pyramid levels (``TINYVIT_TAPS``) for a batch, as the ``levels`` placement caches
    them."""
    from mfmda_lib.align.pyramid import PyramidEncoder
    from mfmda_lib.align.stage2 import TINYVIT_TAPS

    with torch.no_grad():
        maps = PyramidEncoder(_sam().image_encoder, TINYVIT_TAPS, rein_from=None).pyramid(torch.randn(1, 3, 256, 256))
    return [m.repeat(batch, 1, 1, 1) for m in maps]


def stage2_step(profile: Profile, batch: int):
    """One stage-2 pass of a batch: the pyramid head on cached levels (``levels``) or, with tokens after every
    block (``blocks``), also the encoder from ``stage2_rein_from`` forward and backward."""
    from mfmda_lib.align.pyramid import PyramidHead

    b = batch
    levels = _pyramid_levels(b)
    head = PyramidHead([m.shape[1] for m in levels], [m.shape[-1] for m in levels])
    head_step = _train(list(head.parameters()), lambda: head(levels, 256))
    if profile.stage2_rein_placement == "levels":
        return head_step
    suffix_step = encoder_suffix_train(profile.stage2_rein_from, b)

    def step() -> None:
        suffix_step()
        head_step()
    return step


def render_image(batch: int = 1):
    from mfmda_lib.data import generate_sample

    counter = iter(range(10 ** 6))
    return lambda: generate_sample("riga_messidor", next(counter), split="train", size=256)


def score_image(batch: int = 1):
    from mfmda_lib.data import generate_sample
    from mfmda_lib.evaluation.metrics import segmentation_scores

    s = generate_sample("refuge_test", 0, split="test", size=256)
    return lambda: segmentation_scores(s.disc, s.cup, s)


# ---------------------------------------------------------------------------------------------
# what each notebook runs, in the profile's sizes
# ---------------------------------------------------------------------------------------------

def inventory(p: Profile) -> list[Step]:
    """The dominant steps of every notebook with their counts (formulas of the profile's fields)."""
    from mfmda_lib.diffusion.source import source_ddpm_path
    from mfmda_lib.ssl.downstream import DownstreamConfig, LABEL_BUDGETS
    from mfmda_lib.ssl.experiment import ENCODER_LR_GRID

    ceil = math.ceil
    domains = 4
    images = domains * (p.train_per_domain + p.test_per_domain)
    enc_b = p.encoder_batch_size
    ds_batch = DownstreamConfig().batch_size
    ds_runs = 2 * 2 * 3 * (p.ssl_label_draws + len(LABEL_BUDGETS) - 1)  # tasks x protocols x inits x draws/budgets
    select_runs = 3 * len(ENCODER_LR_GRID) * p.ssl_select_draws
    vit_runs = 3 * 2 * p.ssl_label_draws  # notebook 04 section 5: 3 protocols x (random, MAE) x draws, segmentation
    peft_methods = len(p.peft_lora_ranks) + 5  # ranks + attention+MLP LoRA, adapter, visual prompt, BitFit, full
    ft_steps = ceil(p.ft_train_images / p.ft_batch_size)
    ft_eval = p.ft_eval_per_domain * domains + p.ft_val_images
    adapter_steps = ceil(2 * p.train_per_domain / p.adapter_batch_size)  # (image, structure) pairs
    tta_images = 3 * p.eval_per_domain
    shipped = source_ddpm_path(p).parent.name == "checkpoints"
    pairs_steps = ceil(p.stage2_pairs / p.stage2_batch_size)
    n_targets = len(p.stage2_targets)
    ds, sb = p.ssl_batch_size, ds_batch
    steps = [
        # 00: the benchmark, and the domain probe (two severities)
        Step("00", "render a synthetic image", images + domains * p.probe_per_domain, "4*(train+test) + 4*probe",
             render_image, "cpu", same_as="render"),
        Step("00", "LiteMedSAM encoder", ceil(2 * domains * p.probe_per_domain / enc_b), "2*4*probe/enc_b",
             encoder_forward, batch=enc_b, same_as="encoder"),
        # 01: zero-shot, the box-margin sweep
        Step("01", "LiteMedSAM encoder", ceil(domains * p.eval_per_domain / enc_b), "4*eval/enc_b",
             encoder_forward, batch=enc_b, same_as="encoder"),
        Step("01", "mask decoder", ceil(domains * p.eval_per_domain * 2 * 6 / 8), "4*eval*2*(1+5 margins)/8",
             decoder_forward, batch=8),
        Step("01", "score an image (Dice, IoU, HD95)", domains * p.eval_per_domain * 6, "4*eval*6", score_image, "cpu",
             same_as="score"),
        # 02: MAE and DINO pretraining, learning-rate selection, the label budgets
        Step("02", "render a pool image", domains * p.ssl_pool_per_domain, "4*pool", render_image, "cpu",
             same_as="render"),
        Step("02", "MAE step", p.ssl_mae_steps, "ssl_mae_steps", lambda b: mae_step(p, b), batch=ds, same_as="mae"),
        Step("02", "DINO step", p.ssl_dino_steps, "ssl_dino_steps", lambda b: dino_step(p, b), batch=ds),
        Step("02", "ViT fine-tuning step", (ds_runs / 2 + select_runs) * p.ssl_downstream_steps,
             "(runs/2 + 3*2*select_draws)*ssl_downstream_steps",
             lambda b: downstream_step(p, "segmentation", "finetune", b), batch=sb),
        Step("02", "ViT linear-probe step", ds_runs / 2 * p.ssl_downstream_steps, "runs/2*ssl_downstream_steps",
             lambda b: downstream_step(p, "segmentation", "linear_probe", b), batch=sb),
        Step("02", "ViT evaluation", (ds_runs + select_runs) * ceil(domains * p.eval_per_domain / 32),
             "(runs + selection)*4*eval/32", lambda b: downstream_eval(p, b), batch=32),
        # 03: four strategies on the encoder suffix from ft_first_unit
        Step("03", "LiteMedSAM encoder (frozen prefix)", ceil((p.ft_train_images + ft_eval) / enc_b),
             "(ft_train + 4*ft_eval + ft_val)/enc_b", encoder_forward, batch=enc_b, same_as="encoder"),
        Step("03", f"encoder suffix from {p.ft_first_unit}: train step", 4 * p.ft_epochs * ft_steps,
             "4 strategies*ft_epochs*ft_train/ft_b", lambda b: encoder_suffix_train(p.ft_first_unit, b),
             batch=p.ft_batch_size, same_as=f"suffix {p.ft_first_unit}"),
        Step("03", "encoder suffix: evaluation (as a train step: an upper bound)",
             4 * p.ft_epochs * ceil(ft_eval / enc_b),
             "4*ft_epochs*(4*ft_eval + ft_val)/enc_b", lambda b: encoder_suffix_train(p.ft_first_unit, b), batch=enc_b,
             same_as=f"suffix {p.ft_first_unit}"),
        # 04: PEFT on the encoder suffix (two tasks), then LoRA on notebook 02's ViT (MAE retrained on a fresh VM)
        Step("04", f"encoder suffix from {p.peft_first_unit}: PEFT step", 2 * peft_methods * p.peft_epochs * ft_steps,
             "2 tasks*(ranks+5)*peft_epochs*ft_train/ft_b", lambda b: encoder_suffix_train(p.peft_first_unit, b),
             batch=p.ft_batch_size, same_as=f"suffix {p.peft_first_unit}"),
        Step("04", "MAE step (section 5, without notebook 02's weights)", p.ssl_mae_steps, "ssl_mae_steps",
             lambda b: mae_step(p, b), batch=ds, same_as="mae"),
        Step("04", "ViT fine-tuning / LoRA step", vit_runs * p.ssl_downstream_steps, "3*2*draws*ssl_downstream_steps",
             lambda b: downstream_step(p, "segmentation", "lora", b), batch=sb),
        # 05: decoder adapter and full decoder, encoder LoRA, single-image TTA
        Step("05", "LiteMedSAM encoder", ceil((p.train_per_domain + 3 * p.eval_per_domain) / enc_b),
             "(train + 3*eval)/enc_b", encoder_forward, batch=enc_b, same_as="encoder"),
        Step("05", "mask decoder train step", 2 * p.adapter_epochs * adapter_steps,
             "2 methods*adapter_epochs*2*train/adapter_b", decoder_train, batch=p.adapter_batch_size,
             same_as="decoder train"),
        Step("05", "encoder LoRA step (whole encoder)", p.lora_epochs * p.lora_train_images * 2,
             "lora_epochs*lora_train*2", lambda b: encoder_suffix_train("patch_embed", b),
             same_as="suffix patch_embed"),
        Step("05", "single-image TTA step", tta_images * 2 * p.sam_tta_steps, "3*eval*2*sam_tta_steps", decoder_train,
             same_as="decoder train"),
        Step("05", "score an image (Dice, IoU, HD95)", 5 * tta_images, "5 methods*3*eval", score_image, "cpu",
             same_as="score"),
        # 06: the source U-Net, then five settings x six methods of test-time adaptation
        Step("06", "U-Net train step", p.small_model_epochs * ceil(0.8 * p.train_per_domain / 8),
             "small_model_epochs*0.8*train/8", lambda b: tta_unet_train(p.small_model_size, b), batch=8,
             same_as="unet train"),
        Step("06", "U-Net adaptation step", 5 * 4 * ceil(tta_images / p.tta_batch_size) * p.tta_steps,
             "5 settings*4 gradient methods*3*eval/tta_b*tta_steps",
             lambda b: tta_unet_train(p.small_model_size, b), batch=p.tta_batch_size, same_as="unet train"),
        Step("06", "U-Net forward", 5 * 6 * ceil(tta_images / p.tta_batch_size), "5*6*3*eval/tta_b",
             lambda b: tta_unet_forward(p.small_model_size, b), batch=p.tta_batch_size),
        # 07: the DDPM training demo, sampling, the SDEdit sweep
        Step("07", "DDPM train step", p.ddpm_demo_steps, "ddpm_demo_steps", lambda b: ddpm_train(p, b),
             batch=p.ddpm_batch_size, same_as="ddpm train"),
        Step("07", "DDPM U-Net forward", 2 * p.ddpm_ancestral_steps + 2 * p.ddpm_ddim_steps + 6 * p.ddpm_ddim_steps,
             "2*ancestral + 2*ddim + 6 t0*ddim", lambda b: ddpm_forward(p, b), batch=p.ddpm_samples),
        # 08: source DDPM (when no shipped checkpoint matches), stage 1: three adapted variants, four translations
        Step("08", "source DDPM train step (no shipped checkpoint)",
             0 if shipped else p.ddpm_train_steps + p.ddpm_fusion_steps, "0 if shipped else ddpm_train_steps+fusion",
             lambda b: ddpm_train(p, b), batch=p.ddpm_batch_size, same_as="ddpm train"),
        Step("08", "stage-1 iteration", 3 * p.stage1_steps, "3 variants*stage1_steps", lambda b: stage1_step(p, b),
             batch=p.stage1_batch_size),
        Step("08", "translation", 4 * ceil(p.train_per_domain / 16) * p.stage1_translate_steps,
             "4*train/16*translate_steps", lambda b: ddpm_forward(p, b, conditioned=True), batch=16),
        Step("08", "LiteMedSAM encoder", 5 * ceil((p.stage1_eval_images + p.train_per_domain) / enc_b),
             "5*(stage1_eval + train)/enc_b", encoder_forward, batch=enc_b, same_as="encoder"),
        # 09: stage 1 for each target, the frozen features, warm-up, the methods
        Step("09", "stage-1 iteration", n_targets * p.stage1_steps, "targets*stage1_steps", lambda b: stage1_step(p, b),
             batch=p.stage1_batch_size),
        Step("09", "translation", n_targets * ceil(p.train_per_domain / 16) * p.stage1_translate_steps,
             "targets*train/16*translate_steps", lambda b: ddpm_forward(p, b, conditioned=True), batch=16),
        Step("09", "LiteMedSAM encoder (pyramid features)",
             ceil((p.stage2_pairs * (2 + 3 * n_targets) + domains * p.stage2_test_per_domain) / enc_b),
             "(pairs*(2+3*targets) + 4*test)/enc_b", encoder_forward, batch=enc_b, same_as="encoder"),
        Step("09", f"stage-2 pass ({p.stage2_rein_placement})",
             (p.stage2_warmup_epochs + (5 + 20 * n_targets) * p.stage2_epochs) * pairs_steps,
             "(warmup + (5 + 20*targets)*epochs)*pairs/b", lambda b: stage2_step(p, b), batch=p.stage2_batch_size),
        Step("09", "score an image (Dice, IoU, HD95)", 11 * domains * p.stage2_test_per_domain, "11 methods*4*test",
             score_image, "cpu", same_as="score"),
        # 10: zero-shot with probabilities, bootstrap
        Step("10", "LiteMedSAM encoder", ceil(domains * p.eval_per_domain / enc_b), "4*eval/enc_b",
             encoder_forward, batch=enc_b, same_as="encoder"),
        Step("10", "score an image (Dice, IoU, HD95)", domains * p.eval_per_domain * 2, "4*eval*2", score_image, "cpu",
             same_as="score"),
    ]
    return steps


NOTEBOOKS = {"00": "00_setup_and_domain_shift", "01": "01_foundation_models", "02": "02_self_supervised_pretraining",
             "03": "03_fine_tuning_strategies", "04": "04_parameter_efficient_fine_tuning",
             "05": "05_sam_decoder_adapter", "06": "06_test_time_adaptation", "07": "07_diffusion_models",
             "08": "08_mfmda_stage1_generative_adaptation", "09": "09_mfmda_stage2_hierarchical_alignment",
             "10": "10_clinical_evaluation"}


def project(steps: list[Step], repeats: int, max_batch: int = 4, progress: bool = True) -> list[dict]:
    """Measure every step (once per name and measured batch) and return one row per step with its projections.

    A step whose batch exceeds ``max_batch`` runs at ``max_batch``; its FLOPs and CPU time are scaled by
    ``batch / max_batch`` (FLOPs exactly, CPU time approximately), its operator count is kept (the same
    kernels run for any batch).
    """
    cache: dict[tuple[str, int], Measured] = {}
    rows = []
    for step in steps:
        b = min(step.batch, max_batch)
        if step.count == 0:
            m = Measured(0.0, 0.0, 0.0)
        else:
            key = (step.same_as or step.name, b)
            if key not in cache:
                if progress:
                    print(f"  timing {step.notebook} {step.name} (batch {b}) ...", file=sys.stderr, flush=True)
                torch.manual_seed(0)
                cache[key] = measure(step.build(b), repeats)
            scale = step.batch / b
            m = Measured(cache[key].seconds * scale, cache[key].flops * scale, cache[key].ops)
        row = {"notebook": step.notebook, "step": step.name, "kind": step.kind, "batch": step.batch,
               "measured_batch": b, "count": step.count, "formula": step.formula, "cpu_s_per_step": m.seconds,
               "gflops_per_step": m.flops / 1e9, "ops_per_step": m.ops, "cpu_s": step.count * m.seconds}
        for device in DEVICES:
            per = m.seconds if step.kind == "cpu" else device.seconds(m.flops, m.ops)
            row[f"{device.name}_s"] = step.count * per
        rows.append(row)
    return rows


def notebook_table(rows: list[dict]) -> list[dict]:
    """Per notebook: the CPU sum and the projection on each device (seconds)."""
    out = []
    for nb in dict.fromkeys(r["notebook"] for r in rows):
        part = [r for r in rows if r["notebook"] == nb]
        out.append({"notebook": NOTEBOOKS.get(nb, nb), "cpu_s": sum(r["cpu_s"] for r in part),
                    **{f"{d.name}_s": sum(r[f"{d.name}_s"] for r in part) for d in DEVICES}})
    return out


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def markdown(profile: str, table: list[dict], rows: list[dict], stamp: dict) -> str:
    """The projection as Markdown: the notebook table, then every step with its count, FLOPs and operators."""
    devices = " | ".join(f"{d['name']}: {d['sustained_tflops']:g} TFLOP/s sustained (peak {d['peak_tflops']:g}), "
                         f"{d['launch_us']:g} us/op" for d in stamp["devices"])
    names = [d["name"] for d in stamp["devices"]]
    head = ("| notebook | CPU (this machine, sum of steps) | " + " | ".join(f"{n} (projected)" for n in names)
            + " |\n|---|---:|" + "---:|" * len(names))
    body = "\n".join(f"| {t['notebook']} | {_minutes(t['cpu_s'])} | "
                     + " | ".join(_minutes(t[f'{n}_s']) for n in names) + " |" for t in table)
    steps = "\n".join(f"| {r['notebook']} | {r['step']} | {r['kind']} | {r['batch']}"
                      + (f" ({r['measured_batch']} timed)" if r["measured_batch"] != r["batch"] else "")
                      + f" | {r['count']:.0f} = {r['formula']} | {r['cpu_s_per_step']:.3f} | "
                      f"{r['gflops_per_step']:.2f} | {r['ops_per_step']:.0f} |" for r in rows)
    timing = (f"mean of {stamp['repeats']} run(s) after a warm-up" if stamp["repeats"] else "its first run")
    return (f"# GPU projection ({profile} profile)\n\n_{stamp['date']}, torch {stamp['torch']}; assumed devices: "
            f"{devices}; CPU time per step: {timing}, at batch <= {stamp['max_batch']} (larger batches scaled "
            f"linearly), {stamp['torch_threads']} torch thread(s)_\n\n{head}\n{body}\n\n"
            "| nb | step | kind | batch | count | CPU s/step | GFLOP/step | ops/step |\n"
            "|---|---|---|---|---|---:|---:|---:|\n"
            f"{steps}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=PROFILE_NAMES, default="colab", help="sizes to project (default: colab)")
    parser.add_argument("--notebooks", nargs="+", default=None, help="notebook numbers (default: all), e.g. 02 09")
    parser.add_argument("--repeats", type=int, default=1,
                        help="timed runs per step after one warm-up (0: time the warm-up run itself)")
    parser.add_argument("--max-batch", type=int, default=4,
                        help="time steps at most at this batch and scale larger ones linearly (default 4)")
    parser.add_argument("--no-save", action="store_true", help="print only; do not write results/")
    args = parser.parse_args(argv)
    import datetime as dt

    from mfmda_lib.profiles import get_profile
    from mfmda_lib.environment import paths

    profile = get_profile(args.profile)
    steps = [s for s in inventory(profile) if args.notebooks is None or s.notebook in args.notebooks]
    if not steps:
        parser.error(f"no steps for notebooks {args.notebooks}: choose from {sorted(NOTEBOOKS)}")
    rows = project(steps, args.repeats, args.max_batch)
    table = notebook_table(rows)
    stamp = {"profile": profile.name, "date": dt.date.today().isoformat(), "torch": torch.__version__,
             "devices": [d.__dict__ for d in DEVICES], "repeats": args.repeats, "max_batch": args.max_batch,
             "torch_threads": torch.get_num_threads()}
    text = markdown(profile.name, table, rows, stamp)
    print(text)
    if not args.no_save:
        from mfmda_lib.io import atomic_write, atomic_write_json

        out = paths().results / f"gpu_projection_{profile.name}"
        # "steps", not "rows": notebook 10 re-summarises the per-image "rows" of every result it finds
        atomic_write_json(out.with_suffix(".json"), {"meta": stamp, "table": table, "steps": rows})
        with atomic_write(out.with_suffix(".md"), "w") as handle:
            handle.write(text)
        print(f"wrote {out}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
