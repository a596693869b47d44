"""Bone and Bat against independent judges: float64 block-by-block re-derivations, finite differences
(gradcheck), and HF PEFT's MiSS (default and "bat") on the same base weights and the same NON-zero D.

The shared behaviours (identity at init, merge ≡ unmerged, unmerge restores W0, save/load, what trains) run
in tests/test_adapters.py's method matrix; this file covers what is specific to Bone and Bat.
"""

import copy
import json

import pytest
import torch
from torch import nn

import lowrank_lab as lrl
from lowrank_lab import recipes
from lowrank_lab.layers.bone import (
    _BatLinearFunction,
    _BoneLinearFunction,
    bat_unmerged_weight,
    bone_rank_matching_lora,
    shard_sum,
    tiled_identity,
)

from judges import assert_same_logits_and_gradients, export_and_load_in_peft, judge_base_model, judge_batch

F64 = torch.float64


def linear(n, m, seed=0, dtype=F64):
    torch.manual_seed(seed)
    return nn.Linear(n, m).to(dtype)


def random_block(layer, std=0.3, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.bone_block.copy_(torch.randn(layer.bone_block.shape, generator=gen, dtype=F64) * std)
    return layer


def bone_delta_by_columns(D, n):
    """ΔW column by column from the definition: column i gets row (i mod r) of D."""
    r, m = D.shape
    return torch.stack([D[i % r] for i in range(n)], dim=1)


def bat_weight_by_blocks(W, D):
    """W'_ij = W_ij (I + D_i) + D_i, one r×r block at a time."""
    r = D.shape[-1]
    merged = torch.empty_like(W)
    eye = torch.eye(r, dtype=W.dtype)
    for i in range(W.shape[0] // r):
        for j in range(W.shape[1] // r):
            block = W[i * r:(i + 1) * r, j * r:(j + 1) * r]
            merged[i * r:(i + 1) * r, j * r:(j + 1) * r] = block @ (eye + D[i]) + D[i]
    return merged


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin0, self.lin1, self.head = nn.Linear(12, 20), nn.Linear(20, 16), nn.Linear(16, 3)

    def forward(self, x):
        return self.head(torch.relu(self.lin1(torch.relu(self.lin0(x)))))


def fresh_mlp():
    torch.manual_seed(0)
    return MLP().double()


# ----------------------------------------------------------------------------------------------
# Bone
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, m, r", [(12, 20, 4), (12, 20, 12), (14, 9, 4), (20, 16, 3), (7, 5, 1), (10, 6, 7)])
def test_bone_efficient_forward_equals_merged_weight(n, m, r):
    """y = W0x + Dᵀ S(x) equals F.linear with W0 + [Dᵀ|Dᵀ|...], with and without padding (n % r ≠ 0)."""
    base = linear(n, m)
    layer = random_block(lrl.BoneLinear(copy.deepcopy(base), r))
    delta = bone_delta_by_columns(layer.bone_block.detach(), n)
    torch.testing.assert_close(layer.delta_weight(), delta, rtol=0, atol=0)
    x = torch.randn(3, 5, n, dtype=F64)
    expected = torch.nn.functional.linear(x, base.weight + delta, base.bias)
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)
    assert (layer(x) - base(x)).abs().max() > 1e-3


def test_shard_sum_pads_only_the_last_shard():
    x = torch.arange(14.0).reshape(2, 7)
    # r = 3: shards [0 1 2] [3 4 5] [6 0 0]
    torch.testing.assert_close(shard_sum(x, 3), torch.tensor([[9.0, 5.0, 7.0], [30.0, 19.0, 21.0]]))
    torch.testing.assert_close(shard_sum(x, 3), x @ tiled_identity(3, 7).T)


@pytest.mark.parametrize("n, r", [(12, 4), (14, 4)])
def test_bone_gradient_closed_form_and_nonzero_at_init(n, r):
    """∂L/∂D = S(X)ᵀδ = Σ_j (G's shard j)ᵀ; at D = 0 it is non-zero while LoRA's ∂L/∂A is exactly zero."""
    m = 9
    layer = lrl.BoneLinear(linear(n, m), r)  # D = 0: the init
    X = torch.randn(11, n, dtype=F64)
    target = torch.randn(11, m, dtype=F64)
    Y = layer(X)
    Y.retain_grad()
    ((torch.tanh(Y) - target) ** 2).sum().backward()
    G = Y.grad.T @ X  # (m, n), the full fine-tuning gradient
    expected = torch.zeros(r, m, dtype=F64)
    for i in range(n):
        expected[i % r] += G[:, i]
    torch.testing.assert_close(layer.bone_block.grad, expected, rtol=1e-12, atol=1e-12)
    assert layer.bone_block.grad.abs().max() > 1e-3
    lora = lrl.LoRALinear(linear(n, m), r, scaling=1.0)
    ((torch.tanh(lora(X)) - target) ** 2).sum().backward()
    assert torch.count_nonzero(lora.lora_A.grad) == 0


@pytest.mark.parametrize("n, r", [(12, 4), (14, 4), (9, 9)])
def test_bone_hand_written_backward_passes_finite_differences(n, r):
    """The fused forward/backward (no dropout) against finite differences, for x, W0, bias and D."""
    layer = random_block(lrl.BoneLinear(linear(n, 6), r))
    inputs = (torch.randn(5, n, dtype=F64, requires_grad=True), layer.base_layer.weight.detach().clone().requires_grad_(),
              layer.base_layer.bias.detach().clone().requires_grad_(), layer.bone_block.detach().clone().requires_grad_())
    assert torch.autograd.gradcheck(lambda *a: _BoneLinearFunction.apply(*a, r), inputs)


def test_bone_fused_and_plain_paths_agree():
    """The fused path (eval: no dropout) gives the gradients of autograd through the plain formulation."""
    layer = random_block(lrl.BoneLinear(linear(14, 6).requires_grad_(False), 4, dropout=0.1))
    x = torch.randn(5, 14, dtype=F64, requires_grad=True)
    layer.eval()  # fused path
    layer(x).pow(2).sum().backward()
    fused = (x.grad.clone(), layer.bone_block.grad.clone())
    x.grad, layer.bone_block.grad = None, None
    plain = layer.base_layer(x) + shard_sum(x, 4) @ layer.bone_block  # the autograd formulation
    plain.pow(2).sum().backward()
    torch.testing.assert_close(fused[0], x.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fused[1], layer.bone_block.grad, rtol=1e-12, atol=1e-12)


def test_bone_to_lora_is_exact_and_exports_as_lora(tmp_path):
    model = lrl.inject(fresh_mlp(), lrl.BoneConfig(r=3, target_modules=("lin0", "lin1"), modules_to_save=("head",)))
    lrl.checks.randomize_adapters(model, std=0.3, seed=2)
    x = torch.randn(6, 12, dtype=F64)
    expected = model(x)
    blocks = {name: layer.bone_block.detach().clone() for name, layer in lrl.adapter_layers(model).items()}
    lrl.bone_to_lora(model)
    layers = lrl.adapter_layers(model)
    assert all(type(layer) is lrl.LoRALinear and layer.scaling == 1.0 for layer in layers.values())
    for name, layer in layers.items():
        n = layer.in_features
        A = torch.zeros(3, n, dtype=F64)
        A[torch.arange(n) % 3, torch.arange(n)] = 1.0  # A[i % r, i] = 1
        torch.testing.assert_close(layer.lora_A, A, rtol=0, atol=0)
        torch.testing.assert_close(layer.lora_B, blocks[name].T, rtol=0, atol=0)
    torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)
    assert isinstance(lrl.adapters.get_config(model), lrl.LoRAConfig)
    lrl.save_adapter(model, tmp_path / "ours")
    reloaded = lrl.load_adapter(fresh_mlp(), tmp_path / "ours")
    torch.testing.assert_close(reloaded(x), expected, rtol=1e-12, atol=1e-12)


def test_bone_to_lora_refuses_bat_and_merged():
    bat = lrl.inject(fresh_mlp(), lrl.BoneConfig(r=4, target_modules=("lin0",), variant="bat"))
    with pytest.raises(ValueError, match="needs a model with Bone adapters"):
        lrl.bone_to_lora(bat)
    bone = lrl.inject(fresh_mlp(), lrl.BoneConfig(r=4, target_modules=("lin0",)))
    lrl.checks.randomize_adapters(bone)
    lrl.merge(bone)
    with pytest.raises(ValueError, match="unmerge"):
        lrl.bone_to_lora(bone)
    assert type(bone.lin0) is lrl.BoneLinear


def test_bone_dropout_only_on_the_shard_sum():
    layer = lrl.BoneLinear(linear(12, 8), 4, dropout=0.5).train()
    x = torch.randn(5, 12, dtype=F64)
    torch.testing.assert_close(layer(x), layer.base_layer(x))  # D = 0: dropout on the branch changes nothing
    random_block(layer)
    layer.eval()
    torch.testing.assert_close(layer(x), layer.base_layer(x) + shard_sum(x, 4) @ layer.bone_block)


# ----------------------------------------------------------------------------------------------
# Bat
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, m, r", [(12, 20, 4), (16, 8, 8), (6, 6, 1), (8, 8, 8)])
@pytest.mark.parametrize("recompute", [True, False])
def test_bat_forward_equals_block_formula(n, m, r, recompute):
    base = linear(n, m)
    layer = random_block(lrl.BatLinear(copy.deepcopy(base), r, recompute_weight=recompute))
    merged = bat_weight_by_blocks(base.weight.detach(), layer.bone_block.detach())
    torch.testing.assert_close(layer.delta_weight(), merged - base.weight, rtol=1e-12, atol=1e-12)
    x = torch.randn(2, 3, n, dtype=F64)
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, merged, base.bias), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("recompute", [True, False])
def test_bat_hand_written_backward_passes_finite_differences(recompute):
    """gradcheck on x, W0, bias and D (float64): the custom backward is the derivative of the forward."""
    layer = random_block(lrl.BatLinear(linear(12, 8), 4))
    inputs = (torch.randn(5, 12, dtype=F64, requires_grad=True), layer.base_layer.weight.detach().clone().requires_grad_(),
              layer.base_layer.bias.detach().clone().requires_grad_(), layer.bone_block.detach().clone().requires_grad_())
    assert torch.autograd.gradcheck(lambda *a: _BatLinearFunction.apply(*a, not recompute), inputs)


def test_bat_gradient_closed_form():
    """∂L/∂D_i = Σ_j (W_ij + I)ᵀ G_ij with G = δᵀX, written as explicit block loops."""
    n, m, r = 12, 8, 4
    layer = random_block(lrl.BatLinear(linear(n, m).requires_grad_(False), r))
    X = torch.randn(7, n, dtype=F64)
    Y = layer(X)
    Y.retain_grad()
    (torch.sin(Y) * torch.randn(7, m, dtype=F64)).sum().backward()
    G, W = Y.grad.T @ X, layer.base_layer.weight.detach()
    expected = torch.zeros(m // r, r, r, dtype=F64)
    for i in range(m // r):
        for j in range(n // r):
            expected[i] += (W[i * r:(i + 1) * r, j * r:(j + 1) * r] + torch.eye(r, dtype=F64)).T @ G[i * r:(i + 1) * r, j * r:(j + 1) * r]
    torch.testing.assert_close(layer.bone_block.grad, expected, rtol=1e-12, atol=1e-12)
    assert layer.base_layer.weight.grad is None and layer.base_layer.bias.grad is None  # frozen: no m×n gradient


def test_bat_with_zero_base_weight_replicates_each_block_along_its_row():
    base = linear(12, 8)
    with torch.no_grad():
        base.weight.zero_()
    layer = random_block(lrl.BatLinear(base, 4))
    D = layer.bone_block.detach()
    torch.testing.assert_close(layer.delta_weight(), torch.cat([torch.cat([D[i]] * 3, dim=1) for i in range(2)]))


def test_bat_update_is_not_low_rank_but_bone_is():
    base = linear(32, 32)
    bone = random_block(lrl.BoneLinear(copy.deepcopy(base), 4))
    bat = random_block(lrl.BatLinear(copy.deepcopy(base), 4))
    assert torch.linalg.matrix_rank(bone.delta_weight()) == 4
    assert torch.linalg.matrix_rank(bat.delta_weight()) > 4 * 2


def test_bat_recompute_keeps_no_weight_sized_tensor():
    """recompute_weight=True saves x, D (and W0 itself) for backward; False also keeps the m×n W'."""
    saved = {}
    for recompute in (True, False):
        layer = random_block(lrl.BatLinear(linear(64, 48, dtype=torch.float32), 8, recompute_weight=recompute))
        x = torch.randn(16, 64)
        params = {p.untyped_storage().data_ptr() for p in layer.parameters()}
        sizes = []

        def pack(t):
            if t.untyped_storage().data_ptr() not in params:
                sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = layer(x)
        out.sum().backward()
        saved[recompute] = sum(sizes)
    assert saved[False] - saved[True] == 48 * 64


def test_bat_merge_unmerge_in_float32_and_singular_block_refused():
    layer = random_block(lrl.BatLinear(linear(16, 8, dtype=torch.float32), 4), std=0.1)
    W0 = layer.base_layer.weight.detach().clone()
    x = torch.randn(3, 16)
    adapted = layer(x)
    layer.merge()
    torch.testing.assert_close(layer(x), adapted, rtol=1e-5, atol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(layer.base_layer.weight, W0, rtol=0, atol=1e-5)
    with torch.no_grad():
        layer.bone_block[1] = -torch.eye(4)  # I + D_1 = 0: W'_1j = -I whatever W_1j was
    layer.merge()
    merged = layer.base_layer.weight.detach().clone()
    with pytest.raises(ValueError, match=r"singular or ill-conditioned for output block\(s\) \[1\] \(condition number up to inf"):
        layer.unmerge()
    assert layer.merged and torch.equal(layer.base_layer.weight, merged)
    with torch.no_grad():  # invertible but ill-conditioned (cond 1e6 > 1/sqrt(eps_fp32)): refused too
        layer.bone_block[1] = torch.diag(torch.tensor([0.0, 0.0, 0.0, -1 + 1e-6]))
    with pytest.raises(ValueError, match=r"block\(s\) \[1\] \(condition number up to 9\.\d+e\+05 > 2\.9e\+03\)"):
        layer.unmerge()


def test_bat_unmerge_inverse_runs_in_fp32_for_bf16_weights():
    layer = random_block(lrl.BatLinear(linear(16, 8, dtype=torch.bfloat16), 4), std=0.1)
    assert layer.compute_dtype == torch.float32
    W0 = layer.base_layer.weight.detach().float()
    merged = layer.merged_weight(W0)
    assert merged.dtype == torch.float32
    torch.testing.assert_close(bat_unmerged_weight(merged, layer.bone_block.float()), W0, rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant, r", [("bone", 3), ("bat", 4)])
def test_autocast_bf16(variant, r):
    layer = lrl.BoneConfig(r=r, target_modules=("x",), variant=variant).create_layer("x", linear(16, 8, dtype=torch.float32))
    random_block(layer, std=0.1)
    x = torch.randn(3, 16)
    expected = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
        out.float().sum().backward()
    torch.testing.assert_close(out.float(), expected, rtol=5e-2, atol=5e-2)
    assert layer.bone_block.grad is not None and torch.isfinite(layer.bone_block.grad).all()


# ----------------------------------------------------------------------------------------------
# Bad input: a clear error, and the model left untouched.
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"r": 0}, "r must be a positive int, got 0"),
        ({"r": -4}, "r must be a positive int, got -4"),
        ({"r": 2.0}, "r must be a positive int, got 2.0"),
        ({"variant": "miss"}, r"variant must be one of \('bone', 'bat'\), got 'miss'"),
        ({"variant": "Bat"}, "variant must be one of .*got 'Bat'"),
        ({"variant": "bat", "dropout": 0.1}, "dropout must be 0 with variant 'bat'.*got 0.1"),
        ({"dropout": 1.5}, r"dropout must be a float in \[0, 1\), got 1.5"),
        ({"target_modules": ()}, r"target_modules must not be empty, got \(\)"),
        ({"recompute_weight": 1}, "recompute_weight must be a bool, got 1"),
        ({"modules_to_save": "head"}, "modules_to_save must be a list of module names, got 'head'"),
    ],
)
def test_bad_config_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        lrl.BoneConfig(**{"r": 4, "target_modules": ("lin0",), **kwargs})


@pytest.mark.parametrize(
    "config, message",
    [
        (lambda: lrl.BoneConfig(r=13, target_modules=("lin0", "lin1")),
         r"r must be <= in_features of module 'lin0' \(Linear in=12, out=20\), got r=13"),
        (lambda: lrl.BoneConfig(r=21, target_modules=("lin1",), variant="bat"),
         r"r must be <= in_features of module 'lin1' \(Linear in=20, out=16\), got r=21"),
        (lambda: lrl.BoneConfig(r=3, target_modules=("lin0", "lin1"), variant="bat"),
         r"variant 'bat' needs r to divide both in_features and out_features .* module 'lin0' is Linear\(in=12, out=20\), got r=3"),
        (lambda: lrl.BoneConfig(r=8, target_modules=("lin0", "lin1"), variant="bat"),  # lin1 fits, lin0 does not
         r"module 'lin0' is Linear\(in=12, out=20\), got r=8"),
    ],
)
def test_layer_that_does_not_fit_leaves_model_untouched(config, message):
    model = fresh_mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        lrl.inject(model, config())
    assert not lrl.adapter_layers(model) and lrl.adapters.get_config(model) is None
    assert all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bat_layer_built_directly_checks_shape():
    with pytest.raises(ValueError, match=r"module 'base_layer' is Linear\(in=12, out=10\), got r=4"):
        lrl.BatLinear(linear(12, 10), 4)
    with pytest.raises(ValueError, match="r must be a positive int, got 0"):
        lrl.BoneLinear(linear(12, 10), 0)


# ----------------------------------------------------------------------------------------------
# Parameter matching, files, recipes
# ----------------------------------------------------------------------------------------------
def test_rank_matching_rule():
    square = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))
    assert bone_rank_matching_lora(square, ("0", "1"), lora_r=8) == 16  # r(m+n) = 2r·m on square layers
    llama_like = nn.ModuleDict({"q_proj": nn.Linear(512, 512), "up_proj": nn.Linear(512, 1408), "down_proj": nn.Linear(1408, 512)})
    targets = ("q_proj", "up_proj", "down_proj")
    lora = 8 * (1024 + 1920 + 1920)
    bone_r = bone_rank_matching_lora(llama_like, targets, 8)
    assert all(abs(bone_r * 2432 - lora) <= abs(r * 2432 - lora) for r in range(1, 513))
    bat_r = bone_rank_matching_lora(llama_like, targets, 8, variant="bat")
    assert 512 % bat_r == 0 and 1408 % bat_r == 0 and bat_r == 16
    with pytest.raises(ValueError, match="matched no nn.Linear"):
        bone_rank_matching_lora(square, ("q_proj",), 8)


def test_adapter_file_records_the_variant(tmp_path):
    model = lrl.inject(fresh_mlp(), lrl.BoneConfig(r=4, target_modules=("lin0", "lin1"), variant="bat"))
    lrl.checks.randomize_adapters(model, std=0.1)
    lrl.save_adapter(model, tmp_path)
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["method"] == "bat" and meta["config"]["variant"] == "bat"
    assert meta["shapes"]["lin0.bone_block"] == [5, 4, 4]
    x = torch.randn(4, 12, dtype=F64)
    torch.testing.assert_close(lrl.load_adapter(fresh_mlp(), tmp_path)(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("method, variant", [("bone", "bone"), ("bat", "bat")])
def test_recipes_register_bone_and_bat(method, variant):
    from lowrank_lab.assets import load_model, load_task

    assert method in recipes.METHODS
    task = load_task("sentiment", max_train=8, max_eval=8)
    model = recipes.prepare(method, load_model("tiny-llama", num_labels=2), "tiny-llama", task, {"r": 8})
    config = lrl.adapters.get_config(model)
    assert config.variant == variant and config.r == 8 and config.modules_to_save == ("score",)
    assert len(lrl.adapter_layers(model)) == 14  # 7 projections x 2 layers


# ----------------------------------------------------------------------------------------------
# HF PEFT's MiSS as the outside judge
# ----------------------------------------------------------------------------------------------
peft_cases = {
    "minilm-bone": ("minilm", "classification", dict(r=16, target_modules=("query", "value", "dense"))),
    "minilm-bone-padded": ("minilm", "classification", dict(r=10, target_modules=("query", "value", "dense"))),
    "minilm-bat": ("minilm", "classification", dict(r=16, variant="bat", target_modules=("query", "value", "dense"))),
    "tiny-llama-bone-padded": ("tiny-llama", "causal_lm", dict(r=6, target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))),
    "tiny-llama-bat": ("tiny-llama", "causal_lm", dict(r=8, variant="bat", target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))),
    "tiny-llama-bat-keep-weight": ("tiny-llama", "causal_lm", dict(r=16, variant="bat", recompute_weight=False, target_modules=("q_proj", "v_proj", "down_proj"))),
}


def peft_pair(name, kind, kwargs):
    peft = pytest.importorskip("peft")
    from lowrank_lab.assets import model_spec

    base = judge_base_model(name, kind)
    head = model_spec(name).head_modules[kind]
    ours = lrl.inject(copy.deepcopy(base), lrl.BoneConfig(modules_to_save=head, **kwargs))
    lrl.checks.randomize_adapters(ours, std=0.05, seed=7)  # NON-zero D
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.MissConfig(
        r=kwargs["r"], target_modules=list(kwargs["target_modules"]), modules_to_save=list(head) or None,
        init_weights="bat" if kwargs.get("variant") == "bat" else True)).eval()
    with torch.no_grad():
        for module_name, layer in lrl.adapter_layers(ours).items():
            theirs.base_model.model.get_submodule(module_name).miss_block["default"].copy_(layer.bone_block)
    return peft, base, ours, theirs


@pytest.mark.parametrize("case", sorted(peft_cases))
def test_same_logits_and_gradients_as_peft_miss(case):
    name, kind, kwargs = peft_cases[case]
    _, base, ours, theirs = peft_pair(name, kind, kwargs)
    assert_same_logits_and_gradients(base, ours, theirs, *judge_batch(name, kind), lambda layer, peft_layer: [
        (layer.bone_block.grad, peft_layer.miss_block["default"].grad)])


@pytest.mark.parametrize("case", sorted(peft_cases))
def test_exported_adapter_loads_in_peft_with_identical_logits(case, tmp_path):
    name, kind, kwargs = peft_cases[case]
    peft, base, ours, _ = peft_pair(name, kind, kwargs)
    inputs, _ = judge_batch(name, kind)
    loaded = export_and_load_in_peft(peft, base, ours, kind, inputs, tmp_path, atol=1e-5)
    assert loaded.peft_config["default"].init_weights == ("bat" if kwargs.get("variant") == "bat" else True)
