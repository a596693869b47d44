"""HF PEFT as the outside judge: the checks test_peft_judge.py (LoRA) and test_bone.py (MiSS) share.

Both build our adapter and PEFT's on copies of the same base model, copy the same NON-zero adapter weights
into PEFT's, and then call these helpers. PEFT is a test-only dependency.
"""

import copy

import torch

import lowrank_lab as lrl
from lowrank_lab.assets import load_model, load_tokenizer

TOL = dict(rtol=1e-5, atol=1e-5)


def judge_base_model(name, kind):
    torch.manual_seed(0)
    model = load_model(name, kind=kind, num_labels=2 if kind == "classification" else None)
    return model.eval()  # dropout off: both models must see the same forward


def judge_batch(name, kind):
    enc = load_tokenizer(name)(["a gripping, beautifully acted film", "flat and lifeless, a chore to sit through"],
                               padding=True, return_tensors="pt")
    inputs = dict(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    labels = torch.tensor([1, 0]) if kind == "classification" else enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return inputs, labels


def assert_same_logits_and_gradients(base, ours, theirs, inputs, labels, gradient_pairs):
    """Same logits, same loss gradients, same trainable count. ``gradient_pairs(our_layer, peft_layer)`` yields
    (our gradient, PEFT's gradient) for one adapted module."""
    with torch.no_grad():
        base_logits = base(**inputs).logits
    out_ours, out_theirs = ours(**inputs, labels=labels), theirs(**inputs, labels=labels)
    assert (out_ours.logits - base_logits).abs().max() > 1e-3, "adapter must be non-identity"
    torch.testing.assert_close(out_ours.logits, out_theirs.logits, **TOL)
    out_ours.loss.backward()
    out_theirs.loss.backward()
    for module_name, layer in lrl.adapter_layers(ours).items():
        for ours_grad, theirs_grad in gradient_pairs(layer, theirs.base_model.model.get_submodule(module_name)):
            assert ours_grad.abs().max() > 0
            torch.testing.assert_close(ours_grad, theirs_grad, **TOL)
    assert lrl.count_parameters(ours)[0] == sum(p.numel() for p in theirs.parameters() if p.requires_grad)


def export_and_load_in_peft(peft, base, ours, kind, inputs, tmp_path, atol):
    """Export ours, load it into PEFT on a copy of the base, assert identical logits; returns the PEFT model."""
    if kind == "classification":  # a trained head travels with the adapter
        with torch.no_grad():
            ours.classifier.weight.normal_()
    lrl.export_peft(ours, tmp_path)
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    with torch.no_grad():
        # rtol too: the random head makes logits ~10, where fp32 sums in another order differ by ~1e-6 relative
        torch.testing.assert_close(loaded(**inputs).logits, ours(**inputs).logits, rtol=2e-6, atol=atol)
    return loaded
