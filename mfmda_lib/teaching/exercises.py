"""Write-the-core exercises: check a student's function against the library's, then pick one.

Every exercise of the notebooks has four cells: a Markdown cell (the equation, the shapes, what to
write), a ``solution`` cell (the instructor's answer; the student edition turns each function or
method in it into a stub that raises ``NotImplementedError("hint: ...")``), a *check* cell and a
*switch* cell::

    result = exercises.check("box_from_mask", box_from_mask, data.mask_box, cases)   # the check
    box_fn = result.choose()                                                         # the switch

:func:`check` calls both functions on the same small inputs (fresh copies for each), compares the
outputs (:func:`torch.testing.assert_close`, or exact equality) and prints one line: what matched,
or what is wrong (shape, sign, a constant factor such as a mean taken as a sum, ...).
:meth:`CheckResult.choose` returns the student's function if it passed, else the library's, and
prints which one the rest of the notebook uses.

What happens when the answer is missing or wrong depends on the edition:

- the **instructor's edition** (the repository's notebooks, the default) raises
  :class:`ExerciseFailed`: a broken answer key fails the notebook run, so CI catches it;
- the **student edition** (:func:`use_student_edition`, called by a cell that
  :mod:`course.student` inserts) prints the diagnosis and falls back to the library,
  so the notebook runs to the end for a student who skips an exercise.

A check never changes the global random state (:func:`isolated_rng`): a student's answer, a stub
and the instructor's answer leave the random numbers of every later cell the same, so both
editions compute the same results after an exercise.

Sections: edition -> random state -> comparison (:func:`diagnose`) -> check and switch.
"""
from __future__ import annotations

import contextlib
import copy
import random
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

__all__ = ["INSTRUCTOR", "STUDENT", "ExerciseFailed", "CheckResult", "use_student_edition", "use_instructor_edition",
           "edition", "isolated_rng", "diagnose", "check"]

INSTRUCTOR, STUDENT = "instructor", "student"
_EDITION = {"current": INSTRUCTOR}


class ExerciseFailed(AssertionError):
    """An exercise's answer did not pass its check in the instructor's edition."""


# ---------------------------------------------------------------------------------------------
# edition
# ---------------------------------------------------------------------------------------------

def use_student_edition() -> None:
    """From now on a missing or wrong answer falls back to the library instead of failing."""
    _EDITION["current"] = STUDENT


def use_instructor_edition() -> None:
    """From now on a missing or wrong answer raises :class:`ExerciseFailed` (the default)."""
    _EDITION["current"] = INSTRUCTOR


def edition() -> str:
    """``"instructor"`` or ``"student"``."""
    return _EDITION["current"]


# ---------------------------------------------------------------------------------------------
# random state
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def isolated_rng() -> Iterator[None]:
    """Run a block without touching the global random state (torch CPU and CUDA, NumPy, ``random``).

    Whatever the block draws, the code after it draws the numbers it would have drawn without it.
    """
    numpy_state, python_state = np.random.get_state(), random.getstate()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)


# ---------------------------------------------------------------------------------------------
# comparison
# ---------------------------------------------------------------------------------------------

def _as_tensor(x: Any) -> torch.Tensor | None:
    """A tensor view of an array-like output (detached, float64 for comparing), else ``None``."""
    if isinstance(x, torch.Tensor):
        return None if x.is_complex() else x.detach().cpu().to(torch.float64)
    if isinstance(x, np.ndarray) and x.dtype != object:
        return torch.from_numpy(np.asarray(x, dtype=np.float64))
    if isinstance(x, (bool, int, float, np.number, np.bool_)):
        return torch.tensor(float(x), dtype=torch.float64)
    return None


def _shape_message(got: torch.Tensor, want: torch.Tensor) -> str:
    g, w = tuple(got.shape), tuple(want.shape)
    if got.numel() == 1 and want.numel() > 1:
        return f"a single number where the library gives one value per element, shape {w}: did you reduce (mean/sum) too early?"
    if want.numel() == 1 and got.numel() > 1:
        return f"shape {g} where the library gives a single number: reduce it (the library takes the mean)"
    if got.numel() == want.numel():
        return f"the right number of values in the wrong shape: {g}, the library's is {w} (check a reshape or transpose)"
    return f"shape {g}, but the library's is {w}"


def _value_message(got: torch.Tensor, want: torch.Tensor, rtol: float, atol: float) -> str:
    """Why two tensors of one shape differ: NaN, sign, a constant factor or offset, a transpose, or where."""
    close = lambda a, b: bool(torch.allclose(a, b, rtol=max(rtol, 1e-5), atol=max(atol, 1e-6), equal_nan=True))  # noqa: E731
    if torch.isnan(got).any() and not torch.isnan(want).any():
        return "your output holds NaN: a log of 0 or a division by 0?"
    if torch.isinf(got).any() and not torch.isinf(want).any():
        return "your output holds inf: a log of 0 or a division by 0?"
    if want.abs().max() > 0 and close(got, -want):
        return "the sign is flipped"
    norm = float((want * want).sum())
    if norm > 0:
        factor = float((got * want).sum()) / norm
        if abs(factor - 1) > 1e-3 and abs(factor) > 1e-12 and close(got, factor * want):
            return (f"off by a constant factor {factor:.4g} (check the reduction: mean vs sum, "
                    "the number of elements you divide by, or a scale)")
    offset = got - want
    if want.numel() > 1 and float(offset.abs().max()) > 0 and close(offset, offset.flatten()[0].expand_as(offset)):
        return f"off by a constant {float(offset.flatten()[0]):.4g} everywhere"
    if got.ndim >= 2 and got.shape[-1] == got.shape[-2] and close(got.transpose(-1, -2), want):
        return "transposed (the last two dimensions are swapped)"
    diff = (got - want).abs()
    index = np.unravel_index(int(diff.flatten().argmax()), tuple(diff.shape)) if diff.ndim else ()
    bad = float((diff > atol + rtol * want.abs()).double().mean())
    where = f" at index {tuple(int(i) for i in index)}" if index else ""
    return (f"values differ{where}: yours {float(got[index]):.5g}, the library's {float(want[index]):.5g} "
            f"(max |difference| {float(diff.max()):.3g}; {100 * bad:.0f}% of the elements are off)")


def diagnose(got: Any, want: Any, *, rtol: float = 1e-5, atol: float = 1e-6, exact: bool = False,
             where: str = "output") -> str | None:
    """``None`` when ``got`` matches ``want``, else one sentence saying what is wrong.

    Tensors, arrays and numbers are compared as tensors (:func:`torch.testing.assert_close` with
    ``rtol``/``atol``, dtype not checked; ``exact``: bit for bit); tuples, lists and dicts element by
    element (the sentence names the element); anything else with ``==``.

    Args:
        got: the student's output.
        want: the library's output.
        where: how to name this output in the sentence.
    """
    if isinstance(want, (tuple, list)):
        if not isinstance(got, (tuple, list)):
            return f"{where}: a {type(got).__name__} where the library returns a {type(want).__name__} of {len(want)}"
        if len(got) != len(want):
            return f"{where}: {len(got)} elements where the library returns {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            message = diagnose(g, w, rtol=rtol, atol=atol, exact=exact, where=f"{where}[{i}]")
            if message:
                return message
        return None
    if isinstance(want, dict):
        if not isinstance(got, dict) or set(got) != set(want):
            keys = sorted(got) if isinstance(got, dict) else type(got).__name__
            return f"{where}: keys {keys} where the library has {sorted(want)}"
        for key in want:
            message = diagnose(got[key], want[key], rtol=rtol, atol=atol, exact=exact, where=f"{where}[{key!r}]")
            if message:
                return message
        return None
    g, w = _as_tensor(got), _as_tensor(want)
    if w is None:
        return None if got == want else f"{where}: {got!r}, the library's is {want!r}"
    if g is None:
        return f"{where}: a {type(got).__name__} where the library returns a {type(want).__name__}"
    if g.shape != w.shape:
        return f"{where}: {_shape_message(g, w)}"
    if exact:
        same = bool(torch.equal(g, w)) or bool((g == w).logical_or(g.isnan() & w.isnan()).all())
        return None if same else f"{where}: {_value_message(g, w, 0.0, 0.0)} (this check asks for exact equality)"
    try:
        torch.testing.assert_close(g, w, rtol=rtol, atol=atol, equal_nan=True)
    except AssertionError:
        return f"{where}: {_value_message(g, w, rtol, atol)}"
    return None


# ---------------------------------------------------------------------------------------------
# check and switch
# ---------------------------------------------------------------------------------------------

def _qualified(fn: Callable) -> str:
    module, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None) or repr(fn)
    return f"{module}.{name}" if module and not module.startswith("__") else name


@dataclass
class CheckResult:
    """The outcome of :func:`check`.

    Attributes:
        name: the exercise's function or class, as the notebook calls it.
        status: ``"passed"``, ``"missing"`` (``NotImplementedError``), ``"error"`` (it raised) or ``"wrong"``.
        message: the one line printed by the check.
        student: the student's callable that was checked.
        reference: the library's callable.
    """

    name: str
    status: str
    message: str
    student: Callable
    reference: Callable

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def choose(self, student: Any = None, library: Any = None, *, quiet: bool = False) -> Any:
        """The switch: ``student`` if the check passed, else ``library``; prints which.

        Args:
            student, library: what to choose between (default: the two callables that were checked;
                pass e.g. the classes when the check compared wrappers around them).
            quiet: print nothing.
        """
        student = self.student if student is None else student
        library = self.reference if library is None else library
        chosen = student if self.passed else library
        if not quiet:
            if self.passed:
                print(f"-> the rest of this notebook uses YOUR {self.name}.")
            else:
                why = "is not written yet" if self.status == "missing" else "did not pass its check"
                print(f"-> NOTICE: your {self.name} {why}; the rest of this notebook uses the library's "
                      f"{_qualified(library)} instead.")
        return chosen


def _copy(value: Any) -> Any:
    """A fresh copy of one input (a student's in-place edit must not reach the library's call)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone().requires_grad_(value.requires_grad)
    return copy.deepcopy(value)


def _call(fn: Callable, case: Any) -> Any:
    if isinstance(case, dict):
        return fn(**{k: _copy(v) for k, v in case.items()})
    if isinstance(case, tuple):
        return fn(*[_copy(v) for v in case])
    return fn(_copy(case))


def check(name: str, student: Callable, reference: Callable, cases: Sequence[Any], *, rtol: float = 1e-5,
          atol: float = 1e-6, exact: bool = False, reference_name: str | None = None, quiet: bool = False) -> CheckResult:
    """Call ``student`` and ``reference`` on every case, compare, print one line, return the outcome.

    Args:
        name: how the notebook calls the exercise (``"box_from_mask"``, ``"MyTent"``).
        student: the student's function (or a small wrapper around their class).
        reference: the library's function (or the same wrapper around the library's class).
        cases: inputs: a tuple is ``*args``, a dict ``**kwargs``, anything else one argument. Each
            call gets fresh copies, so an in-place edit cannot leak from one call into the other.
        rtol, atol: tolerances of :func:`torch.testing.assert_close`.
        exact: compare bit for bit instead.
        reference_name: how to name the reference in the printed line (default: its qualified name;
            give one when ``reference`` is a wrapper, e.g. ``"peft's LoRA layer"``).
        quiet: print nothing.

    Returns:
        :class:`CheckResult`. In the instructor's edition (the default) anything but a pass raises
        :class:`ExerciseFailed` with the same message instead.
    """
    if not cases:
        raise ValueError(f"check({name!r}): give at least one input case")
    how = "exactly" if exact else f"within rtol={rtol:g}, atol={atol:g}"
    library = reference_name or f"the library's {_qualified(reference)}"
    status, message = "passed", f"OK {name}: matches {library} {how} on {len(cases)} input(s)."
    for i, case in enumerate(cases):
        with isolated_rng():
            want = _call(reference, case)
        try:
            with isolated_rng():
                got = _call(student, case)
        except NotImplementedError as error:
            status, message = "missing", f"TODO {name} is not written yet ({error})."
            break
        except Exception as error:  # the student's code may raise anything; report it and fall back
            status, message = "error", f"WRONG {name}, input {i + 1}: it raised {type(error).__name__}: {error}"
            break
        problem = diagnose(got, want, rtol=rtol, atol=atol, exact=exact)
        if problem:
            status, message = "wrong", f"WRONG {name}, input {i + 1}, {problem}"
            break
    if status != "passed" and edition() == INSTRUCTOR:
        raise ExerciseFailed(f"{message} [instructor's edition: the answer key must pass its check]")
    if not quiet:
        print(message)
    return CheckResult(name, status, message, student, reference)
