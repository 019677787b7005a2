"""The exercise checks: what they diagnose, and how each edition treats a missing or wrong answer."""
import numpy as np
import pytest
import torch

from mfmda_lib.teaching import exercises


@pytest.fixture
def student_edition():
    exercises.use_student_edition()
    yield
    exercises.use_instructor_edition()


def _mean_sq(x):
    return (x ** 2).mean()


def test_a_correct_answer_passes_and_is_chosen(capsys):
    result = exercises.check("mean_sq", lambda x: x.pow(2).sum() / x.numel(), _mean_sq, [torch.arange(6.0)])
    assert result.passed and "OK mean_sq" in capsys.readouterr().out
    assert result.choose() is result.student and "YOUR mean_sq" in capsys.readouterr().out
    assert result.choose("mine", "library", quiet=True) == "mine"


@pytest.mark.parametrize("wrong, words", [
    (lambda x: (x ** 2).sum(), "constant factor 6"),           # sum instead of mean
    (lambda x: -(x ** 2).mean(), "sign is flipped"),
    (lambda x: x ** 2, "reduce it"),                           # no reduction
    (lambda x: (x ** 2).mean() + float("nan"), "NaN"),
])
def test_a_wrong_answer_is_diagnosed(wrong, words, student_edition, capsys):
    result = exercises.check("mean_sq", wrong, _mean_sq, [torch.arange(1.0, 7.0)])
    assert result.status == "wrong" and words in result.message
    assert words in capsys.readouterr().out
    assert result.choose() is _mean_sq and "NOTICE" in capsys.readouterr().out


def test_diagnose_names_shape_transpose_offset_and_elements():
    a = torch.arange(6.0).reshape(2, 3)
    assert exercises.diagnose(a, a.clone()) is None
    assert "wrong shape" in exercises.diagnose(a.reshape(3, 2), a)
    assert "reduce (mean/sum) too early" in exercises.diagnose(a.sum(), a)
    square = torch.arange(9.0).reshape(3, 3)
    assert "transposed" in exercises.diagnose(square.T, square)
    assert "off by a constant 2" in exercises.diagnose(a + 2, a)
    assert "output[1]" in exercises.diagnose((a, a + 1), (a, a))
    assert "2 elements where the library returns 3" in exercises.diagnose([1, 2], [1, 2, 3])
    assert "keys" in exercises.diagnose({"x": a}, {"y": a})
    off = a.clone()
    off[1, 2] += 0.5
    assert "index (1, 2)" in exercises.diagnose(off, a)
    # numpy, ints and tensors compare by value; exact equality is exact
    assert exercises.diagnose(np.array([1, 2, 3]), np.array([1.0, 2.0, 3.0], dtype=np.float32)) is None
    assert exercises.diagnose(torch.tensor(1.0) + 1e-7, torch.tensor(1.0), exact=True) is not None
    assert exercises.diagnose("mean", "sum") is not None


def test_missing_and_raising_answers_fall_back_in_the_student_edition(student_edition, capsys):
    def stub(x):
        raise NotImplementedError("hint: square, then average")

    missing = exercises.check("mean_sq", stub, _mean_sq, [torch.ones(3)])
    assert missing.status == "missing" and "hint: square, then average" in capsys.readouterr().out
    assert missing.choose() is _mean_sq and "not written yet" in capsys.readouterr().out
    broken = exercises.check("mean_sq", lambda x: x.nope(), _mean_sq, [torch.ones(3)])
    assert broken.status == "error" and "AttributeError" in broken.message


def test_the_instructor_edition_fails_on_anything_but_a_pass():
    assert exercises.edition() == exercises.INSTRUCTOR
    with pytest.raises(exercises.ExerciseFailed, match="constant factor"):
        exercises.check("mean_sq", lambda x: (x ** 2).sum(), _mean_sq, [torch.arange(1.0, 4.0)])
    with pytest.raises(exercises.ExerciseFailed, match="not written yet"):
        exercises.check("mean_sq", lambda x: (_ for _ in ()).throw(NotImplementedError("hint")), _mean_sq, [torch.ones(2)])
    with pytest.raises(ValueError, match="at least one input"):
        exercises.check("mean_sq", _mean_sq, _mean_sq, [])


def test_each_call_gets_fresh_inputs():
    def in_place(x):
        x.mul_(0)
        return x.sum()

    x = torch.ones(4)
    result = exercises.check("total", in_place, lambda t: t.sum() * 0, [(x,)], quiet=True)
    assert result.passed and torch.equal(x, torch.ones(4))  # the caller's tensor is untouched
    kwargs = exercises.check("scaled", lambda x, k: x * k, lambda x, k: k * x, [{"x": x, "k": 3.0}], quiet=True)
    assert kwargs.passed


def test_a_check_leaves_the_global_random_state_alone():
    torch.manual_seed(5)
    np.random.seed(5)
    expected = torch.rand(3), np.random.rand(2)
    torch.manual_seed(5)
    np.random.seed(5)
    exercises.check("noisy", lambda x: x + torch.rand(1) * 0 + np.random.rand() * 0, lambda x: x + 0 * torch.rand(2).sum(),
                    [torch.ones(2)], quiet=True)
    with exercises.isolated_rng():
        torch.randn(10), np.random.rand(4)
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(2), expected[1])
