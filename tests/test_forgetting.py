"""lowrank_lab.forgetting: intruder dimensions and retained capability, on known answers and on the real MiniLM."""

import copy
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from lowrank_lab import forgetting as F
from lowrank_lab.adapters import adapter_layers, inject
from lowrank_lab.layers.lora import LoRAConfig


# ============================================================================================ constructed matrices
def orthonormal(n, k, seed):
    q, _ = torch.linalg.qr(torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def spectrum_matrix(m, n, rank, seed=0, top=10.0, decay=0.9):
    """U diag(s) V^T with well separated singular values top, top*decay, ... (rank of them)."""
    U, V = orthonormal(m, rank, seed), orthonormal(n, rank, seed + 1)
    s = top * decay ** torch.arange(rank, dtype=torch.float64)
    return U @ torch.diag(s) @ V.T, U, s, V


def unit_orthogonal_to(U, seed):
    x = torch.randn(U.shape[0], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = x - U @ (U.T @ x)
    return x / x.norm()


def test_planted_orthogonal_direction_is_an_intruder():
    W0, U, s, V = spectrum_matrix(64, 48, rank=20)
    x, y = unit_orthogonal_to(U, 5), unit_orthogonal_to(V, 6)
    W = W0 + 3 * s[0] * torch.outer(x, y)  # the new top direction, orthogonal to W0's column space
    out = F.intruder_dimensions(W0, W)
    assert out["k"] == 10 and out["n_examined"] == 10
    assert out["count"] == 1 and out["epsilon"] == 0.5
    assert out["counts"] == [1] * len(F.DEFAULT_EPSILONS)  # max cos 0: below every epsilon
    assert out["max_cos"][0] < 1e-6 and min(out["max_cos"][1:]) > 0.99
    assert out["energy_rank_90"] == 1 and out["effective_rank"] == pytest.approx(1.0)
    json.dumps(out, allow_nan=False)


def test_planted_random_direction_in_a_full_rank_square_matrix():
    """W0 full rank: its singular vectors span everything, but a random direction aligns with none of them."""
    W0, U, s, V = spectrum_matrix(384, 384, rank=384, decay=0.99)
    x, y = unit_orthogonal_to(U[:, :10], 7), unit_orthogonal_to(V[:, :10], 8)
    out = F.intruder_dimensions(W0, W0 + 2 * s[0] * torch.outer(x, y))
    assert out["count"] == 1
    assert out["max_cos"][0] < 0.35  # about sqrt(2 ln 384 / 384) ~ 0.18 for a random unit vector


def test_update_inside_top_subspace_gives_no_intruders():
    W0, U, s, V = spectrum_matrix(64, 48, rank=30)
    delta = U[:, :3] @ torch.diag(torch.tensor([0.5, -0.3, 0.1], dtype=torch.float64)) @ V[:, :3].T
    out = F.intruder_dimensions(W0, W0 + delta)
    assert out["counts"] == [0] * len(F.DEFAULT_EPSILONS)
    assert min(out["max_cos"]) > 1 - 1e-9
    assert out["energy_rank_90"] == 2 and 2 < out["effective_rank"] < 3


def test_zero_update_gives_no_intruders_and_rank_zero():
    W0, *_ = spectrum_matrix(40, 40, rank=40)
    out = F.intruder_dimensions(W0, W0.clone())
    assert out["counts"] == [0] * len(F.DEFAULT_EPSILONS)
    assert out["max_cos"] == [1.0] * 10
    assert (out["effective_rank"], out["stable_rank"], out["energy_rank_90"], out["update_norm"]) == (0, 0, 0, 0)


def test_zero_pretrained_matrix():
    W = torch.zeros(30, 20, dtype=torch.float64)
    out = F.intruder_dimensions(W, W)  # nothing before, nothing after
    assert out["n_examined"] == 0 and out["counts"] == [0] * 9 and out["max_cos"] == []
    assert out["relative_update"] == 0.0
    planted, *_ = spectrum_matrix(30, 20, rank=2)
    out = F.intruder_dimensions(torch.zeros(30, 20), planted)  # everything is new
    assert out["n_examined"] == 2 and out["count"] == 2 and out["max_cos"] == [0.0, 0.0]
    assert out["effective_rank"] == pytest.approx(math.exp(-(0.9 / 1.9 * math.log(0.9 / 1.9)
                                                             + 1 / 1.9 * math.log(1 / 1.9))))


@pytest.mark.parametrize("shape", [(384, 1536), (1536, 384), (192, 576)])
def test_rectangular_matrices(shape):
    m, n = shape
    W0, U, s, V = spectrum_matrix(m, n, rank=64, decay=0.95)
    x, y = unit_orthogonal_to(U[:, :10], 1), unit_orthogonal_to(V[:, :10], 2)
    out = F.intruder_dimensions(W0.float(), (W0 + 3 * s[0] * torch.outer(x, y)).float())
    assert out["shape"] == [m, n] and out["count"] == 1 and out["max_cos"][0] < 0.5
    assert min(out["max_cos"][1:]) > 0.9


def test_effective_and_stable_rank_known_answers():
    ranks = F.spectrum_ranks(torch.tensor([2.0, 2.0, 2.0, 2.0, 0.0]))
    assert ranks["effective_rank"] == pytest.approx(4.0) and ranks["stable_rank"] == pytest.approx(4.0)
    assert ranks["energy_rank_90"] == 4
    assert F.spectrum_ranks(torch.ones(10))["energy_rank_90"] == 9
    assert F.spectrum_ranks(torch.tensor([3.0, 0.0]))["effective_rank"] == pytest.approx(1.0)
    assert F.spectrum_ranks(torch.zeros(5)) == {"effective_rank": 0.0, "stable_rank": 0.0, "energy_rank_90": 0}


def test_left_singular_matches_svd():
    for shape in [(50, 30), (30, 50), (40, 40)]:
        M = torch.randn(*shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        sigma, U = F.left_singular(M)
        U_ref, s_ref, _ = torch.linalg.svd(M, full_matrices=False)
        assert torch.allclose(sigma, s_ref, rtol=1e-9)
        assert torch.allclose((U * U_ref).sum(0).abs(), torch.ones(min(shape), dtype=torch.float64), atol=1e-8)


def test_bad_inputs_are_named():
    W0 = torch.randn(8, 6)
    W = W0.clone()
    W[2, 3] = float("nan")
    with pytest.raises(ValueError, match=r"^W contains NaN"):
        F.intruder_dimensions(W0, W)
    with pytest.raises(ValueError, match=r"^W0 contains NaN"):
        F.intruder_dimensions(W, W0)
    W[2, 3] = float("inf")
    with pytest.raises(ValueError, match="W contains infinity"):
        F.intruder_dimensions(W0, W)
    with pytest.raises(ValueError, match="same shape"):
        F.intruder_dimensions(W0, W0.T)
    with pytest.raises(ValueError, match="2-D"):
        F.intruder_dimensions(W0[0], W0[0])
    with pytest.raises(ValueError, match="k must be"):
        F.intruder_dimensions(W0, W0, k=0)
    with pytest.raises(ValueError, match="epsilons"):
        F.intruder_dimensions(W0, W0, epsilons=(0.5, 1.5))
    with pytest.raises(ValueError, match=r"result\['a'\]\[1\] is nan"):
        F.check_finite({"a": [1.0, float("nan")]})


# ============================================================================================ probe and CKA
def test_ridge_probe_known_answers():
    gen = np.random.default_rng(0)
    centres = np.array([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 4.0]])
    y = np.arange(90) % 3
    X = centres[y] + gen.normal(size=(90, 3)) * 0.3
    out = F.ridge_probe(X[:60], y[:60], X[60:], y[60:], l2=1.0)
    assert out["accuracy"] == 1.0 and out["correct"] == [1] * 30 and (out["n_train"], out["n_test"]) == (60, 30)
    flipped = (y[60:] + 1) % 3
    assert F.ridge_probe(X[:60], y[:60], X[60:], flipped)["accuracy"] == 0.0
    assert F.ridge_probe(X[:60], y[:60], X[60:], y[60:]) == F.ridge_probe(X[:60], y[:60], X[60:], y[60:])
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="train_X contains NaN"):
        F.ridge_probe(bad[:60], y[:60], X[60:], y[60:])
    with pytest.raises(ValueError, match="l2"):
        F.ridge_probe(X[:60], y[:60], X[60:], y[60:], l2=-1)
    with pytest.raises(ValueError, match="train_y"):
        F.ridge_probe(X[:60], y[:59], X[60:], y[60:])


def test_linear_cka_known_answers():
    gen = np.random.default_rng(1)
    X = gen.normal(size=(200, 12))
    Q, _ = np.linalg.qr(gen.normal(size=(12, 12)))
    assert F.linear_cka(X, X) == pytest.approx(1.0, abs=1e-12)
    assert F.linear_cka(X, 3.5 * X @ Q + 7.0) == pytest.approx(1.0, abs=1e-12)  # rotation, scale, shift
    assert F.linear_cka(X, gen.normal(size=(200, 12))) < 0.2
    assert F.linear_cka(X, X[:, :6]) < 1 - 1e-3
    with pytest.raises(ValueError, match="zero variance"):
        F.linear_cka(X, np.ones((200, 4)))
    with pytest.raises(ValueError, match="same examples"):
        F.linear_cka(X, X[:100])


# ============================================================================================ snapshots, XGBLoRA merges
class Net(nn.Module):
    def __init__(self, width=12):
        super().__init__()
        self.layer = nn.ModuleList([nn.ModuleDict({"query": nn.Linear(width, width), "value": nn.Linear(width, width)})
                                    for _ in range(2)])
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        for block in self.layer:
            x = torch.tanh(block["query"](x) + block["value"](x))
        return self.head(x)


def test_snapshot_survives_xgblora_merges():
    from lowrank_lab.methods.xgblora import XGBLoRA

    torch.manual_seed(0)
    model = inject(Net(), LoRAConfig(r=1, alpha=2, target_modules=("query",), modules_to_save=("head",)))
    names = F.snapshot_modules(model, "minilm")
    assert names == list(adapter_layers(model))
    snapshot = F.weight_snapshot(model, names)
    pretrained = {n: layer.base_layer.weight.detach().clone() for n, layer in adapter_layers(model).items()}
    opt = XGBLoRA(model, total_steps=7, steps_per_round=2, blocks_per_round=1, lr=5e-2, seed=1)
    x, y = torch.randn(16, 12), torch.randint(0, 3, (16,))
    for _ in range(5):  # two finished rounds (merged into base_layer.weight) and one booster still training
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    moved = [n for n in names if not torch.equal(adapter_layers(model)[n].base_layer.weight, pretrained[n])]
    assert moved, "XGBLoRA merged nothing: the test would not test the snapshot"
    weights = F.effective_weights(model, snapshot)
    for name, (W0, W) in weights.items():
        layer = adapter_layers(model)[name]
        assert torch.equal(W0, pretrained[name])  # from the snapshot, never the merged base weight
        expected = opt.merged_delta(name) + layer.delta_weight()
        assert torch.allclose(W - W0, expected, atol=1e-6)
    summary = F.intruder_summary(model, snapshot)
    assert set(summary["per_layer"]) == set(names)
    assert all(summary["per_layer"][n]["update_norm"] > 0 for n in moved)


def test_snapshot_of_full_fine_tuning_and_merged_layers():
    torch.manual_seed(1)
    plain = Net()
    names = F.snapshot_modules(plain, "minilm")  # no adapters: MiniLM's default targets, query and value
    assert names == ["layer.0.query", "layer.0.value", "layer.1.query", "layer.1.value"]
    snapshot = F.weight_snapshot(plain, names)
    with torch.no_grad():
        plain.layer[0]["value"].weight.add_(1.0)  # full fine-tuning moves the weight itself
    weights = F.effective_weights(plain, snapshot)
    assert torch.allclose(weights["layer.0.value"][1] - weights["layer.0.value"][0], torch.ones(12, 12))
    assert torch.equal(weights["layer.1.query"][0], weights["layer.1.query"][1])

    model = inject(Net(), LoRAConfig(r=2, target_modules=("query", "value")))
    snapshot = F.weight_snapshot(model, F.snapshot_modules(model, "minilm"))
    layer = adapter_layers(model)["layer.0.query"]
    with torch.no_grad():
        layer.lora_B.normal_()
    delta = layer.delta_weight().detach()
    layer.merge()  # merged: the update now lives in base_layer.weight
    W0, W = F.effective_weights(model, snapshot)["layer.0.query"]
    assert torch.allclose(W - W0, delta, atol=1e-6)
    layer.unmerge()
    layer.disabled = True  # disabled: the layer computes with W0
    W0, W = F.effective_weights(model, snapshot)["layer.0.query"]
    assert torch.allclose(W, W0, atol=1e-6)
    with pytest.raises(ValueError, match="no module 'nope'"):
        F.weight_snapshot(model, ["nope"])
    with pytest.raises(ValueError, match="not an nn.Linear"):
        F.weight_snapshot(model, ["layer.0"])
    with pytest.raises(ValueError, match="default targets"):
        F.snapshot_modules(nn.Sequential(nn.Linear(3, 3)), "minilm")


# ============================================================================================ the real MiniLM
QUERY0 = "bert.encoder.layer.0.attention.self.query"
SMALL = dict(n_train=48, n_test=24)  # small probe subsets: the protocol's code paths, in seconds


@pytest.fixture(scope="module")
def minilm():
    from lowrank_lab.assets import load_model, load_tokenizer

    torch.manual_seed(0)
    return load_tokenizer("minilm"), load_model("minilm", kind="classification", num_labels=6)


def lora_minilm(base):
    return inject(copy.deepcopy(base), LoRAConfig(r=4, alpha=4, target_modules=("query", "value"),
                                                  modules_to_save=("classifier",)))


def test_zero_update_retains_everything_and_caches_the_base(minilm, tmp_path, monkeypatch):
    monkeypatch.setenv("LOWRANK_LAB_CACHE", str(tmp_path))
    tok, base = minilm
    model = lora_minilm(base)  # B = 0: the adapted model computes exactly the base model
    model.train()
    snapshot = F.weight_snapshot(model, F.snapshot_modules(model, "minilm"))
    rng = torch.get_rng_state()
    result = F.measure(model, "minilm", "trec", tok, snapshot, **SMALL)
    assert torch.equal(torch.get_rng_state(), rng)  # loading the base drew its new head from a forked RNG
    assert model.training and all(m.training for m in model.modules())  # modes restored
    json.dumps(result, allow_nan=False)
    retained, intruders = result["retained"], result["intruders"]
    assert retained["probe_tasks"] == ["sentiment", "spam"]
    assert retained["probe_accuracy"] == retained["base_probe_accuracy"] and retained["accuracy_drop"] == 0
    assert retained["cka"] == pytest.approx(1.0, abs=1e-9)
    for task in retained["per_task"].values():
        assert task["correct"] == task["base_correct"] and len(task["correct"]) == 24
        assert task["cka"] == pytest.approx(1.0, abs=1e-9) and not task["base_cached"]
    assert intruders["n_layers"] == 12 and intruders["count"] == 0 and intruders["total"] == [0] * 9
    assert intruders["mean_effective_rank"] == 0 and intruders["mean_relative_update"] == 0
    assert result["seconds"] >= retained["seconds"] > 0

    files = sorted(p.suffix for p in (tmp_path / "forgetting").iterdir())
    assert files == [".json", ".json", ".safetensors", ".safetensors"]  # one pair per probe task, no pickle

    spam_file = next((tmp_path / "forgetting").glob("probe-minilm-spam-*.safetensors"))
    spam_file.write_bytes(b"truncated")  # a damaged cache entry is recomputed, not trusted
    repaired = F.retained_classification(model, tok, "trec", model_name="minilm", **SMALL)
    assert repaired["per_task"]["sentiment"]["base_cached"] and not repaired["per_task"]["spam"]["base_cached"]
    assert repaired["base_probe_accuracy"] == retained["base_probe_accuracy"]

    def no_loading(*args, **kwargs):
        raise AssertionError("the base model was loaded again despite the cache")

    monkeypatch.setattr("lowrank_lab.assets.load_model", no_loading)
    again = F.retained_classification(model, tok, "trec", model_name="minilm", **SMALL)
    assert all(task["base_cached"] for task in again["per_task"].values())
    assert again["per_task"]["spam"]["cka"] == pytest.approx(1.0, abs=1e-9)
    for key in ("probe_accuracy", "base_probe_accuracy"):
        assert again[key] == retained[key]

    plain = copy.deepcopy(base)  # the untouched base, as full fine-tuning would be measured (default targets)
    untouched = F.measure(plain, "minilm", "trec", tok, F.weight_snapshot(plain, F.snapshot_modules(plain, "minilm")),
                          **SMALL)
    assert untouched["retained"]["probe_accuracy"] == retained["base_probe_accuracy"]
    assert untouched["intruders"]["count"] == 0 and set(untouched["intruders"]["per_layer"]) == set(snapshot)


def test_nonzero_update_changes_embeddings_and_counts_planted_intruders(minilm):
    tok, base = minilm
    model = lora_minilm(base)
    snapshot = F.weight_snapshot(model, F.snapshot_modules(model, "minilm"))
    layers = adapter_layers(model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in layers.values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * 0.05)
        planted = layers[QUERY0]  # its update: one direction 3x stronger than anything in W0, random in R^384
        x, y = (torch.randn(384, generator=gen) for _ in range(2))
        strength = 3 * torch.linalg.matrix_norm(planted.base_layer.weight, ord=2)
        planted.lora_A.zero_()
        planted.lora_B.zero_()
        planted.lora_A[0] = y / y.norm()
        planted.lora_B[:, 0] = x / x.norm() * strength / planted.scaling
    result = F.measure(model, "minilm", "trec", tok, snapshot, base=base, **SMALL)
    for task in result["retained"]["per_task"].values():
        assert task["cka"] < 1 - 1e-6
    layer = result["intruders"]["per_layer"][QUERY0]
    assert layer["max_cos"][0] < 0.5 and layer["count"] >= 1
    assert layer["energy_rank_90"] == 1 and layer["effective_rank"] == pytest.approx(1.0, abs=1e-3)
    assert result["intruders"]["count"] >= 1
    for name, other in result["intruders"]["per_layer"].items():
        if name != QUERY0:
            assert 1 < other["effective_rank"] <= 4 + 1e-3 and other["energy_rank_90"] <= 4


def test_sentence_embeddings_restore_modes_and_reject_bad_input(minilm):
    tok, base = minilm
    model = copy.deepcopy(base).train()
    model.classifier.eval()  # a mixed state must come back as it was
    X = F.sentence_embeddings(model, ["a short one", "a somewhat longer sentence than the first one"], tok)
    assert X.shape == (2, 384) and X.dtype == np.float64
    assert model.training and not model.classifier.training and model.bert.training
    single = F.sentence_embeddings(model, ["a somewhat longer sentence than the first one"], tok)
    assert np.allclose(single[0], X[1], atol=1e-5)  # batching by length does not mix the rows up
    with pytest.raises(ValueError, match="texts"):
        F.sentence_embeddings(model, [], tok)
    with pytest.raises(ValueError, match="model_name"):
        F.retained_classification(model, tok, "trec")


# ============================================================================================ causal LMs
def test_causal_lm_zero_update_equals_base_on_tiny_llama(tok):
    from lowrank_lab.assets import load_model

    torch.manual_seed(0)
    base = load_model("tiny-llama", kind="causal_lm")
    model = inject(copy.deepcopy(base), LoRAConfig(r=2, target_modules=("q_proj", "v_proj")))
    small = dict(n_passages=3, n_tokens=32)
    out = F.retained_causal_lm(model, tok, base=base, **small)
    assert out["heldout_loss"] == out["base_heldout_loss"] and out["loss_increase"] == 0
    assert len(out["per_passage"]) == 3 and out["per_passage"] == out["base_per_passage"]
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            layer.lora_B.normal_(0, 0.5)
    moved = F.retained_causal_lm(model, tok, base=base, **small)
    assert moved["heldout_loss"] != moved["base_heldout_loss"]
    assert moved["base_heldout_loss"] == out["base_heldout_loss"]
    snapshot = F.weight_snapshot(model, F.snapshot_modules(model, "tiny-llama"))
    result = F.measure(model, "tiny-llama", "gsm", tok, snapshot, base=base, **small)
    assert result["retained"]["kind"] == "causal_lm" and result["intruders"]["n_layers"] == 4
    with pytest.raises(ValueError, match="pass base="):
        F.retained_causal_lm(model, tok, model_name="tiny-llama", **small)


def test_heldout_text_is_the_story_not_the_licence():
    text = F.heldout_text()
    assert text.startswith("IN THE YEAR 2889") and "Gutenberg" not in text[-2000:]
    assert "twenty-ninth century" in text


@pytest.mark.slow
def test_smollm2_zero_update_equals_base():
    from lowrank_lab.assets import load_model, load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    model = load_model("smollm2-135m", kind="causal_lm")
    model = inject(model, LoRAConfig(r=4, target_modules=("q_proj", "v_proj")))
    snapshot = F.weight_snapshot(model, F.snapshot_modules(model, "smollm2-135m"))
    result = F.measure(model, "smollm2-135m", "gsm", tok, snapshot, n_passages=4)
    retained = result["retained"]
    assert retained["heldout_loss"] == retained["base_heldout_loss"]
    assert 1.0 < retained["heldout_loss"] < 6.0  # a pre-trained LM on English prose
    assert result["intruders"]["count"] == 0 and result["intruders"]["n_layers"] == 60
