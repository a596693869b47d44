"""Self-checking exercises: one module per lesson (``lessonNN.py``) with ``check_...`` functions.

A lesson's exercise cell leaves the student's answer as ``None``; the check then prints that the exercise is
not attempted yet and returns False, so the notebook still runs top to bottom (CI executes every lesson).
Given an answer, a check computes the reference its own way and either prints ``✓ <exercise>`` and returns
True, or raises :class:`ExerciseError` (an AssertionError) with a hint that says what to look at, never the
answer itself. The worked solutions in ``lessons/solutions/`` call the same checks with their answers filled in.
"""

from __future__ import annotations


class ExerciseError(AssertionError):
    """An exercise's answer is wrong; the message is a hint."""


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
        value = torch.as_tensor(answer, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        value = None
    require(name, value is not None and tuple(value.shape) == tuple(shape), hint)
    return value
