"""Fault matrix (issue 12), adapter side: what save/load/export/merge and LoRA-Pro refuse, and that a refusal
changes nothing. Test names carry the behaviour number of the issue. Every adapter here is NON-identity
(random B or D): at B = 0 a wrongly loaded adapter would still "match".
"""

import copy
import itertools
import json
import re
import warnings

import pytest
import torch
from torch import nn

import lowrank_lab as lrl
from lowrank_lab.layers.base import AdapterConfig, NonFiniteError
from lowrank_lab.methods.lora_pro import (
    LoRAProAdamW,
    LoRAProSGD,
    adjusted_gradients,
    equivalent_gradient,
    solve_sylvester,
)
from test_xgblora import Block  # the same residual block the XGBLoRA tests boost

F64 = torch.float64


class MLP(nn.Module):
    def __init__(self, n_in=12, hidden=20):
        super().__init__()
        self.lin0, self.act, self.lin1, self.head = nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, 16), nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.act(self.lin1(self.act(self.lin0(x)))))


def fresh_mlp(seed=0, **kwargs):
    torch.manual_seed(seed)
    return MLP(**kwargs).double()


def lora_config(**kwargs):
    return lrl.LoRAConfig(**{"r": 2, "alpha": 4.0, "target_modules": ("lin0", "lin1"), **kwargs})


def adapted(config, seed=1, base_seed=0):
    model = lrl.inject(fresh_mlp(base_seed), config)
    return lrl.checks.randomize_adapters(model, std=0.3, seed=seed)


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    after = model.state_dict()
    assert sorted(after) == sorted(before)
    for key in before:  # bit for bit; a NaN planted by a test equals itself
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0, equal_nan=True, msg=key)


def x_batch(n_in=12):
    return torch.randn(5, n_in, generator=torch.Generator().manual_seed(3), dtype=F64)


# ---------------------------------------------------------------------------------------------- 1
@pytest.mark.parametrize("config", [lora_config(), lrl.BoneConfig(r=4, target_modules=("lin0", "lin1"), variant="bat")],
                         ids=["lora", "bat"])
def test_01_load_into_merged_model_is_refused(config, tmp_path):
    lrl.save_adapter(adapted(config, seed=1), tmp_path)
    W0 = {n: m.weight.detach().clone() for n, m in fresh_mlp().named_modules() if isinstance(m, nn.Linear)}
    model = adapted(type(config).from_dict(config.to_dict()), seed=2)  # another (non-identity) update, merged
    lrl.merge(model)
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"merged.*lin0.*unmerge\(model\)"):
        lrl.load_adapter(model, tmp_path)
    assert_unchanged(model, before)
    lrl.unmerge(model)
    for name, layer in lrl.adapter_layers(model).items():
        torch.testing.assert_close(layer.base_layer.weight, W0[name], rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------- 4
class Stack(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.layers = nn.ModuleList(Block(d) for _ in range(3))
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        for block in self.layers:
            x = block(x)
        return self.head(x)


def test_04_save_and_export_refuse_an_unfinished_xgblora_schedule(tmp_path):
    torch.manual_seed(0)
    base = Stack()
    model = lrl.inject(copy.deepcopy(base), lrl.LoRAConfig(r=1, alpha=2, target_modules=("q", "v"), modules_to_save=("head",)))
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 8, generator=gen), torch.randint(0, 3, (16,), generator=gen)
    opt = lrl.XGBLoRA(model, total_steps=10, steps_per_round=2, blocks_per_round=1, lr=5e-2, seed=0)
    for _ in range(5):  # two finished rounds (merged into W) and one step of a third
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        trained = model(x)
        assert (trained - base(x)).abs().max() > 1e-3
    before = snapshot(model)
    for write in (lrl.save_adapter, lrl.export_peft):
        with pytest.raises(ValueError, match=r"unfinished XGBLoRA.*XGBLoRA\.of\(model\)\.to_lora\(\)"):
            write(model, tmp_path / write.__name__)
        assert not (tmp_path / write.__name__).exists()
    assert_unchanged(model, before)

    lrl.XGBLoRA.of(model).to_lora()
    lrl.save_adapter(model, tmp_path / "ours")
    reloaded = lrl.load_adapter(copy.deepcopy(base), tmp_path / "ours")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), trained, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------- 5
def test_05_load_into_injected_model_refuses_another_function(tmp_path):
    lrl.save_adapter(adapted(lora_config(alpha=4.0)), tmp_path)
    for other, messages in [
        (lora_config(alpha=8.0), ["alpha: file 4.0, model 8.0"]),
        (lora_config(use_rslora=True, alpha=2.0), ["alpha: file 4.0, model 2.0", "use_rslora: file False, model True"]),
        (lora_config(rank_pattern={"lin1": 2}), ["rank_pattern: file {}, model {'lin1': 2}"]),
    ]:
        model = adapted(other, seed=5)
        before = snapshot(model)
        with pytest.raises(ValueError) as caught:
            lrl.load_adapter(model, tmp_path)
        for message in messages:
            assert message in str(caught.value)
        assert_unchanged(model, before)
    # Bone vs Bat: same config class, other function
    lrl.save_adapter(adapted(lrl.BoneConfig(r=4, target_modules=("lin0", "lin1"))), tmp_path / "bone")
    bat = adapted(lrl.BoneConfig(r=4, target_modules=("lin0", "lin1"), variant="bat"))
    before = snapshot(bat)
    with pytest.raises(ValueError, match="variant: file 'bone', model 'bat'"):
        lrl.load_adapter(bat, tmp_path / "bone")
    assert_unchanged(bat, before)
    # training-only fields (declared on the config class) may differ: the file's weights load exactly
    assert AdapterConfig.training_only_fields == ()
    assert set(lrl.LoRAConfig.training_only_fields) == {"dropout", "init"}
    assert set(lrl.BoneConfig.training_only_fields) == {"dropout", "recompute_weight"}
    source = adapted(lora_config())
    lrl.save_adapter(source, tmp_path / "plain")
    target = adapted(lora_config(dropout=0.1, init="gaussian"), seed=9).eval()
    lrl.load_adapter(target, tmp_path / "plain")
    torch.testing.assert_close(target(x_batch()), source(x_batch()), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- 6
def test_06_export_peft_of_a_classifier_carries_its_head(tmp_path):
    peft = pytest.importorskip("peft")
    from lowrank_lab.assets import load_model, load_tokenizer

    torch.manual_seed(0)
    base = load_model("minilm", kind="classification", num_labels=2).eval()
    ours = lrl.inject(copy.deepcopy(base), lrl.LoRAConfig(r=4, alpha=8, target_modules=("query", "value")))
    assert lrl.adapters.get_config(ours).modules_to_save == ()
    lrl.checks.randomize_adapters(ours, std=0.05, seed=7)  # NON-zero B
    with torch.no_grad():
        ours.classifier.weight.normal_()  # a head other than the base copy's: it must travel
    enc = load_tokenizer("minilm")(["a gripping film", "flat and lifeless"], padding=True, return_tensors="pt")
    inputs = dict(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    lrl.export_peft(ours, tmp_path)
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["task_type"] == "SEQ_CLS" and "classifier" in meta["modules_to_save"]
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    with torch.no_grad():
        expected = ours(**inputs).logits
        assert (expected - base(**inputs).logits).abs().max() > 1e-3
        torch.testing.assert_close(loaded(**inputs).logits, expected, rtol=2e-6, atol=1e-6)  # fp32 sum order


# ---------------------------------------------------------------------------------------------- 8
class Proj(nn.Module):
    def __init__(self, n_in):
        super().__init__()
        self.proj = nn.Linear(n_in, 32)

    def forward(self, x):
        return self.proj(x)


def proj(n_in, seed=0):
    torch.manual_seed(seed)
    return Proj(n_in).double()


@pytest.mark.parametrize("variant", ["bone", "bat"])
def test_08_layer_record_refuses_another_in_features(variant, tmp_path):
    config = lrl.BoneConfig(r=4, target_modules=("proj",), variant=variant)
    source = lrl.checks.randomize_adapters(lrl.inject(proj(16), config), std=0.3)
    lrl.save_adapter(source, tmp_path)
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["layers"] == {"proj": {"in_features": 16, "out_features": 32, "r": 4}}
    x = torch.randn(3, 16, dtype=F64)
    torch.testing.assert_close(lrl.load_adapter(proj(16), tmp_path)(x), source(x), rtol=0, atol=0)
    wide = lrl.BoneConfig.from_dict(config.to_dict())
    for model in (proj(64), lrl.inject(proj(64), wide)):  # fresh base, and a model already carrying the adapter
        before = snapshot(model)
        with pytest.raises(ValueError, match=r"proj: file Linear\(in=16, out=32\), r=4; model Linear\(in=64, out=32\), r=4"):
            lrl.load_adapter(model, tmp_path)
        assert_unchanged(model, before)
    # a file without the record is refused, not trusted
    del meta["layers"]
    (tmp_path / "adapter_config.json").write_text(json.dumps(meta))
    model = proj(16)
    before = snapshot(model)
    with pytest.raises(ValueError, match="adapter_config.json.*lacks the per-layer record"):
        lrl.load_adapter(model, tmp_path)
    assert_unchanged(model, before)


def test_08_lora_record_includes_the_scaling(tmp_path):
    model = adapted(lora_config(rank_pattern={"lin1": 3}, use_rslora=True))
    lrl.save_adapter(model, tmp_path)
    layers = json.loads((tmp_path / "adapter_config.json").read_text())["layers"]
    assert layers["lin1"] == {"in_features": 20, "out_features": 16, "r": 3, "scaling": 4.0 / 3**0.5}
    assert layers["lin0"]["r"] == 2 and layers["lin0"]["scaling"] == 4.0 / 2**0.5


# ---------------------------------------------------------------------------------------------- 9
def _edit(key, value):
    def edit(meta):
        meta[key] = value
        return json.dumps(meta).encode()
    return edit


def _edit_config(key, value):
    def edit(meta):
        meta["config"][key] = value
        return json.dumps(meta).encode()
    return edit


MALFORMED = {
    "config-list": (_edit("config", [1, 2]), "'config' must be a JSON object"),
    "config-null": (_edit("config", None), "'config' must be a JSON object"),
    "method-list": (_edit("method", ["lora"]), r"adapter method must be one of .*got \['lora'\]"),
    "top-level-list": (lambda meta: b"[1, 2]", "must be a JSON object"),
    "not-utf8": (lambda meta: b'{"method": "lora\xff"}', "not UTF-8"),
    "r-negative": (_edit_config("r", -1), "r must be a positive int, got -1"),
    "r-string": (_edit_config("r", "4"), "r must be a positive int, got '4'"),
    "alpha-string": (_edit_config("alpha", "big"), "alpha must be a positive finite number, got 'big'"),
    "alpha-huge-int": (_edit_config("alpha", 10**400), "alpha"),
    "layers-list": (_edit("layers", ["lin0"]), "'layers'"),
    "layers-bad-entry": (_edit("layers", {"lin0": {"in_features": "12"}}), "lin0"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_09_malformed_adapter_config_names_the_file(case, tmp_path):
    lrl.save_adapter(adapted(lora_config()), tmp_path)
    path = tmp_path / "adapter_config.json"
    edit, match = MALFORMED[case]
    path.write_bytes(edit(json.loads(path.read_text())))
    model = fresh_mlp()
    before = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "unknown keys" warnings are not the point here
        with pytest.raises(ValueError) as caught:
            lrl.load_adapter(model, tmp_path)
    assert str(path) in str(caught.value), str(caught.value)  # the file is named
    assert re.search(match, str(caught.value)), str(caught.value)
    assert not lrl.adapter_layers(model)
    assert_unchanged(model, before)


def test_09_config_from_dict_turns_type_errors_into_value_errors():
    with pytest.raises(ValueError, match="LoRAConfig"):
        lrl.LoRAConfig.from_dict([1, 2])
    with pytest.raises(ValueError, match="LoRAConfig"):
        lrl.LoRAConfig.from_dict(None)
    with pytest.raises(ValueError, match="alpha"):
        lrl.LoRAConfig.from_dict({"alpha": 10**400})


# ---------------------------------------------------------------------------------------------- 10
def test_10_interrupted_save_leaves_the_previous_adapter_readable(tmp_path, monkeypatch):
    import lowrank_lab.io as lio

    first = adapted(lora_config(), seed=1)
    lrl.save_adapter(first, tmp_path)
    expected = first(x_batch())

    def crash(tensors, filename, metadata=None):  # the process dies half-way through the tensor file
        with open(filename, "wb") as handle:
            handle.write(b"\x00" * 10)
        raise OSError("disk full")

    monkeypatch.setattr(lio, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        lrl.save_adapter(adapted(lora_config(), seed=2), tmp_path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    torch.testing.assert_close(lrl.load_adapter(fresh_mlp(), tmp_path)(x_batch()), expected, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- issue 22: 11, 12
def _rewrite_tensors(directory, change):
    """Rewrite an adapter's tensor file with ``change(tensors)`` applied (what a hand-made or foreign file holds)."""
    from safetensors.torch import load_file, save_file

    path = directory / "adapter_model.safetensors"
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))


def test_22_11_a_value_that_overflows_the_models_dtype_is_refused(tmp_path):
    source = adapted(lora_config(), seed=1)  # float64
    with torch.no_grad():
        source.lin0.lora_B[0, 0] = 1e300  # finite in float64, inf in float32
    lrl.save_adapter(source, tmp_path)
    model = fresh_mlp().float()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"beyond the range of the model's dtype.*lin0\.lora_B \(torch\.float64 -> "
                                         r"torch\.float32\)"):
        lrl.load_adapter(model, tmp_path)
    assert_unchanged(model, before)  # nothing injected, no inf anywhere
    assert lrl.adapters.get_config(model) is None
    injected = lrl.inject(fresh_mlp().float(), lora_config())  # a model that already carries the adapter
    before = snapshot(injected)
    with pytest.raises(ValueError, match="non-finite once cast"):
        lrl.load_adapter(injected, tmp_path)
    assert_unchanged(injected, before)
    loaded = lrl.load_adapter(fresh_mlp(), tmp_path)  # in float64 the same file is fine
    assert loaded.lin0.lora_B[0, 0].item() == 1e300


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
def test_22_12_an_adapter_tensor_that_is_not_floating_point_is_refused(tmp_path, dtype):
    lrl.save_adapter(adapted(lora_config(), seed=1), tmp_path)
    _rewrite_tensors(tmp_path, lambda t: t.update({"lin1.lora_A": (t["lin1.lora_A"] * 10).to(dtype)}))
    model = fresh_mlp()
    before = snapshot(model)
    with pytest.raises(ValueError, match=re.escape(f"not floating point: ['lin1.lora_A ({dtype})']")):
        lrl.load_adapter(model, tmp_path)  # it was cast silently (logits changed by 3e-2)
    assert_unchanged(model, before)
    with pytest.raises(ValueError, match="lin1.lora_A"):
        lrl.io.read_adapter(tmp_path)


# ---------------------------------------------------------------------------------------------- 14
def kron_min_norm(P, Q, C):
    """Float64 least-squares minimum-norm solution of (I⊗P + Qᵀ⊗I) vec X = vec C (column-major vec)."""
    P, Q, C = P.double(), Q.double(), C.double()
    p, q = C.shape
    K = torch.kron(torch.eye(q, dtype=F64), P) + torch.kron(Q.T.contiguous(), torch.eye(p, dtype=F64))
    return (torch.linalg.pinv(K, rtol=1e-10) @ C.T.reshape(-1)).reshape(q, p).T


def test_14a_solve_sylvester_gives_the_minimum_norm_solution_when_both_sides_are_singular():
    gen = torch.Generator().manual_seed(0)
    Bm = torch.randn(2, 4, generator=gen, dtype=F64)  # rank 2 Gram of size 4
    Am = torch.randn(4, 3, generator=gen, dtype=F64)
    Am[:, 2] = Am[:, 0]  # duplicated column: rank 2 of 3
    P, Q = Bm.T @ Bm, Am.T @ Am
    C = torch.randn(4, 3, generator=gen, dtype=F64)
    X = solve_sylvester(P, Q, C)
    reference = kron_min_norm(P, Q, C)
    assert torch.isfinite(X).all()
    torch.testing.assert_close(X, reference, rtol=1e-8, atol=1e-10)
    # X solves the solvable part: the residual is orthogonal to the range, i.e. the same as the reference's
    torch.testing.assert_close(P @ X + X @ Q - C, P @ reference + reference @ Q - C, rtol=1e-8, atol=1e-10)
    C_solvable = P @ reference + reference @ Q  # a right-hand side in the range is solved exactly
    torch.testing.assert_close(P @ solve_sylvester(P, Q, C_solvable) + solve_sylvester(P, Q, C_solvable) @ Q,
                               C_solvable, rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match="positive semi-definite"):
        solve_sylvester(-torch.eye(3, dtype=F64) - P[:3, :3], -torch.eye(3, dtype=F64), C[:3])


def theorem_2_1(A, B, g):
    """g̃* = P_B g + (I − P_B) g P_A in float64, projectors from pseudo-inverses."""
    A, B, g = A.double(), B.double(), g.double()
    P_B = B @ torch.linalg.pinv(B, rtol=1e-10)  # projector onto col(B), from an SVD (not the library's eigh)
    P_A = torch.linalg.pinv(A, rtol=1e-10) @ A
    return P_B @ g + (torch.eye(B.shape[0], dtype=F64) - P_B) @ g @ P_A


def degenerate_factors(seed=0):
    gen = torch.Generator().manual_seed(seed)
    yield "r > m and r > n", torch.randn(6, 4, generator=gen), torch.randn(3, 6, generator=gen), torch.randn(3, 4, generator=gen)
    A, B = torch.randn(3, 7, generator=gen), torch.randn(9, 3, generator=gen)
    A[2], B[:, 2] = A[0], B[:, 0]  # duplicated row of A and column of B
    yield "duplicates", A, B, torch.randn(9, 7, generator=gen)


def test_14b_adjusted_gradients_on_rank_deficient_factors_match_theorem_2_1():
    s = 2.0
    for (label, A, B, g), x_mode in itertools.product(degenerate_factors(), ("sylvester", "zero", "symmetric")):
        label = f"{label}, x_mode={x_mode}"
        new_A, new_B = adjusted_gradients(A, B, s * B.T @ g, s * g @ A.T, s, x_mode=x_mode)
        assert torch.isfinite(new_A).all() and torch.isfinite(new_B).all(), label
        g_tilde = equivalent_gradient(A, B, new_A, new_B, s).double()
        expected = theorem_2_1(A, B, g)
        assert ((g_tilde - expected).norm() / expected.norm()).item() <= 1e-5, label


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        return self.lin(x)


@pytest.mark.parametrize("make_opt", [lambda m: LoRAProSGD(m, lr=0.1), lambda m: LoRAProAdamW(m, lr=1e-2, mode="full"),
                                      lambda m: LoRAProAdamW(m, lr=1e-2, mode="efficient")], ids=["sgd", "full", "efficient"])
def test_14c_lora_pro_step_on_a_rank_deficient_layer_stays_finite(make_opt):
    torch.manual_seed(0)
    model = lrl.inject(Tiny(), lrl.LoRAConfig(r=5, alpha=5, target_modules=("lin",)))  # r = 5 > in 3, out 2
    lrl.checks.randomize_adapters(model, std=0.5, seed=1)
    opt = make_opt(model)
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(8, 3, generator=gen), torch.randn(8, 2, generator=gen)
    for _ in range(3):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # a non-finite gradient is a NonFiniteError (a diverged run), naming the layer; nothing moves
    before = snapshot(model)
    opt.zero_grad()
    ((model(x) - y) ** 2).mean().backward()
    model.lin.lora_B.grad[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="non-finite gradient in lin"):
        opt.step()
    assert_unchanged(model, before)


# ---------------------------------------------------------------------------------------------- merge / unmerge
def test_merge_refusal_names_the_layer_and_writes_nothing():
    model = adapted(lora_config())
    with torch.no_grad():
        model.lin1.lora_B[0, 0] = float("nan")
    before = snapshot(model)
    with pytest.raises(NonFiniteError, match=r"^lin1: merge would write non-finite"):
        lrl.merge(model)
    assert_unchanged(model, before)
    assert not any(layer.merged for layer in lrl.adapter_layers(model).values())
    model = adapted(lora_config())
    lrl.merge(model)
    with torch.no_grad():
        model.lin0.lora_A[0, 0] = float("inf")
    before = snapshot(model)
    with pytest.raises(NonFiniteError, match=r"^lin0: unmerge would write non-finite"):
        lrl.unmerge(model)
    assert_unchanged(model, before)
    assert all(layer.merged for layer in lrl.adapter_layers(model).values())


def test_second_whole_model_merge_or_unmerge_warns():
    model = adapted(lora_config())
    with pytest.warns(UserWarning, match="Already unmerged"):
        lrl.unmerge(model)  # never merged
    lrl.merge(model)
    merged = snapshot(model)
    with pytest.warns(UserWarning, match="Already merged"):
        lrl.merge(model)
    assert_unchanged(model, merged)
    lrl.unmerge(model)
    with pytest.warns(UserWarning, match="Already unmerged"):
        lrl.unmerge(model)
