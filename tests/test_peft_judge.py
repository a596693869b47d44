"""HF PEFT as an outside judge: same base weights, same NON-zero A and B -> same logits and gradients.

Runs on the real all-MiniLM-L6-v2 (classification, new head trained) and on the random-init tiny Llama
(causal LM, all 7 projections). PEFT is a test-only dependency; the module is skipped without it.
"""

import copy

import pytest
import torch

import lowrank_lab as lrl
from lowrank_lab.assets import load_model, load_tokenizer, model_spec

peft = pytest.importorskip("peft")

TOL = dict(rtol=1e-5, atol=1e-5)
CASES = {
    "minilm-lora": ("minilm", "classification", dict(r=4, alpha=8, target_modules=("query", "value", "dense"))),
    "minilm-rslora-pattern": (
        "minilm",
        "classification",
        dict(r=4, alpha=8, target_modules=("query", "value"), use_rslora=True, rank_pattern={"encoder.layer.1.attention.self.query": 2}),
    ),
    "tiny-llama-lora": ("tiny-llama", "causal_lm", dict(r=8, alpha=16, target_modules=model_spec("tiny-llama").all_linear_targets)),
    "tiny-llama-rslora": ("tiny-llama", "causal_lm", dict(r=3, alpha=5, target_modules=("q_proj", "v_proj", "down_proj"), use_rslora=True)),
}


def base_model(name, kind):
    torch.manual_seed(0)
    model = load_model(name, kind=kind, num_labels=2 if kind == "classification" else None)
    return model.eval()  # dropout off: both models must see the same forward


def batch(name, kind):
    tok = load_tokenizer(name)
    enc = tok(["a gripping, beautifully acted film", "flat and lifeless, a chore to sit through"], padding=True, return_tensors="pt")
    inputs = dict(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    labels = torch.tensor([1, 0]) if kind == "classification" else enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return inputs, labels


def ours_and_peft(name, kind, kwargs):
    base = base_model(name, kind)
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


def loss_of(model, kind, inputs, labels):
    return model(**inputs, labels=labels).loss


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_logits_and_gradients_as_peft(case):
    name, kind, kwargs = CASES[case]
    base, ours, theirs = ours_and_peft(name, kind, kwargs)
    inputs, labels = batch(name, kind)
    with torch.no_grad():
        base_logits = base(**inputs).logits
    out_ours, out_theirs = ours(**inputs, labels=labels), theirs(**inputs, labels=labels)
    assert (out_ours.logits - base_logits).abs().max() > 1e-3, "adapter must be non-identity"
    torch.testing.assert_close(out_ours.logits, out_theirs.logits, **TOL)
    out_ours.loss.backward()
    out_theirs.loss.backward()
    for name_, layer in lrl.adapter_layers(ours).items():
        peft_layer = theirs.base_model.model.get_submodule(name_)
        torch.testing.assert_close(layer.lora_A.grad, peft_layer.lora_A["default"].weight.grad, **TOL)
        torch.testing.assert_close(layer.lora_B.grad, peft_layer.lora_B["default"].weight.grad, **TOL)
    ours_trainable, _ = lrl.count_parameters(ours)
    theirs_trainable = sum(p.numel() for p in theirs.parameters() if p.requires_grad)
    assert ours_trainable == theirs_trainable


@pytest.mark.parametrize("case", sorted(CASES))
def test_exported_adapter_loads_in_peft_with_identical_logits(case, tmp_path):
    name, kind, kwargs = CASES[case]
    base, ours, _ = ours_and_peft(name, kind, kwargs)
    if kind == "classification":  # a trained head must be exported too
        with torch.no_grad():
            ours.classifier.weight.normal_()
    inputs, _ = batch(name, kind)
    lrl.export_peft(ours, tmp_path)
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, ours(**inputs).logits, rtol=0, atol=1e-6)
