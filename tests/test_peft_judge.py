"""HF PEFT as an outside judge: same base weights, same NON-zero A and B -> same logits and gradients.

Runs on the real all-MiniLM-L6-v2 (classification, new head trained) and on the random-init tiny Llama
(causal LM, all 7 projections). PEFT is a test-only dependency; the module is skipped without it.
"""

import copy

import pytest
import torch

import lowrank_lab as lrl
from lowrank_lab.assets import model_spec

from judges import assert_same_logits_and_gradients, export_and_load_in_peft, judge_base_model, judge_batch

peft = pytest.importorskip("peft")

CASES = {
    "minilm-lora": ("minilm", "classification", dict(r=4, alpha=8, target_modules=("query", "value", "dense"))),
    "minilm-rslora-pattern": (
        "minilm",
        "classification",
        dict(r=4, alpha=8, target_modules=("query", "value"), use_rslora=True, rank_pattern={"encoder.layer.1.attention.self.query": 2}),
    ),
    "minilm-alpha-pattern": (  # GeLoRA's per-layer alpha (alpha ∝ r): PEFT's alpha_pattern must agree
        "minilm",
        "classification",
        dict(r=4, alpha=8, target_modules=("query", "value"), rank_pattern={"encoder.layer.1.attention.self.query": 2},
             alpha_pattern={"encoder.layer.1.attention.self.query": 4.0, "encoder.layer.2.attention.self.value": 3.0}),
    ),
    "tiny-llama-lora": ("tiny-llama", "causal_lm", dict(r=8, alpha=16, target_modules=model_spec("tiny-llama").all_linear_targets)),
    "tiny-llama-rslora": ("tiny-llama", "causal_lm", dict(r=3, alpha=5, target_modules=("q_proj", "v_proj", "down_proj"), use_rslora=True)),
}


def ours_and_peft(name, kind, kwargs):
    base = judge_base_model(name, kind)
    head = model_spec(name).head_modules[kind]
    ours = lrl.inject(copy.deepcopy(base), lrl.LoRAConfig(modules_to_save=head, **kwargs))
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for layer in lrl.adapter_layers(ours).values():
            layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=gen) * 0.05)
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * 0.05)  # NON-zero B
    peft_config = peft.LoraConfig(
        r=kwargs["r"],
        lora_alpha=kwargs["alpha"],
        target_modules=list(kwargs["target_modules"]),
        use_rslora=kwargs.get("use_rslora", False),
        rank_pattern=kwargs.get("rank_pattern", {}),
        alpha_pattern=kwargs.get("alpha_pattern", {}),
        modules_to_save=list(head) or None,
        lora_dropout=0.0,
    )
    theirs = peft.get_peft_model(copy.deepcopy(base), peft_config).eval()
    with torch.no_grad():
        for name_, layer in lrl.adapter_layers(ours).items():
            peft_layer = theirs.base_model.model.get_submodule(name_)
            assert peft_layer.scaling["default"] == pytest.approx(layer.scaling)
            peft_layer.lora_A["default"].weight.copy_(layer.lora_A)
            peft_layer.lora_B["default"].weight.copy_(layer.lora_B)
    return base, ours, theirs


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_logits_and_gradients_as_peft(case):
    name, kind, kwargs = CASES[case]
    base, ours, theirs = ours_and_peft(name, kind, kwargs)
    assert_same_logits_and_gradients(base, ours, theirs, *judge_batch(name, kind), lambda layer, peft_layer: [
        (layer.lora_A.grad, peft_layer.lora_A["default"].weight.grad),
        (layer.lora_B.grad, peft_layer.lora_B["default"].weight.grad)])


@pytest.mark.parametrize("case", sorted(CASES))
def test_exported_adapter_loads_in_peft_with_identical_logits(case, tmp_path):
    name, kind, kwargs = CASES[case]
    base, ours, _ = ours_and_peft(name, kind, kwargs)
    inputs, _ = judge_batch(name, kind)
    export_and_load_in_peft(peft, base, ours, kind, inputs, tmp_path, atol=1e-6)
