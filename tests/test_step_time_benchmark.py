"""benchmarks/step_time.py's claim mode (``--claim bone-vs-lora``): its rotation and pairing, the interval
arithmetic and the verdicts, on fake timings. Nothing is timed here (speed lives in benchmarks/)."""

import importlib.util
import json
import math
import random
import statistics
from pathlib import Path

import pytest

from lowrank_lab import files

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "step_time.py"


@pytest.fixture(scope="module")
def st():
    spec = importlib.util.spec_from_file_location("step_time_benchmark", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def noisy(mean, n, rel_sd, seed):
    rng = random.Random(seed)
    return [mean * (1 + rng.gauss(0, rel_sd)) for _ in range(n)]


# ------------------------------------------------------------------------------------------- rotation, pairing

def test_rotation_puts_every_method_first_equally_often(st):
    names = ["lora", "bone", "bat"]
    orders = [st.rotation(names, rnd) for rnd in range(6)]
    assert all(sorted(order) == sorted(names) for order in orders)
    assert [order[0] for order in orders] == names * 2
    assert orders[1] == ["bone", "bat", "lora"]


def test_alternate_pairs_methods_on_the_same_batches_and_drops_warmup(st):
    """Fake clock: a step of method m on batch b advances it by cost[m] * b. Every method must see the same
    batches in a round, in its turn's order; the warm-up rounds are run but not kept."""
    cost = {"lora": 1.0, "bone": 0.8, "bat": 1.3}
    now = [0.0]
    seen = []

    def make(name):
        def step(batch):
            seen.append((name, batch))
            now[0] += cost[name] * batch
        return step

    round_batches = [[1, 2], [3, 4], [5, 6], [7, 8]]  # 4 rounds of 2 steps; the first is warm-up
    times, orders = st.alternate({n: make(n) for n in cost}, round_batches, warmup=1,
                                 clock=lambda: now[0], cpu_clock=lambda: 2 * now[0])
    assert orders == [st.rotation(list(cost), r) for r in (1, 2, 3)]
    for name in cost:
        assert [b for n, b in seen if n == name] == [1, 2, 3, 4, 5, 6, 7, 8]  # same batches, same order
        assert times[name]["wall_s"] == [[pytest.approx(cost[name] * b) for b in pair]
                                         for pair in round_batches[1:]]
        assert times[name]["cpu_s"] == [[pytest.approx(2 * cost[name] * b) for b in pair]
                                        for pair in round_batches[1:]]
    # round 1 runs bone's turn (batches 3, 4) first, then bat's, then lora's
    assert seen[6:12] == [("bone", 3), ("bone", 4), ("bat", 3), ("bat", 4), ("lora", 3), ("lora", 4)]


# ------------------------------------------------------------------------------------------ interval arithmetic

def test_t_interval_by_hand(st):
    low, high = st.t_interval([1.0, 2.0, 3.0, 4.0, 5.0], 0.95)
    half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)  # t_{0.975, 4} * sd / sqrt(n)
    assert (low, high) == (pytest.approx(3 - half, rel=1e-9), pytest.approx(3 + half, rel=1e-9))
    low90, high90 = st.t_interval([1.0, 2.0, 3.0, 4.0, 5.0], 0.90)
    assert high90 - 3 == pytest.approx(2.1318467863266495 * math.sqrt(0.5), rel=1e-9)
    assert st.t_interval([1.0], 0.95) is None


def test_autocorrelation_by_hand(st):
    assert st.autocorrelation([1, -1, 1, -1], 2) == pytest.approx([-0.75, 0.5])  # sum x_t x_{t+k} / sum x^2
    assert st.autocorrelation([3.0] * 5, 3) == [0.0, 0.0, 0.0]
    assert len(st.autocorrelation([1.0, 2.0, 4.0], 10)) == 2  # at most n - 1 lags


def test_independent_rounds_get_the_t_interval(st):
    values = noisy(0.02, 60, 0.5, seed=0)
    out = st.summarize_series(values)
    q = 60 * 62 * sum(r * r / (60 - k) for k, r in enumerate(out["acf"][:3], start=1))
    assert out["ljung_box_q"] == pytest.approx(q) and q < 7.8147
    assert out["interval"] == "t" and out["block_length"] is None and out["acf_checked"]
    assert out["ci95"] == pytest.approx(st.t_interval(values, 0.95))
    assert out["ci90"][0] > out["ci95"][0] and out["ci90"][1] < out["ci95"][1]


def test_autocorrelated_rounds_get_a_block_bootstrap(st):
    """AR(1) with phi = 0.9: lag-1 autocorrelation far outside 2/sqrt(n); the block bootstrap interval is seeded
    (repeatable) and wider than the naive t interval, which would overstate the evidence."""
    rng = random.Random(0)
    values, x = [], 0.0
    for _ in range(60):
        x = 0.9 * x + rng.gauss(0, 1)
        values.append(x)
    out = st.summarize_series(values, seed=1)
    assert out["acf"][0] > out["acf_band"] and out["ljung_box_q"] > st.LJUNG_BOX_CRITICAL
    assert out["interval"] == "moving-block bootstrap"
    assert math.ceil(60 ** (1 / 3)) <= out["block_length"] <= 20
    assert st.summarize_series(values, seed=1)["ci95"] == out["ci95"]
    naive = st.t_interval(values, 0.95)
    assert out["ci95"][1] - out["ci95"][0] > naive[1] - naive[0]
    assert out["ci95"][0] <= statistics.fmean(values) <= out["ci95"][1]


def test_block_bootstrap_of_a_constant_is_that_constant(st):
    means = st.block_bootstrap_means([0.5] * 30, block=4, resamples=200, seed=0)
    assert means.shape == (200,) and set(means.tolist()) == {0.5}


# --------------------------------------------------------------------------------------------------- verdicts

@pytest.mark.parametrize("ci95, ci90, expected", [
    ([0.80, 0.90], [0.82, 0.88], "reproduced"),
    ([1.10, 1.20], [1.12, 1.18], "contradicted"),
    ([0.97, 1.02], [0.98, 1.01], "equivalent"),
    ([0.96, 0.99], [0.965, 0.985], "reproduced"),  # faster (by less than the 5% of interest: within_margin)
    ([0.93, 0.99], [0.94, 0.985], "reproduced"),  # 90% interval reaches past -5%: not shown equivalent
    ([0.90, 1.10], [0.92, 1.08], "inconclusive"),
    ([0.949, 1.0], [0.951, 0.99], "equivalent"),
    (None, None, "inconclusive"),
])
def test_claim_verdict(st, ci95, ci90, expected):
    assert st.claim_verdict(ci95, ci90) == expected


def test_a_known_speedup_is_reproduced(st):
    lora = noisy(0.100, 60, 0.03, seed=1)
    bone = [t * 0.80 * e for t, e in zip(lora, noisy(1, 60, 0.02, seed=2))]  # bone 20% faster, paired
    c = st.paired_comparison(lora, bone)
    assert c["verdict"] == "reproduced" and c["direction_95"] == "faster"
    assert c["ratio"]["estimate"] == pytest.approx(0.80, rel=0.02)
    assert c["difference_s"]["mean"] == pytest.approx(0.02, rel=0.1)
    assert c["difference_s"]["per_round"] == pytest.approx([a - b for a, b in zip(lora, bone)])
    assert c["log_ratio"]["per_round"] == pytest.approx([math.log(b / a) for a, b in zip(lora, bone)])
    assert c["speedup_pct"] == pytest.approx(20, abs=2)


def test_a_known_slowdown_is_contradicted(st):
    lora = noisy(0.100, 60, 0.03, seed=4)
    bone = [t * 1.15 * e for t, e in zip(lora, noisy(1, 60, 0.02, seed=5))]
    c = st.paired_comparison(lora, bone)
    assert c["verdict"] == "contradicted" and c["direction_95"] == "slower"


def test_equal_timings_are_equivalent(st):
    lora = noisy(0.100, 60, 0.05, seed=6)
    assert st.paired_comparison(lora, list(lora))["verdict"] == "equivalent"  # identical: zero-width interval
    bone = [t * (1 + random.Random(i).gauss(0, 0.02)) for i, t in enumerate(lora)]  # 2% paired noise
    c = st.paired_comparison(lora, bone)
    assert c["verdict"] == "equivalent" and c["equivalence"]["ci90_inside"]
    assert 0.95 < c["ratio"]["ci90"][0] < 1 < c["ratio"]["ci90"][1] < 1.05


def test_few_noisy_rounds_are_inconclusive(st):
    lora = noisy(0.100, 5, 0.05, seed=7)
    bone = [t * 0.97 * (1 + random.Random(100 + i).gauss(0, 0.10)) for i, t in enumerate(lora)]
    c = st.paired_comparison(lora, bone)
    assert c["verdict"] == "inconclusive" and c["direction_95"] == "unresolved"
    assert not c["log_ratio"]["acf_checked"]


def test_paired_comparison_refuses_unpaired_or_bad_series(st):
    with pytest.raises(ValueError, match="differ in length"):
        st.paired_comparison([0.1, 0.1], [0.1])
    with pytest.raises(ValueError, match="positive"):
        st.paired_comparison([0.1, 0.0], [0.1, 0.1])


# ------------------------------------------------------------------------------------------ validity, results

def test_load_problems(st):
    assert st.load_problems((0.4, 0.3, 0.2), (2.3, 1.0, 0.5), cpu_count=2, threads=2, rounds=60) == []
    busy = st.load_problems((1.4, 1.0, 0.5), (2.3, 1.0, 0.5), cpu_count=2, threads=2, rounds=60)
    assert len(busy) == 1 and "busy machine at start" in busy[0] and "0.70 per core" in busy[0]
    during = st.load_problems((0.2, 0.2, 0.2), (3.5, 2.0, 1.0), cpu_count=2, threads=2, rounds=60)
    assert len(during) == 1 and "during the run" in during[0]
    assert "too few" in st.load_problems((0.2,) * 3, (2.0,) * 3, cpu_count=2, threads=2, rounds=3)[0]


def fake_results(st, load_start=(0.1, 0.1, 0.1), rounds=30):
    cost = {"lora": 0.100, "bone": 0.090, "bat": 0.120}
    times = {name: {"wall_s": [[c * (1 + 0.01 * ((r * 7 + s) % 5)) for s in range(4)] for r in range(rounds)],
                    "cpu_s": [[1.8 * c] * 4 for _ in range(rounds)]} for name, c in cost.items()}
    orders = [st.rotation(list(cost), r) for r in range(rounds)]
    info = {name: {"r": 8 if name == "lora" else 16, "trainable_params": 76038} for name in cost}
    machine = {"cpu_count": 2, "torch_threads": 2, "cpu_capability": "AVX2", "torch": "x"}
    design = {"task": "trec", "steps_per_turn": 4, "rounds": rounds}
    return st.build_claim_results("bone-vs-lora", times, orders, info, design, machine, load_start,
                                  (2.2, 1.5, 1.0), "python benchmarks/step_time.py --claim bone-vs-lora"), times


def test_results_are_strict_json_with_the_documented_keys(st, tmp_path):
    results, times = fake_results(st)
    path = files.write_json(tmp_path / "results.json", results)
    back = files.read_json(path)  # strict: NaN / Infinity would raise
    json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"{name} in results.json"))
    assert {"schema", "claim", "valid", "invalid_reasons", "verdict", "verdicts", "comparisons", "methods", "rounds",
            "orders", "design", "statistics", "machine", "load_average", "command"} <= set(back)
    assert back["valid"] is True and back["invalid_reasons"] == []
    assert back["claim"]["method"] == "bone" and back["claim"]["baseline"] == "lora"
    assert set(back["comparisons"]) == {"bone", "bat"} and back["comparisons"]["bone"]["primary"]
    assert back["verdicts"] == {"bone": "reproduced", "bat": "contradicted"} and back["verdict"] == "reproduced"
    bone = back["comparisons"]["bone"]
    assert {"difference_s", "log_ratio", "ratio", "verdict", "direction_95", "equivalence", "rounds"} <= set(bone)
    assert bone["ratio"]["estimate"] == pytest.approx(0.9)
    # a round's step time is the mean of its turn, and the paired difference is taken within the round
    for name in ("lora", "bone"):
        assert back["methods"][name]["round_s"] == pytest.approx([sum(t) / 4 for t in times[name]["wall_s"]])
    assert bone["difference_s"]["per_round"] == pytest.approx(
        [a - b for a, b in zip(back["methods"]["lora"]["round_s"], back["methods"]["bone"]["round_s"])])
    assert back["methods"]["bone"]["cpu_per_wall"] == pytest.approx(1.8 * 0.090 / (0.090 * 1.02), rel=0.02)


def test_results_on_a_busy_machine_are_marked_not_valid(st):
    results, _ = fake_results(st, load_start=(1.6, 1.2, 1.0))
    assert results["valid"] is False and "busy machine at start" in results["invalid_reasons"][0]


def test_claim_mode_refuses_a_busy_machine_before_loading_anything(st, tmp_path, monkeypatch):
    monkeypatch.setattr(st.os, "getloadavg", lambda: (5.0, 5.0, 5.0))
    monkeypatch.setattr(st.os, "cpu_count", lambda: 2)
    with pytest.raises(SystemExit, match="busy machine.*--allow-busy"):
        st.main(["--claim", "bone-vs-lora", "--out", str(tmp_path / "st")])
    assert not (tmp_path / "st").exists()


def test_claim_mode_needs_the_claims_methods(st, tmp_path):
    with pytest.raises(SystemExit, match="must include 'bone'"):
        st.main(["--claim", "bone-vs-lora", "--methods", "lora,bat", "--out", str(tmp_path)])
