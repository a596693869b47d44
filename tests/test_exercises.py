"""The exercise helpers: an unanswered exercise is reported, never an error; a wrong one raises its hint."""

import pytest

from lowrank_lab.exercises import ExerciseError, not_attempted, passed, require


def test_an_unanswered_exercise_is_reported_not_failed(capsys):
    assert not_attempted("ex 1", None) and not_attempted("ex 1", 3, ...)
    assert "not attempted yet" in capsys.readouterr().out
    assert not not_attempted("ex 1", 3, [0])


def test_a_wrong_answer_raises_its_hint_and_a_right_one_passes(capsys):
    with pytest.raises(ExerciseError, match="ex 2: not yet. look at the rank"):
        passed("ex 2", False, "look at the rank")
    assert passed("ex 2", True, "unused") and "✓ ex 2" in capsys.readouterr().out
    assert issubclass(ExerciseError, AssertionError)


def test_a_check_step_raises_its_hint_silently_passes_otherwise(capsys):
    require("ex 3", True, "unused")
    assert capsys.readouterr().out == ""
    with pytest.raises(ExerciseError, match="ex 3: not yet. the shape"):
        require("ex 3", False, "the shape")


# ------------------------------------------------------------------ issue 22, items 19-21: answers read by value


class AlwaysEqual:
    """A hostile answer: equal to everything, unequal to nothing."""

    def __eq__(self, other):
        return True

    def __ne__(self, other):
        return False

    __hash__ = object.__hash__


def test_22_a_wrong_answer_shows_as_one_line_in_a_notebook_not_a_traceback():
    error = ExerciseError("ex 1: not yet. look at the rank")
    assert error._render_traceback_() == ["✗ ex 1: not yet. look at the rank"]  # what IPython prints


def test_22_numbers_are_read_by_value_whatever_their_container():
    import numpy as np
    import torch

    from lowrank_lab.exercises import number_answer, number_list, text_answer, whole_answer

    for right in (7, 7.0, np.int64(7), np.float32(7), torch.tensor(7), torch.tensor([7.0]), np.array(7), np.array([7])):
        assert whole_answer("ex", right, "the count") == 7 and number_answer("ex", right, "x") == 7.0
    for wrong in (7.5, 589824.9, float("nan"), float("inf"), "7", "1.5e6", True, AlwaysEqual(), [7], None,
                  torch.tensor([1, 2]), torch.tensor(True)):
        with pytest.raises(ExerciseError, match="must be a whole number"):
            whole_answer("ex", wrong, "the count")
    with pytest.raises(ExerciseError, match="finite number"):
        number_answer("ex", float("nan"), "the slope")
    assert number_list("ex", frozenset({2.0}), "x") == [2.0]
    assert number_list("ex", np.array([[1, 2]]), "x") == [1.0, 2.0]
    assert number_list("ex", 3, "x", single=True) == [3.0]
    for wrong in ("12", 3, [1, "a"], [AlwaysEqual()], {"a": 1}):
        with pytest.raises(ExerciseError, match="list of finite numbers"):
            number_list("ex", wrong, "x")
    assert type(text_answer("ex", type("S", (str,), {"__eq__": lambda s, o: True})("cpu"), "x")) is str
    with pytest.raises(ExerciseError, match="must be a string"):
        text_answer("ex", AlwaysEqual(), "the verdict")
