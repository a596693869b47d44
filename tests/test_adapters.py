"""Method × behaviour matrix for layer-style adapters on a tiny MLP (PEFT's test pattern, our code).

Every equivalence check first makes the adapter NON-identity (random B): at B = 0 everything "matches".
Later methods join by adding a row to ``METHODS``.
"""

import math
import warnings

import pytest
import torch
from torch import nn

import lowrank_lab as lrl
from lowrank_lab.adapters import NoMatchingModulesError

METHODS = {
    "lora": lambda: lrl.LoRAConfig(r=2, alpha=4, target_modules=("lin0", "lin1")),
    "rslora": lambda: lrl.LoRAConfig(r=4, alpha=4, target_modules=("lin0", "lin1"), use_rslora=True),
    "lora-rank-pattern": lambda: lrl.LoRAConfig(r=2, alpha=4, target_modules=("lin0", "lin1"), rank_pattern={"lin1": 3}),
    "lora-regex-head": lambda: lrl.LoRAConfig(r=3, alpha=6, target_modules=r"lin\d", modules_to_save=("head",)),
    "bone": lambda: lrl.BoneConfig(r=3, target_modules=("lin0", "lin1")),  # 20 % 3 != 0: padded last shard
    "bone-regex-head": lambda: lrl.BoneConfig(r=4, target_modules=r"lin\d", modules_to_save=("head",)),
    "bat": lambda: lrl.BoneConfig(r=4, target_modules=("lin0", "lin1"), variant="bat"),
    "bat-keep-weight": lambda: lrl.BoneConfig(r=2, target_modules=("lin0", "lin1"), variant="bat", recompute_weight=False),
}


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin0 = nn.Linear(12, 20)
        self.act = nn.ReLU()
        self.lin1 = nn.Linear(20, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.act(self.lin1(self.act(self.lin0(x)))))


def fresh_mlp(seed=0):
    torch.manual_seed(seed)
    return MLP().double()


def make_nonidentity(model, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lrl.adapter_layers(model).values():
            for param in layer.adapter_parameters().values():
                param.copy_(torch.randn(param.shape, generator=gen, dtype=param.dtype) * 0.3)


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture
def x():
    return torch.randn(7, 12, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


@pytest.fixture(params=sorted(METHODS))
def config(request):
    return METHODS[request.param]()


def test_identity_at_init(config, x):
    model = fresh_mlp()
    expected = model(x)
    lrl.inject(model, config)
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


def test_merged_equals_unmerged_and_differs_from_base(config, x):
    model = fresh_mlp()
    base_out = model(x)
    lrl.inject(model, config)
    make_nonidentity(model)
    adapted = model(x)
    assert (adapted - base_out).abs().max() > 1e-3, "non-identity adapter must change the output"
    lrl.merge(model)
    assert all(layer.merged for layer in lrl.adapter_layers(model).values())
    torch.testing.assert_close(model(x), adapted, rtol=1e-10, atol=1e-10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lrl.merge(model)  # idempotent: nothing left to merge
        lrl.adapter_layers(model)["lin0"].merge()
    assert any("Already merged" in str(w.message) for w in caught)
    torch.testing.assert_close(model(x), adapted, rtol=1e-10, atol=1e-10)


def test_unmerge_restores_base_weights(config, x):
    model = fresh_mlp()
    before = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    lrl.inject(model, config)
    make_nonidentity(model)
    adapted = model(x)
    lrl.merge(model)
    lrl.unmerge(model)
    for name, layer in lrl.adapter_layers(model).items():
        torch.testing.assert_close(layer.base_layer.weight, before[name], rtol=0, atol=1e-12)
    torch.testing.assert_close(model(x), adapted, rtol=1e-10, atol=1e-10)


def test_save_load_round_trip_into_fresh_model(config, x, tmp_path):
    model = fresh_mlp()
    lrl.inject(model, config)
    make_nonidentity(model)
    if config.modules_to_save:
        torch.nn.init.normal_(model.head.weight)  # a trained head must travel with the adapter
    expected = model(x)
    lrl.save_adapter(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    fresh = fresh_mlp()
    lrl.load_adapter(fresh, tmp_path)
    torch.testing.assert_close(fresh(x), expected, rtol=0, atol=0)
    # loading into a model that already carries the adapter replaces its weights
    again = lrl.inject(fresh_mlp(), copy_config(config))
    lrl.load_adapter(again, tmp_path)
    torch.testing.assert_close(again(x), expected, rtol=0, atol=0)


def copy_config(config):
    return type(config).from_dict(config.to_dict())


def test_only_adapter_parameters_train(config):
    model = fresh_mlp()
    base_total = sum(p.numel() for p in model.parameters())
    lrl.inject(model, config)
    trainable_names = {n for n, p in model.named_parameters() if p.requires_grad}
    expected, adapter_count = set(), 0
    for name, layer in lrl.adapter_layers(model).items():
        for pname, param in layer.adapter_parameters().items():
            expected.add(f"{name}.{pname}")
            adapter_count += param.numel()
    if config.modules_to_save:
        expected |= {"head.weight", "head.bias"}
        adapter_count += sum(p.numel() for p in model.head.parameters())
    assert trainable_names == expected
    assert lrl.count_parameters(model) == (adapter_count, base_total + sum(
        p.numel() for layer in lrl.adapter_layers(model).values() for p in layer.adapter_parameters().values()))


def test_lora_gradients_match_closed_form():
    """∂L/∂B = s·G·Aᵀ and ∂L/∂A = s·Bᵀ·G with G = δᵀX the full-weight gradient (float64)."""
    torch.manual_seed(0)
    linear = nn.Linear(6, 5).double()
    layer = lrl.LoRALinear(linear, r=3, scaling=0.7)
    with torch.no_grad():
        layer.lora_B.normal_()
    X = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    target = torch.randn(9, 5, dtype=torch.float64)
    loss = 0.5 * ((layer(X) - target) ** 2).sum()
    loss.backward()
    with torch.no_grad():
        delta = layer(X) - target  # ∂L/∂Y
        G = delta.T @ X
        torch.testing.assert_close(layer.lora_B.grad, 0.7 * G @ layer.lora_A.T)
        torch.testing.assert_close(layer.lora_A.grad, 0.7 * layer.lora_B.T @ G)


def test_scalings_and_rank_pattern():
    model = lrl.inject(fresh_mlp(), lrl.LoRAConfig(r=4, alpha=8, target_modules=("lin0", "lin1"), rank_pattern={"lin1": 2}))
    layers = lrl.adapter_layers(model)
    assert (layers["lin0"].r, layers["lin0"].scaling) == (4, 2.0)
    assert (layers["lin1"].r, layers["lin1"].scaling) == (2, 4.0)
    assert layers["lin1"].lora_A.shape == (2, 20) and layers["lin1"].lora_B.shape == (16, 2)
    model = lrl.inject(fresh_mlp(), lrl.LoRAConfig(r=4, alpha=8, target_modules=("lin0",), use_rslora=True))
    assert lrl.adapter_layers(model)["lin0"].scaling == pytest.approx(8 / math.sqrt(4))


def test_zero_init_gives_zero_grad_for_A(x):
    model = lrl.inject(fresh_mlp(), METHODS["lora"]())
    model(x).sum().backward()
    layer = lrl.adapter_layers(model)["lin0"]
    assert torch.count_nonzero(layer.lora_A.grad) == 0 and torch.count_nonzero(layer.lora_B.grad) > 0


def test_disabled_and_unload_and_merge_and_unload(x):
    model = fresh_mlp()
    base_out = model(x)
    lrl.inject(model, METHODS["lora"]())
    make_nonidentity(model)
    adapted = model(x)
    with lrl.adapters_disabled(model):
        torch.testing.assert_close(model(x), base_out, rtol=0, atol=0)
    torch.testing.assert_close(model(x), adapted, rtol=0, atol=0)
    merged = lrl.merge_and_unload(model)
    assert type(merged.lin0) is nn.Linear and not lrl.adapter_layers(merged)
    torch.testing.assert_close(merged(x), adapted, rtol=1e-10, atol=1e-10)
    model = lrl.inject(fresh_mlp(), METHODS["lora"]())
    make_nonidentity(model)
    lrl.merge(model)
    lrl.unload(model)
    torch.testing.assert_close(model(x), base_out, rtol=1e-10, atol=1e-10)


def test_dropout_only_on_branch_and_same_seed_same_init(x):
    torch.manual_seed(5)
    a = lrl.inject(fresh_mlp(), lrl.LoRAConfig(r=2, target_modules=("lin0",), dropout=0.5))
    torch.manual_seed(5)
    b = lrl.inject(fresh_mlp(), lrl.LoRAConfig(r=2, target_modules=("lin0",), dropout=0.5))
    torch.testing.assert_close(lrl.adapter_layers(a)["lin0"].lora_A, lrl.adapter_layers(b)["lin0"].lora_A, rtol=0, atol=0)
    base_out = fresh_mlp()(x)
    torch.testing.assert_close(a.train()(x), base_out)  # B = 0: dropout on the branch changes nothing
    make_nonidentity(a)
    a.eval()
    lin = lrl.adapter_layers(a)["lin0"]
    torch.testing.assert_close(lin(x), lin.base_layer(x) + lin.scaling * x @ lin.lora_A.T @ lin.lora_B.T)


def test_mixed_dtype_autocast_path():
    torch.manual_seed(0)
    layer = lrl.LoRALinear(nn.Linear(16, 8), r=4, scaling=2.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(3, 16)
    expected = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=5e-2, atol=5e-2)


# ----------------------------------------------------------------------------------------------
# Bad input: a clear error naming the field and value, and the model left untouched.
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"r": 0}, "r must be a positive int, got 0"),
        ({"r": -2}, "r must be a positive int, got -2"),
        ({"r": 2.5}, "r must be a positive int, got 2.5"),
        ({"r": True}, "r must be a positive int, got True"),
        ({"alpha": 0}, "alpha must be a positive finite number, got 0"),
        ({"alpha": float("nan")}, "alpha must be a positive finite number, got nan"),
        ({"dropout": 1.0}, r"dropout must be a float in \[0, 1\), got 1.0"),
        ({"dropout": -0.1}, r"dropout must be a float in \[0, 1\), got -0.1"),
        ({"target_modules": []}, r"target_modules must not be empty, got \[\]"),
        ({"target_modules": "("}, "target_modules is not a valid regex: '\\('"),
        ({"target_modules": ["q", ""]}, "target_modules entries must be non-empty strings"),
        ({"use_rslora": "yes"}, "use_rslora must be a bool, got 'yes'"),
        ({"rank_pattern": {"lin0": 0}}, r"rank_pattern\['lin0'\] must be a positive int, got 0"),
        ({"rank_pattern": [1]}, "rank_pattern must be a dict"),
        ({"modules_to_save": "head"}, "modules_to_save must be a list of module names, got 'head'"),
        ({"init": "xavier"}, "init must be one of .*got 'xavier'"),
    ],
)
def test_bad_config_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        lrl.LoRAConfig(**kwargs)


def test_no_match_lists_linear_names_and_leaves_model_untouched():
    model = fresh_mlp()
    before = snapshot(model)
    with pytest.raises(NoMatchingModulesError, match=r"matched no nn.Linear.*\['lin0', 'lin1', 'head'\]"):
        lrl.inject(model, lrl.LoRAConfig(target_modules=("q_proj",)))
    with pytest.raises(NoMatchingModulesError, match="modules_to_save entry 'classifier'"):
        lrl.inject(model, lrl.LoRAConfig(target_modules=("lin0",), modules_to_save=("classifier",)))
    assert not lrl.adapter_layers(model)
    assert all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_inject_twice_refused():
    model = lrl.inject(fresh_mlp(), METHODS["lora"]())
    with pytest.raises(ValueError, match="already has adapters"):
        lrl.inject(model, METHODS["lora"]())


def test_merge_refuses_non_finite_and_writes_nothing(x):
    model = lrl.inject(fresh_mlp(), METHODS["lora"]())
    make_nonidentity(model)
    with torch.no_grad():
        lrl.adapter_layers(model)["lin1"].lora_B[0, 0] = float("nan")
    before = {n: l.base_layer.weight.clone() for n, l in lrl.adapter_layers(model).items()}
    with pytest.raises(ValueError, match="non-finite"):
        lrl.merge(model)
    for name, layer in lrl.adapter_layers(model).items():
        assert not layer.merged and torch.equal(layer.base_layer.weight, before[name])


def test_merge_unmerge_need_adapters():
    with pytest.raises(ValueError, match="no adapter layers"):
        lrl.merge(fresh_mlp())
    with pytest.raises(ValueError, match="no adapters to save"):
        lrl.save_adapter(fresh_mlp(), "unused")


@pytest.fixture
def saved(tmp_path):
    model = lrl.inject(fresh_mlp(), METHODS["lora-regex-head"]())
    make_nonidentity(model)
    return lrl.save_adapter(model, tmp_path / "adapter")


def assert_load_refused(saved, match, model=None, error=ValueError):
    """Loading ``saved`` raises ``error`` matching ``match`` and leaves the model exactly as it was."""
    model = fresh_mlp() if model is None else model
    before = snapshot(model)
    with pytest.raises(error, match=match):
        lrl.load_adapter(model, saved)
    assert not lrl.adapter_layers(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_corrupt_weights_file(saved):
    (saved / "adapter_model.safetensors").write_bytes(b"\x00garbage" * 10)
    assert_load_refused(saved, "corrupt adapter weights")


def test_corrupt_config_file(saved):
    (saved / "adapter_config.json").write_text("{not json")
    assert_load_refused(saved, "corrupt adapter config")


def test_missing_file(saved):
    (saved / "adapter_config.json").unlink()
    assert_load_refused(saved, "adapter_config.json", error=FileNotFoundError)


def test_mismatched_shapes_leave_model_untouched(saved):
    class Wider(MLP):
        def __init__(self):
            super().__init__()
            self.lin0 = nn.Linear(12, 24)
            self.lin1 = nn.Linear(24, 16)

    assert_load_refused(saved, "shapes do not match", model=Wider().double())


def test_non_finite_file_refused(saved):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(saved / "adapter_model.safetensors"))
    tensors["lin0.lora_B"][0, 0] = float("inf")
    save_file(tensors, str(saved / "adapter_model.safetensors"))
    assert_load_refused(saved, "non-finite")


def test_unknown_method_in_file(saved):
    import json

    meta = json.loads((saved / "adapter_config.json").read_text())
    meta["method"] = "vera"
    (saved / "adapter_config.json").write_text(json.dumps(meta))
    assert_load_refused(saved, "adapter method must be one of .*got 'vera'")
