"""Test-time adaptation: what each method may change, the shared interface, reset, the source checkpoint."""
import copy

import pytest
import torch
from torch import nn

from mfmda_lib.adapt import tta, tta_augmented, tta_base
from mfmda_lib.adapt import tta_benchmark as tb
from mfmda_lib.adapt import tta_source as ts
from mfmda_lib.data import generate_sample
from mfmda_lib.models.unet import UNet, UNetConfig

SIZE = 32


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = UNet(UNetConfig(base_channels=4, depth=2))
    with torch.no_grad():  # give the running statistics non-trivial source values
        m.train()
        for _ in range(3):
            m(torch.randn(4, 3, SIZE, SIZE))
    return m.eval()


@pytest.fixture
def shifted_batch():
    torch.manual_seed(1)
    return torch.randn(4, 3, SIZE, SIZE) * 2.0 + 1.5  # a colour/contrast shift away from the source


def _state(module: nn.Module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _bn_affine_names(model: nn.Module) -> set:
    return {f"{n}.{p}" for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) for p in ("weight", "bias")}


@pytest.mark.parametrize("name", list(tta.TTA_METHODS))
def test_every_method_returns_disc_and_cup_logits_and_leaves_the_source_model_alone(name, model, shifted_batch):
    before = _state(model)
    method = tta.TTA_METHODS[name](model, tta_base.TTAConfig(steps=2, n_augmentations=4))
    out = method.adapt(shifted_batch)
    assert out.shape == (4, 2, SIZE, SIZE) and torch.isfinite(out).all()
    assert method.predict(shifted_batch).shape == (4, 2, SIZE, SIZE)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "wrap a copy, not the model"


def test_tent_trains_exactly_the_batchnorm_affine_parameters(model, shifted_batch):
    method = tta.Tent(model, tta_base.TTAConfig(lr=1e-2))
    trainable = {n for n, p in method.model.named_parameters() if p.requires_grad}
    assert trainable == _bn_affine_names(method.model)
    assert len(method.params) == len(trainable) == 2 * sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    opt_params = {id(p) for g in method.optimizer.param_groups for p in g["params"]}
    assert opt_params == {id(p) for n, p in method.model.named_parameters() if n in trainable}

    before = _state(method.model)
    method.adapt(shifted_batch)
    after = method.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= _bn_affine_names(method.model), f"Tent changed {changed - _bn_affine_names(method.model)}"


def test_tent_lowers_the_entropy_it_minimises(model, shifted_batch):
    method = tta.Tent(model, tta_base.TTAConfig(lr=1e-2))
    first = tta_base.binary_entropy(method.predict(shifted_batch)).mean()
    for _ in range(5):
        method.adapt(shifted_batch)
    assert tta_base.binary_entropy(method.predict(shifted_batch)).mean() < first


def test_norm_stats_normalises_with_the_batch_and_changes_no_parameter(model, shifted_batch):
    method = tta.NormStats(model)
    assert method.optimizer is None and not any(p.requires_grad for p in method.parameters())
    params_before = {n: p.clone() for n, p in method.model.named_parameters()}
    out = method.adapt(shifted_batch)
    source = tta.SourceOnly(model).adapt(shifted_batch)
    assert not torch.allclose(out, source, atol=1e-3), "batch statistics must change the output on a shifted batch"
    reference = copy.deepcopy(model).train()  # train-mode BN: the batch's own mean and variance
    with torch.no_grad():
        assert torch.allclose(out, reference(shifted_batch), atol=1e-5)
    assert all(torch.equal(p, params_before[n]) for n, p in method.model.named_parameters())
    # the output of one image depends on the rest of the batch: that is why batch size 1 is a failure case
    alone = method.adapt(shifted_batch[:1])
    assert not torch.allclose(alone, out[:1], atol=1e-4)


@pytest.mark.parametrize("name", ["tent", "pseudo_label", "mean_teacher"])
def test_reset_restores_the_initial_state_exactly(name, model, shifted_batch):
    method = tta.TTA_METHODS[name](model, tta_base.TTAConfig(lr=1e-2, steps=2, restore_prob=0.1, n_augmentations=4))
    initial_state, initial_out = _state(method), method.predict(shifted_batch)
    method.adapt(shifted_batch)
    assert not torch.allclose(method.predict(shifted_batch), initial_out), "adapt should change the model"
    method.reset()
    assert all(torch.equal(initial_state[k], v) for k, v in method.state_dict().items())
    assert method.optimizer.state_dict()["state"] == {}
    assert torch.equal(method.predict(shifted_batch), initial_out)
    # and the run after a reset repeats the first one (augmentations and restore reseeded)
    first = method.adapt(shifted_batch)
    method.reset()
    assert torch.equal(method.adapt(shifted_batch), first)


class _CountSteps:
    """Counts ``optimizer.step`` calls of a wrapped method."""

    def __init__(self, method: tta_base.TTAMethod) -> None:
        self.n, step = 0, method.optimizer.step

        def counted(*args, **kwargs):
            self.n += 1
            return step(*args, **kwargs)

        method.optimizer.step = counted


def test_default_tent_updates_once_per_batch_and_returns_that_forward_pass(model, shifted_batch):
    """tent.py's forward_and_adapt: one step per batch; the prediction is the forward pass that made it."""
    method = tta.Tent(model)
    assert method.config.steps == 1 and isinstance(method.optimizer, torch.optim.Adam)
    assert method.optimizer.param_groups[0]["lr"] == 1e-3  # tent's cfgs/tent.yaml
    before = copy.deepcopy(method.model)
    steps = _CountSteps(method)
    out = method.adapt(shifted_batch)
    assert steps.n == 1, "default Tent takes exactly one optimisation step per batch"
    with torch.no_grad():
        assert torch.equal(out, before(shifted_batch)), "the output is the pre-update forward pass's"
    assert not torch.allclose(out, method.predict(shifted_batch)), "and the update did change the model"
    # the update is one Adam step on the mean binary entropy of those outputs
    reference = copy.deepcopy(before)
    params, _ = tta_base.collect_norm_params(reference)
    optimizer = torch.optim.Adam(params, lr=1e-3)
    tta_base.binary_entropy(reference(shifted_batch)).mean().backward()
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), method.model.state_dict().values()))
    method.adapt(shifted_batch)
    assert steps.n == 2, "and one more on the next batch"


def test_multi_step_tent_is_the_named_option_and_returns_the_last_updating_pass(model, shifted_batch):
    method = tta.Tent(model, tta_base.TTAConfig(steps=3))
    steps = _CountSteps(method)
    shadow = tta.Tent(model)  # one step at a time, same start
    for _ in range(2):
        shadow.adapt(shifted_batch)
    out = method.adapt(shifted_batch)
    assert steps.n == 3
    assert torch.equal(out, shadow.adapt(shifted_batch)), "k steps return the outputs of the k-th (updating) pass"


def test_memo_is_episodic_per_image_with_sgd_on_every_weight(model, shifted_batch):
    method = tta_augmented.MEMO(model, tta_base.TTAConfig(n_augmentations=8))
    assert isinstance(method.optimizer, torch.optim.SGD) and method.optimizer.param_groups[0]["lr"] == 2.5e-4
    assert len(method.params) == len(list(method.model.parameters()))
    initial = _state(method)
    steps = _CountSteps(method)
    pair = method.adapt(shifted_batch[:2])
    assert steps.n == 2, "one step per test image"
    assert all(torch.equal(initial[k], v) for k, v in method.state_dict().items()), "restored after each image"
    # image 0 of the pair is adapted from the source, whatever comes after it ...
    method.reset()
    assert torch.equal(method.adapt(shifted_batch[:1]), pair[:1])
    # ... and image 1 from the source too: only the random stream (the views) carries over
    method.reset()
    method.adapt(shifted_batch[:1])
    assert torch.equal(method.adapt(shifted_batch[1:2]), pair[1:])
    # the step does move the prediction of that image, with a large enough learning rate
    fast = tta_augmented.MEMO(model, tta_base.TTAConfig(lr=1e-1, n_augmentations=8))
    assert not torch.allclose(fast.adapt(shifted_batch[:1]), fast.predict(shifted_batch[:1]))


def test_memo_minimises_the_marginal_entropy_of_its_views(model, shifted_batch):
    method = tta_augmented.MEMO(model, tta_base.TTAConfig(lr=1e-1, n_augmentations=8))
    x = shifted_batch[:1]

    def marginal(m):
        m.generator.manual_seed(7)
        views, flipped = m.views(x[0])
        with torch.no_grad():
            logits = m.model(views)
        logits = torch.where(flipped[:, None, None, None], logits.flip(-1), logits)
        return tta_base.marginal_binary_entropy(logits[:, None]).mean()

    before = marginal(method)
    method.generator.manual_seed(7)
    method.forward_and_adapt(x)
    assert marginal(method) < before


def test_marginal_entropy_is_the_entropy_of_the_mean_probability():
    logits = torch.randn(5, 2, 2, 3, 3) * 4
    p = torch.sigmoid(logits).mean(0)
    expected = -(p * p.log() + (1 - p) * (1 - p).log())
    assert torch.allclose(tta_base.marginal_binary_entropy(logits), expected, atol=1e-5)
    assert torch.isfinite(tta_base.marginal_binary_entropy(torch.full((3, 1, 1, 1, 1), 200.0))).all()


def test_prior_batchnorm_mixes_source_and_batch_statistics(model, shifted_batch):
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        bn.running_var.copy_(torch.tensor([1.5, 0.5, 3.0]))
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
    holder = nn.Sequential(bn)
    tta_augmented.use_prior_norm(holder, 16 / 17)
    prior_bn = holder[0]
    assert isinstance(prior_bn, tta_augmented.PriorBatchNorm2d)
    x = shifted_batch
    mean = 16 / 17 * bn.running_mean + 1 / 17 * x.mean(dim=(0, 2, 3))
    var = 16 / 17 * bn.running_var + 1 / 17 * x.var(dim=(0, 2, 3), unbiased=True)
    expected = (x - mean[None, :, None, None]) / (var[None, :, None, None] + bn.eps).sqrt()
    expected = expected * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]
    assert torch.allclose(prior_bn(x), expected, atol=1e-5)
    prior_bn.prior = 1.0  # the source statistics alone: eval-mode BatchNorm
    assert torch.allclose(prior_bn(x), bn.eval()(x), atol=1e-6)
    wrapped = tta_augmented.MEMO(model)
    assert sum(isinstance(m, tta_augmented.PriorBatchNorm2d) for m in wrapped.model.modules()) == \
        sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_augmix_views_are_pixelwise_mixtures_in_range_and_reproducible():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, 16, 16)
    view = tta_augmented.augmix(img, g)
    assert view.shape == img.shape and 0 <= view.min() and view.max() <= 1
    assert not torch.equal(view, img)
    assert torch.equal(tta_augmented.augmix(img, torch.Generator().manual_seed(0)), view)
    # every operation keeps pixels in place: a constant image stays constant
    flat = torch.full((3, 8, 8), 0.3)
    for _ in range(5):
        v = tta_augmented.augmix(flat, g)
        assert torch.allclose(v, v[:, :1, :1].expand_as(v))


class _FixedLogits(nn.Module):
    """Returns learnable logits whatever the input: lets a test inspect the loss's gradient per pixel."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, x):
        return self.logits


def test_pseudo_label_ignores_unconfident_pixels(model):
    method = tta.PseudoLabel(model, tta_base.TTAConfig(threshold=0.9))
    logits = torch.tensor([4.0, -4.0, 0.5, -0.5, 2.0]).reshape(1, 1, 1, 5).repeat(1, 2, 1, 1)  # p = .98 .02 .62 .38 .88
    labels, mask = method.pseudo_labels(logits)
    assert mask[0, 0, 0].tolist() == [1, 1, 0, 0, 0]
    assert labels[0, 0, 0].tolist() == [1, 0, 1, 0, 1]
    fixed = _FixedLogits(logits)
    method.loss(fixed(None), torch.zeros(1, 3, 1, 5)).backward()
    grad = fixed.logits.grad[0, 0, 0]
    assert torch.all(grad[2:] == 0), "unconfident pixels must not contribute to the loss"
    assert torch.all(grad[:2] != 0)


def test_augment_views_line_up_after_undo():
    x = torch.randn(2, 3, 8, 8)
    views, undo = tta_augmented.augment(x, 4, jitter=0.0)
    assert views.shape == (8, 3, 8, 8)
    assert torch.allclose(undo(views), x.expand(4, -1, -1, -1, -1))


def test_mean_teacher_follows_the_student_by_ema_and_returns_the_teachers_views(model, shifted_batch):
    method = tta_augmented.MeanTeacher(model, tta_base.TTAConfig(lr=1e-2, ema_alpha=0.8, restore_prob=0.0, n_augmentations=4))
    source = [p.clone() for p in method.teacher.parameters()]
    teacher_before = copy.deepcopy(method.teacher)
    state = method.generator.get_state()
    steps = _CountSteps(method)
    out = method.adapt(shifted_batch)
    assert steps.n == 1
    for t, t0, s in zip(method.teacher.parameters(), source, method.model.parameters()):
        assert torch.allclose(t, 0.8 * t0 + 0.2 * s, atol=1e-6)
    assert not torch.equal(method.model.head.weight, method.teacher.head.weight)
    # the prediction is CoTTA's outputs_ema: the pre-update teacher's logits averaged over the views
    method.teacher, method.generator = teacher_before, torch.Generator().set_state(state)
    assert torch.equal(out, method.teacher_logits(shifted_batch))


def test_mean_teacher_stochastic_restore_returns_weights_to_the_source(model, shifted_batch):
    method = tta_augmented.MeanTeacher(model, tta_base.TTAConfig(lr=1e-1, restore_prob=1.0, n_augmentations=4))
    method.adapt(shifted_batch)
    for p, p0 in zip(method.model.parameters(), method.source.parameters()):
        assert torch.equal(p, p0)


def test_config_errors_say_what_to_fix():
    with pytest.raises(ValueError, match="threshold"):
        tta_base.TTAConfig(threshold=0.3)
    with pytest.raises(ValueError, match="params"):
        tta_base.TTAConfig(params="some")
    with pytest.raises(ValueError, match="BatchNorm"):
        tta.Tent(nn.Conv2d(3, 2, 1))


def _samples(domain, n, split):
    return [generate_sample(domain, i, split=split, size=64) for i in range(n)]


def test_source_model_checkpoint_is_loaded_when_present(tmp_path, monkeypatch):
    train, val = _samples("refuge_train", 4, "train"), _samples("refuge_train", 2, "test")
    config = ts.SourceTrainConfig(unet=UNetConfig(base_channels=4, depth=2), batch_size=2)
    ckpt = tmp_path / "source.pt"
    model, info = ts.train_source_model(train, val, size=SIZE, epochs=1, config=config, checkpoint=ckpt,
                                        progress=False)
    assert info["trained"] and ckpt.is_file() and not (tmp_path / "source.pt.partial").exists()

    def no_training(*args, **kwargs):
        raise AssertionError("the second call must load the checkpoint, not train")

    monkeypatch.setattr(ts, "fit", no_training)
    again, info2 = ts.train_source_model(train, val, size=SIZE, epochs=1, config=config, checkpoint=ckpt,
                                         progress=False)
    assert not info2["trained"] and info2["val_dice"] == info["val_dice"]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert not again.training


def test_regimes_reset_when_they_should(model):
    samples = _samples("riga_binrushed", 4, "test")
    stream = [("riga_binrushed", samples[:2]), ("riga_messidor", samples[2:])]
    calls = []

    class Spy(tta.SourceOnly):
        def reset(self):
            calls.append("reset")
            super().reset()

        def adapt(self, x):
            calls.append("adapt")
            return super().adapt(x)

    for regime, expected in [("episodic", 1 + 4 * 2), ("online", 1 + 2 + 4), ("continual", 1 + 4)]:
        calls.clear()
        rows = tb.run_regime(Spy(model), stream, regime, batch_size=1, size=SIZE, method="spy")
        assert len(calls) == expected and calls.count("adapt") == 4, regime
        assert len(rows) == 4 and {r["regime"] for r in rows} == {regime} and rows[0]["method"] == "spy"
        assert 0 <= rows[0]["disc_dice"] <= 1
