"""Mixed precision in the training loop: ``TrainConfig.precision`` ("fp32" | "bf16" | "fp16" | "auto").

bf16 autocast runs on CPU, so it is trained here for real (tiny-llama). fp16 is refused on CPU by ``train``; its
GradScaler mechanics (unscale before clipping, LoRA-Pro sees true gradients, inf/NaN skips the step) are
checked on :class:`MixedPrecision` directly with a CPU GradScaler, and end to end on CUDA when there is one.
"""

from __future__ import annotations

import copy
import re
import sys

import pytest
import torch
from torch import nn

from lowrank_lab import experiment, presets, recipes
from lowrank_lab.adapters import adapter_layers, inject
from lowrank_lab.assets import load_model
from lowrank_lab.layers.lora import LoRAConfig
from lowrank_lab.methods.lora_pro import LoRAProAdamW
from lowrank_lab.train import MixedPrecision, TrainConfig, resolve_precision, train

train_module = sys.modules["lowrank_lab.train"]  # the package re-exports the function `train` under that name


def config(**overrides) -> TrainConfig:
    fields = dict(max_steps=4, batch_size=4, max_length=32, eval_batch_size=16, warmup_ratio=0.0, lr=5e-3,
                  device="cpu", log_every=1)
    return TrainConfig(**{**fields, **overrides})


def lora_classifier(sentiment, seed: int = 0):
    torch.manual_seed(seed)
    model = load_model("tiny-llama", "classification", num_labels=2)
    return recipes.prepare("lora", model, "tiny-llama", sentiment, {"r": 4})


def linear_output_dtypes(model) -> set:
    """Record the output dtype of every nn.Linear forward (what autocast changes)."""
    seen = set()
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.register_forward_hook(lambda mod, args, out: seen.add(out.dtype))
    return seen


# ---------------------------------------------------------------------------------------------- bf16 on CPU


def test_bf16_on_cpu_trains_with_finite_loss_and_fp32_parameters(tok, gsm):
    torch.manual_seed(0)
    model = load_model("tiny-llama", "causal_lm")
    model = recipes.prepare("lora", model, "tiny-llama", gsm, {"r": 4})
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    dtypes = linear_output_dtypes(model)
    optimizer = train_module.make_optimizer(model, 5e-3)
    history = train(model, gsm, tok, config(precision="bf16", batch_size=2, max_length=144), optimizer=optimizer,
                    show_progress=False)

    assert history["precision"] == "bf16" and history["skipped_steps"] == []
    assert torch.bfloat16 in dtypes  # autocast really ran the matmuls in bf16
    assert len(history["train_loss"]) == 4 and all(map(torch.isfinite, torch.tensor(history["train_loss"])))
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights untouched by autocast
    states = [t for s in optimizer.state.values() for k, t in s.items() if k in ("exp_avg", "exp_avg_sq")]
    assert states and all(t.dtype == torch.float32 for t in states)
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if p.requires_grad)


def test_bf16_tracks_fp32_closely_but_not_bitwise(tok, sentiment):
    def losses(precision):
        return train(lora_classifier(sentiment), sentiment, tok, config(precision=precision),
                     show_progress=False)["train_loss"]

    fp32, bf16 = losses("fp32"), losses("bf16")
    assert fp32 != bf16  # the precision setting does change the arithmetic
    torch.testing.assert_close(torch.tensor(bf16), torch.tensor(fp32), rtol=0.02, atol=0.0)


def test_fp32_is_bit_identical_to_precision_omitted(tok, sentiment):
    omitted = train(lora_classifier(sentiment), sentiment, tok, config(), show_progress=False)
    explicit = train(lora_classifier(sentiment), sentiment, tok, config(precision="fp32"), show_progress=False)
    assert omitted["config"]["precision"] == "fp32" and omitted["precision"] == "fp32"
    assert explicit["train_loss"] == omitted["train_loss"]
    assert explicit["final"] == omitted["final"]


# ---------------------------------------------------------------------------------------------- validation


def test_fp16_on_cpu_raises_before_anything_changes(tok, sentiment):
    with pytest.raises(ValueError, match=r"precision 'fp16' needs a CUDA device.*got device 'cpu'"):
        TrainConfig(precision="fp16", device="cpu")
    # device=None is resolved in train(): still refused before the model or its gradients are touched
    model = lora_classifier(sentiment)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"precision 'fp16' needs a CUDA device"):
        train(model, sentiment, tok, TrainConfig(precision="fp16", device=None, max_steps=2, batch_size=4,
                                                 max_length=32), show_progress=False)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("value", ["fp8", "float16", "", None, 16])
def test_bad_precision_raises_naming_the_field(value):
    with pytest.raises(ValueError, match=rf"precision must be one of .*got {re.escape(repr(value))}"):
        TrainConfig(precision=value)


def test_auto_resolves_to_bf16_only_on_a_cuda_gpu_with_native_bf16(monkeypatch):
    assert resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert resolve_precision("auto", "cuda") == "fp32"  # emulated bf16 only (e.g. a T4): stay fp32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_precision("auto", "cuda") == "bf16"
    assert resolve_precision("bf16", "cpu") == "bf16" and resolve_precision("fp32", "cuda") == "fp32"


def test_presets_ask_for_auto_at_full_and_fp32_below_and_run_method_accepts_it():
    for task in ("sentiment", "gsm"):
        assert presets.train_preset(task, "smoke")["precision"] == "fp32"
        assert presets.train_preset(task, "cpu")["precision"] == "fp32"
        assert presets.train_preset(task, "full")["precision"] == "auto"
        TrainConfig(**{k: v for k, v in presets.train_config_fields(presets.train_preset(task, "full")).items()
                       if k != "max_steps"})  # a valid TrainConfig field value
    assert "precision" in experiment.PRESET_KEYS


def test_run_method_trains_in_bf16_when_overridden():
    run = experiment.run_method("lora", "sentiment", "tiny-llama", scale="smoke",
                                overrides={"precision": "bf16", "max_steps": 2}, show_progress=False)
    assert run.history["precision"] == "bf16" and run.config.precision == "bf16"
    assert all(p.dtype == torch.float32 for p in run.model.parameters())


# ---------------------------------------------------------------------------------------------- fp16 GradScaler


def _lora_toy(seed: int = 0):
    """A 2-layer net with LoRA on both layers and NON-zero B (so LoRA-Pro's projections are non-trivial)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 5))
    model = inject(model, LoRAConfig(r=3, alpha=6, target_modules=("0", "2")))
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            layer.lora_B.normal_(0, 0.3)
    x, y = torch.randn(32, 12), torch.randn(32, 5)
    return model, lambda: (model(x) - y).pow(2).mean()


@pytest.mark.parametrize("max_grad_norm", [None, 1e-3])
def test_grad_scaler_unscales_before_clipping_so_lora_pro_sees_true_gradients(max_grad_norm):
    """One fp16-recipe step (CPU GradScaler, scale 2^16) == the fp32 step, bit for bit: the scale is a power of
    two, so unscaling is exact, and clipping (1e-3 is far below the raw norm) acts on the true gradient."""
    results = []
    for precision in ("fp32", "fp16"):
        model, loss_fn = _lora_toy()
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = LoRAProAdamW(model, lr=1e-2, mode="full")
        amp = MixedPrecision(precision, "cpu")  # train() refuses fp16 on CPU; the scaler itself works there
        amp.backward(loss_fn())
        if precision == "fp16":
            assert amp.scaler.get_scale() == 2.0 ** 16
            assert max(p.grad.abs().max().item() for p in trainable) > 1.0  # gradients are scaled up
        assert amp.step(optimizer, trainable, max_grad_norm) is True
        results.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
    fp32, fp16 = results
    for name in fp32:
        assert torch.equal(fp16[name], fp32[name]), name
    untouched, _ = _lora_toy()
    start = {n: p for n, p in untouched.named_parameters() if p.requires_grad}
    assert any(not torch.equal(fp32[n], start[n]) for n in fp32)  # the step moved the adapters


def test_grad_scaler_skips_a_non_finite_step_without_touching_weights_or_lora_pro():
    model, loss_fn = _lora_toy()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = LoRAProAdamW(model, lr=1e-2, mode="full")  # raises on a non-finite gradient if it sees one
    amp = MixedPrecision("fp16", "cpu")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    amp.backward(loss_fn())
    trainable[0].grad[0, 0] = float("inf")  # an fp16 overflow
    assert amp.step(optimizer, trainable, max_grad_norm=1.0) is False
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert not optimizer.state  # LoRA-Pro never ran
    assert amp.scaler.get_scale() == 2.0 ** 15  # backed off

    optimizer.zero_grad(set_to_none=True)
    amp.backward(loss_fn())  # the next, finite step goes through
    assert amp.step(optimizer, trainable, max_grad_norm=1.0) is True
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_fp16_training_loop_mechanics_on_cpu(tok, sentiment, monkeypatch):
    """The loop's fp16 branch (autocast fp16 + GradScaler), run on CPU by lifting train()'s CUDA-only check."""
    monkeypatch.setattr(train_module, "resolve_precision", lambda precision, device: precision)
    model = lora_classifier(sentiment)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    dtypes = linear_output_dtypes(model)
    history = train(model, sentiment, tok, config(precision="fp16", max_grad_norm=1e-2, max_steps=6),
                    show_progress=False)
    assert history["precision"] == "fp16" and torch.float16 in dtypes
    assert len(history["train_loss"]) == 6 and all(map(torch.isfinite, torch.tensor(history["train_loss"])))
    # The initial scale 2^16 overflows fp16 somewhere in the backward of this random net: the scaler skips
    # those steps (recorded) and backs off; the others train.
    assert set(history["skipped_steps"]) < set(range(1, 7))
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if p.requires_grad)
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp16", "bf16", "auto"])
def test_mixed_precision_on_cuda(tok, sentiment, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    model = lora_classifier(sentiment)
    history = train(model, sentiment, tok, config(precision=precision, device="cuda"), show_progress=False)
    assert all(map(torch.isfinite, torch.tensor(history["train_loss"])))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert history["precision"] == resolve_precision(precision, "cuda")
