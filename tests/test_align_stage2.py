"""MFM-DA stage 2 loop: what trains, the three steps, resume after a kill, and run_stage2 end to end (tiny encoder)."""
import numpy as np
import pytest
import torch
from accelerate import Accelerator
from torch import nn
from test_align import TAPS, tiny_vit

from mfmda_lib.align import experiment
from mfmda_lib.align.features import level_shapes
from mfmda_lib.align.methods import ABLATIONS, DEFAULT_METHODS, METHODS
from mfmda_lib.align.pyramid import PyramidEncoder
from mfmda_lib.align.stage2 import Stage2Config, build_model, predict_logits
from mfmda_lib.align.training import make_optimizers, three_step_update, train_stage2
from mfmda_lib.data import FundusSample
from mfmda_lib.models.base import InputSpec, PromptableSegmenter
from mfmda_lib.profiles import get_profile

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(**changes) -> Stage2Config:
    base = Stage2Config(taps=TAPS, rein_from="layers.3.blocks.0", epochs=3, batch_size=2, head_width=4)
    return base.replace(rein=base.rein.__class__(n_tokens=4, rank=2), **changes)


def _data(n: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    x = torch.rand(n, 3, 32, 32)
    y = torch.zeros(n, 2, 32, 32)
    y[:, 0, 8:24, 8:24], y[:, 1, 12:20, 12:20] = 1, 1
    return x, y


def _setup(config: Stage2Config, encoder: nn.Module):
    x, y = _data()
    prefix = PyramidEncoder(encoder, config.taps, config.rein_from)
    source = {k: v.half() for k, v in prefix.prefix(x).items()}
    translated = {k: v.half() for k, v in prefix.prefix(x.flip(1)).items()}  # a "translation": swapped colours
    model = build_model(encoder, config, level_shapes(prefix, source), 32)
    return model, make_optimizers(model, config), source, translated, y


def test_config_is_validated():
    with pytest.raises(ValueError, match="subset"):
        _config(steps=("align", "nope"))
    with pytest.raises(ValueError, match="trains the Rein tokens"):
        _config(use_rein=False)  # the default steps include "align"
    with pytest.raises(ValueError, match="no unit for the Rein tokens"):  # "no Rein" is said one way: use_rein=False
        _config(rein_from=None, steps=("source",))
    assert _config(rein_from=None, use_rein=False, steps=("source",)).rein_from is None  # the whole encoder cached
    with pytest.raises(ValueError, match="leaving no unit for the tokens"):
        PyramidEncoder(tiny_vit(), TAPS, None, _config().rein)
    with pytest.raises(ValueError, match="head_levels"):
        _config(head_levels="top")
    assert _config().digest() != _config(epochs=4).digest()


def test_only_rein_and_head_train_and_align_step_skips_the_head():
    encoder = tiny_vit()
    frozen = {k: v.clone() for k, v in encoder.state_dict().items()}
    model, (optimizer, align), source, translated, y = _setup(_config(steps=("align",), epochs=1), encoder)
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    rein_before = {k: v.clone() for k, v in model.trainable_state().items() if "rein_" in k}
    history = train_stage2(model, optimizer, source, y, model_config := _config(steps=("align",), epochs=1),
                           align_optimizer=align, translated=translated, accelerator=Accelerator(cpu=True), progress=False)
    assert set(history.epochs[0]) == {"epoch", "lr", "loss_align", "loss_align_before", "loss_align_after",
                                      "update_align", "seconds"}
    assert model_config.steps == ("align",)
    assert all(torch.equal(v, encoder.state_dict()[k]) for k, v in frozen.items())  # the foundation model never moves
    assert all(torch.equal(v, model.head.state_dict()[k]) for k, v in head_before.items())  # step 1: tokens only
    after = model.trainable_state()
    assert any(not torch.equal(v, after[k]) for k, v in rein_before.items())
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(n.startswith("head.") or "rein_" in n for n in names)


def test_three_steps_reduce_the_loss_and_predict():
    model, (optimizer, align), source, translated, y = _setup(_config(epochs=8), tiny_vit())
    history = train_stage2(model, optimizer, source, y, _config(epochs=8), align_optimizer=align,
                           translated=translated, progress=False)
    first, last = history.epochs[0], history.epochs[-1]
    assert set(first) == {"epoch", "lr", "loss_align", "loss_align_before", "loss_align_after", "loss_source",
                          "loss_translated", "update_align", "update_seg", "seconds"}
    assert last["loss_source"] < first["loss_source"] and last["loss_translated"] < first["loss_translated"]
    assert predict_logits(model, source, batch_size=3).shape == (4, 2, 32, 32)
    with pytest.raises(ValueError, match="need `translated`"):
        train_stage2(model, optimizer, source, y, _config(), align_optimizer=align, progress=False)
    with pytest.raises(ValueError, match="align_optimizer"):
        train_stage2(model, optimizer, source, y, _config(), translated=translated, progress=False)


def test_resume_after_a_killed_run_gives_the_same_weights(tmp_path):
    config = _config(epochs=3)
    model, (optimizer, align), source, translated, y = _setup(config, tiny_vit())
    train_stage2(model, optimizer, source, y, config, align_optimizer=align, translated=translated, progress=False)
    uninterrupted = model.trainable_state()

    class Killed(Exception):
        pass

    def kill_after_first(epoch: int) -> None:
        if epoch == 0:
            raise Killed

    checkpoint = tmp_path / "stage2.pt"
    model, (optimizer, align), *_ = _setup(config, tiny_vit())
    with pytest.raises(Killed):
        train_stage2(model, optimizer, source, y, config, align_optimizer=align, translated=translated,
                     checkpoint=checkpoint, progress=False, on_epoch_end=kill_after_first)
    model, (optimizer, align), *_ = _setup(config, tiny_vit())  # a fresh process: new model, new optimizers
    history = train_stage2(model, optimizer, source, y, config, align_optimizer=align, translated=translated,
                           checkpoint=checkpoint, progress=False)
    assert history.resumed_from == 1 and len(history.epochs) == 3
    resumed = model.trainable_state()
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)
    model, (optimizer, align), *_ = _setup(config, tiny_vit())  # a finished checkpoint is loaded, nothing re-runs
    assert train_stage2(model, optimizer, source, y, config, align_optimizer=align, translated=translated,
                        checkpoint=checkpoint, progress=False).resumed_from == 3
    assert all(torch.equal(model.trainable_state()[k], uninterrupted[k]) for k in resumed)


def _samples(n: int, domain: str, seed: int) -> list[FundusSample]:
    rng = np.random.default_rng(seed)
    disc = np.zeros((32, 32), bool)
    disc[8:24, 8:24] = True
    cup = np.zeros((32, 32), bool)
    cup[12:20, 12:20] = True
    return [FundusSample(image=rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), disc=disc, cup=cup,
                         domain=domain, sample_id=f"{domain}_{i}") for i in range(n)]


def _stage2_run_inputs(tmp_path):
    """A tiny stage-2 problem: 2 source pairs, two targets, 2 test images per domain, tiny ViT."""
    segmenter = PromptableSegmenter(tiny_vit(), nn.Identity(), nn.Identity(), name="tiny", spec=InputSpec(32),
                                    cache_key="tiny-test")
    profile = get_profile("ci").replace(stage2_rein_from="layers.1.blocks.0", stage2_rein_placement="blocks",
                                        stage2_warmup_epochs=1, stage2_epochs=1, stage2_batch_size=2, tta_batch_size=2,
                                        tta_steps=1)
    source = _samples(2, "refuge_train", 0)
    targets = ("riga_binrushed", "refuge_test")
    translated = {t: experiment.jittered_samples(source, seed=5 + i) for i, t in enumerate(targets)}
    test = {d: _samples(2, d, 10 + i) for i, d in enumerate([*targets, "refuge_train"])}
    kwargs = dict(segmenter=segmenter, test=test, checkpoint_dir=tmp_path, cache_root=tmp_path / "cache",
                  target_images_by_target={t: [s.image for s in _samples(2, t, 20 + i)] for i, t in enumerate(targets)},
                  oracle_by_target={t: _samples(2, t, 30 + i) for i, t in enumerate(targets)},
                  accelerator=Accelerator(cpu=True), progress=False)
    return profile, source, translated, kwargs


def test_run_stage2_every_method_end_to_end_and_reuses_checkpoints(tmp_path):
    profile, source, translated, kwargs = _stage2_run_inputs(tmp_path)
    test, targets = kwargs["test"], tuple(translated)
    methods = [m for m in DEFAULT_METHODS if m != "sam_decoder_adapter"]
    result = experiment.run_stage2(profile, source, translated, methods=methods, **kwargs)
    table = result.table()
    assert list(dict.fromkeys(table.index.get_level_values("method"))) == methods
    assert set(table.index.get_level_values("domain")) == {*targets, "mean"}
    assert (table["n"].xs("mean", level="domain") == 4).all()
    assert {"disc_hd95", "cup_iou"} <= set(table.columns)
    assert set(result.source_table().index.get_level_values("method")) == {"source_only", "alignment_only"}
    costs = result.cost_table()
    assert not costs["from_checkpoint"].any()
    assert costs.set_index(["method", "target"]).loc[("mfmda_no_rein", "riga_binrushed"), "rein_params"] == 0

    again = experiment.run_stage2(profile, source, translated, methods=["mfmda", "tent"], **kwargs)
    assert again.cost_table()["from_checkpoint"].all()  # weights and frozen features reused
    same = [r for r in result.rows if r["method"] in ("mfmda", "tent")]
    assert [r["disc_dice"] for r in again.rows] == [r["disc_dice"] for r in same]
    with pytest.raises(ValueError, match="unknown method"):
        experiment.run_stage2(profile, source, translated, methods=["magic"], **kwargs)

    # a user's own target folder: no labels, masks only (the mfmda model above is reused from its checkpoint)
    kwargs.pop("test"), kwargs.pop("target_images_by_target"), kwargs.pop("oracle_by_target")
    images = [s.image for s in test["riga_binrushed"]]
    masks = experiment.predict_target_masks(profile, source, translated["riga_binrushed"], images, **kwargs)
    assert len(masks) == 2 and masks[0][0].shape == (32, 32) and masks[0][0].dtype == bool
    scored = result.masks[("mfmda", "riga_binrushed")]
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(masks, scored))


def _update_ratio(config: Stage2Config) -> tuple[float, dict]:
    """One three-step update on a fixed, misaligned batch: (tokens moved by step 1) / (moved by steps 2-3)."""
    model, (optimizer, align), source, translated, y = _setup(config, tiny_vit())
    idx = torch.arange(2)
    logs = three_step_update(model, {k: v[idx].float() for k, v in source.items()},
                             {k: v[idx].float() for k, v in translated.items()}, y[idx], optimizer, align,
                             align_levels=[len(config.taps) - 1])
    return logs["update_align"] / logs["update_seg"], logs


def test_alignment_step_moves_the_tokens_comparably_to_the_segmentation_steps():
    """The authors' optimisers (SGD for both) let step (1) act; AdamW in steps (2)-(3) drowns it (the old bug)."""
    sgd, logs = _update_ratio(_config())
    assert sgd > 0.1, f"step (1) moved the tokens {sgd:.2g}x as far as steps (2)-(3): the alignment would be a no-op"
    assert logs["loss_align_after"] < logs["loss_align"]  # the step (1) update lowered L_align on its batch
    adamw, _ = _update_ratio(_config(optimizer="adamw", lr=1e-2))
    assert adamw < 0.1 * sgd
    with pytest.raises(ValueError, match="align_lr"):
        _config(align_lr=0.0)
    with pytest.raises(ValueError, match="optimizer"):
        _config(optimizer="lion")
    with pytest.raises(ValueError, match="align_levels"):
        model, (optimizer, align), source, translated, y = _setup(_config(), tiny_vit())
        three_step_update(model, source, translated, y, optimizer, align)


def test_a_same_seed_rerun_from_scratch_repeats_every_number_and_another_seed_does_not(tmp_path):
    """The headline's per-seed runs are reproducible: same seed, empty folders -> the same weights and rows."""
    profile, source, translated, kwargs = _stage2_run_inputs(tmp_path / "a")
    rows, weights = {}, {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        kwargs.update(checkpoint_dir=tmp_path / name / "ckpt", cache_root=tmp_path / name / "cache")
        result = experiment.run_stage2(profile, source, translated, methods=["source_only", "mfmda", "oracle"],
                                       seeds=[seed], **kwargs)
        assert not result.cost_table()["from_checkpoint"].any()  # trained from scratch each time
        rows[name] = [(r["method"], r["domain"], r["sample_id"], r["disc_dice"], r["cup_dice"]) for r in result.rows]
        weights[name] = [torch.cat([v.float().flatten() for v in torch.load(f, weights_only=True)["model"].values()])
                         for f in sorted((tmp_path / name / "ckpt").glob("*.pt"))]
    assert rows["a"] == rows["b"] and len(weights["a"]) == len(weights["b"]) >= 3
    assert all(torch.equal(x, y) for x, y in zip(weights["a"], weights["b"]))
    assert not any(torch.equal(x, y) for x, y in zip(weights["a"], weights["c"]) if x.shape == y.shape)


def test_profiles_train_known_ablations_and_ci_keeps_every_code_path_no_other_cell_runs():
    from mfmda_lib.profiles import PROFILES

    for name, profile in PROFILES.items():
        assert set(profile.stage2_ablations) <= set(ABLATIONS), name
        assert len(set(profile.stage2_ablations)) == len(profile.stage2_ablations), name
        if name != "ci":  # the real runs train every ablation
            assert tuple(profile.stage2_ablations) == ABLATIONS, name
    ci = [METHODS[m] for m in PROFILES["ci"].stage2_ablations]
    changed = {field for m in ci for field, _ in m.changes}
    # notebook 09 runs AdamW (section 4, every warm-up) and a head without tokens (every warm-up) elsewhere; what
    # only an ablation runs: another head (deepest level, aligned alone), the `levels` placement, no warm-up
    assert {"head_levels", "align_taps", "rein_placement"} <= changed
    assert any(not m.warm_up for m in ci)
