"""DoRA (arXiv 2402.09353) judged against HF PEFT's ``LoraConfig(use_dora=True)`` on the same weights.

Every equivalence check uses NON-zero A and B and a magnitude m that is not ‖W0 + s·B·A‖ (at B = 0 and the default
m every DoRA layer equals its base layer, which would prove nothing). PEFT is a test-only dependency.
"""

import copy
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import lowrank_lab as lrl
from lowrank_lab import io
from lowrank_lab.layers.base import NonFiniteError
from lowrank_lab.layers.dora import DoRAConfig, DoRALinear, dora_to_peft, prepare_dora

from judges import assert_same_logits_and_gradients, export_and_load_in_peft, judge_base_model, judge_batch

peft = pytest.importorskip("peft")

CASES = {
    "dora": dict(r=4, alpha=8, target_modules=("query", "value", "dense"),
                 rank_pattern={"encoder.layer.1.attention.self.query": 2}),
    "dora-rslora-alpha-pattern": dict(r=4, alpha=6, target_modules=("query", "value"), use_rslora=True,
                                      rank_pattern={"encoder.layer.1.attention.self.query": 2},
                                      alpha_pattern={"encoder.layer.2.attention.self.value": 3.0}),
}
HEAD = ("classifier",)


@pytest.fixture(scope="module")
def minilm():
    return judge_base_model("minilm", "classification")


@pytest.fixture(scope="module")
def batch():
    return judge_batch("minilm", "classification")


def randomize(model, seed=7):
    """Non-zero A, B and a magnitude 10% off ‖W0 + s·B·A‖ (random per row): every part of DoRA matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lrl.adapter_layers(model).values():
            for p in (layer.lora_A, layer.lora_B):
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.05)
            noise = torch.randn(layer.lora_magnitude.shape, generator=gen, dtype=torch.float64)
            layer.lora_magnitude.mul_((1 + 0.1 * noise).to(layer.lora_magnitude.dtype))
    return model


def peft_copy(base, ours, kwargs, dropout=0.0):
    """PEFT's DoRA on a copy of ``base``, holding our A, B and m."""
    config = peft.LoraConfig(r=kwargs["r"], lora_alpha=kwargs["alpha"], target_modules=list(kwargs["target_modules"]),
                             use_rslora=kwargs.get("use_rslora", False), rank_pattern=kwargs.get("rank_pattern", {}),
                             alpha_pattern=kwargs.get("alpha_pattern", {}), modules_to_save=list(HEAD),
                             lora_dropout=dropout, use_dora=True)
    theirs = peft.get_peft_model(copy.deepcopy(base), config).eval()
    with torch.no_grad():
        for name, layer in lrl.adapter_layers(ours).items():
            peft_layer = theirs.base_model.model.get_submodule(name)
            assert peft_layer.scaling["default"] == pytest.approx(layer.scaling)
            peft_layer.lora_A["default"].weight.copy_(layer.lora_A)
            peft_layer.lora_B["default"].weight.copy_(layer.lora_B)
            peft_layer.lora_magnitude_vector["default"].weight.copy_(layer.lora_magnitude)
    return theirs


def ours_and_peft(minilm, kwargs, dtype=torch.float32):
    base = copy.deepcopy(minilm).to(dtype)
    ours = randomize(lrl.inject(copy.deepcopy(base), DoRAConfig(modules_to_save=HEAD, **kwargs)))
    return base, ours, peft_copy(base, ours, kwargs)


def dora_gradients(layer, peft_layer):
    return [(layer.lora_A.grad, peft_layer.lora_A["default"].weight.grad),
            (layer.lora_B.grad, peft_layer.lora_B["default"].weight.grad),
            (layer.lora_magnitude.grad, peft_layer.lora_magnitude_vector["default"].weight.grad)]


@pytest.fixture
def dora_in_io(monkeypatch):
    """io's tables know DoRA: through the registry once the lead wires it, patched for this test until then."""
    if "dora" not in io.CONFIG_CLASSES:
        monkeypatch.setitem(io.CONFIG_CLASSES, "dora", DoRAConfig)
    if "dora" not in io.PEFT_EXPORTERS:
        monkeypatch.setitem(io.PEFT_EXPORTERS, "dora", dora_to_peft)


# --------------------------------------------------------------------------------------------- PEFT judge
@pytest.mark.parametrize("case", sorted(CASES))
def test_same_logits_and_gradients_as_peft(minilm, batch, case):
    base, ours, theirs = ours_and_peft(minilm, CASES[case])
    assert_same_logits_and_gradients(base, ours, theirs, *batch, dora_gradients)  # fp32: rtol = atol = 1e-5


def test_float64_matches_peft_to_round_off(minilm, batch):
    inputs, labels = batch
    base, ours, theirs = ours_and_peft(minilm, CASES["dora"], torch.float64)
    out_ours, out_theirs = ours(**inputs, labels=labels), theirs(**inputs, labels=labels)
    with torch.no_grad():
        assert (out_ours.logits - base(**inputs).logits).abs().max() > 1e-3
    torch.testing.assert_close(out_ours.logits, out_theirs.logits, rtol=0, atol=1e-13)
    out_ours.loss.backward()
    out_theirs.loss.backward()
    for name, layer in lrl.adapter_layers(ours).items():
        for mine, peft_grad in dora_gradients(layer, theirs.base_model.model.get_submodule(name)):
            assert mine.abs().max() > 0
            torch.testing.assert_close(mine, peft_grad, rtol=0, atol=1e-14)


class OneLinear(nn.Module):
    def __init__(self, n_in=24, n_out=20):
        super().__init__()
        self.proj = nn.Linear(n_in, n_out)

    def forward(self, x):
        return self.proj(x)


def test_dropout_in_training_matches_peft():
    """PEFT's dropout: the base path sees x, the DoRA correction dropout(x); same seed, same mask, same numbers."""
    torch.manual_seed(0)
    base = OneLinear().double()
    kwargs = dict(r=3, alpha=5, target_modules=("proj",))
    ours = randomize(lrl.inject(copy.deepcopy(base), DoRAConfig(dropout=0.4, **kwargs)))
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(
        r=3, lora_alpha=5, target_modules=["proj"], lora_dropout=0.4, use_dora=True))
    layer, peft_layer = ours.proj, theirs.base_model.model.proj
    with torch.no_grad():
        peft_layer.lora_A["default"].weight.copy_(layer.lora_A)
        peft_layer.lora_B["default"].weight.copy_(layer.lora_B)
        peft_layer.lora_magnitude_vector["default"].weight.copy_(layer.lora_magnitude)
    x = torch.randn(2, 5, 24, dtype=torch.float64)
    ours.train(), theirs.train()
    torch.manual_seed(3)
    y_ours = ours(x)
    torch.manual_seed(3)
    y_theirs = peft_layer(x)
    torch.testing.assert_close(y_ours, y_theirs, rtol=0, atol=1e-13)
    with torch.no_grad():  # dropout did act: the eval forward differs
        assert (ours.eval()(x) - y_ours).abs().max() > 1e-3
    y_ours.square().sum().backward()
    y_theirs.square().sum().backward()
    for mine, peft_grad in dora_gradients(layer, peft_layer):
        torch.testing.assert_close(mine, peft_grad, rtol=0, atol=1e-12)


def test_forward_and_gradients_equal_the_formula_with_a_detached_norm():
    """Float64 re-derivation (no PEFT): y = m ⊙ (W0 + s·B·A) x / ‖W0 + s·B·A‖_rows + b, the norm a constant."""
    torch.manual_seed(1)
    base = OneLinear().double()
    ours = randomize(lrl.inject(copy.deepcopy(base), DoRAConfig(r=3, alpha=5, target_modules=("proj",))))
    layer = ours.proj
    x = torch.randn(7, 24, dtype=torch.float64)
    A, B, m = (p.detach().clone().requires_grad_() for p in (layer.lora_A, layer.lora_B, layer.lora_magnitude))
    V = base.proj.weight + layer.scaling * B @ A
    expected = (m / V.norm(dim=1).detach()).unsqueeze(1) * V
    y_ref = x @ expected.T + base.proj.bias
    y = ours(x)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-13)
    y.sin().sum().backward()
    y_ref.sin().sum().backward()
    for mine, ref in zip((layer.lora_A.grad, layer.lora_B.grad, layer.lora_magnitude.grad), (A.grad, B.grad, m.grad)):
        torch.testing.assert_close(mine, ref, rtol=0, atol=1e-13)
    # the detach matters: with the norm in the graph, A and B get other gradients (paper §4.3 drops that term)
    A2, B2 = (p.detach().clone().requires_grad_() for p in (layer.lora_A, layer.lora_B))
    V2 = base.proj.weight + layer.scaling * B2 @ A2
    (x @ ((m.detach() / V2.norm(dim=1)).unsqueeze(1) * V2).T).sin().sum().backward()
    assert (A2.grad - A.grad).abs().max() > 1e-6


def test_bf16_autocast_and_bf16_weights_stay_close_to_fp32():
    """Lower precision: the norm is formed in fp32 (autocast off inside it); outputs within bf16 round-off."""
    torch.manual_seed(5)
    model = randomize(lrl.inject(OneLinear(), DoRAConfig(r=3, target_modules=("proj",))))
    x = torch.randn(4, 6, 24)
    reference = model(x).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), reference, rtol=0, atol=3e-2)
    y.float().sum().backward()
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in model.proj.adapter_parameters().values())
    low = copy.deepcopy(model).to(torch.bfloat16)
    torch.testing.assert_close(low(x.bfloat16()).float(), reference, rtol=0, atol=3e-2)


# --------------------------------------------------------------------------------------------- identity
def test_zero_B_is_the_base_model_and_default_magnitude_is_lora(minilm, batch):
    inputs, _ = batch
    with torch.no_grad():
        base_logits = minilm(**inputs).logits
        fresh = lrl.inject(copy.deepcopy(minilm), DoRAConfig(r=4, target_modules=("query", "value", "dense")))
        torch.testing.assert_close(fresh(**inputs).logits, base_logits, rtol=0, atol=0)  # m/‖W0‖ is exactly 1
        model = randomize(copy.deepcopy(fresh))
        for layer in lrl.adapter_layers(model).values():
            layer.lora_B.zero_()
            layer.reset_magnitude()  # m = ‖W0 + 0‖, with A non-zero
            assert layer.delta_weight().abs().max() == 0
        torch.testing.assert_close(model(**inputs).logits, base_logits, rtol=0, atol=0)
        # m = ‖W0 + s·B·A‖ with B ≠ 0: DoRA computes exactly LoRA's W0 + s·B·A
        model = randomize(copy.deepcopy(fresh))
        lora = lrl.inject(copy.deepcopy(minilm), lrl.LoRAConfig(r=4, target_modules=("query", "value", "dense")))
        for name, layer in lrl.adapter_layers(model).items():
            layer.reset_magnitude()
            lrl.adapter_layers(lora)[name].lora_A.copy_(layer.lora_A)
            lrl.adapter_layers(lora)[name].lora_B.copy_(layer.lora_B)
        torch.testing.assert_close(model(**inputs).logits, lora(**inputs).logits, rtol=1e-5, atol=1e-5)
        assert (model(**inputs).logits - base_logits).abs().max() > 1e-3


# --------------------------------------------------------------------------------------------- merge
def test_merge_keeps_logits_and_unmerge_restores_w0(minilm, batch):
    inputs, _ = batch
    base, ours, theirs = ours_and_peft(minilm, CASES["dora"])
    layers = lrl.adapter_layers(ours)
    w0 = {name: layer.base_layer.weight.detach().clone() for name, layer in layers.items()}
    with torch.no_grad():
        before = ours(**inputs).logits
        lrl.merge(ours)
        assert all(layer.merged and layer.saved_merge_state is not None for layer in layers.values())
        torch.testing.assert_close(ours(**inputs).logits, before, rtol=1e-5, atol=1e-5)
        theirs.merge_adapter()  # PEFT's merged weights: the same W'
        for name, layer in layers.items():
            torch.testing.assert_close(layer.base_layer.weight, theirs.base_model.model.get_submodule(name).base_layer.weight,
                                       rtol=0, atol=1e-6)
        lrl.unmerge(ours)
        for name, layer in layers.items():
            assert not layer.merged and layer.saved_merge_state is None
            torch.testing.assert_close(layer.base_layer.weight, w0[name], rtol=0, atol=1e-6)
        torch.testing.assert_close(ours(**inputs).logits, before, rtol=1e-5, atol=1e-5)
        unloaded = lrl.merge_and_unload(copy.deepcopy(ours))
        assert not lrl.adapter_layers(unloaded)
        torch.testing.assert_close(unloaded(**inputs).logits, before, rtol=1e-5, atol=1e-5)


def test_unmerge_uses_the_factor_saved_at_merge():
    torch.manual_seed(2)
    base = OneLinear().double()
    model = randomize(lrl.inject(copy.deepcopy(base), DoRAConfig(r=3, target_modules=("proj",))))
    layer = model.proj
    layer.merge()
    with torch.no_grad():
        layer.lora_magnitude.mul_(3.0)  # m changes while merged (the forward ignores it): W0 still comes back
    layer.unmerge()
    torch.testing.assert_close(layer.base_layer.weight, base.proj.weight, rtol=0, atol=1e-14)


def test_lora_and_bone_merges_keep_no_state_and_state_dicts_are_unchanged():
    """The merge-state hook is backward compatible: additive methods save nothing, no new state-dict keys."""
    for config in (lrl.LoRAConfig(r=2, target_modules=("proj",)), lrl.BoneConfig(r=4, target_modules=("proj",))):
        model = lrl.inject(OneLinear(), config)
        keys = set(model.state_dict())
        lrl.merge(model)
        assert model.proj.saved_merge_state is None and set(model.state_dict()) == keys
        lrl.unmerge(model)
    dora = lrl.inject(OneLinear(), DoRAConfig(r=2, target_modules=("proj",)))
    keys = set(dora.state_dict())
    assert "proj.lora_magnitude" in keys and not any("saved_merge_state" in k for k in keys)
    lrl.merge(dora)
    assert set(dora.state_dict()) == keys  # the saved factor is a non-persistent buffer


# --------------------------------------------------------------------------------------------- files
def test_export_to_peft_loads_with_identical_logits(minilm, batch, tmp_path, dora_in_io):
    inputs, _ = batch
    base, ours, _ = ours_and_peft(minilm, CASES["dora-rslora-alpha-pattern"])
    loaded = export_and_load_in_peft(peft, base, ours, "classification", inputs, tmp_path, atol=1e-6)
    keys = set(load_file(str(tmp_path / io.WEIGHTS_FILE)))
    name = "encoder.layer.1.attention.self.query"
    assert f"base_model.model.bert.{name}.lora_magnitude_vector" in keys  # PEFT's own saved key
    peft_layer = loaded.base_model.model.bert.get_submodule(name)
    assert peft_layer.use_dora["default"] and peft_layer.r["default"] == 2
    torch.testing.assert_close(peft_layer.lora_magnitude_vector["default"].weight,
                               lrl.adapter_layers(ours)[f"bert.{name}"].lora_magnitude)


def test_dora_to_peft_is_loras_export_plus_magnitudes(minilm):
    model = randomize(lrl.inject(copy.deepcopy(minilm), DoRAConfig(r=4, target_modules=("query",))))
    config, tensors = dora_to_peft(model, lrl.adapters.get_config(model))
    assert config["peft_type"] == "LORA" and config["use_dora"] is True and config["r"] == 4
    assert sum(key.endswith(".lora_magnitude_vector") for key in tensors) == 6
    assert sum(key.endswith(".lora_A.weight") for key in tensors) == 6


def round_trip(minilm, batch, tmp_path):
    inputs, _ = batch
    ours = randomize(lrl.inject(copy.deepcopy(minilm), DoRAConfig(modules_to_save=HEAD, **CASES["dora"])))
    io.save_adapter(ours, tmp_path)
    loaded = io.load_adapter(copy.deepcopy(minilm), tmp_path)
    assert isinstance(lrl.adapters.get_config(loaded), DoRAConfig)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, ours(**inputs).logits, rtol=0, atol=0)
    for name, layer in lrl.adapter_layers(loaded).items():
        assert isinstance(layer, DoRALinear)
        torch.testing.assert_close(layer.lora_magnitude, lrl.adapter_layers(ours)[name].lora_magnitude, rtol=0, atol=0)
    io.load_adapter(loaded, tmp_path)  # into a model carrying the same adapter: weights replaced


def test_save_load_round_trip(minilm, batch, tmp_path, dora_in_io):
    round_trip(minilm, batch, tmp_path)


def test_registry_knows_dora(minilm, batch, tmp_path):
    """Passes once DoRA is registered (config class "dora", PEFT exporter, the "dora" method)."""
    from lowrank_lab import registry

    registry.discover()
    assert io.CONFIG_CLASSES.get("dora") is DoRAConfig and "dora" in io.PEFT_EXPORTERS
    assert registry.get("dora").prepare is prepare_dora
    round_trip(minilm, batch, tmp_path)


# --------------------------------------------------------------------------------------------- recipe
def test_prepare_dora_is_prepare_lora_with_a_magnitude(minilm):
    from lowrank_lab.layers.lora import prepare_lora
    from lowrank_lab.recipes import MethodOptions

    task = SimpleNamespace(kind="classification")
    options = MethodOptions(r=4, alpha=12, dropout=0.1)
    dora = prepare_dora(copy.deepcopy(minilm), "minilm", task, options)
    lora = prepare_lora(copy.deepcopy(minilm), "minilm", task, options)
    config = lrl.adapters.get_config(dora)
    assert type(config) is DoRAConfig and config.method == "dora"
    assert config.to_dict() == lrl.adapters.get_config(lora).to_dict()
    assert config.modules_to_save == HEAD and config.target_modules == ("query", "value")
    layers = lrl.adapter_layers(dora)
    assert len(layers) == 12 and all(type(layer) is DoRALinear for layer in layers.values())
    trainable = {name for name, p in dora.named_parameters() if p.requires_grad}
    magnitudes = {name for name in trainable if name.endswith(".lora_magnitude")}
    assert len(magnitudes) == 12 and any(name.startswith("classifier.") for name in trainable)
    out = sum(layer.out_features for layer in layers.values())
    assert lrl.count_parameters(dora)[0] == lrl.count_parameters(lora)[0] + out


def test_config_round_trip():
    config = DoRAConfig(r=4, alpha=6, target_modules=("query",), use_rslora=True, rank_pattern={"query": 2})
    assert DoRAConfig.from_dict(config.to_dict()) == config and config.method == "dora"
    with pytest.raises(TypeError):
        config.differing_fields(lrl.LoRAConfig())


# --------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("field,value,message", [
    ("r", 0, "r must be a positive int, got 0"),
    ("alpha", float("nan"), "alpha must be a positive finite number, got nan"),
    ("dropout", 1.0, "dropout must be a float in [0, 1), got 1.0"),
    ("init", "zeros", "init must be one of"),
])
def test_bad_config_names_the_field(field, value, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        DoRAConfig(**{field: value})


def test_layer_refuses_bad_arguments_and_zero_rows():
    with pytest.raises(ValueError, match="r must be a positive int, got 0"):
        DoRALinear(nn.Linear(4, 4), r=0, scaling=1.0)
    model = OneLinear()
    with torch.no_grad():
        model.proj.weight[3].zero_()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"module 'proj': rows \[3\]"):
        lrl.inject(model, DoRAConfig(r=2, target_modules=("proj",)))
    assert isinstance(model.proj, nn.Linear) and not lrl.adapter_layers(model)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


def test_nan_magnitude_refuses_the_merge_naming_the_field(minilm):
    model = randomize(lrl.inject(copy.deepcopy(minilm), DoRAConfig(r=4, target_modules=("query", "value"))))
    name = "bert.encoder.layer.2.attention.self.value"
    with torch.no_grad():
        lrl.adapter_layers(model)[name].lora_magnitude[5] = float("nan")
    weights = {n: layer.base_layer.weight.detach().clone() for n, layer in lrl.adapter_layers(model).items()}
    with pytest.raises(NonFiniteError, match=rf"{name}: lora_magnitude has non-finite values in rows \[5\]"):
        lrl.merge(model)
    for n, layer in lrl.adapter_layers(model).items():  # nothing written anywhere
        assert not layer.merged and layer.saved_merge_state is None
        assert torch.equal(layer.base_layer.weight, weights[n])


def test_zero_magnitude_refuses_the_unmerge_naming_the_field():
    torch.manual_seed(4)
    model = randomize(lrl.inject(OneLinear(), DoRAConfig(r=2, target_modules=("proj",))))
    with torch.no_grad():
        model.proj.lora_magnitude[1] = 0.0
    lrl.merge(model)  # allowed (merge_and_unload needs no way back), but row 1 of W0 is gone
    merged = model.proj.base_layer.weight.detach().clone()
    with pytest.raises(ValueError, match=r"proj: lora_magnitude was 0 in rows \[1\]"):
        lrl.unmerge(model)
    assert model.proj.merged and torch.equal(model.proj.base_layer.weight, merged)
