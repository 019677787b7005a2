"""The shared training loop: it learns, stops early on the best epoch, and resumes after interruption."""
import pytest
import torch
from torch import nn

from mfmda_lib.train import FitConfig, count_parameters, ema_update, fit


def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3
    return x, y


def _batches(x, y):
    return lambda epoch: [(x[i:i + 16], y[i:i + 16]) for i in range(0, len(x), 16)]


def _loss(model, batch):
    return nn.functional.mse_loss(model(batch[0]), batch[1])


def test_fit_learns_and_reports():
    torch.manual_seed(0)
    x, y = _problem()
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hist = fit(model, opt, _batches(x, y), _loss, FitConfig(epochs=30), progress=False)
    assert hist.train_loss[-1] < 0.01 * hist.train_loss[0]
    assert count_parameters(model) == (4, 4)


def test_early_stopping_restores_the_best_epoch():
    torch.manual_seed(0)
    x, y = _problem()
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scores = iter([0.1, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    weights = {}

    def validate(m):
        s = next(scores)
        weights[s] = m.weight.detach().clone()
        return s

    hist = fit(model, opt, _batches(x, y), _loss, FitConfig(epochs=7, patience=2), validate=validate, progress=False)
    assert hist.best_epoch == 1 and hist.stopped_early and len(hist.epochs) == 4
    assert torch.equal(model.weight, weights[0.5])


def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path):
    x, y = _problem()

    def run(epochs, ckpt):
        torch.manual_seed(0)
        model = nn.Linear(3, 1)
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        fit(model, opt, _batches(x, y), _loss, FitConfig(epochs=epochs), checkpoint=ckpt, progress=False)
        return model

    full = run(6, None)
    run(3, tmp_path / "ck.pt")  # "killed" after 3 epochs
    resumed = run(6, tmp_path / "ck.pt")
    assert torch.allclose(full.weight, resumed.weight, atol=1e-6)
    assert not list(tmp_path.glob("*.tmp"))


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        FitConfig(epochs=0)


def test_ema_update_is_the_teacher_average_of_every_parameter():
    torch.manual_seed(0)
    teacher, student = nn.Linear(3, 2), nn.Linear(3, 2)
    t0, s0 = [p.clone() for p in teacher.parameters()], [p.clone() for p in student.parameters()]
    ema_update(teacher, student, 0.9)
    for t, t_old, s, s_old in zip(teacher.parameters(), t0, student.parameters(), s0):
        assert torch.allclose(t, 0.9 * t_old + 0.1 * s)
        assert torch.equal(s, s_old)  # the student is left as it was
