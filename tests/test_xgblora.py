"""XGBLoRA: the schedule against plain LoRA (κ = K), the merge invariants, the rank bound, the export (PEFT as
the judge), the fp32 merge of low-precision weights, and bad input refused before anything changes."""

import copy
import math

import pytest
import torch
from torch import nn

import lowrank_lab as lrl
from lowrank_lab.methods.xgblora import (
    XGBLoRA,
    XGBLoRASettings,
    block_key,
    group_blocks,
    make_xgblora_optimizer,
    round_blocks,
)
from lowrank_lab.train import TrainConfig, make_optimizer, warmup_cosine

N_BLOCKS, WIDTH = 4, 10


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.q, self.v = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x):
        return x + torch.tanh(self.v(torch.tanh(self.q(x))))


class Net(nn.Module):
    """A residual stack named like a transformer ("layers.3.q"), plus a new head that trains in full."""

    def __init__(self, n_blocks=N_BLOCKS, d=WIDTH):
        super().__init__()
        self.layers = nn.ModuleList(Block(d) for _ in range(n_blocks))
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        for block in self.layers:
            x = block(x)
        return self.head(x)


def lora_net(r=2, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    config = lrl.LoRAConfig(r=r, alpha=2 * r, target_modules=("q", "v"), modules_to_save=("head",))
    return lrl.inject(Net().to(dtype), config)


def data(n=16, seed=5, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, WIDTH, generator=gen, dtype=dtype), torch.randint(0, 3, (n,), generator=gen)


def loss_fn(model, x, y):
    return nn.functional.cross_entropy(model(x), y)


def train_steps(model, opt, steps, batches, scheduler=None, max_grad_norm=1.0, on_step=None):
    """The inner loop of lowrank_lab.train.train: zero_grad, backward, clip, step, scheduler."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    for i in range(steps):
        x, y = batches[i % len(batches)]
        opt.zero_grad(set_to_none=True)
        loss_fn(model, x, y).backward()
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
        opt.step()
        if scheduler is not None:
            scheduler.step()
        if on_step is not None:
            on_step(i)


BATCHES = [data(seed=s) for s in range(3)]


# ----------------------------------------------------------------------------------------------- blocks
def test_block_keys_for_common_architectures():
    assert block_key("bert.encoder.layer.3.attention.self.query") == 3
    assert block_key("model.layers.12.self_attn.q_proj") == 12
    assert block_key("transformer.h.7.attn.c_proj") == 7
    assert block_key("layers.0.q") == 0
    assert block_key("bert.pooler.dense") == "bert.pooler.dense"  # outside every block: a block of its own
    groups = group_blocks(["m.layers.10.q", "pooler", "m.layers.2.q", "m.layers.2.v"])
    assert list(groups) == [2, 10, "pooler"] and groups[2] == ["m.layers.2.q", "m.layers.2.v"]


def test_block_choice_depends_only_on_seed_and_round():
    # Two schedules on two different models (as on two DDP ranks) pick the same blocks every round.
    a = XGBLoRA(lora_net(seed=0), total_steps=40, steps_per_round=2, blocks_per_round=2, seed=7)
    b = XGBLoRA(lora_net(seed=1), total_steps=40, steps_per_round=2, blocks_per_round=2, seed=7)
    rounds = [a.blocks_for_round(t) for t in range(20)]
    assert rounds == [b.blocks_for_round(t) for t in range(20)]
    assert rounds == [round_blocks(7, t, N_BLOCKS, 2) for t in range(20)]
    assert all(len(set(r)) == 2 and set(r) <= set(range(N_BLOCKS)) for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1  # it is random across rounds...
    other_seed = XGBLoRA(lora_net(), total_steps=40, steps_per_round=2, blocks_per_round=2, seed=8)
    assert [other_seed.blocks_for_round(t) for t in range(20)] != rounds  # ...and across seeds


def test_only_the_picked_blocks_train_and_the_others_are_untouched():
    model = lora_net()
    x, y = BATCHES[0]
    opt = XGBLoRA(model, total_steps=10, steps_per_round=5, blocks_per_round=1, lr=1e-2, weight_decay=0.1, seed=3)
    active = set(opt.active)
    assert active == {f"layers.{opt.rounds_log[0][0]}.q", f"layers.{opt.rounds_log[0][0]}.v"}
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for name, layer in lrl.adapter_layers(model).items():  # a stale zero gradient must not move idle boosters
        layer.lora_A.grad = torch.zeros_like(layer.lora_A)
    loss_fn(model, x, y).backward()
    for name, layer in lrl.adapter_layers(model).items():
        if name not in active:  # bypassed: the base layer's output, no gradient through the adapter
            assert layer.disabled and not layer.lora_B.grad
            torch.testing.assert_close(layer(x), layer.base_layer(x), rtol=0, atol=0)
    opt.step()
    after = model.state_dict()
    for name in lrl.adapter_layers(model):
        moved = not torch.equal(after[f"{name}.lora_B"], before[f"{name}.lora_B"])
        assert moved == (name in active), name
        if name not in active:  # not even weight decay touched the idle boosters
            assert torch.equal(after[f"{name}.lora_A"], before[f"{name}.lora_A"]), name
        assert torch.equal(after[f"{name}.base_layer.weight"], before[f"{name}.base_layer.weight"])  # no merge yet
    assert not torch.equal(after["head.weight"], before["head.weight"])  # the head trains in every round
    assert opt.active_parameter_count() == 2 * 2 * (WIDTH + WIDTH)  # 2 projections x r(m + n)


# ----------------------------------------------------------------------------------------------- LoRA as a special case
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_kappa_equals_K_with_all_blocks_reproduces_lora_exactly(weight_decay):
    K, lr = 7, 5e-2
    lora, xgb = lora_net(r=3), lora_net(r=3)  # same seed: same A init and head
    lora_opt = make_optimizer(lora, lr, weight_decay)
    xgb_opt = XGBLoRA(xgb, total_steps=K, steps_per_round=K, blocks_per_round=N_BLOCKS, lr=lr,
                      weight_decay=weight_decay, booster_penalty=0.0)
    lora_sched, xgb_sched = warmup_cosine(lora_opt, 2, K), warmup_cosine(xgb_opt, 2, K)
    train_steps(lora, lora_opt, K - 1, BATCHES, lora_sched)
    train_steps(xgb, xgb_opt, K - 1, BATCHES, xgb_sched)
    for (name, p), q in zip(lora.named_parameters(), xgb.parameters()):
        assert torch.equal(p, q), f"{name} differs after {K - 1} steps"  # bit for bit
    assert xgb_opt.round == 0 and not xgb_opt.picks["layers.0.q"]

    x, y = BATCHES[K % len(BATCHES)]
    train_steps(lora, lora_opt, 1, [(x, y)], lora_sched)
    train_steps(xgb, xgb_opt, 1, [(x, y)], xgb_sched)  # step K: the one round ends and merges
    assert xgb_opt.round == 1 and all(n == 1 for n in xgb_opt.picks.values())
    xgb_out = xgb(x)
    xgb_opt.to_lora()
    for name, layer in lrl.adapter_layers(lora).items():
        exported = lrl.adapter_layers(xgb)[name]
        assert exported.r == 3 and exported.scaling == layer.scaling
        assert torch.equal(exported.lora_A, layer.lora_A) and torch.equal(exported.lora_B, layer.lora_B), name
        # W0 back from W0 + ΔW - ΔW: fp32 round-off only
        torch.testing.assert_close(exported.base_layer.weight, layer.base_layer.weight, rtol=0, atol=1e-6)
    assert torch.equal(xgb.head.weight, lora.head.weight)
    torch.testing.assert_close(xgb(x), lora(x), rtol=0, atol=1e-5)
    torch.testing.assert_close(xgb_out, lora(x), rtol=0, atol=1e-5)


def test_recipe_with_kappa_K_and_all_blocks_matches_the_lora_recipe():
    """Through the registry and the real training loop (MiniLM, smoke data): identical loss curves."""
    from lowrank_lab.experiment import run_method

    common = dict(scale="smoke", seed=1, overrides={"max_steps": 3, "lr": 1e-3, "eval_every": None}, show_progress=False)
    lora = run_method("lora", "sentiment", options={"r": 4}, **common)
    xgb = run_method("xgblora", "sentiment", options={"r": 4, "extra": {"steps_per_round": 3, "blocks_per_round": 6}},
                     **common)
    assert xgb.history["train_loss"] == lora.history["train_loss"]
    assert xgb.history["trainable_params"] == lora.history["trainable_params"]
    assert xgb.value() == pytest.approx(lora.value(), abs=1e-6)
    schedule = XGBLoRA.of(xgb.model)
    assert schedule.round == 1 and schedule.n_rounds == 1 and len(schedule.blocks) == 6


# ----------------------------------------------------------------------------------------------- merges
def watch_merges(opt, model, x):
    """Wrap ``opt.finish_round``: record (max |output change|, the merged boosters' ΔW, the weight change)."""
    finish, records = opt.finish_round, []

    def watched():
        with torch.no_grad():
            layers = lrl.adapter_layers(model)
            before = model(x)
            deltas = {n: layers[n].delta_weight() for n in opt.active}
            weights = {n: layers[n].base_layer.weight.detach().clone() for n in opt.active}
            finish()
            moved = {n: layers[n].base_layer.weight - weights[n] for n in deltas}
            records.append(((model(x) - before).abs().max().item(), deltas, moved))

    opt.finish_round = watched
    return records


def test_output_unchanged_right_after_every_merge():
    model = lora_net(r=1)
    x, _ = data(seed=9)
    opt = XGBLoRA(model, total_steps=12, steps_per_round=3, blocks_per_round=2, lr=5e-2, booster_penalty=0.1, seed=2)
    records = watch_merges(opt, model, x)
    train_steps(model, opt, 12, BATCHES, warmup_cosine(opt, 1, 12))
    assert len(records) == 4 == opt.round  # T = K / κ merges
    assert min(max(d.norm().item() for d in deltas.values()) for _, deltas, _ in records) > 1e-3  # non-zero merges
    assert max(gap for gap, _, _ in records) <= 1e-5, [gap for gap, _, _ in records]
    for name, layer in lrl.adapter_layers(model).items():  # after each merge: fresh boosters, no Adam state
        assert not layer.lora_B.any()
        assert layer.lora_A not in opt.state and layer.lora_B not in opt.state


def test_shrinkage_merges_alpha_times_the_booster():
    model = lora_net(r=1, dtype=torch.float64)
    x, _ = data(seed=9, dtype=torch.float64)
    opt = XGBLoRA(model, total_steps=6, steps_per_round=3, blocks_per_round=2, lr=5e-2, shrinkage=0.25, seed=2)
    records = watch_merges(opt, model, x)
    train_steps(model, opt, 6, [data(seed=s, dtype=torch.float64) for s in range(3)])
    assert len(records) == 2
    for gap, deltas, moved in records:
        assert gap > 1e-4  # shrinkage < 1 drops 3/4 of the booster: the output does change
        for name, delta in deltas.items():
            torch.testing.assert_close(moved[name], 0.25 * delta, rtol=0, atol=1e-12)


def test_merged_delta_rank_is_at_most_r_times_picks_and_grows():
    torch.manual_seed(0)
    r, K, kappa = 1, 24, 2
    model = lora_net(r=r, dtype=torch.float64)
    W0 = {n: l.base_layer.weight.detach().clone() for n, l in lrl.adapter_layers(model).items()}
    opt = XGBLoRA(model, total_steps=K, steps_per_round=kappa, blocks_per_round=2, lr=3e-2, seed=4)
    batches = [data(seed=s, dtype=torch.float64) for s in range(6)]
    train_steps(model, opt, K, batches, warmup_cosine(opt, 0, K))
    assert sum(opt.picks.values()) == 2 * 2 * K // kappa  # L_s blocks x 2 projections per round
    ranks = {}
    for name, layer in lrl.adapter_layers(model).items():
        delta = layer.base_layer.weight.detach() - W0[name]  # what really changed in the weight
        torch.testing.assert_close(delta, opt.merged_delta(name), rtol=0, atol=1e-12)
        ranks[name] = torch.linalg.matrix_rank(delta).item()
        assert ranks[name] <= min(r * opt.picks[name], *delta.shape), (name, ranks[name], opt.picks[name])
        assert opt.merged_rank(name) == r * opt.picks[name]  # every picked booster moved and was stored
    assert max(ranks.values()) > r  # one rank-1 LoRA could not have made this update


def test_penalty_is_the_gradient_of_lambda_half_squared_norm():
    """One step with λ equals torch's own AdamW (the judge) fed grad + λ·p by hand."""
    lam, lr = 0.3, 1e-2
    model = lora_net(r=2)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-zero B, so λ·B matters too
        for layer in lrl.adapter_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * 0.1)
    judge_model = copy.deepcopy(model)
    opt = XGBLoRA(model, total_steps=5, steps_per_round=5, blocks_per_round=N_BLOCKS, lr=lr, booster_penalty=lam)
    boosters = [p for l in lrl.adapter_layers(judge_model).values() for p in (l.lora_A, l.lora_B)]
    judge = torch.optim.AdamW(boosters, lr=lr, weight_decay=0.0)
    x, y = BATCHES[0]
    loss_fn(model, x, y).backward()
    loss_fn(judge_model, x, y).backward()
    with torch.no_grad():
        for p in boosters:
            p.grad += lam * p
    opt.step()
    judge.step()
    for (name, layer), judged in zip(lrl.adapter_layers(model).items(), lrl.adapter_layers(judge_model).values()):
        torch.testing.assert_close(layer.lora_A, judged.lora_A, rtol=0, atol=1e-7)
        torch.testing.assert_close(layer.lora_B, judged.lora_B, rtol=0, atol=1e-7)


def test_reinit_is_seeded_by_round_and_leaves_the_global_rng_alone():
    def run(seed):
        model = lora_net(r=1)
        opt = XGBLoRA(model, total_steps=6, steps_per_round=2, blocks_per_round=2, lr=1e-2, seed=seed)
        torch.manual_seed(123)
        train_steps(model, opt, 4, BATCHES)
        return {n: l.lora_A.detach().clone() for n, l in lrl.adapter_layers(model).items()}, torch.rand(3)

    a, rng_a = run(5)
    b, rng_b = run(5)
    torch.manual_seed(123)
    assert torch.equal(rng_a, torch.rand(3)) and torch.equal(rng_a, rng_b)  # training drew nothing globally
    assert all(torch.equal(a[n], b[n]) for n in a)
    c, _ = run(6)
    assert any(not torch.equal(a[n], c[n]) for n in a)


def test_low_precision_weights_keep_updates_too_small_for_one_merge():
    """bf16: each merge adds ΔW well below half a bf16 ulp of W. Adding in place would round every one of them
    away; the kept W0 copy rewrites W = W0 + ΣΔ (fp32) and loses nothing but the final rounding."""
    model = lora_net(r=1, dtype=torch.bfloat16)
    W0 = {n: l.base_layer.weight.detach().clone() for n, l in lrl.adapter_layers(model).items()}
    opt = XGBLoRA(model, total_steps=40, steps_per_round=1, blocks_per_round=N_BLOCKS)
    for _ in range(40):
        with torch.no_grad():
            for layer in lrl.adapter_layers(model).values():
                layer.lora_A.fill_(1.0)
                layer.lora_B.fill_(1e-4)  # ΔW = s·1e-4 = 2e-4 per merge; half an ulp at |W| ~ 0.1-0.3 is >= 2.4e-4
        opt.finish_round()
    for name, layer in lrl.adapter_layers(model).items():
        exact = W0[name].float() + opt.merged_delta(name)
        assert torch.equal(layer.base_layer.weight, exact.to(torch.bfloat16))
        big = W0[name].float().abs() > 0.125  # where a single merge would be lost
        assert (layer.base_layer.weight[big] != W0[name][big]).all()
    naive = lora_net(r=1, dtype=torch.bfloat16)
    opt_naive = XGBLoRA(naive, total_steps=40, steps_per_round=1, blocks_per_round=N_BLOCKS, keep_base_copy=False)
    layer = lrl.adapter_layers(naive)["layers.0.q"]
    before = layer.base_layer.weight.detach().clone()
    with torch.no_grad():
        layer.lora_A.fill_(1.0)
        layer.lora_B.fill_(1e-4)
    opt_naive.finish_round()
    big = before.float().abs() > 0.125
    assert torch.equal(layer.base_layer.weight[big], before[big])  # the in-place merge lost them: why the copy exists


# ----------------------------------------------------------------------------------------------- export
def test_export_peft_gives_identical_logits_and_unload_restores_the_base(tmp_path):
    peft = pytest.importorskip("peft")
    from lowrank_lab.assets import load_model, model_spec

    torch.manual_seed(0)
    base = load_model("tiny-llama", kind="causal_lm").eval()
    W0 = copy.deepcopy(base.state_dict())
    model = lrl.inject(copy.deepcopy(base), lrl.LoRAConfig(r=1, alpha=2, target_modules=model_spec("tiny-llama").all_linear_targets))
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 1000, (2, 12), generator=gen)
    opt = XGBLoRA(model, total_steps=9, steps_per_round=2, blocks_per_round=1, lr=2e-2, seed=2)  # blocks 1, 0, 1, 1
    for _ in range(7):  # 3 full rounds + 1 step of a 4th: to_lora merges the pending booster too
        opt.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        boosted = model(input_ids=ids).logits
    assert sum(opt.picks.values()) == 3 * 7  # 3 rounds merged, 1 block x 7 projections each
    lrl.XGBLoRA.of(model).to_lora()
    layers = lrl.adapter_layers(model)
    assert opt.picks["model.layers.0.mlp.up_proj"] == 1 and opt.picks["model.layers.1.mlp.up_proj"] == 3
    assert {n: l.r for n, l in layers.items()} == {n: k for n, k in opt.picks.items() if k}  # rank r x picks
    with torch.no_grad():
        as_lora = model(input_ids=ids).logits
    torch.testing.assert_close(as_lora, boosted, rtol=0, atol=1e-5)

    lrl.export_peft(model, tmp_path / "peft")
    judge = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "peft")).eval()
    with torch.no_grad():
        torch.testing.assert_close(judge(input_ids=ids).logits, boosted, rtol=0, atol=1e-5)

    lrl.save_adapter(model, tmp_path / "ours")
    reloaded = lrl.load_adapter(copy.deepcopy(base), tmp_path / "ours").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, boosted, rtol=0, atol=1e-5)

    merged = lrl.merge_and_unload(copy.deepcopy(model)).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, boosted, rtol=0, atol=1e-5)
    restored = lrl.unload(model).state_dict()
    assert max((restored[k] - W0[k]).abs().max().item() for k in W0) <= 1e-6  # the base weights are back
    with pytest.raises(RuntimeError, match="finished"):
        opt.step()


def test_nothing_to_export_before_the_first_merge():
    opt = XGBLoRA(lora_net(), total_steps=4, steps_per_round=2)
    with pytest.raises(ValueError, match="nothing has been merged"):
        opt.to_lora()


# ----------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, message", [
    (dict(total_steps=4, steps_per_round=5), r"steps_per_round must be an int in \[1, total_steps=4\], got 5"),
    (dict(total_steps=4, steps_per_round=0), r"steps_per_round must be an int in \[1, total_steps=4\], got 0"),
    (dict(total_steps=0, steps_per_round=1), r"total_steps must be a positive int, got 0"),
    (dict(total_steps=4, steps_per_round=2, blocks_per_round=5), r"blocks_per_round must be an int in \[1, L=4\].*got 5"),
    (dict(total_steps=4, steps_per_round=2, blocks_per_round=0), r"blocks_per_round must be an int in \[1, L=4\].*got 0"),
    (dict(total_steps=4, steps_per_round=2, shrinkage=0.0), r"shrinkage must be a positive finite number, got 0.0"),
    (dict(total_steps=4, steps_per_round=2, booster_penalty=-1.0), r"booster_penalty must be a finite number >= 0, got -1.0"),
    (dict(total_steps=4, steps_per_round=2, lr=0), r"lr must be a positive finite number, got 0"),
    (dict(total_steps=4, steps_per_round=2, seed=-1), r"seed must be a non-negative int, got -1"),
    (dict(total_steps=4, steps_per_round=2, block_pattern="(("), r"block_pattern must be a valid regex"),
])
def test_bad_schedule_arguments_raise_before_the_model_changes(kwargs, message):
    model = lora_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        XGBLoRA(model, **kwargs)
    assert not any(layer.disabled for layer in lrl.adapter_layers(model).values())
    assert not hasattr(model, "lowrank_lab_xgblora")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_rank_and_model_errors():
    with pytest.raises(ValueError, match="r must be a positive int, got 0"):
        lrl.LoRAConfig(r=0)
    with pytest.raises(ValueError, match="inject"):
        XGBLoRA(Net(), total_steps=4, steps_per_round=2)  # no boosters injected


def test_recipe_settings_are_checked():
    from lowrank_lab.experiment import run_method

    with pytest.raises(ValueError, match="r must be a positive int, got 0"):
        run_method("xgblora", "sentiment", options={"r": 0})
    with pytest.raises(ValueError, match=r"unknown \['kappa'\]"):
        XGBLoRASettings.from_extra({"kappa": 3})
    with pytest.raises(ValueError, match="shrinkage must be a positive finite number, got -1"):
        XGBLoRASettings(shrinkage=-1)
    model = lora_net()
    model.lowrank_lab_xgblora_settings = XGBLoRASettings(steps_per_round=9)
    with pytest.raises(ValueError, match=r"steps_per_round must be an int in \[1, total_steps=8\], got 9"):
        make_xgblora_optimizer(model, TrainConfig(max_steps=8))
    model.lowrank_lab_xgblora_settings = XGBLoRASettings(blocks_per_round=5)
    with pytest.raises(ValueError, match=r"blocks_per_round must be an int in \[1, L=4\]"):
        make_xgblora_optimizer(model, TrainConfig(max_steps=8))
    opt = make_xgblora_optimizer(lora_net(), TrainConfig(max_steps=40))  # defaults: 32 rounds, 11/32 of L
    assert opt.steps_per_round == math.ceil(40 / 32) and opt.blocks_per_round == 1
