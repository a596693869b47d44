"""Self-checking exercises: one module per lesson (``lessonNN.py``) with ``check_...`` functions.

A lesson's exercise cell leaves the student's answer as ``None``; the check then prints that the exercise is
not attempted yet and returns False, so the notebook still runs top to bottom (CI executes every lesson).
Given an answer, a check computes the reference its own way and either prints ``✓ <exercise>`` and returns
True, or raises :class:`ExerciseError` (an AssertionError) with a hint that says what to look at, never the
answer itself; in a notebook that error shows as its one line, without a traceback. The worked solutions in
``lessons/solutions/`` call the same checks with their answers filled in.

An answer is read by value before it is compared (:func:`number_answer`, :func:`whole_answer`,
:func:`number_list`, :func:`tensor_answer`, :func:`text_answer`): a number may come as an int, a float, a numpy
scalar or a one-element array or tensor; a count must be a whole number (589824.9 is not 589824); a string, a
NaN or an object that claims to equal everything gets the hint, never a pass and never a raw exception.
"""

from __future__ import annotations

import math
import numbers
import sys


class ExerciseError(AssertionError):
    """An exercise's answer is wrong; the message is a hint."""

    def _render_traceback_(self) -> list[str]:
        """What IPython shows for it: the hint in one line, not a traceback into the check's code."""
        return [f"{type(self).__name__}: {self}"]


def not_attempted(name: str, *answers) -> bool:
    """True (and a printed note) while any of ``answers`` is still ``None``/``...``, the starter cell's value."""
    if any(a is None or a is Ellipsis for a in answers):
        print(f"· {name}: not attempted yet (replace the None above and run the cell again)")
        return True
    return False


def passed(name: str, condition: bool, hint: str) -> bool:
    """Print ``✓ name`` and return True when ``condition`` holds, else raise :class:`ExerciseError` with ``hint``."""
    if not condition:
        raise ExerciseError(f"{name}: not yet. {hint}")
    print(f"✓ {name}")
    return True


def require(name: str, condition: bool, hint: str) -> None:
    """A step of a multi-part check (e.g. the answer's shape): raise the hint as :func:`passed` does unless
    ``condition`` holds; print nothing."""
    if not condition:
        raise ExerciseError(f"{name}: not yet. {hint}")


def matrix_answer(name: str, answer, shape: tuple, hint: str):
    """The answer as a float64 torch tensor of ``shape``; the hint (raised as :func:`require` does) when it
    cannot be read as a number array or has another shape."""
    import torch  # only the checks that take matrices need it

    try:
        value = None if isinstance(answer, (str, bytes)) else torch.as_tensor(answer, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        value = None
    require(name, value is not None and tuple(value.shape) == tuple(shape), hint)
    return value


def _shown(value) -> str:
    text = repr(value)
    return f"{text if len(text) <= 60 else text[:57] + '...'} ({type(value).__name__})"


def _one_number(value):
    """A Python int or float holding ``value``'s number, or None: an int, a float, a numpy scalar, a one-element
    numpy array or torch tensor of ints or floats. Not a bool, a string, or anything else that is not a number."""
    if isinstance(value, (bool, str, bytes)):
        return None
    torch = sys.modules.get("torch")  # a tensor answer means torch is imported already
    if torch is not None and isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dtype == torch.bool or value.is_complex():
            return None
        value = value.detach().cpu().reshape(()).item()
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, (numpy.ndarray, numpy.generic)):
        if value.size != 1 or value.dtype.kind not in "iuf":
            return None
        value = value.reshape(()).item()
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return None


def _finite(value) -> bool:
    return isinstance(value, int) or (value is not None and math.isfinite(value))


def number_answer(name: str, answer, what: str) -> float:
    """``answer`` as a finite float (an int, a float, a numpy scalar, a one-element array or tensor); otherwise the
    hint, raised as :func:`require` does, naming what was given."""
    value = _one_number(answer)
    require(name, _finite(value), f"{what} must be a finite number (an int or a float, or a one-element array or "
                                  f"tensor), got {_shown(answer)}")
    return float(value)


def whole_answer(name: str, answer, what: str) -> int:
    """``answer`` as an int when it is a whole number (3, 3.0, a 0-d integer tensor); 589824.9 is not one, and
    neither is "1.5e6": the hint, raised as :func:`require` does, naming what was given."""
    value = _one_number(answer)
    whole = _finite(value) and (isinstance(value, int) or float(value).is_integer())
    require(name, whole, f"{what} must be a whole number (an int), got {_shown(answer)}")
    return int(value)


def number_list(name: str, answers, what: str, single: bool = False) -> list[float]:
    """The numbers of ``answers`` (a list, tuple, set, frozenset, numpy array or tensor; with ``single`` a lone
    number too) as finite floats; otherwise the hint, raised as :func:`require` does."""
    items = None
    if single and _one_number(answers) is not None:
        items = [answers]
    elif not isinstance(answers, (str, bytes, dict)):
        torch, numpy = sys.modules.get("torch"), sys.modules.get("numpy")
        if torch is not None and isinstance(answers, torch.Tensor):
            answers = answers.detach().cpu().reshape(-1)
        elif numpy is not None and isinstance(answers, numpy.ndarray):
            answers = answers.reshape(-1)
        try:
            items = list(answers)
        except TypeError:
            items = None
    values = [_one_number(item) for item in items] if items is not None else [None]
    require(name, all(_finite(v) for v in values),
            f"{what} must be a list of finite numbers{' (or one number)' if single else ''}, got {_shown(answers)}")
    return [float(v) for v in values]


def text_answer(name: str, answer, what: str) -> str:
    """``answer`` as a plain ``str`` (a str subclass is copied into one, so its own ``__eq__`` does not decide);
    anything else is the hint, raised as :func:`require` does."""
    require(name, isinstance(answer, str), f"{what} must be a string, got {_shown(answer)}")
    return str.__str__(answer)


def tensor_answer(name: str, answer, what: str):
    """``answer`` as a float64 torch tensor (a tensor, an array, nested lists of numbers); otherwise the hint,
    raised as :func:`require` does."""
    import torch

    try:
        value = None if isinstance(answer, (str, bytes)) else torch.as_tensor(answer, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        value = None
    require(name, value is not None, f"{what} must be a tensor of numbers (a tensor, an array or nested lists), "
                                     f"got {_shown(answer)}")
    return value
