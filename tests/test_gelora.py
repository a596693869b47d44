"""GeLoRA: TwoNN against scikit-dimension and a brute-force float64 judge, known dimensions, invariances,
hidden-state hooks (padding masked out), rank maps that honour a budget, and the CLI recipe."""

import json
import math

import numpy as np
import pytest
import torch
import transformers

import lowrank_lab as lrl
from lowrank_lab.methods import gelora
from lowrank_lab.methods.gelora import (
    IDProfile,
    allocate_ranks,
    collect_hidden_states,
    find_blocks,
    intrinsic_dimension_profile,
    lora_budget,
    neighbour_ratios,
    rank_map_parameters,
)

skdim = pytest.importorskip("skdim")
N = 2000


def gaussian_in_subspace(n, d, ambient, seed=0):
    """n standard-normal points of a random d-dim linear subspace of R^ambient (intrinsic dimension d)."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((ambient, d)))
    return rng.standard_normal((n, d)) @ basis.T


def swiss_roll(n, seed=0):
    """A rolled-up 2-D sheet in R^3 (the usual t ∈ [1.5π, 4.5π], height ∈ [0, 21])."""
    rng = np.random.default_rng(seed)
    t = 1.5 * np.pi * (1 + 2 * rng.random(n))
    return np.stack([t * np.cos(t), 21 * rng.random(n), t * np.sin(t)], axis=1)


def sphere(n, d, seed=0):
    """Uniform points on the unit sphere S^d in R^(d+1)."""
    x = np.random.default_rng(seed).standard_normal((n, d + 1))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered_tokens(n=1500, width=48, seed=0):
    """Hidden-state-like cloud: an offset mean, a few dominant directions, and near-duplicate clusters
    (distances ~1e-6 of the norms) that stress the float32 screen of the neighbour search."""
    rng = np.random.default_rng(seed)
    x = 30.0 + rng.standard_normal((n, 6)) @ rng.standard_normal((6, width)) + 0.05 * rng.standard_normal((n, width))
    x[: n // 5] = x[0] + 1e-5 * rng.standard_normal((n // 5, width))
    return x


DATASETS = {
    "gaussian-5d-in-R100": (lambda: gaussian_in_subspace(N, 5, 100), 5.0),
    "swiss-roll": (lambda: swiss_roll(N), 2.0),
    "sphere-S2": (lambda: sphere(N, 2), 2.0),
    "sphere-S5": (lambda: sphere(N, 5), 5.0),
}


# ---------------------------------------------------------------------------------------------------
# The estimator
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [*DATASETS, "clustered-tokens"])
@pytest.mark.parametrize("discard_fraction", [0.1, 0.05, 0.25])
def test_twonn_matches_scikit_dimension(name, discard_fraction):
    X = DATASETS[name][0]() if name in DATASETS else np.unique(clustered_tokens(), axis=0)  # skdim keeps duplicates
    ours = lrl.intrinsic_dimension(X, discard_fraction=discard_fraction)
    judge = skdim.id.TwoNN(discard_fraction=discard_fraction).fit(X).dimension_
    assert abs(ours - judge) <= 0.05 * judge, (ours, judge)
    if name in DATASETS:  # same convention (F = i/N, fit through the origin): the same number
        assert abs(ours - judge) <= 1e-6 * judge
    # On the near-duplicate clusters skdim's distances (sklearn's x·y expansion) lose digits: ours are
    # exact there (test_neighbour_ratios_are_exact_in_any_chunking), so only the 5 % criterion applies.


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_mle_matches_scikit_dimension(name):
    X = DATASETS[name][0]()
    try:
        judge = skdim.id.TwoNN(method="mle").fit(X).dimension_
    except TypeError:
        pytest.skip("this scikit-dimension has no TwoNN(method='mle')")
    assert abs(lrl.intrinsic_dimension(X, method="mle") - judge) <= 1e-6 * judge


@pytest.mark.parametrize("name", sorted(DATASETS))
@pytest.mark.parametrize("method", ["twonn", "mle"])
def test_known_dimensions_recovered_within_10_percent(name, method):
    make, true_dimension = DATASETS[name]
    estimate = lrl.intrinsic_dimension(make(), method=method)
    assert abs(estimate - true_dimension) <= 0.1 * true_dimension, estimate


def test_noise_raises_the_estimate_toward_the_ambient_dimension():
    clean = gaussian_in_subspace(N, 3, 20)
    noisy = clean + 0.3 * np.random.default_rng(1).standard_normal(clean.shape)
    assert lrl.intrinsic_dimension(noisy) > 2 * lrl.intrinsic_dimension(clean)


def brute_force_ratios(X):
    """Float64 judge: all pairwise distances as norms of differences, no x·y expansion, no chunks."""
    P = torch.unique(torch.as_tensor(X, dtype=torch.float64), dim=0)
    dist = (P[:, None, :] - P[None, :, :]).norm(dim=-1)
    dist.fill_diagonal_(math.inf)
    r = dist.topk(2, dim=1, largest=False).values
    return torch.sort(r[:, 1] / r[:, 0]).values


@pytest.mark.parametrize("chunk_bytes", [gelora.CHUNK_BYTES, 4096])
def test_neighbour_ratios_are_exact_in_any_chunking(chunk_bytes, monkeypatch):
    monkeypatch.setattr(gelora, "CHUNK_BYTES", chunk_bytes)  # 4096 bytes: a few rows per chunk
    X = clustered_tokens(n=600)
    ours = torch.sort(neighbour_ratios(X)).values
    torch.testing.assert_close(ours, brute_force_ratios(X), rtol=1e-10, atol=0)


def test_invariant_to_rotation_translation_and_scale():
    X = gaussian_in_subspace(1500, 4, 30, seed=2)
    Q, _ = np.linalg.qr(np.random.default_rng(3).standard_normal((30, 30)))
    reference = lrl.intrinsic_dimension(X)
    for moved in (X @ Q, X + 1e3, 1e-4 * X, 1e5 * X, torch.tensor(X, dtype=torch.float32)):
        assert lrl.intrinsic_dimension(moved) == pytest.approx(reference, rel=1e-6)


def test_duplicates_are_dropped_not_infinite():
    X = sphere(800, 2, seed=4)
    doubled = np.concatenate([X, X[:400], X[:5], X[:5]])
    estimate = lrl.intrinsic_dimension(doubled)
    assert math.isfinite(estimate) and estimate == lrl.intrinsic_dimension(X)
    for method in ("twonn", "mle"):
        assert math.isfinite(lrl.intrinsic_dimension(np.repeat(X[:50], 7, axis=0), method=method))


def test_bootstrap_interval_brackets_the_estimate_and_repeats_for_a_seed():
    X = swiss_roll(1000, seed=5)
    first = lrl.intrinsic_dimension_interval(X, n_bootstrap=100, level=0.9, seed=7)
    assert first == lrl.intrinsic_dimension_interval(X, n_bootstrap=100, level=0.9, seed=7)
    assert first.dimension == lrl.intrinsic_dimension(X)
    assert first.low < first.dimension < first.high and first.low < 2.0 < first.high
    wider = lrl.intrinsic_dimension_interval(X, n_bootstrap=100, level=0.99, seed=7)
    assert wider.high - wider.low > first.high - first.low


def with_nan():
    X = np.random.default_rng(0).standard_normal((20, 3))
    X[4, 1] = np.nan
    return X


@pytest.mark.parametrize("X, kwargs, message", [
    (np.zeros((2, 4)) + np.arange(4), {}, "X must have at least 3 points, got 2"),
    (np.ones((50, 4)), {}, "at least 3 distinct points, got 1"),
    (with_nan(), {}, "X must be finite, got NaN or inf in 1 of 20 points"),
    (np.arange(10.0), {}, r"X must be 2-D .* got shape \(10,\)"),
    (np.random.default_rng(0).standard_normal((20, 3)), {"method": "knn"}, "method must be one of .*got 'knn'"),
    (np.random.default_rng(0).standard_normal((20, 3)), {"discard_fraction": 1.0}, "discard_fraction .* got 1.0"),
    (np.random.default_rng(0).standard_normal((20, 3)), {"discard_fraction": 0.95}, "discard_fraction=0.95 leaves 1"),
    ([["a", "b"], ["c", "d"], ["e", "f"]], {}, "X must be an .* array or tensor of numbers"),
])
def test_bad_input_is_refused_with_the_field_and_value(X, kwargs, message):
    with pytest.raises(ValueError, match=message):
        lrl.intrinsic_dimension(X, **kwargs)


def test_points_with_equidistant_neighbours_everywhere_are_refused():
    square = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # every μ = 1
    with pytest.raises(ValueError, match="equidistant"):
        lrl.intrinsic_dimension(square, discard_fraction=0.0)


# ---------------------------------------------------------------------------------------------------
# Hidden states of a (tiny, random) BERT
# ---------------------------------------------------------------------------------------------------
def tiny_bert(seed=0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=64)
    return transformers.BertForSequenceClassification(config)


def token_batches(n_batches=6, batch=8, seed=0):
    """Right-padded batches of random token sequences with lengths 4..24 (padding id 0, mask 0)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        lengths = torch.randint(4, 25, (batch,), generator=gen)
        ids = torch.randint(5, 120, (batch, int(lengths.max())), generator=gen)
        mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
        out.append({"input_ids": ids * mask, "attention_mask": mask, "labels": torch.zeros(batch, dtype=torch.long)})
    return out


def test_find_blocks_on_bert_and_llama():
    assert [name for name, _ in find_blocks(tiny_bert())] == [f"bert.encoder.layer.{i}" for i in range(3)]
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=4, num_attention_heads=2))
    assert [name for name, _ in find_blocks(llama)] == [f"model.layers.{i}" for i in range(4)]
    with pytest.raises(ValueError, match="no nn.ModuleList of blocks"):
        find_blocks(torch.nn.Sequential(torch.nn.Linear(3, 3)))


def test_hidden_states_skip_padding_and_match_unpadded_runs():
    model = tiny_bert()
    batches = token_batches(n_batches=2, batch=5)
    states = collect_hidden_states(model, batches, max_tokens=None)
    n_real = sum(int(b["attention_mask"].sum()) for b in batches)
    assert states.n_tokens == n_real and all(h.shape == (n_real, 32) for h in states.inputs + states.outputs)
    # The same sequences one at a time, without any padding: the kept states must be the same.
    singles = []
    for b in batches:
        for ids, mask in zip(b["input_ids"], b["attention_mask"]):
            length = int(mask.sum())
            singles.append({"input_ids": ids[None, :length], "attention_mask": mask[None, :length]})
    alone = collect_hidden_states(model, singles, max_tokens=None)
    for padded, single in zip(states.inputs + states.outputs, alone.inputs + alone.outputs):
        torch.testing.assert_close(padded, single, rtol=1e-4, atol=1e-5)
    for i in range(1, 3):  # a residual stack: block i's input is block i-1's output
        assert torch.equal(states.inputs[i], states.outputs[i - 1])


def test_collection_restores_mode_removes_hooks_and_subsamples_the_same_tokens():
    model = tiny_bert().train()
    full = collect_hidden_states(model, token_batches(), max_tokens=None)
    sub = collect_hidden_states(model, token_batches(), max_tokens=100, seed=3)
    assert model.training
    assert all(not block._forward_hooks and not block._forward_pre_hooks for _, block in find_blocks(model))
    assert sub.n_tokens == 100
    rows = [int((full.outputs[0] == row).all(dim=1).nonzero()[0]) for row in sub.outputs[0]]
    for i in range(3):  # the same 100 tokens in every set
        assert torch.equal(sub.outputs[i], full.outputs[i][rows]) and torch.equal(sub.inputs[i], full.inputs[i][rows])


def test_profile_ids_match_scikit_dimension_on_hidden_states():
    model = tiny_bert()
    states = collect_hidden_states(model, token_batches(), max_tokens=None)
    profile = intrinsic_dimension_profile(model, token_batches(), max_tokens=None)
    for ours, h in zip(profile.d_out, states.outputs):
        judge = skdim.id.TwoNN().fit(np.unique(h.double().numpy(), axis=0)).dimension_
        assert abs(ours - judge) <= 0.05 * judge
    assert profile.lower_bounds == [max(o - i, 0.0) for i, o in zip(profile.d_in, profile.d_out)]
    assert profile.d_in[1:] == profile.d_out[:-1]


# ---------------------------------------------------------------------------------------------------
# Ranks
# ---------------------------------------------------------------------------------------------------
def fake_profile(lower_bounds, names=None):
    names = names or [f"bert.encoder.layer.{i}" for i in range(len(lower_bounds))]
    d_in = [10.0] * len(lower_bounds)
    return IDProfile(names, d_in, [10.0 + lb for lb in lower_bounds], 1000, "twonn", 0.1)


QV = ("query", "value")
ALL = ("query", "value", "intermediate.dense", "output.dense")  # attention out (32x32) + FFN (64 <-> 32)


def test_rank_rule_without_budget_is_ceil_plus_offset():
    model = tiny_bert()
    ranks = allocate_ranks(fake_profile([0.0, 2.3, 40.0]), model, QV)
    assert ranks == {f"bert.encoder.layer.{i}.attention.self.{m}": r for i, r in enumerate([1, 4, 32]) for m in QV}
    ranks = allocate_ranks(fake_profile([0.0, 2.3, 3.0]), model, QV, offset=0, min_rank=2)
    assert set(ranks.values()) == {2, 3}  # ceil(2.3) = 3, ceil(3.0) = 3, the zero bound floored to min_rank


@pytest.mark.parametrize("targets", [QV, ALL])
@pytest.mark.parametrize("budget_rank", [1, 2, 3, 8, 13])
@pytest.mark.parametrize("bounds", [[0.0, 2.3, 7.1], [0.0, 0.0, 0.0], [5.0, 0.4, 0.0]])
def test_rank_maps_meet_the_budget_within_one_percent(targets, budget_rank, bounds):
    model = tiny_bert()
    budget = lora_budget(model, targets, budget_rank)
    # A uniform-LoRA budget, and an arbitrary one where one rank step (64-96 params) is < 2 % of it.
    for target in (budget, budget * 1.013 + 7) if budget_rank >= 8 else (budget,):
        ranks = allocate_ranks(fake_profile(bounds), model, targets, budget=target)
        assert abs(rank_map_parameters(model, ranks) - target) <= 0.01 * target
        # The map drives LoRAConfig(rank_pattern=...): the injected model trains exactly that many adapter params.
        config = lrl.LoRAConfig(r=1, target_modules=targets, rank_pattern=ranks)
        adapted = lrl.inject(tiny_bert(), config)
        trained = sum(p.numel() for layer in lrl.adapter_layers(adapted).values()
                      for p in layer.adapter_parameters().values())
        assert trained == rank_map_parameters(model, ranks)
        assert {n: layer.r for n, layer in lrl.adapter_layers(adapted).items()} == ranks


def test_larger_bounds_get_at_least_the_rank_of_smaller_ones():
    model = tiny_bert()
    ranks = allocate_ranks(fake_profile([0.0, 2.3, 7.1]), model, QV, budget=lora_budget(model, QV, 8))
    per_block = [ranks[f"bert.encoder.layer.{i}.attention.self.query"] for i in range(3)]
    assert per_block == sorted(per_block) and per_block[0] < per_block[2]


def test_gelora_ranks_end_to_end_budget_and_determinism():
    model = tiny_bert()
    budget = lora_budget(model, ALL, 4)
    maps = [lrl.gelora_ranks(model, token_batches(), budget=budget, target_modules=ALL, max_tokens=200, seed=11)
            for _ in range(2)]
    assert maps[0] == maps[1]
    assert abs(rank_map_parameters(model, maps[0]) - budget) <= 0.01 * budget
    assert set(maps[0]) == {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
                            and n.endswith(("query", "value", "dense")) and "encoder" in n}


@pytest.mark.parametrize("kwargs, message", [
    (dict(budget=5 * 64), r"budget must be at least 384 parameters \(min_rank=1 for each of the 6 targeted modules\), got 320"),
    (dict(budget=10**9), "budget must be at most"),
    (dict(budget=396), r"budget=396 cannot be met within ±1% .*closest: 384"),  # one rank step is 64 params
    (dict(budget=-3), "budget must be a positive number of parameters, got -3"),
    (dict(budget=float("nan")), "budget must be a positive number of parameters, got nan"),
    (dict(min_rank=0), "min_rank must be a positive int, got 0"),
    (dict(min_rank=40), "min_rank=40 exceeds"),
    (dict(offset=-1), "offset must be a non-negative int, got -1"),
])
def test_bad_rank_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        allocate_ranks(fake_profile([0.0, 1.0, 2.0]), tiny_bert(), QV, **kwargs)


def test_gelora_ranks_refuses_bad_input_before_running_the_model():
    model = tiny_bert()
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    for kwargs, message in [(dict(target_modules=("nope",)), "target_modules=.*matched no nn.Linear"),
                            (dict(budget=0), "budget must be a positive number"),
                            (dict(method="pca"), "method must be one of"),
                            (dict(max_tokens=0), "max_tokens must be a positive int, got 0")]:
        with pytest.raises(ValueError, match=message):
            lrl.gelora_ranks(model, token_batches(), **kwargs)
    assert not calls
    with pytest.raises(ValueError, match="batches is empty"):
        lrl.gelora_ranks(model, [])


# ---------------------------------------------------------------------------------------------------
# The CLI recipe on the real MiniLM (smoke scale)
# ---------------------------------------------------------------------------------------------------
def test_cli_gelora_trains_with_uniform_r8_budget(tmp_path):
    from lowrank_lab.assets import load_model
    from lowrank_lab.cli import main

    out = tmp_path / "gelora"
    argv = ["train", "--method", "gelora", "--task", "sentiment", "--scale", "smoke", "--seed", "0",
            "--out", str(out), "--quiet"]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    base = load_model("minilm", num_labels=2)
    budget = lora_budget(base, ("query", "value"), 8)
    head = sum(p.numel() for p in base.classifier.parameters())
    assert metrics["method"] == "gelora" and math.isfinite(metrics["final_train_loss"])
    assert abs(metrics["trainable_params"] - head - budget) <= 0.01 * budget
    assert metrics["scaling"] == 2.0 and "scaling_by_layer" not in metrics  # alpha ∝ r: LoRA's s = 16/8 everywhere


def test_scale_rules_keep_lora_scale_or_one_alpha():
    from lowrank_lab import recipes
    from lowrank_lab.assets import load_model, load_task

    task = load_task("sentiment", max_train=64, max_eval=4)
    scales = {}
    for rule in ("alpha_proportional_to_rank", "fixed_alpha"):
        torch.manual_seed(0)
        model = recipes.prepare("gelora", load_model("minilm", num_labels=2), "minilm", task,
                                recipes.MethodOptions(r=8, extra={"scale_rule": rule, "calibration_examples": 64}))
        scales[rule] = {name: (layer.r, layer.scaling) for name, layer in lrl.adapter_layers(model).items()}
    assert len({r for r, _ in scales["fixed_alpha"].values()}) > 1  # the ranks do vary
    assert all(s == pytest.approx(2.0) for _, s in scales["alpha_proportional_to_rank"].values())
    assert all(s == pytest.approx(16.0 / r) for r, s in scales["fixed_alpha"].values())


@pytest.mark.parametrize("extra, message", [
    ({"bogus": 1}, r"options.extra has keys gelora does not know: \['bogus'\]"),
    ({"budget": 1000}, "budget must be at least 9,216 parameters .* got 1,000"),  # 12 modules x (384 + 384)
    ({"calibration_examples": 0}, "calibration_examples must be a positive int, got 0"),
    ({"offset": -2}, "offset must be a non-negative int, got -2"),
])
def test_recipe_refuses_bad_options_and_leaves_the_model_untouched(extra, message):
    from lowrank_lab import recipes
    from lowrank_lab.assets import load_model, load_task

    torch.manual_seed(0)
    model = load_model("minilm", num_labels=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    task = load_task("sentiment", max_train=16, max_eval=4)
    with pytest.raises(ValueError, match=message):
        recipes.prepare("gelora", model, "minilm", task, recipes.MethodOptions(extra=extra))
    assert not lrl.adapter_layers(model) and model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
