"""One diagram per notebook, drawn from the objects the notebook built (:mod:`mfmda_lib.plots.blocks`).

Each function reads its model, method or configuration, so the diagram says what the code does:
which blocks are frozen, where the tokens, adapters or gates sit, what is cached. Every function
returns a :class:`~mfmda_lib.plots.blocks.Diagram` (inspect its blocks, or ``.draw()`` it);
:func:`bootstrap_diagram` returns a figure.

==========  =====================================  ================================================
notebook    function                               draws
==========  =====================================  ================================================
00          :func:`benchmark_diagram`              how a synthetic image is made; what each target changes
01          :func:`segmenter_diagram`              SAM-style encoder, prompt encoder, decoder
02          :func:`mae_diagram`                    MAE: patches, masking, encoder, decoder, loss
03          :func:`strategy_diagram`               what each fine-tuning strategy trains, from when
04          :func:`peft_diagram`                   where each PEFT method adds or frees parameters
05          :func:`decoder_adapter_diagram`        the decoder's attention sites and their gates
06          :func:`tta_diagram`                    what each test-time method may change
07          :func:`unet_diagram`                   the DDPM's U-Net, level by level
08          :func:`stage1_diagram`                 content-conditioned DDPM + DIAA (MFM-DA stage 1)
09          :func:`stage2_diagram`                 frozen encoder, tokens, levels, head, optimisers
10          :func:`bootstrap_diagram`              the percentile bootstrap, from its resamples
==========  =====================================  ================================================
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from torch import nn

from .blocks import Block, Diagram, Row, count, module_block, parameter_blocks, parameters_block

__all__ = ["benchmark_diagram", "segmenter_diagram", "mae_diagram", "strategy_diagram", "peft_diagram", "decoder_adapter_diagram",
           "tta_diagram", "unet_diagram", "stage1_diagram", "stage2_diagram", "bootstrap_resamples", "bootstrap_diagram"]


def benchmark_diagram(styles: Mapping, source: str, stages: Mapping[str, Mapping[str, Sequence[str]]]) -> Diagram:
    """The synthetic benchmark's image formation: one box per stage of ``stages`` (e.g.
    :data:`~mfmda_lib.data.domains.TRAIT_STAGES`), noting in how many target domains of ``styles`` (name ->
    ``DomainStyle``) its traits differ from ``source``'s. ``ValueError`` unless the stages name every trait once."""
    ref = styles[source]
    traits = [f.name for f in dataclasses.fields(ref) if f.name not in ("name", "camera", "description")]
    named = [t for groups in stages.values() for names in groups.values() for t in names]
    if sorted(named) != sorted(traits):
        raise ValueError(f"benchmark_diagram: the stages must name every trait once; missing "
                         f"{sorted(set(traits) - set(named))}, extra or repeated {sorted(set(named) - set(traits))}")
    targets = [s for name, s in styles.items() if name != source]

    def block(label: str, names: Sequence[str], kind: str) -> Block:
        k = sum(any(getattr(s, t) != getattr(ref, t) for t in names) for s in targets)
        return Block(label, kind=kind, note=f"{', '.join(names)}: differs in {k} of {len(targets)} targets")

    rows = [Row(stage, [block(label, names, "data" if stage == "anatomy" else "op") for label, names in groups.items()])
            for stage, groups in stages.items()]
    rows.append(Row("what the kit stores", [Block("image", kind="data", note="every stage above"),
                                            Block("disc and cup masks", kind="data",
                                                  note="from the anatomy only: the labels")], chain=False))
    return Diagram(rows, links=[((0, len(rows[0].blocks) - 1), (1, 0)), ((1, len(rows[1].blocks) - 1), (2, 0)),
                                ((0, 0), (2, 1))],
                   title=f"One synthetic photograph: the anatomy, then the camera ({len(targets)} target cameras vs {source})")


def segmenter_diagram(model: nn.Module, *, cached: bool = True) -> Diagram:
    """A promptable segmenter (``image_encoder``, ``prompt_encoder``, ``mask_decoder``) and its two inputs."""
    size = getattr(model, "input_size", None)
    h, w = model.prompt_encoder.image_embedding_size
    channels = model.mask_decoder.transformer_dim
    image = Block("image", note=f"{size}x{size} RGB" if size else "RGB", kind="data")
    embedding = Block("image embedding", note=f"{channels}x{h}x{w}" + (", cached on disk" if cached else ""),
                      kind="data")
    rows = [Row("image", [image, module_block("image encoder", model.image_encoder), embedding,
                          module_block("mask decoder", model.mask_decoder), Block("mask logits", kind="data")]),
            Row("prompt", [Block("box prompt", note="x0, y0, x1, y1", kind="data"),
                           module_block("prompt encoder", model.prompt_encoder, note="box -> 2 corner tokens")])]
    spans = [(0, 0, 2, "once per image (cached)" if cached else "once per image")]
    return Diagram(rows, links=[((1, 1), (0, 3))], spans=spans, title=f"{type(model).__name__}: what runs where")


def mae_diagram(mae: nn.Module) -> Diagram:
    """A :class:`~mfmda_lib.ssl.mae.MAE`: masking, the encoder on the visible patches, the light decoder."""
    vit, cfg = mae.encoder.config, mae.config
    n = vit.num_patches
    keep = round(n * (1 - cfg.mask_ratio))
    decoder_block = parameters_block("decoder", [(n, p) for n, p in mae.named_parameters() if not n.startswith("encoder.")],
                                     note=f"+ mask_token at the {n - keep} hidden places")
    row = [Block("image", note=f"{vit.image_size}x{vit.image_size}" if hasattr(vit, "image_size") else "", kind="data"),
           Block("patchify", note=f"{n} patches of {vit.patch_size}x{vit.patch_size}", kind="op"),
           Block("random masking", note=f"keep {keep}, hide {n - keep} ({cfg.mask_ratio:.0%})", kind="op"),
           module_block("ViT encoder", mae.encoder, note=f"depth {vit.depth}, sees {keep} tokens"),
           decoder_block,
           Block("masked MSE", note=f"on the {n - keep} hidden patches" + (", per-patch normalised"
                                                                         if cfg.norm_pix_loss else ""), kind="loss")]
    return Diagram([Row("MAE", row)], spans=[(0, 3, 3, "kept after pretraining")],
                   title="Masked autoencoder: the encoder never sees the hidden patches")


def strategy_diagram(model: nn.Module, strategies: Sequence, epochs: int) -> Diagram:
    """For each fine-tuning strategy: the cached prefix, each stage group and the head, with its rate and first epoch.

    Args:
        model: a :class:`~mfmda_lib.finetune.heads.TaskModel`.
        strategies: :class:`~mfmda_lib.finetune.strategies.StrategyConfig` s.
        epochs: epochs of the run (gradual unfreezing opens a stage per epoch).
    """
    from ..finetune.heads import unit_groups
    from ..finetune.strategies import schedule_table

    table = schedule_table(model, list(strategies), epochs)
    prefix = [m for name, m in model._units[:model.start]]
    groups = unit_groups(model.suffix_names)
    rows = []
    for strategy in strategies:
        blocks = [Block("frozen prefix", sum(p.numel() for m in prefix for p in m.parameters()),
                        note=f"{len(prefix)} units, cached")]
        for key, names in groups + [("head", None)]:
            modules = [model.head] if names is None else model.unit_modules(names)
            n = sum(p.numel() for m in modules for p in m.parameters())
            if (strategy.name, key) in table.index:
                lr, first = table.loc[(strategy.name, key), ["lr", "trains_from_epoch"]]
                trains = first != "-"
                note = f"lr {lr:.1e}" + (f", from epoch {first}" if trains and first else "") if trains else "never opened"
            else:
                trains, note = False, "frozen"
            blocks.append(Block(key, n, n if trains else 0, note=note))
        rows.append(Row(strategy.name, blocks))
    return Diagram(rows, title="Who trains, at which learning rate, from which epoch")


def peft_diagram(models: Mapping[str, nn.Module], block: str) -> Diagram:
    """Inside one transformer block: where each PEFT method adds parameters or lets them train.

    Args:
        models: label -> injected model (a ``TaskModel`` or a ``peft.PeftModel`` around one).
        block: dotted path of the block inside the ``TaskModel`` (e.g. ``encoder.layers.3.blocks.0``).
    """
    from ..finetune.peft_methods import task_model

    rows = []
    for label, net in models.items():
        inner = task_model(net)
        blocks = parameter_blocks(inner.get_submodule(block), depth=2, skip=("norm", "attn.norm", "mlp.norm"))
        prompts = getattr(inner, "prompt_tuning", None)
        if prompts is not None:
            blocks.insert(0, module_block("visual prompts", prompts, note="added to each block's input"))
        rows.append(Row(label, blocks))
    return Diagram(rows, title=f"Inside {block}: what trains (orange) and what each method adds (blue frame)")


def decoder_adapter_diagram(mask_decoder: nn.Module) -> Diagram:
    """The mask decoder's two-way transformer, layer by layer, with each adapter site's gate ``tanh(g)``."""
    transformer = mask_decoder.transformer

    def site_blocks(module: nn.Module, names: Sequence[str]) -> list[Block]:
        out = []
        for name in names:
            child = getattr(module, name)
            gate = getattr(child, "adapter_gate", None)
            note = f"gate tanh(g) = {math.tanh(float(gate.detach())):.3f}" if gate is not None else ""
            out.append(module_block(name, child, note=note))
        return out

    rows = []
    for i, layer in enumerate(transformer.layers):
        names = [n for n, _ in layer.named_children() if not n.startswith("norm")]
        rows.append(Row(f"layer {i}", site_blocks(layer, names)))
    final = site_blocks(transformer, ["final_attn_token_to_image"])
    rest = [module_block(n, m) for n, m in mask_decoder.named_children() if n not in ("transformer",)]
    rows.append(Row("output", final + rest, chain=False))
    return Diagram(rows, title="SAM's mask decoder: the adapter sits where the tokens read the image")


def tta_diagram(methods: Mapping[str, nn.Module]) -> Diagram:
    """For each test-time method: which statistics it normalises with, and which parameters it may change.

    The statistics are read off the wrapped model's BatchNorm layers (train mode without running
    statistics: the test batch's; MEMO's :class:`~mfmda_lib.adapt.tta_augmented.PriorBatchNorm2d`: a mixture).
    """
    from ..adapt.tta_augmented import PriorBatchNorm2d
    from ..adapt.tta_base import collect_norm_params

    rows = []
    for name, method in methods.items():
        norm, _ = collect_norm_params(method.model)
        bns = [m for m in method.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        priors = [m.prior for m in bns if isinstance(m, PriorBatchNorm2d)]
        if priors:
            stats = Block("mixed statistics", kind="op", note=f"{priors[0]:.2f} x source + rest x test batch")
        elif bns and all(m.training and m.running_mean is None for m in bns):
            stats = Block("batch statistics", kind="op", note="of the test batch")
        else:
            stats = Block("source statistics", kind="op", note="running averages")
        updated = {id(p) for p in getattr(method, "params", [])}
        norm_ids = {id(p) for p in norm}
        n_norm = sum(p.numel() for p in norm)
        others = [p for p in method.model.parameters() if id(p) not in norm_ids]
        n_other = sum(p.numel() for p in others)
        blocks = [stats, Block("BN scale, shift", n_norm, sum(p.numel() for p in norm if id(p) in updated)),
                  Block("other weights", n_other, sum(p.numel() for p in others if id(p) in updated))]
        teacher = getattr(method, "teacher", None)
        if teacher is not None:
            blocks.append(module_block("teacher", teacher, note="EMA of the student"))
        rows.append(Row(name, blocks, chain=False))
    return Diagram(rows, title="What each test-time method may change")


def unet_diagram(unet: nn.Module) -> Diagram:
    """A ``diffusers.UNet2DModel``: down path, middle, up path, each block with its channels and resolution."""
    cfg = unet.config
    size = cfg.sample_size
    down = [module_block("conv_in", unet.conv_in, note=f"{size} px")]
    for i, (b, ch) in enumerate(zip(unet.down_blocks, cfg.block_out_channels)):
        down.append(module_block(type(b).__name__, b, note=f"{ch} ch at {size // 2 ** i} px"))
    down.append(module_block("mid block", unet.mid_block, note="with self-attention"))
    up = []
    for i, (b, ch) in enumerate(zip(unet.up_blocks, reversed(cfg.block_out_channels))):
        up.append(module_block(type(b).__name__, b, note=f"{ch} ch at {size // 2 ** (len(cfg.block_out_channels) - 1 - i)} px"))
    up.append(module_block("conv_out", [unet.conv_norm_out, unet.conv_out], note="predicted noise"))
    time = [Block("timestep t", kind="data"), module_block("time embedding", [unet.time_proj, unet.time_embedding],
                                                           note="added in every ResNet block")]
    return Diagram([Row("down", down), Row("up", up), Row("time", time)], links=[((0, len(down) - 1), (1, 0))],
                   title=f"eps_theta(x_t, t): a U-Net of {count(sum(p.numel() for p in unet.parameters()))} parameters")


def stage1_diagram(model: nn.Module, diaa: nn.Module) -> Diagram:
    """MFM-DA stage 1: the content-conditioned U-Net (:class:`ContentConditionedUNet`) and the DIAA."""
    denoiser = Row("denoiser", [Block("x_t", note="target-domain noisy image", kind="data"),
                                module_block("U-Net", model.unet, note="adapted to the target"),
                                Block("eps_hat", kind="data")])
    content = Row("content", [Block("x_c", note="source image noised to t", kind="data"),
                              module_block("content encoder", model.content_encoder, note="frozen copy, down path"),
                              Block("time gate m(t)", kind="op", note=f"sigmoid(t - {model.gate_center:g}): noise below"),
                              module_block("fusion", model.fusion, note="last conv starts at 0")])
    direction = Row("direction", [Block("f(x_S)", note="frozen encoder features", kind="data"),
                                  module_block("dynamic W1, W2", [diaa.w1, diaa.w2], note="tanh(W2 ReLU(W1(f - c_T)))"),
                                  module_block("gate W_e, W_g", [diaa.w_e, diaa.w_g], note="g = sigmoid(...), starts ~0.007"),
                                  Block("Delta", kind="op", note="g Delta_dyn + (1 - g)(c_T - c_S)"),
                                  Block("L_DC", kind="loss", note="MSE(f(x0_hat), f(x_S) + Delta)")])
    return Diagram([denoiser, content, direction], links=[((1, 3), (0, 1))],
                   title="MFM-DA stage 1: the condition keeps the anatomy, the direction moves the style")


def stage2_diagram(model: nn.Module, config=None) -> Diagram:
    """MFM-DA stage 2 as a :class:`~mfmda_lib.align.stage2.Stage2Model` builds it, and how a batch trains it.

    Rows: the frozen encoder cut at its taps (what is cached, which blocks get Rein tokens after them);
    the pyramid levels (frozen, or changed by the tokens and aligned) and the head; with ``config``
    (a :class:`~mfmda_lib.align.stage2.Stage2Config`): the steps of one batch, in order, and the two
    optimisers of :func:`~mfmda_lib.align.training.make_optimizers` with the parameters each one updates.

    Args:
        model: ``encoder`` (a :class:`~mfmda_lib.align.pyramid.PyramidEncoder`) and ``head``.
        config: the run's configuration; ``None``: the model only.
    """
    from ..align.rein import PREFIX

    encoder = model.encoder
    names, modules = encoder.unit_names, dict(encoder._units)
    cached = {n for n, role in encoder.roles() if "cached" in role}
    adapted = set(encoder.adapted_units) if encoder.placement == "blocks" else set()
    aligned = set(encoder.adapted_taps)
    if config is not None:
        aligned = aligned if config.align_taps is None else set(config.align_taps) & aligned
    segments, start = [], 0
    for tap in encoder.taps:
        end = names.index(tap) + 1
        segments.append((tap, names[start:end]))
        start = end
    top, bottom, links, all_cached = [], [], [], []
    for c, (tap, units) in enumerate(segments):
        with_tokens = [u for u in units if u in adapted]
        frozen = [u for u in units if u in cached]
        all_cached.append(len(frozen) == len(units) and not with_tokens)
        if all_cached[-1]:
            note = f"{len(units)} units from {units[0]}, cached"
        else:
            n, runs = len(with_tokens), len(units) - len(frozen)
            note = "; ".join(([f"Rein tokens after {n} block{'s' * (n != 1)}"] if n else [])
                             + ([f"{len(frozen)} unit{'s' * (len(frozen) != 1)} cached"] if frozen else [])
                             + [f"{runs} run{'s' * (runs == 1)} every step" if runs else "only the tokens run every step"])
        top.append(module_block(f"up to {tap}", [modules[u] for u in units], note=note))
        key = tap.replace(".", "_")
        level = f"level {c + 1}"
        if encoder.placement == "levels" and key in encoder.rein_tokens:
            block = module_block(f"{level}: Rein tokens", encoder.rein_tokens[key], note="on this level's output")
        elif tap in encoder.adapted_taps:
            block = Block(level, kind="data", note="changed by the tokens" + (", in L_align" if tap in aligned else ""))
        else:
            block = Block(level, kind="data", note="frozen features (cached)" if tap in cached else "frozen features")
        bottom.append(block)
        links.append(((0, c), (1, c)))
    if len(encoder.rein_projections):
        bottom.append(module_block("shared W_T, W_delta, s", encoder.rein_projections, note="one set per width"))
    bottom.append(module_block("pyramid head", model.head, note="disc and cup logits"))
    rows = [Row("encoder", top), Row("levels", bottom, chain=False)]
    n_cached = (all_cached + [False]).index(False)  # the leading segments that run once per image
    spans = [(0, 0, n_cached - 1, "frozen prefix: runs once per image, cached")] if n_cached else []
    if config is not None:
        rein = [(name, p) for name, p in model.named_parameters() if PREFIX in name and p.requires_grad]
        trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        steps = {"align": Block("(1) L_align", kind="loss", note="source vs its translation, tokens only"),
                 "source": Block("(2) BCE on x_S", kind="loss", note="disc + cup, with the source masks y"),
                 "translated": Block("(3) BCE on x_S->T", kind="loss", note="disc + cup, the same masks y")}
        run = [s for s in ("align", "source", "translated") if s in config.steps]
        rows.append(Row("one batch", [steps[s] for s in run]))
        kind = "SGD" if config.optimizer == "sgd" else "AdamW"
        optimisers = [parameters_block("optimiser, steps (2)-(3)", trainable,
                                       note=f"{kind}, lr {config.lr:g}, poly decay; every trainable parameter")]
        if "align" in run:
            optimisers.insert(0, parameters_block("align optimiser, step (1)", rein,
                                                  note=f"SGD, lr {config.align_lr or config.lr:g}, constant; tokens only"))
        rows.append(Row("optimisers", optimisers, chain=False))
        links += [((2, c), (3, 0 if s == "align" or "align" not in run else 1)) for c, s in enumerate(run)]
    return Diagram(rows, links=links, spans=spans,
                   title=f"MFM-DA stage 2 ({encoder.placement} placement): the encoder stays frozen; "
                         "only the tokens and the head train")


def bootstrap_resamples(values: Sequence[float], *, n_resamples: int = 1000, confidence: float = 0.95,
                        seed: int = 0) -> dict[str, np.ndarray | float]:
    """The percentile bootstrap of a mean, step by step, as :func:`~mfmda_lib.evaluation.clinical.bootstrap_ci` does it.

    Returns:
        ``values (n,)`` (finite ones), ``index (B, n)`` the images of each resample, ``means (B,)``,
        and the interval ``low``, ``high``.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size < 2:
        raise ValueError(f"bootstrap_resamples needs at least 2 finite values, got {x.size}")
    index = np.random.default_rng(seed).integers(0, x.size, size=(n_resamples, x.size))  # (B, n)
    means = x[index].mean(axis=1)  # (B,)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return {"values": x, "index": index, "means": means, "low": float(low), "high": float(high)}


def bootstrap_diagram(values: Sequence[float], *, n_resamples: int = 1000, confidence: float = 0.95,
                      seed: int = 0, show: int = 8) -> Figure:
    """The percentile bootstrap of a mean, drawn from its own resamples (:func:`bootstrap_resamples`).

    Args:
        values: ``(n,)`` one number per image.
        show: how many resamples to draw as rows of image counts.
    """
    b = bootstrap_resamples(values, n_resamples=n_resamples, confidence=confidence, seed=seed)
    x, index = b["values"], b["index"]
    counts = np.stack([np.bincount(row, minlength=x.size) for row in index[:show]])  # (show, n)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2), gridspec_kw={"width_ratios": [1.2, 1.6, 1.4]})
    axes[0].bar(range(x.size), x, color="#999999")
    axes[0].set(title=f"1. the {x.size} images (mean {x.mean():.3f})", xlabel="image", ylabel="value")
    im = axes[1].imshow(counts, cmap="Oranges", aspect="auto", vmin=0)
    axes[1].set(title=f"2. resamples with replacement (first {len(counts)} of {n_resamples})", xlabel="image",
                ylabel="resample")
    fig.colorbar(im, ax=axes[1], label="times drawn")
    axes[2].hist(b["means"], bins=30, color="#E69F00")
    for v, style in ((b["low"], "--"), (b["high"], "--"), (x.mean(), "-")):
        axes[2].axvline(v, color="k", ls=style, lw=1)
    axes[2].set(title=f"3. {n_resamples} resampled means: {confidence:.0%} interval [{b['low']:.3f}, {b['high']:.3f}]",
                xlabel="mean of a resample")
    for ax in axes:
        ax.title.set_fontsize(9)
    fig.tight_layout()
    return fig
