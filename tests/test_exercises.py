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
