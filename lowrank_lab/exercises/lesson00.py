"""Self-checking exercises of lesson 00 (setup, scales and notation).

Each ``check_...`` computes its reference its own way (autograd, the module's own parameter list, the library's
``get_scale``), never from the formula the student is asked to apply, and its hint says where to look, not what
the answer is. Exercise 1 ("without autograd") also takes the answer as a function ``full_gradient(X, target, W,
b) -> (G, dL/db)``, which the check runs with autograd disabled, on the exercise's batch and on one of another
shape.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from unittest import mock

import torch
from torch import nn

from lowrank_lab.exercises import (judge_pair_function, not_attempted, passed, require, tensor_answer, text_answer,
                                   whole_answer)
from lowrank_lab.runtime import SCALE_ENV, get_scale

# ---------------------------------------------------------------------------------------------------------------
# Exercise 1: the full gradient G = δᵀX and the bias gradient, by hand
# ---------------------------------------------------------------------------------------------------------------
GRADIENT_TOY_SHAPE = (6, 4, 3)  # (N, n, m): N rows of n inputs, m outputs


def gradient_toy(seed: int = 0, shape: tuple = GRADIENT_TOY_SHAPE) -> tuple[torch.Tensor, torch.Tensor, nn.Linear]:
    """The batch of exercise 1: ``(X, target, layer)`` in float64, the loss being
    ``L = ((layer(X) - target) ** 2).sum() / 2``. Same seed, same tensors. ``shape`` = (N, n, m)."""
    N, n, m = shape
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(N, n, generator=gen, dtype=torch.float64)
    target = torch.randn(N, m, generator=gen, dtype=torch.float64)
    layer = nn.Linear(n, m).double()
    with torch.no_grad():
        layer.weight.copy_(torch.randn(m, n, generator=gen, dtype=torch.float64))
        layer.bias.copy_(torch.randn(m, generator=gen, dtype=torch.float64))
    return X, target, layer


def _autograd_reference(seed: int, shape: tuple = GRADIENT_TOY_SHAPE) -> tuple[torch.Tensor, torch.Tensor]:
    X, target, layer = gradient_toy(seed, shape)
    with torch.enable_grad():
        loss = ((layer(X) - target) ** 2).sum() / 2
        loss.backward()
    return layer.weight.grad.detach(), layer.bias.grad.detach()


# A second batch, of another shape, on which a function answer must be right too (not shown in the lesson).
_HIDDEN_GRADIENT_CASE = (7, (9, 5, 2))


def _judge_full_gradient(name: str, G, grad_b, ref_G: torch.Tensor, ref_b: torch.Tensor, where: str = "") -> None:
    """Raise the hint unless ``G`` and ``grad_b`` are the reference's (silent when they are)."""
    G, grad_b = tensor_answer(name, G, "G"), tensor_answer(name, grad_b, "∂L/∂b")
    require(name, tuple(G.shape) == tuple(ref_G.shape),
            f"{where}G must have the weight's shape (m, n) = {tuple(ref_G.shape)}, got {tuple(G.shape)}; which of δ "
            "and X is transposed?")
    require(name, torch.allclose(G, ref_G, rtol=1e-9, atol=1e-9),
            f"{where}G has the right shape but not the right values: is δ = ∂L/∂Y for THIS loss (mind the 1/2 and "
            "the sum), and is the product δᵀX, not Xᵀδ or δX?")
    require(name, tuple(grad_b.reshape(-1).shape) == tuple(ref_b.shape),
            f"{where}∂L/∂b has one entry per output feature ({ref_b.numel()}), got shape {tuple(grad_b.shape)}; "
            "over which axis of δ do you sum?")
    require(name, torch.allclose(grad_b.reshape(-1), ref_b, rtol=1e-9, atol=1e-9),
            f"{where}∂L/∂b has the right shape but not the right values: b is added to every row of Y, so every "
            "row's δ contributes to it.")


def check_full_gradient(G, grad_b=None, seed: int = 0) -> bool:
    """Exercise 1: ``G`` = ∂L/∂W (m × n) and ``grad_b`` = ∂L/∂b (m) of :func:`gradient_toy`'s loss.

    ``G`` may instead be a function ``full_gradient(X, target, W, b) -> (G, grad_b)`` (``grad_b`` left out): the
    check then runs it with autograd disabled (``backward`` and ``torch.autograd.grad`` raise), on the exercise's
    batch and on a batch of another shape, so the rule "without autograd" is enforced."""
    name = "Exercise 1 (G = δᵀX and ∂L/∂b)"
    if callable(G):
        def cases():
            for index, (case_seed, shape) in enumerate(((seed, GRADIENT_TOY_SHAPE), _HIDDEN_GRADIENT_CASE)):
                X, target, layer = gradient_toy(case_seed, shape)
                W, b = layer.weight.detach().clone(), layer.bias.detach().clone()
                where = "" if index == 0 else (f"right on the exercise's batch, but on a batch of shape (N, n, m) = "
                                               f"{shape}: use only the function's arguments (no fixed sizes); ")
                yield (X.clone(), target.clone(), W, b), where, (case_seed, shape)

        return judge_pair_function(
            name, G, cases(), lambda result, where, case: _judge_full_gradient(
                name, result[0], result[1], *_autograd_reference(*case), where=where),
            "tensors: (G, ∂L/∂b)", autograd=False, rule="compute δ = ∂L/∂Y, G and ∂L/∂b with tensor operations")
    if not_attempted(name, G, grad_b):
        return False
    _judge_full_gradient(name, G, grad_b, *_autograd_reference(seed))
    return passed(name, True, "")


# ---------------------------------------------------------------------------------------------------------------
# Exercise 2: counting the parameters of a linear layer
# ---------------------------------------------------------------------------------------------------------------
def check_linear_parameter_count(weights, total, in_features: int = 384, out_features: int = 1536) -> bool:
    """Exercise 2: the number of entries of ``nn.Linear(in_features, out_features).weight`` (``weights``) and
    of all its parameters, bias included (``total``)."""
    name = "Exercise 2 (parameters of nn.Linear)"
    if not_attempted(name, weights, total):
        return False
    layer = nn.Linear(in_features, out_features, device="meta")  # shapes only, no memory
    ref_weights = layer.weight.numel()
    ref_total = sum(p.numel() for p in layer.parameters())
    weights, total = whole_answer(name, weights, "the weight count"), whole_answer(name, total, "the total")
    require(name, weights == ref_weights,
           "the weight count is not right: what is the weight's shape (out, in), and how many entries does it hold?")
    return passed(name, total == ref_total,
                  "the weight count is right but the total is not: which other parameter does nn.Linear hold, "
                  "and how long is it?")


# ---------------------------------------------------------------------------------------------------------------
# Exercise 3: which scale runs?
# ---------------------------------------------------------------------------------------------------------------
SCALE_CASES = (  # (SCALE parameter, $LOWRANK_LAB_SCALE, CUDA available)
    (None, None, False),
    (None, None, True),
    (None, "smoke", True),
    ("cpu", "smoke", False),
    ("full", None, False),
    (None, "cpu", True),
)


@contextmanager
def _scale_env(value):
    old = os.environ.get(SCALE_ENV)
    if value is None:
        os.environ.pop(SCALE_ENV, None)
    else:
        os.environ[SCALE_ENV] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(SCALE_ENV, None)
        else:
            os.environ[SCALE_ENV] = old


def resolved_scale(parameter, env, cuda: bool) -> str:
    """What ``lrl.get_scale(parameter)`` returns with ``$LOWRANK_LAB_SCALE = env`` (None: unset) on a machine
    with (``cuda=True``) or without a CUDA GPU; the reference of exercise 3 (it runs the library's function)."""
    with _scale_env(env), mock.patch("torch.cuda.is_available", return_value=cuda):
        return get_scale(parameter)


def check_scale_predictions(predictions, cases=SCALE_CASES) -> bool:
    """Exercise 3: ``predictions`` = the scale that runs in each of ``cases``, in order."""
    name = "Exercise 3 (which scale runs)"
    if not_attempted(name, predictions):
        return False
    try:
        predictions = None if isinstance(predictions, str) else list(predictions)
    except TypeError:
        predictions = None
    require(name, predictions is not None, f"give a list of {len(cases)} scale names, one per case")
    require(name, len(predictions) == len(cases), f"give one prediction per case: {len(cases)} cases, "
                                                 f"got {len(predictions)}")
    # each guess as a plain str: an object whose __eq__ says yes to everything does not pass
    guesses = [text_answer(name, guess, f"case {i}'s prediction (a scale name such as 'cpu')")
               for i, guess in enumerate(predictions)]
    right = all(resolved_scale(*case) == guess for case, guess in zip(cases, guesses))
    # No case is named: with three scales per case, naming the wrong ones would let them be found by trying.
    return passed(name, right, "not every prediction is right: which of the parameter, the environment variable "
                               "and auto-detection wins when more than one is set, and what does auto-detection "
                               "pick with and without CUDA?")
