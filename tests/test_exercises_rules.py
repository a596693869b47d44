"""Issue 24, item 4: "without autograd / without lrl.X" is enforced where a check can (the answer as a function, run
with autograd disabled or the library function made to raise, on inputs the student has not seen too), a wrong
answer is one line, and no check can be passed by trying the few possible values."""

import math
import statistics

import numpy as np
import pytest
import torch

import lowrank_lab as lrl
from lowrank_lab import forgetting, stats
from lowrank_lab.exercises import ExerciseError, call_answer, forbidden, no_autograd
from lowrank_lab.exercises import lesson00 as ex00
from lowrank_lab.exercises import lesson01 as ex01
from lowrank_lab.exercises import lesson02 as ex02
from lowrank_lab.exercises import lesson03 as ex03
from lowrank_lab.exercises import lesson04 as ex04
from lowrank_lab.exercises import lesson05 as ex05
from lowrank_lab.exercises import lesson06 as ex06
from lowrank_lab.exercises import lesson07 as ex07
from lowrank_lab.exercises import lesson08 as ex08


def one_line_hint(error: ExerciseError) -> str:
    """What IPython prints for a wrong answer: exactly one line."""
    lines = error._render_traceback_()
    assert len(lines) == 1 and "\n" not in lines[0]
    return lines[0]


# ------------------------------------------------------------------ the machinery


def test_no_autograd_blocks_every_entry_point_and_restores_them():
    originals = (torch.Tensor.backward, torch.autograd.grad, torch.autograd.backward, torch.func.grad)
    for attempt in (lambda w: (w * w).sum().backward(), lambda w: torch.autograd.grad((w * w).sum(), w),
                    lambda w: torch.func.grad(lambda v: (v * v).sum())(w),
                    lambda w: torch.autograd.functional.jacobian(lambda v: v * v, w)):
        def answer(w):
            with torch.enable_grad():  # turning grad mode back on does not bring autograd back
                attempt(w.clone().requires_grad_(True))
            return w

        with pytest.raises(ExerciseError, match="uses autograd") as info:
            call_answer("ex", answer, torch.ones(3), autograd=False)
        one_line_hint(info.value)
    assert (torch.Tensor.backward, torch.autograd.grad, torch.autograd.backward, torch.func.grad) == originals
    with no_autograd() as used:
        assert not torch.is_grad_enabled()
    assert used == [] and torch.is_grad_enabled()


def test_forbidden_reaches_module_attributes_the_notebook_namespace_and_survives_except_exception():
    namespace = {"solve": lrl.solve_sylvester, "lrl": lrl}
    exec("def answer(P, Q, C):\n"
         "    try:\n"
         "        return solve(P, Q, C)\n"
         "    except Exception:\n"       # a ForbiddenCall is not an Exception: it is not swallowed
         "        return lrl.solve_sylvester(P, Q, C)\n", namespace)
    eye = torch.eye(2, dtype=torch.float64)
    with pytest.raises(ExerciseError, match="uses lrl.solve_sylvester"):
        call_answer("ex", namespace["answer"], eye, eye, eye, functions={"lrl.solve_sylvester": lrl.solve_sylvester})
    assert namespace["solve"] is lrl.solve_sylvester  # put back
    assert lrl.solve_sylvester.__name__ == "solve_sylvester"
    with forbidden(names={"helper": "the lesson's helper"}, scope=namespace) as used:
        pass
    assert used == []


def test_an_answer_that_raises_gets_its_error_as_a_one_line_hint():
    def broken(X):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied\n(6x4 and 3x4)")

    with pytest.raises(ExerciseError, match="your function raised RuntimeError: mat1 .* \\(6x4 and 3x4\\)") as info:
        call_answer("ex", broken, 1)
    one_line_hint(info.value)
    with pytest.raises(ExerciseError, match="must be a function"):
        call_answer("ex", 3)


# ------------------------------------------------------------------ lesson 00 and 01: without autograd


def full_gradient(X, target, W, b):
    delta = X @ W.T + b - target
    return delta.T @ X, delta.sum(0)


def full_gradient_by_autograd(X, target, W, b):
    W, b = W.clone().requires_grad_(True), b.clone().requires_grad_(True)
    with torch.enable_grad():
        (((X @ W.T + b - target) ** 2).sum() / 2).backward()
    return W.grad, b.grad


def test_00_full_gradient_as_a_function(capsys):
    assert ex00.check_full_gradient(full_gradient)
    assert capsys.readouterr().out.count("✓") == 1
    with pytest.raises(ExerciseError, match="uses autograd"):
        ex00.check_full_gradient(full_gradient_by_autograd)
    X, target, layer = ex00.gradient_toy()
    G, grad_b = full_gradient(X, target, layer.weight.detach(), layer.bias.detach())
    with pytest.raises(ExerciseError, match="another shape|use only the function's arguments"):
        ex00.check_full_gradient(lambda *args: (G, grad_b))  # the exercise's numbers, pasted
    assert ex00.check_full_gradient(lambda *args: (None, None)) is False
    assert "not attempted yet" in capsys.readouterr().out
    assert ex00.check_full_gradient(G, grad_b)  # the older call with values still passes


def lora_gradients(X, target, W0, b, A, B, s):
    G = (X @ (W0 + s * B @ A).T + b - target).T @ X
    return s * B.T @ G, s * G @ A.T


def test_01_lora_gradients_as_a_function():
    assert ex01.check_lora_gradients(lora_gradients)

    def by_autograd(X, target, W0, b, A, B, s):
        A, B = A.clone().requires_grad_(True), B.clone().requires_grad_(True)
        with torch.enable_grad():
            (((X @ (W0 + s * B @ A).T + b - target) ** 2).sum() / 2).backward()
        return A.grad, B.grad

    with pytest.raises(ExerciseError, match="uses autograd"):
        ex01.check_lora_gradients(by_autograd)
    with pytest.raises(ExerciseError, match="another shape|no fixed sizes"):
        ex01.check_lora_gradients(lambda X, t, W0, b, A, B, s: lora_gradients(X, t, W0, b, A, B, 2.0))  # s typed in


def test_01_rank_stabilisation_slope_as_a_function_and_no_single_number_hint():
    assert ex01.check_rank_stabilization(0.5, lambda beta: 1 - 2 * beta)
    assert ex01.check_rank_stabilization(0.5, -1.0)  # the older call: the slope at beta = 1
    for wrong_slope in (lambda beta: -1.0, lambda beta: 0.5 - beta):  # right at beta = 1 only / the "independent" rule
        with pytest.raises(ExerciseError, match="slope function is off"):
            ex01.check_rank_stabilization(0.5, wrong_slope)
    with pytest.raises(ExerciseError, match="at which ψ is that slope zero"):
        ex01.check_rank_stabilization(1.0, lambda beta: 1 - 2 * beta)
    for beta, slope in ((1.0, -1.0), (0.5, -0.5)):  # one number wrong: the hint does not say which
        with pytest.raises(ExerciseError, match="not both right"):
            ex01.check_rank_stabilization(beta, slope)


def test_00_01_checks_print_one_tick(capsys):
    assert ex01.check_lora_parameter_count(8 * (384 + 1536), 8 * (384 + 1536) / (384 * 1536))
    X, target, layer = ex01.lora_toy()
    assert ex01.check_lora_gradients(*lora_gradients(X, target, layer.base_layer.weight.detach(),
                                                     layer.base_layer.bias.detach(), layer.lora_A.detach(),
                                                     layer.lora_B.detach(), layer.scaling))
    assert ex00.check_linear_parameter_count(384 * 1536, 384 * 1536 + 1536)
    assert capsys.readouterr().out.count("✓") == 3


# ------------------------------------------------------------------ lesson 02: without lrl


@pytest.fixture
def lora_pro_matrices():
    gen = torch.Generator().manual_seed(2)
    A = torch.randn(3, 7, generator=gen, dtype=torch.float64)
    B = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    G = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    return A, B, G, 1.5


def projection(A, B, G):
    P_B = B @ torch.linalg.inv(B.T @ B) @ B.T
    P_A = A.T @ torch.linalg.inv(A @ A.T) @ A
    return P_B @ G + (torch.eye(B.shape[0], dtype=G.dtype) - P_B) @ G @ P_A


def sylvester(A, B, G, s):
    BtB, AAt = B.T @ B, A @ A.T
    C = -torch.linalg.inv(BtB) @ (s * B.T @ G) @ A.T / s**2
    beta, U = torch.linalg.eigh(BtB)
    gamma, V = torch.linalg.eigh(AAt)
    return U @ ((U.T @ C @ V) / (beta[:, None] + gamma[None, :])) @ V.T


def test_02_answers_as_functions_pass_and_the_library_is_refused(lora_pro_matrices):
    A, B, G, s = lora_pro_matrices
    assert ex02.check_equivalent_gradient(lambda A, B, G, s: s**2 * (B @ B.T @ G + G @ A.T @ A), A, B, G, s)
    assert ex02.check_projection(projection, A, B, G)
    assert ex02.check_sylvester(sylvester, A, B, G, s)
    with pytest.raises(ExerciseError, match="uses lrl.equivalent_gradient"):
        ex02.check_equivalent_gradient(lambda A, B, G, s: lrl.equivalent_gradient(A, B, s * B.T @ G, s * G @ A.T, s),
                                       A, B, G, s)
    with pytest.raises(ExerciseError, match="uses lrl.solve_sylvester"):
        ex02.check_sylvester(lambda A, B, G, s: lrl.solve_sylvester(
            B.T @ B, A @ A.T, -torch.linalg.inv(B.T @ B) @ (s * B.T @ G) @ A.T / s**2), A, B, G, s)
    scipy_linalg = pytest.importorskip("scipy.linalg")

    def with_scipy(A, B, G, s):
        C = -torch.linalg.inv(B.T @ B) @ (s * B.T @ G) @ A.T / s**2
        return torch.from_numpy(scipy_linalg.solve_sylvester((B.T @ B).numpy(), (A @ A.T).numpy(), C.numpy()))

    with pytest.raises(ExerciseError, match="scipy.linalg.solve_sylvester"):
        ex02.check_sylvester(with_scipy, A, B, G, s)
    pasted = sylvester(A, B, G, s)
    with pytest.raises(ExerciseError, match="another set"):
        ex02.check_sylvester(lambda *args: pasted, A, B, G, s)


# ------------------------------------------------------------------ lesson 03 and 07: small answers, one hint


def test_03_merged_ranks_hint_names_no_entry():
    right = [min(2 * p, 10) for p in range(1, 9)]
    with pytest.raises(ExerciseError, match="not every entry is right") as info:
        ex03.check_merged_ranks(right[:-1] + [9], 2, 12, 10, 8)
    assert "[8]" not in str(info.value) and "p in" not in str(info.value)


def test_03_rounds_are_judged_only_after_the_trained_count():
    shapes = {"query": (384, 384), "value": (384, 384)}
    with pytest.raises(ExerciseError, match="trained numbers per step are wrong"):
        ex03.check_rounds_and_trained(31, 1, 128, 4, 6, 2, 1, shapes)  # both wrong: the count's hint comes first


def test_07_parts_are_not_judged_one_by_one():
    for spacing, flushed in ((2.0, [2e-8]), (4.0, [3e-8, 2e-8])):
        with pytest.raises(ExerciseError, match="not both right"):
            ex07.check_low_precision(spacing, flushed)
    for answer in ((32, 32, 4), (128, 8, 16), (128, 32, 1)):
        with pytest.raises(ExerciseError, match="not all three right"):
            ex07.check_global_batch(*answer)
    with pytest.raises(ExerciseError, match="not all three right"):
        ex07.check_global_batch(128, 10**12, 4)  # a huge batch is refused without allocating it


# ------------------------------------------------------------------ lesson 04 and 05: without the library


def bone_as_lora(D, n):
    r = D.shape[0]
    E = torch.zeros(r, n, dtype=D.dtype)
    for i in range(n):
        E[i % r, i] = 1.0
    return E, D.T.clone()


def test_04_bone_as_lora_as_a_function():
    from lowrank_lab.layers.bone import tiled_identity

    D = torch.randn(4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert ex04.check_bone_as_lora(D, 14, bone_as_lora)
    with pytest.raises(ExerciseError, match="uses lowrank_lab.layers.bone.tiled_identity"):
        ex04.check_bone_as_lora(D, 14, lambda D, n: (tiled_identity(D.shape[0], n, D.dtype), D.T))
    E, B = bone_as_lora(D, 14)
    with pytest.raises(ExerciseError, match="not for r = 3"):
        ex04.check_bone_as_lora(D, 14, lambda *args: (E, B))
    assert ex04.check_bone_as_lora(D, 14, E, B)  # the older call


def twonn(X):
    points = np.unique(X, axis=0)
    n = len(points)
    dist = np.linalg.norm(points[:, None] - points[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    rho1, rho2 = np.sort(dist, axis=1)[:, :2].T
    mu = np.sort(rho2 / rho1)
    keep = min(int(n * 0.9), n - 1)
    x, y = np.log(mu[:keep]), -np.log(1 - np.arange(1, keep + 1) / n)
    return float(x @ y / (x @ x))


def allocate(lb):
    cost = 2 * (384 + 384)
    budget = 8 * cost * len(lb)
    real = [budget / (cost * sum(b + 1 for b in lb)) * (b + 1) for b in lb]
    ranks = [max(1, math.floor(v)) for v in real]
    for i in sorted(range(len(real)), key=lambda k: -(real[k] - math.floor(real[k]))):
        if abs(sum(ranks) * cost + cost - budget) < abs(sum(ranks) * cost - budget):
            ranks[i] += 1
    return ranks


def test_05_twonn_and_allocation_as_functions():
    cloud = ex05.twonn_cloud()
    assert ex05.check_twonn(cloud, twonn)
    with pytest.raises(ExerciseError, match="uses gelora.intrinsic_dimension"):
        ex05.check_twonn(cloud, lambda X: lrl.intrinsic_dimension(X))
    namespace = {}
    exec("def twonn_teaching(X):\n    return 4.0\ndef answer(X):\n    return twonn_teaching(X)\n", namespace)
    with pytest.raises(ExerciseError, match="the lesson's twonn_teaching"):
        ex05.check_twonn(cloud, namespace["answer"])
    d_hat = twonn(cloud)
    with pytest.raises(ExerciseError, match="another one"):
        ex05.check_twonn(cloud, lambda X: d_hat)
    assert ex05.check_rank_allocation(allocate)
    from lowrank_lab.methods import gelora

    with pytest.raises(ExerciseError, match="uses gelora.allocate_ranks"):
        ex05.check_rank_allocation(lambda lb: gelora.allocate_ranks(None, None))
    fixed = allocate([max(b - a, 0.0) for a, b in zip(ex05.ID_PROFILE[:-1], ex05.ID_PROFILE[1:])])
    with pytest.raises(ExerciseError, match="not for lb ="):
        ex05.check_rank_allocation(lambda lb: fixed)


# ------------------------------------------------------------------ lesson 06: nothing found by trying


def select(grid):
    finished = [g for g in grid if g["status"] == "ok" and g["validation"] is not None]
    loss = lambda g: g["validation_loss"] if g["validation_loss"] is not None else math.inf
    return min(finished, key=lambda g: (-g["validation"], loss(g), g["lr"]))["lr"]


def test_06_selection_as_a_function_is_run_on_grids_with_ties_and_divergence():
    grid = ex06.HIDDEN_GRIDS[0]
    assert ex06.check_selected_rate(grid, select)
    wrong_rules = (lambda g: max((x for x in g if x["validation"] is not None), key=lambda x: x["validation"])["lr"],
                   lambda g: min((x for x in g if x["status"] == "ok"), key=lambda x: (-x["validation"], x["lr"]))["lr"])
    for wrong in wrong_rules:  # diverged runs kept / loss ignored
        with pytest.raises(ExerciseError, match="select the rate"):
            ex06.check_selected_rate(grid, wrong)
    assert ex06.check_selected_rate(grid, select(grid))  # the older call


def paired_interval(method, baseline):
    seeds = sorted(set(method) & set(baseline))
    d = [method[s] - baseline[s] for s in seeds]
    half = stats.t_quantile(0.975, len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d))
    mean = statistics.fmean(d)
    return mean, mean - half, mean + half


def test_06_paired_interval_as_a_function_without_paired_difference():
    a, b = {0: 0.80, 1: 0.82, 2: 0.79}, {0: 0.78, 1: 0.80, 2: 0.79}
    assert ex06.check_paired_interval(a, b, paired_interval)
    with pytest.raises(ExerciseError, match="uses stats.paired_difference"):
        ex06.check_paired_interval(a, b, lambda m, n: (lambda p: (p["mean"], *p["ci95"]))(stats.paired_difference(m, n)))

    def all_seeds(method, baseline):  # pairs by position, not by seed
        d = [x - y for x, y in zip(method.values(), baseline.values())]
        half = stats.t_quantile(0.975, len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d))
        return statistics.fmean(d), statistics.fmean(d) - half, statistics.fmean(d) + half

    with pytest.raises(ExerciseError, match="pair only the seeds both have"):
        ex06.check_paired_interval(a, b, all_seeds)


def test_06_outcomes_need_the_intervals_and_cover_all_four_and_no_verdict():
    claims = ex06.OUTCOME_CLAIMS
    outcomes = {c: ex06.claim_outcome(d) for c, d in claims.items()}
    assert set(outcomes.values()) == set(stats.OUTCOMES) | {stats.NO_VERDICT}
    intervals = {c: ex06.claim_intervals(d) for c, d in claims.items()}
    for c, d in claims.items():  # the reference is the library's paired interval
        paired = stats.paired_difference(dict(d), {s: 0.0 for s in d})
        assert intervals[c] == pytest.approx(paired["ci95"]) if paired["ci95"] else intervals[c] is None
    assert ex06.check_verdict(claims, 0.0, outcomes, intervals)
    # Trying outcomes without the intervals does not pass
    with pytest.raises(ExerciseError, match="one entry per claim"):
        ex06.check_verdict(claims, 0.0, outcomes, {})
    with pytest.raises(ExerciseError, match="the 95% interval is mean"):
        ex06.check_verdict(claims, 0.0, outcomes, {**intervals, "bat vs bone": [0.0, 0.04]})
    # A wrong outcome: the hint names no claim
    for claim in claims:
        for other in set(stats.OUTCOMES) - {outcomes[claim]}:
            with pytest.raises(ExerciseError, match="not every outcome is") as info:
                ex06.check_verdict(claims, 0.0, {**outcomes, claim: other}, intervals)
            assert not any(c in str(info.value) for c in claims)
    assert ex06.check_verdict(claims, 0.0, None, None) is False
    assert ex06.check_verdict([-0.004, 0.011], 0.0, "inconclusive")  # the older call


def test_06_seeds_needed_asks_for_the_half_widths_too():
    n = ex06.seeds_needed(0.01, 0.006)
    widths = [ex06.half_width(0.01, n - 1), ex06.half_width(0.01, n)]
    assert widths[0] >= 0.006 > widths[1]
    assert ex06.check_seeds_needed(0.01, 0.006, n, widths)
    for guess in range(2, 40):  # trying every n with made-up widths passes nowhere
        with pytest.raises(ExerciseError, match="Give the first n where it holds") as info:
            ex06.check_seeds_needed(0.01, 0.006, guess, [0.007, 0.005])
        assert "too small" not in str(info.value) and "too large" not in str(info.value)
    with pytest.raises(ExerciseError):  # the right widths for a wrong n
        ex06.check_seeds_needed(0.01, 0.006, n + 1, [ex06.half_width(0.01, n), ex06.half_width(0.01, n + 1)])
    assert ex06.check_seeds_needed(0.01, 0.006, n, None) is False  # the new starter cell: not attempted
    assert ex06.check_seeds_needed(0.01, 0.006, n)  # the older call


# ------------------------------------------------------------------ lesson 08: without forgetting


def intruders(W0, W):
    U0 = torch.linalg.svd(W0, full_matrices=False).U
    U = torch.linalg.svd(W, full_matrices=False).U[:, :10]
    max_cos = (U.T @ U0).abs().amax(dim=1)
    return max_cos, int((max_cos < 0.5).sum())


def update_ranks(delta):
    s = torch.linalg.svdvals(delta)
    s = s[s > 1e-9 * s[0]]
    p = s / s.sum()
    energy = torch.cumsum(s**2, 0) / (s**2).sum()
    return float(torch.exp(-(p * p.log()).sum())), int((energy < 0.9).sum()) + 1


def leaks(A, B, G, basis, s):
    m, n = G.shape
    outside = torch.eye(n, dtype=G.dtype) - basis @ basis.T
    P_B = B @ torch.linalg.inv(B.T @ B) @ B.T
    P_A = A.T @ torch.linalg.inv(A @ A.T) @ A
    lora = s**2 * (B @ B.T @ G + G @ A.T @ A)
    pro = P_B @ G + (torch.eye(m, dtype=G.dtype) - P_B) @ G @ P_A
    return float((lora @ outside).norm() / lora.norm()), float((pro @ outside).norm() / pro.norm())


def test_08_answers_as_functions_and_forgetting_refused():
    W0, W = ex08.intruder_exercise()
    assert ex08.check_intruders(W0, W, intruders)
    with pytest.raises(ExerciseError, match="uses forgetting.intruder_dimensions") as info:
        ex08.check_intruders(W0, W, lambda a, b: (forgetting.intruder_dimensions(a, b)["max_cos"], 1))
    assert one_line_hint(info.value).startswith("✗ Exercise 1")
    assert ex08.check_update_ranks(ex08.update_exercise(), update_ranks)
    with pytest.raises(ExerciseError, match="uses forgetting.spectrum_ranks"):
        ex08.check_update_ranks(ex08.update_exercise(), lambda d: tuple(
            forgetting.spectrum_ranks(torch.linalg.svdvals(d))[k] for k in ("effective_rank", "energy_rank_90")))
    fixed = update_ranks(ex08.update_exercise())
    with pytest.raises(ExerciseError, match="another one"):
        ex08.check_update_ranks(ex08.update_exercise(), lambda d: fixed)
    mats = ex08.projection_exercise()
    assert ex08.check_off_subspace(mats, leaks)
    with pytest.raises(ExerciseError, match="uses lrl.adjusted_gradients"):
        ex08.check_off_subspace(mats, lambda A, B, G, basis, s: lrl.adjusted_gradients(A, B, G, G, s))
    assert ex08.check_off_subspace(mats, lambda *args: (None, None)) is False
