"""The training loop: schedule, determinism, accumulation, custom optimizers, masking, validation.

Uses the random-init ``tiny-llama`` (no dropout, fp32, milliseconds per step) and MiniLM at smoke size.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch

from lowrank_lab import files, recipes
from lowrank_lab.assets import load_model
from lowrank_lab.data import IGNORE_INDEX, encode_prompt, format_prompt, make_loader
from lowrank_lab.train import TrainConfig, answers_match, parse_answer, train, warmup_cosine


def tiny_classifier(seed: int = 0):
    torch.manual_seed(seed)
    return load_model("tiny-llama", "classification", num_labels=2)


def config(**overrides) -> TrainConfig:
    fields = dict(max_steps=4, batch_size=4, max_length=32, eval_batch_size=16, warmup_ratio=0.0,
                  device="cpu", log_every=1)
    return TrainConfig(**{**fields, **overrides})


def test_warmup_cosine_shape():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = warmup_cosine(opt, warmup_steps=4, total_steps=20)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])  # the lr the optimizer step uses
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])  # linear warmup, peak at step 4
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))  # then never increases
    assert lrs[12] == pytest.approx(0.5)  # cosine midpoint halfway through the decay
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # 0 after total_steps
    assert min(lrs) > 0
    no_warmup = warmup_cosine(torch.optim.SGD([param], lr=1.0), warmup_steps=0, total_steps=5)
    assert no_warmup.get_last_lr() == [1.0]


def test_seeded_runs_are_identical(tok, sentiment):
    """Same seed -> same init, dropout masks and data order -> bit-identical losses (CPU)."""

    def run(seed):
        model = tiny_classifier(seed)  # LoRA's A init and its dropout both draw from torch's RNG
        model = recipes.prepare("lora", model, "tiny-llama", sentiment, {"r": 4, "dropout": 0.1})
        return train(model, sentiment, tok, config(seed=seed, warmup_ratio=0.25), show_progress=False)

    first, second, other = run(0), run(0), run(1)
    assert first["train_loss"] == second["train_loss"]
    assert first["final"] == second["final"]
    assert first["train_loss"] != other["train_loss"]
    assert max(first["lr"]) == pytest.approx(first["config"]["lr"])


def test_grad_accumulation_matches_one_big_batch(tok, sentiment):
    """2 micro-batches of 4 with accum=2 == 1 batch of 8: same examples, same mean gradient, same step."""
    base = tiny_classifier()
    results = []
    for batch_size, accum in ((8, 1), (4, 2)):
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        train(model, sentiment, tok, config(batch_size=batch_size, grad_accum_steps=accum, max_steps=3,
                                            max_grad_norm=None), optimizer=opt, show_progress=False)
        results.append(model.state_dict())
    big, accumulated = results
    moved = max((big[k] - v).abs().max().item() for k, v in base.state_dict().items())
    assert moved > 1e-4  # the runs really trained
    for name in big:
        torch.testing.assert_close(accumulated[name], big[name], atol=1e-6, rtol=0, msg=name)


class CountingSGD(torch.optim.SGD):
    """Counts ``step`` calls and records the gradient norm each step sees (must be already clipped)."""

    def __init__(self, params, lr):
        super().__init__(params, lr=lr)
        self.calls, self.norms = 0, []

    def step(self, closure=None):
        self.calls += 1
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        self.norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())
        return super().step(closure)


def test_custom_optimizer_is_stepped_once_per_optimizer_step(tok, sentiment):
    model = tiny_classifier()
    before = model.score.weight.detach().clone()
    opt = CountingSGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    history = train(model, sentiment, tok, config(max_steps=3, grad_accum_steps=2, max_grad_norm=1e-3),
                    optimizer=opt, show_progress=False)
    assert opt.calls == 3 == len(history["train_loss"])
    assert max(opt.norms) <= 1e-3 * (1 + 1e-4)  # clipped before the step
    assert not torch.equal(before, model.score.weight)


def test_loss_goes_down_when_overfitting(tok, gsm):
    torch.manual_seed(0)
    model = load_model("tiny-llama", "causal_lm")
    # the chat prompts are 72-117 tokens: 144 keeps every prompt and at least ~27 solution tokens
    history = train(model, gsm, tok, config(max_steps=12, batch_size=2, lr=5e-3, max_length=144,
                                            warmup_ratio=0.1), show_progress=False)
    losses = history["train_loss"]
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3
    final = history["final"]["validation"]
    assert set(final) == {"answer_loss", "exact_match", "n_generated"} and final["n_generated"] == 0


def test_non_finite_loss_raises(tok, sentiment, tmp_path):
    model = tiny_classifier()
    with torch.no_grad():
        model.score.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite training loss") as caught:
        train(model, sentiment, tok, config(), out_dir=tmp_path / "run", show_progress=False)
    assert caught.value.step == 1 and caught.value.history["status"] == "diverged"
    # The partial history is kept, as strict JSON: nothing after the failure, no NaN anywhere.
    recorded = files.read_json(tmp_path / "run" / "history.json")
    assert recorded["status"] == "diverged" and recorded["train_loss"] == [] and recorded["final"] is None


@pytest.mark.parametrize("field, value", [
    ("lr", 0), ("lr", -1e-3), ("lr", float("nan")), ("weight_decay", -0.1), ("warmup_ratio", 1.0),
    ("max_steps", 0), ("batch_size", 2.5), ("grad_accum_steps", 0), ("max_grad_norm", 0.0),
    ("max_length", 1), ("eval_every", 0), ("eval_batch_size", True), ("max_generate", -1),
    ("max_new_tokens", 0), ("seed", -1), ("device", "not-a-device"), ("log_every", 0),
])
def test_bad_config_values_raise(field, value):
    with pytest.raises(ValueError, match=rf"{field} must be .*got {re.escape(repr(value))}"):
        TrainConfig(**{field: value})


def test_causal_lm_labels_mask_exactly_prompt_and_padding(tok, gsm):
    rows = [gsm.train[0], gsm.train[1]]
    batch = next(iter(make_loader(rows, tok, "causal_lm", batch_size=2, max_length=512)))
    lengths = batch["attention_mask"].sum(1).tolist()
    assert lengths[0] != lengths[1]  # so one row is padded
    for i, row in enumerate(rows):
        ids, labels, n = batch["input_ids"][i], batch["labels"][i], lengths[i]
        p = len(encode_prompt(row["question"], tok))
        assert (labels[:p] == IGNORE_INDEX).all()  # prompt: no loss
        assert (labels[n:] == IGNORE_INDEX).all() and (batch["attention_mask"][i, n:] == 0).all()  # padding
        assert torch.equal(labels[p:n], ids[p:n])  # every solution token (and the eos) is a target
        assert tok.decode(ids[p:n]) == row["solution"] + tok.eos_token
        assert tok.decode(ids[:p]) == format_prompt(row["question"], tok)

    # Too long: the prompt stays whole, the solution is cut from its end.
    p = len(encode_prompt(rows[0]["question"], tok))
    short = next(iter(make_loader(rows[:1], tok, "causal_lm", batch_size=1, max_length=p + 5)))
    assert short["input_ids"].shape[1] == p + 5
    assert (short["labels"][0] != IGNORE_INDEX).sum().item() == 5


def test_plain_prompt_without_chat_template(tok):
    plain = copy.deepcopy(tok)
    plain.chat_template = None
    assert format_prompt("What is 2+2?", plain) == "Question: What is 2+2?\nAnswer:"


@pytest.mark.parametrize("text, answer", [
    ("3 + 4 = 7\n#### 7", "7"), ("#### 1,234", "1234"), ("so 12 then 13.", "13"), ("x is -5", "-5"),
])
def test_answer_parsing(text, answer):
    assert parse_answer(text) == answer
    assert answers_match(parse_answer(text), answer)
    assert not answers_match(parse_answer("no number"), answer)


def test_per_example_predictions_reproduce_the_metrics(tok, sentiment, gsm):
    """predictions.json's rows are what a bootstrap resamples: they must give back the reported metrics exactly
    (accuracy from predicted vs label; the token-weighted answer loss from per-problem sums and token counts)."""
    predictions = {}
    history = train(tiny_classifier(), sentiment, tok, config(max_steps=2), predictions=predictions)
    for split in ("validation", "test"):
        rows = predictions[split]
        assert len(rows["predicted"]) == len(rows["label"]) == len(getattr(sentiment, split))
        accuracy = sum(p == y for p, y in zip(rows["predicted"], rows["label"])) / len(rows["label"])
        assert accuracy == pytest.approx(history["final"][split]["accuracy"], abs=1e-6)
    assert rows["label"] == list(sentiment.test["label"])  # the split's own order
    torch.manual_seed(0)
    model = load_model("tiny-llama", "causal_lm")
    predictions = {}
    history = train(model, gsm, tok, config(max_steps=2, max_generate=2, max_new_tokens=4), predictions=predictions)
    rows = predictions["validation"]
    assert len(rows["answer_loss_sum"]) == len(rows["answer_tokens"]) == len(gsm.validation)
    assert sum(rows["answer_loss_sum"]) / sum(rows["answer_tokens"]) == pytest.approx(
        history["final"]["validation"]["answer_loss"], rel=1e-5)
    assert len(rows["exact_match"]) == 2 and set(rows["exact_match"]) <= {0, 1}


def test_head_lr_gives_the_head_its_own_rate_and_refuses_other_optimizers(tok, sentiment):
    from lowrank_lab.train import make_optimizer

    model = recipes.prepare("lora", tiny_classifier(), "tiny-llama", sentiment, {"r": 4})
    head = {"score"}
    optimizer = make_optimizer(model, 2e-5, head_lr=1e-3, head_modules=head)
    rates = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert {rates[id(p)] for p in model.score.parameters()} == {1e-3}
    assert {rates[id(p)] for n, p in model.named_parameters() if p.requires_grad and "lora_" in n} == {2e-5}
    with pytest.raises(ValueError, match="head_modules"):
        TrainConfig(head_lr=1e-3)
    with pytest.raises(ValueError, match="match no trainable module"):
        make_optimizer(model, 2e-5, head_lr=1e-3, head_modules=("no_such_head",))
    custom = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    with pytest.raises(ValueError, match="head_lr applies to the default AdamW"):
        train(model, sentiment, tok, config(head_lr=1e-3, head_modules=("score",)), optimizer=custom)
