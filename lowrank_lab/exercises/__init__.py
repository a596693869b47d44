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

Where an exercise says "without autograd" or "without <a library function>", its check also accepts the answer as
a *function* of the exercise's inputs and runs it itself (:func:`call_answer`): under ``torch.no_grad()`` with
``backward``/``torch.autograd.grad``/``torch.func`` made to raise (:func:`no_autograd`), or with the library
function it must not use made to raise wherever it is reachable (:func:`forbidden`), and on inputs the student has
not seen as well as on the exercise's own, so a pasted number does not pass either. The old call with the values
is still accepted. No check tells which item of a small discrete answer is wrong: the answers that could be found
by trying the few possible values come with a quantity that has to be computed (an interval, a function).
"""

from __future__ import annotations

import math
import numbers
import sys
from contextlib import ExitStack, contextmanager


class ExerciseError(AssertionError):
    """An exercise's answer is wrong; the message is a hint. In a notebook IPython shows the one line
    ``✗ <exercise>: not yet. <hint>`` instead of a traceback (``_render_traceback_``); it is still an
    AssertionError, so a script or a test stops on it."""

    def _render_traceback_(self) -> list[str]:
        """What IPython shows for it: the hint in one line, not a traceback into the check's code."""
        return [f"✗ {one_line(self)}"]


def one_line(value, limit: int = 400) -> str:
    """``str(value)`` with its whitespace (newlines included) collapsed to single spaces, cut to ``limit``."""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


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


# ---------------------------------------------------------------------------------------------------------------
# Answers given as functions: run under the exercise's rules ("without autograd", "without lrl.X")
# ---------------------------------------------------------------------------------------------------------------
class ForbiddenCall(BaseException):
    """Raised by a function an exercise asks the student to do without, while the student's answer runs. A
    BaseException, so an ``except Exception`` in the answer does not swallow it (and the use is recorded anyway)."""


def _stub(label: str, used: list):
    def forbidden_function(*args, **kwargs):
        used.append(label)
        raise ForbiddenCall(label)

    forbidden_function.__name__ = forbidden_function.__qualname__ = f"forbidden({label})"
    return forbidden_function


def _places(scope: dict | None):
    """Where a student's code can reach a library function: every loaded ``lowrank_lab`` module, scipy's linalg if it
    is loaded, and the student's own globals (the notebook's namespace)."""
    for module_name, module in list(sys.modules.items()):
        if module is not None and (module_name == "lowrank_lab" or module_name.startswith("lowrank_lab.")
                                   or module_name == "scipy.linalg"):
            yield vars(module)
    if scope is not None:
        yield scope


@contextmanager
def forbidden(functions: dict | None = None, names: dict | None = None, scope: dict | None = None, used=None,
              cells=()):
    """While active, every reference to each object of ``functions`` (label -> the function) in the places of
    :func:`_places` and in the closure ``cells`` of the student's function, and each global name of ``names`` (name
    -> label: a lesson's own helper, such as ``twonn_teaching``) in ``scope``, is replaced by a stub that records the
    label in ``used`` and raises :class:`ForbiddenCall`. Everything is put back on exit."""
    used = [] if used is None else used
    functions = functions or {}
    swapped, swapped_cells = [], []
    try:
        for cell in cells:
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            label = next((lab for lab, f in functions.items() if value is f), None)
            if label is not None:
                swapped_cells.append((cell, value))
                cell.cell_contents = _stub(label, used)
        for namespace in _places(scope):
            for key, value in list(namespace.items()):
                label = next((lab for lab, f in functions.items() if value is f), None)
                if label is None and namespace is scope and names and key in names:
                    label = names[key]
                if label is not None:
                    swapped.append((namespace, key, value))
                    namespace[key] = _stub(label, used)
        yield used
    finally:
        for namespace, key, value in reversed(swapped):
            namespace[key] = value
        for cell, value in reversed(swapped_cells):
            cell.cell_contents = value


_AUTOGRAD_ENTRY_POINTS = (
    ("torch.autograd", ("backward", "grad")),
    ("torch.autograd.functional", ("jacobian", "hessian", "vjp", "jvp", "vhp", "hvp")),
    ("torch.func", ("grad", "grad_and_value", "vjp", "jvp", "jacrev", "jacfwd", "hessian")),
)


@contextmanager
def no_autograd(used=None):
    """Autograd off while active: ``torch.no_grad()``, and ``Tensor.backward``, ``torch.autograd.grad`` /
    ``backward``, ``torch.autograd.functional.*`` and ``torch.func``'s transforms replaced by stubs that record
    "autograd" in ``used`` and raise :class:`ForbiddenCall` (``torch.enable_grad()`` inside the answer does not
    bring them back)."""
    import importlib

    import torch

    used = [] if used is None else used
    swapped = []
    try:
        for module_name, attributes in _AUTOGRAD_ENTRY_POINTS:
            try:
                module = importlib.import_module(module_name)
            except ImportError:  # an older torch without torch.func
                continue
            for attribute in attributes:
                if hasattr(module, attribute):
                    swapped.append((module, attribute, getattr(module, attribute)))
                    setattr(module, attribute, _stub(f"autograd (torch: {module_name}.{attribute})", used))
        swapped.append((torch.Tensor, "backward", torch.Tensor.backward))
        torch.Tensor.backward = _stub("autograd (Tensor.backward)", used)
        with torch.no_grad():
            yield used
    finally:
        for owner, attribute, value in reversed(swapped):
            setattr(owner, attribute, value)


def call_answer(name: str, function, *args, functions: dict | None = None, names: dict | None = None,
                autograd: bool = True, rule: str = ""):
    """Run the student's ``function(*args)`` under the exercise's rules and return its result: with ``autograd=False``
    under :func:`no_autograd`, with ``functions``/``names`` made to raise (:func:`forbidden`). Any use of what is
    ruled out, or any exception the answer raises, becomes the one-line hint (:class:`ExerciseError`), never a
    traceback. ``rule`` says what the exercise asks instead."""
    require(name, callable(function), f"the answer must be a function, got {_shown(function)}")
    used: list = []
    inner = getattr(function, "func", function)  # functools.partial: its func's globals and closure
    scope, cells = getattr(inner, "__globals__", None), getattr(inner, "__closure__", None) or ()
    error = None
    with ExitStack() as stack:
        stack.enter_context(forbidden(functions, names, scope, used, cells))
        if not autograd:
            stack.enter_context(no_autograd(used))
        try:
            result = function(*args)
        except ForbiddenCall:
            pass
        except ExerciseError:
            raise
        except Exception as raised:  # the answer's own bug: its message as the hint, in one line
            error = raised
    if used:
        raise ExerciseError(f"{name}: not yet. your function uses {used[0]}, which this exercise rules out"
                            f"{'; ' + rule if rule else ''}.") from None
    if error is not None:
        raise ExerciseError(f"{name}: not yet. your function raised {type(error).__name__}: "
                            f"{one_line(error, 240)}") from None
    return result


def unanswered(result) -> bool:
    """True when a function's result is still the starter's: None, ``...``, or a tuple/list holding one."""
    if result is None or result is Ellipsis:
        return True
    return isinstance(result, (tuple, list)) and any(item is None or item is Ellipsis for item in result)


def function_not_attempted(name: str, result) -> bool:
    """:func:`not_attempted` for the value a student's function returned."""
    if unanswered(result):
        print(f"· {name}: not attempted yet (your function still returns None: fill it in and run the cell again)")
        return True
    return False


def judge_pair_function(name: str, function, cases, judge, returns: str, **call_options) -> bool:
    """A function answer that returns a pair, run by :func:`call_answer` (``call_options``: its forbidden functions,
    ``autograd``, ``rule``) on each of ``cases`` — the exercise's own first, then unseen ones — and each result
    judged by ``judge(result, where, data)``. ``cases`` yields ``(args, where, data)``: the arguments, the prefix a
    hint gets ("" on the exercise's own case) and what ``judge`` needs; it is consumed lazily, so an unseen case is
    built only once the answer was tried. False while the starter still returns None; ✓ once every case is right."""
    for index, (args, where, data) in enumerate(cases):
        result = call_answer(name, function, *args, **call_options)
        if index == 0 and function_not_attempted(name, result):
            return False
        require(name, isinstance(result, (tuple, list)) and len(result) == 2, f"your function must return two {returns}")
        judge(result, where, data)
    return passed(name, True, "")
