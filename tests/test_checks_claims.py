"""lowrank_lab.checks (invariants that raise with numbers) and lowrank_lab.claims (PASS / FAIL / SKIP lines)."""

import re

import pytest
import torch
from torch import nn

import lowrank_lab as lrl
from lowrank_lab import checks, claims


# ---------------------------------------------------------------------------------------------- fixtures
class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin0 = nn.Linear(10, 16)
        self.lin1 = nn.Linear(16, 6)

    def forward(self, x):
        return self.lin1(torch.tanh(self.lin0(x)))


def fresh(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return MLP().to(dtype)


def config():
    return lrl.LoRAConfig(r=3, alpha=6, target_modules=("lin0", "lin1"))


@pytest.fixture
def x():
    return torch.randn(5, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.fixture(autouse=True)
def clean_claims():
    claims.reset()
    yield
    claims.reset()


# ---------------------------------------------------------------------------------------------- checks
def test_assert_equivalent_returns_diff_and_raises_with_numbers(x):
    a, b = fresh(), fresh()
    assert checks.assert_equivalent(a, b, x) == 0.0
    with torch.no_grad():
        b.lin1.bias += 1e-3
    with pytest.raises(AssertionError, match=r"max \|diff\| = 1\.000e-03"):
        checks.assert_equivalent(a, b, x)
    assert checks.assert_equivalent(a, b, x, atol=2e-3) == pytest.approx(1e-3)


def test_assert_equivalent_accepts_kwargs_and_model_outputs(x):
    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = fresh()

        def forward(self, inputs):
            return type("Out", (), {"logits": self.net(inputs)})()

    assert checks.assert_equivalent(Wrapped(), fresh(), x) == 0.0
    assert checks.assert_equivalent(Wrapped(), Wrapped(), {"inputs": x}) == 0.0
    m = fresh()
    assert checks.assert_equivalent(m, m, (x,)) == 0.0


def test_assert_close_shape_mismatch_and_nan():
    with pytest.raises(AssertionError, match="shapes differ"):
        checks.assert_close(torch.zeros(2), torch.zeros(3))
    with pytest.raises(AssertionError, match="nan"):
        checks.assert_close(torch.tensor([float("nan")]), torch.tensor([0.0]))


def test_identity_at_init_injects_and_is_exact(x):
    model = fresh()
    assert checks.check_identity_at_init(model, config(), x) == 0.0
    assert set(lrl.adapter_layers(model)) == {"lin0", "lin1"}


def test_identity_at_init_catches_a_nonzero_init(x, monkeypatch):
    original = lrl.LoRALinear.reset_parameters

    def bad_reset(self, init="kaiming"):
        original(self, init)
        with torch.no_grad():
            self.lora_B.fill_(0.1)  # a bug: B must start at zero

    monkeypatch.setattr(lrl.LoRALinear, "reset_parameters", bad_reset)
    with pytest.raises(AssertionError, match="identity at init"):
        checks.check_identity_at_init(fresh(), config(), x)


def test_merge_checks_refuse_identity_adapters(x):
    model = lrl.inject(fresh(), config())
    with pytest.raises(AssertionError, match="randomize_adapters"):
        checks.check_merge_equivalence(model, x)
    with pytest.raises(AssertionError, match="randomize_adapters"):
        checks.check_unmerge_restores(model)


def test_randomize_adapters_is_seeded_and_nonidentity(x):
    a = checks.randomize_adapters(lrl.inject(fresh(), config()), std=0.1, seed=3)
    b = checks.randomize_adapters(lrl.inject(fresh(), config()), std=0.1, seed=3)
    for (name, la), lb in zip(lrl.adapter_layers(a).items(), lrl.adapter_layers(b).values()):
        assert la.lora_B.abs().max() > 0, name
        torch.testing.assert_close(la.lora_A, lb.lora_A, rtol=0, atol=0)
    with lrl.adapters_disabled(a):
        base = a(x)
    assert (a(x) - base).abs().max() > 1e-3
    with pytest.raises(ValueError, match="no adapter layers"):
        checks.randomize_adapters(fresh())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_merge_equivalence_and_unmerge_restore_pass_and_leave_model_unmerged(x, dtype):
    model = checks.randomize_adapters(lrl.inject(fresh(dtype=dtype), config()), std=0.2)
    xd = x.to(dtype)
    adapted = model(xd)
    diff = checks.check_merge_equivalence(model, xd)
    assert 0.0 <= diff < (1e-9 if dtype == torch.float64 else 1e-4)
    assert not any(layer.merged for layer in lrl.adapter_layers(model).values())
    torch.testing.assert_close(model(xd), adapted)
    assert checks.check_unmerge_restores(model) < (1e-12 if dtype == torch.float64 else 1e-5)


def test_merge_equivalence_catches_a_wrong_merge(x, monkeypatch):
    model = checks.randomize_adapters(lrl.inject(fresh(), config()), std=0.2)
    # A bug: merging forgets the scale s (a classic alpha/r mistake).
    monkeypatch.setattr(lrl.LoRALinear, "delta_weight", lambda self: self.lora_B @ self.lora_A)
    with pytest.raises(AssertionError, match=r"merged vs unmerged outputs differ: max \|diff\| = \d"):
        checks.check_merge_equivalence(model, x)
    assert not any(layer.merged for layer in lrl.adapter_layers(model).values())


def test_unmerge_restores_catches_a_lossy_unmerge(monkeypatch):
    model = checks.randomize_adapters(lrl.inject(fresh(), config()), std=0.2)
    monkeypatch.setattr(lrl.LoRALinear, "unmerged_weight", lambda self, w: w - 0.5 * self.delta_weight())
    with pytest.raises(AssertionError, match=r"unmerge did not restore W0: max \|W - W0\| = .*in 'lin"):
        checks.check_unmerge_restores(model)


# ---------------------------------------------------------------------------------------------- claims
def test_pass_line_has_name_and_numbers(capsys):
    record = claims.check("merge is exact", True, detail="max |diff| = 1.2e-07", scale="smoke")
    out = capsys.readouterr().out
    assert out == "PASS  merge is exact  (max |diff| = 1.2e-07)\n"
    assert record["status"] == "PASS" and record["scale"] == "smoke"


def test_empirical_fail_prints_numbers_and_does_not_raise(capsys):
    record = claims.check("LoRA >= 95% of full FT", 0.81 >= 0.95 * 0.90, detail="0.810 vs 0.95 x 0.900 = 0.855",
                          min_scale="cpu", scale="cpu")
    assert record["status"] == "FAIL"
    assert capsys.readouterr().out.startswith("FAIL  LoRA >= 95% of full FT  (0.810 vs 0.95 x 0.900 = 0.855)")


def test_invariant_fail_raises_assertion_error(capsys):
    with pytest.raises(AssertionError, match=r"invariant failed: FAIL  grad check  \(max diff 3e-2\)"):
        claims.check("grad check", False, detail="max diff 3e-2", must_hold=True, scale="smoke")
    assert "FAIL  grad check" in capsys.readouterr().out
    assert claims.counts() == {"PASS": 0, "FAIL": 1, "SKIP": 0}
    assert issubclass(claims.ClaimFailed, AssertionError)


def test_below_min_scale_is_skipped_and_callable_not_run(capsys):
    ran = []

    def expensive():
        ran.append(1)
        return False

    record = claims.check("needs training", expensive, min_scale="cpu", scale="smoke", must_hold=True)
    assert record["status"] == "SKIP" and not ran
    assert capsys.readouterr().out == "SKIP  needs training  (needs scale >= cpu; running smoke)\n"
    assert claims.check("needs gpu", False, min_scale="full", scale="cpu")["status"] == "SKIP"


def test_scale_defaults_to_environment(monkeypatch):
    monkeypatch.setenv("LOWRANK_LAB_SCALE", "smoke")
    assert claims.check("x", False, min_scale="cpu")["status"] == "SKIP"
    monkeypatch.setenv("LOWRANK_LAB_SCALE", "cpu")
    assert claims.check("x", True, min_scale="cpu")["status"] == "PASS"


def test_callable_results_detail_and_assertion():
    record = claims.check("tuple", lambda: (True, "err 1e-9"), detail="fp64", scale="smoke")
    assert record["status"] == "PASS" and record["detail"] == "fp64; err 1e-9"

    def broken():
        checks.assert_close(torch.tensor([1.0]), torch.tensor([0.0]), atol=1e-6)

    record = claims.check("from assert", broken, scale="smoke")
    assert record["status"] == "FAIL" and "max |diff| = 1.000e+00" in record["detail"]
    with pytest.raises(claims.ClaimFailed):
        claims.check("from assert, invariant", broken, scale="smoke", must_hold=True)


def test_bad_arguments():
    with pytest.raises(ValueError, match="min_scale must be one of"):
        claims.check("x", True, min_scale="huge", scale="smoke")
    with pytest.raises(ValueError, match="scale must be one of"):
        claims.check("x", True, scale="tiny")
    with pytest.raises(TypeError, match="single bool"):
        claims.check("x", torch.tensor([True, False]), scale="smoke")
    with pytest.raises(TypeError, match="None"):
        claims.check("x", None, scale="smoke")
    with pytest.raises(ValueError, match="non-empty string"):
        claims.check("", True, scale="smoke")


def test_nan_comparison_fails():
    nan = float("nan")
    assert claims.check("nan accuracy", nan >= 0.5, scale="cpu")["status"] == "FAIL"
    assert claims.check("tensor", torch.tensor(True), scale="cpu")["status"] == "PASS"


def test_rerun_replaces_record_and_summary_table(capsys):
    claims.check("a", False, detail="0.1 < 0.2", scale="cpu")
    claims.check("b", True, detail="1 == 1", scale="cpu", must_hold=True)
    claims.check("c", True, min_scale="full", scale="cpu")
    claims.check("a", True, detail="0.3 >= 0.2", scale="cpu")  # re-run of a cell
    capsys.readouterr()
    assert [r["name"] for r in claims.records()] == ["a", "b", "c"]
    n = claims.summary()
    out = capsys.readouterr().out
    assert n == {"PASS": 2, "FAIL": 0, "SKIP": 1}
    lines = out.splitlines()
    assert lines[0].split() == ["status", "kind", "min", "scale", "claim", "numbers"]
    assert re.match(r"PASS\s+empirical\s+smoke\s+a\s+0\.3 >= 0\.2$", lines[2])
    assert re.match(r"PASS\s+invariant\s+smoke\s+b\s+1 == 1$", lines[3])
    assert re.match(r"SKIP\s+empirical\s+full\s+c\s+needs scale >= full; running cpu$", lines[4])
    assert "checks: 2 passed, 0 failed, 1 skipped (scale: cpu)" in out
    claims.reset()
    assert claims.records() == [] and claims.counts() == {"PASS": 0, "FAIL": 0, "SKIP": 0}


def test_study_claims_print_the_studies_outcome_and_illustrations_are_never_judged(capsys):
    claims.reset()
    row = {"claim": "X beats Y", "paper": "P", "verdict_holm": "inconclusive", "verdict": "reproduced",
           "difference": 0.012, "ci95": [0.001, 0.023], "reason": None, "study": "s"}
    claims.study(row, "results/s/")
    claims.study({**row, "claim": "Z", "verdict_holm": "no verdict", "verdict": "no verdict",
                  "reason": "Z did not learn"}, "results/s/")
    claims.study(None, "no committed study judged it", name="W beats Y")
    claims.illustration("one seed: X 0.81 vs Y 0.80", "128 steps")
    claims.check("an invariant", True, must_hold=True)
    out = capsys.readouterr().out
    assert "inconclusive  X beats Y (P)  (alone: reproduced; difference +0.0120, 95% CI [+0.0010, +0.0230]" in out
    assert "Z did not learn" in out and "illustration  one seed" in out
    assert claims.counts() == {"PASS": 1, "FAIL": 0, "SKIP": 0}  # studies and illustrations are not PASS/FAIL
    assert claims.outcome_counts() == {"inconclusive": 1, "no verdict": 2, "illustration": 1}
    claims.summary()
    out = capsys.readouterr().out
    assert "checks: 1 passed, 0 failed, 0 skipped" in out and "1 inconclusive, 2 no verdict; 1 illustration(s)" in out
    # the command that shows a cited study's tables is printed once, not in every row
    assert out.count("`python -m lowrank_lab report results/s`") == 1
    # the study is a field of the record (from the row, or named), never parsed from the detail text
    claims.study({**row, "study": None}, "see results/not-a-study/ for more", name="V", study="t")
    claims.summary()
    out = capsys.readouterr().out
    assert "report results/t`" in out and "not-a-study" not in out.split("the studies' full tables")[1]
    claims.reset()
    claims.illustration("one seed: X 0.81 vs Y 0.80", "128 steps")
    claims.summary()
    out = capsys.readouterr().out
    assert "Holm-adjusted): none in this notebook; 1 illustration(s)" in out and "report results" not in out
    with pytest.raises(ValueError, match="no outcome"):
        claims.study({**row, "verdict_holm": "PASS"}, "s")
    claims.reset()
