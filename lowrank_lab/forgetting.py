"""What a fine-tuning run forgets, measured after training at no extra training cost.

Two views, both cheap enough to run after every run (see ``benchmarks/forgetting_cost.py``):

* **Retained capability** (``retained``): how much of the base model's *other* abilities survive.
  Biderman et al. 2024, "LoRA Learns Less and Forgets Less" (arXiv 2405.09673): LoRA learns less on the
  target domain than full fine-tuning and keeps more of the base model's abilities outside it; full
  fine-tuning's weight updates have a rank 10-100x higher than typical LoRA ranks (they count the rank that
  explains 90% of the update's spectrum, our ``energy_rank_90``).

  - classification models (MiniLM): a fixed *linear probe* on the encoder's mean-pooled sentence embeddings
    for the OTHER classification tasks (trained on trec -> probe sentiment and spam, and so on), compared
    with the same probe on the base encoder, plus the linear CKA (Kornblith et al. 2019, "Similarity of
    Neural Network Representations Revisited", ICML) between base and fine-tuned embeddings of the probe
    test texts.
  - causal LMs (SmolLM2 on gsm): the mean next-token loss on held-out general English prose the model was
    not fine-tuned on, against the base model's loss on the same tokens. The prose is Jules and Michel
    Verne's "In the Year 2889" (Project Gutenberg eBook #19362, public domain), shipped as
    ``reasoning_gym/data/in_the_year_2889.txt`` inside reasoning-gym, which the gsm task already depends
    on; the gsm fine-tuning data are templated maths word problems, so the story is out of domain.

* **Intruder dimensions** (``intruders``): Shuttleworth et al. 2024, "LoRA vs Full Fine-tuning: An Illusion
  of Equivalence" (arXiv 2410.21228) show that LoRA-trained weight matrices acquire new high-ranking
  singular vectors, which they call *intruder dimensions*, that full fine-tuning does not create, and that
  these are tied to forgetting. The definition used here is that paper's: a singular vector among the top-k
  (by singular value) of the fine-tuned matrix W whose maximum absolute cosine similarity with every
  singular vector of the pre-trained matrix W0 is below a threshold epsilon. Where it comes from: the
  paper's abstract (read on arxiv.org/abs/2410.21228) gives the concept; the paper body was not readable
  from here, so the operational details were taken from Hugging Face PEFT's implementation of the paper's
  mitigation (``peft.tuners.lora.intruders.reduce_intruder_dimension``, PEFT 0.21.2, installed in this
  venv), which cites the paper and uses: the LEFT singular vectors U (reduced SVD, ``full_matrices=False``)
  of both W0 and W = W0 + dW, ``max_i |U_W[:, j] . U_W0[:, i]|`` over all of W0's vectors, ``top_k=10``,
  ``threshold_epsilon=0.5``. We use the same (k = 10, left singular vectors, which live in the output
  space; headline epsilon 0.5) and report the counts over a sweep of epsilon, 0.1 ... 0.9: the sweep
  values are our choice. Note how the threshold reads: W0's left singular vectors span its whole column
  space, so nothing is "outside" it; a direction spread evenly over m of W0's singular vectors scores
  1/sqrt(m), and a random direction in R^384 scores about 0.19. An intruder is a direction *not aligned
  with any single* pre-trained singular vector. Near-degenerate pairs of W0's singular values can rotate
  under a tiny update and score about 0.71, so counts at epsilon > 0.7 include such rotations.

  Reference vectors are W0's singular vectors with a non-zero singular value (above 1e-6 of the largest):
  for a full-rank W0 that is all min(m, n) of them, exactly PEFT's set; W0 = 0 has none, so every direction
  of W is new. Likewise only W's singular vectors with a non-zero singular value are examined (a zero
  update of a zero matrix examines none). Per layer we also report the update dW = W - W0's
  ``effective_rank`` (Roy & Vetterli 2007: exp of the entropy of the singular values normalised to sum 1;
  0 for a zero update), ``stable_rank`` (||dW||_F^2 / sigma_max(dW)^2; 0 for a zero update) and
  ``energy_rank_90`` (the fewest singular values holding 90% of ||dW||_F^2, Biderman et al.'s spectrum
  measure), plus ``relative_update`` = ||dW||_F / ||W0||_F.

  Singular vectors are computed in float64 from the smaller Gram matrix (``eigh`` of M M^T or M^T M; then
  U = M V / sigma), which is 2-5x faster than ``torch.linalg.svd`` on 2 CPU cores and exact to ~1e-8 for
  the directions we compare; dW's singular values likewise (eigenvalues of its Gram matrix: LAPACK's SVD of
  a low-rank update is 10-20x slower; singular values below 1e-6 of the largest count as zero). Counts are
  taken before the per-layer floats are rounded to 6 decimals for metrics.json.

Protocols (module constants, each overridable per call; measured costs in benchmarks/forgetting_cost.py):

* probe: the first ``PROBE_N_TRAIN`` = 1024 train rows and first ``PROBE_N_TEST`` = 256 test rows of each
  probe task as ``load_task`` gives them (fixed, shuffled once by the task's split seed), up to 64 tokens,
  mean pooling; ridge ``l2`` = 100 on standardised features with an unpenalised bias (chosen once on the
  base encoder: with n_train a few times the 384 features, weaker ridges overfit and stronger ones gained
  little). The probe accuracy is the retained capability; ``correct`` / ``base_correct`` give each test
  row for paired tests between methods.
* held-out text: the first 32 consecutive 128-token windows of the story (4,096 tokens), per-passage mean
  next-token loss.

Which matrices: the same for every method. Adapter methods: every adapted layer
(:func:`lowrank_lab.adapters.adapter_layers`); full fine-tuning (no adapter layers): the model's default
LoRA targets (``model_spec(name).default_target_modules``), so a LoRA run on the default targets and a full
run are measured on the same matrices (:func:`snapshot_modules`). W0 always comes from a snapshot taken
after the method prepared the model and before training (:func:`weight_snapshot`): XGBLoRA merges its
boosters into the frozen weight round by round, so ``base_layer.weight`` at the end is NOT W0. Memory: a
float32 copy of those weights (MiniLM query+value: 7 MB; SmolLM2-135M, all 7 projections: 425 MB).

The base model's reference values (probe accuracy, base embeddings of the probe test texts, base held-out
loss) are computed once per (model, protocol, device type, dtype, library versions) and cached under
``cache_dir()/forgetting/`` (safetensors + strict JSON, written atomically; never pickle), so later runs pay
only for the fine-tuned model. A zero update (LoRA with B = 0, or the untouched base) reproduces the base
exactly (bit for bit on CPU; tested): same probe accuracy, CKA 1.0, same held-out loss. Loading the base
forks torch's RNG (MiniLM's new head is drawn from it), so measuring leaves the caller's RNG as it was.

Entry point: :func:`measure` -> ``{"retained": {...}, "intruders": {...}, "seconds": s}``, strict JSON; a
non-finite number anywhere raises ``ValueError`` naming where it is.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from lowrank_lab.files import atomic_write, read_json, write_json
from lowrank_lab.layers.base import AdapterLayer, module_matches

PROTOCOL_VERSION = 1

# ---- intruder dimensions (Shuttleworth et al. 2024; k and the headline epsilon as in PEFT's implementation)
DEFAULT_K = 10
HEADLINE_EPSILON = 0.5
DEFAULT_EPSILONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
RANK_RTOL = 1e-6  # singular values below this fraction of the largest count as zero
ENERGY_FRACTION = 0.9
DIGITS = 6  # per-layer floats are rounded to this many decimals (metrics.json stays small)

# ---- classification probe protocol (measured: see benchmarks/forgetting_cost.py)
PROBE_N_TRAIN = 1024
PROBE_N_TEST = 256
PROBE_L2 = 100.0  # n_train is a few times the 384 features: a weak ridge lets the probe overfit (measured)
PROBE_MAX_LENGTH = 64
PROBE_BATCH_SIZE = 64

# ---- causal LM held-out text protocol
HELDOUT_PASSAGES = 32
HELDOUT_TOKENS = 128
HELDOUT_BATCH_SIZE = 4  # 4 x 128 x 49152 fp32 logits: 100 MB
HELDOUT_SOURCE = "reasoning-gym data/in_the_year_2889.txt (Jules & Michel Verne, Project Gutenberg #19362)"


# ============================================================================================ helpers
def _check_finite_array(name: str, value: np.ndarray | torch.Tensor) -> None:
    finite = torch.isfinite(value).all() if isinstance(value, torch.Tensor) else np.isfinite(value).all()
    if not bool(finite):
        bad = torch.isnan(value).any() if isinstance(value, torch.Tensor) else np.isnan(value).any()
        raise ValueError(f"{name} contains {'NaN' if bool(bad) else 'infinity'}")


def check_finite(obj: Any, where: str = "result") -> Any:
    """Raise ``ValueError`` naming the first non-finite number in a nested dict/list (strict JSON holds none)."""
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ValueError(f"{where} is {obj} (not finite)")
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            check_finite(value, f"{where}[{key!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            check_finite(value, f"{where}[{i}]")
    return obj


def _round(x: float) -> float:
    return round(float(x), DIGITS)


def _as_matrix(name: str, value) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a 2-D tensor or array, got {type(value).__name__}")
    if value.dim() != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {tuple(value.shape)}")
    value = value.detach().to("cpu", torch.float64)
    _check_finite_array(name, value)
    return value


def _check_epsilons(epsilons) -> tuple[float, ...]:
    try:
        eps = tuple(float(e) for e in epsilons)
    except (TypeError, ValueError):
        raise ValueError(f"epsilons must be a sequence of numbers in (0, 1], got {epsilons!r}") from None
    if not eps or any(not (0.0 < e <= 1.0) for e in eps):
        raise ValueError(f"epsilons must be a non-empty sequence of numbers in (0, 1], got {epsilons!r}")
    return eps


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    return k


# ============================================================================================ spectra
def left_singular(matrix: torch.Tensor, top: int | None = None,
                  rtol: float = RANK_RTOL) -> tuple[torch.Tensor, torch.Tensor]:
    """(singular values descending, left singular vectors as columns) of a float64 matrix, keeping only the
    singular values above ``rtol`` x the largest (none for a zero matrix), and only the ``top`` largest when
    given. Computed from the smaller Gram matrix: eigh(M M^T) when M is wide or square, else eigh(M^T M) and
    U = M V / sigma. (torch's LAPACK, not numpy's: numpy's multi-threaded OpenBLAS next to torch's OpenMP
    threads ran 40x slower on 2 shared cores, measured.)"""
    m, n = matrix.shape
    lam, vecs = torch.linalg.eigh(matrix @ matrix.T if m <= n else matrix.T @ matrix)
    lam, vecs = lam.flip(0), vecs.flip(1)  # descending
    sigma = lam.clamp_min(0).sqrt()
    largest = float(sigma[0]) if sigma.numel() else 0.0
    keep = sigma > rtol * largest if largest > 0 else torch.zeros_like(sigma, dtype=torch.bool)
    sigma, vecs = sigma[keep], vecs[:, keep]
    if top is not None:
        sigma, vecs = sigma[:top], vecs[:, :top]
    if m > n:
        vecs = (matrix @ vecs) / sigma
        vecs = vecs / vecs.norm(dim=0, keepdim=True)  # exact unit length despite round-off
    return sigma, vecs


def singular_values(matrix: torch.Tensor) -> torch.Tensor:
    """Singular values (descending) of a float64 matrix from the eigenvalues of its smaller Gram matrix: 10-20x
    faster than ``torch.linalg.svdvals`` on a low-rank update (LAPACK's SVD crawls over its cluster of zero
    singular values; so does MKL's ``eigvalsh``, 2-3x slower there than ``eigh``, measured); values below ~1e-8
    x the largest are round-off (:func:`spectrum_ranks` zeroes them)."""
    m, n = matrix.shape
    lam = torch.linalg.eigh(matrix @ matrix.T if m <= n else matrix.T @ matrix).eigenvalues
    return lam.flip(0).clamp_min(0).sqrt()


def spectrum_ranks(sigma: torch.Tensor | np.ndarray, energy: float = ENERGY_FRACTION) -> dict:
    """``effective_rank`` (Roy & Vetterli), ``stable_rank`` and ``energy_rank_90`` of a matrix from its singular
    values (those below ``RANK_RTOL`` x the largest count as zero: round-off); all 0 for a zero matrix."""
    s = torch.as_tensor(sigma, dtype=torch.float64).flatten().clamp_min(0)
    if s.numel():
        s = torch.where(s > RANK_RTOL * s.max(), s, torch.zeros_like(s))
    total = float(s.sum())
    if total <= 0.0:
        return {"effective_rank": 0.0, "stable_rank": 0.0, "energy_rank_90": 0}
    p = s[s > 0] / total
    entropy = float(-(p * p.log()).sum())
    sq = s.square()
    energy_total = float(sq.sum())
    cumulative = torch.cumsum(torch.sort(sq, descending=True).values, 0) / energy_total
    needed = int(torch.searchsorted(cumulative, torch.tensor(energy - 1e-12, dtype=torch.float64))) + 1
    return {
        "effective_rank": math.exp(entropy),
        "stable_rank": energy_total / float(sq.max()),
        "energy_rank_90": min(needed, int((s > 0).sum())),
    }


def intruder_dimensions(W0, W, k: int = DEFAULT_K, epsilons: Sequence[float] = DEFAULT_EPSILONS) -> dict:
    """Intruder dimensions of the fine-tuned matrix ``W`` against the pre-trained ``W0`` (both out x in).

    For each of W's top-``k`` left singular vectors (non-zero singular value only), its maximum |cosine|
    with all of W0's left singular vectors (non-zero singular value); an intruder is one whose maximum is
    below epsilon. Returns strict-JSON values: ``k``, ``epsilons``, ``counts`` (one per epsilon),
    ``epsilon`` (the headline 0.5, when swept) and ``count`` (its count), ``max_cos`` (the examined
    vectors' maxima, in W's singular-value order), ``n_examined``, ``shape``, and the update dW = W - W0's
    ``effective_rank``, ``stable_rank``, ``energy_rank_90``, ``update_norm`` (Frobenius) and
    ``relative_update`` (||dW|| / ||W0||, 0 when W0 = 0).
    """
    k = _check_k(k)
    eps = _check_epsilons(epsilons)
    W0 = _as_matrix("W0", W0)
    W = _as_matrix("W", W)
    if W0.shape != W.shape:
        raise ValueError(f"W0 and W must have the same shape, got {tuple(W0.shape)} and {tuple(W.shape)}")
    _, U0 = left_singular(W0)
    _, U = left_singular(W, top=k)
    if U.shape[1] == 0:
        max_cos = torch.zeros(0, dtype=torch.float64)
    elif U0.shape[1] == 0:
        max_cos = torch.zeros(U.shape[1], dtype=torch.float64)
    else:
        max_cos = (U.T @ U0).abs().amax(dim=1).clamp(max=1.0)
    counts = [int((max_cos < e).sum()) for e in eps]
    delta = W - W0
    ranks = spectrum_ranks(singular_values(delta))
    base_norm = float(torch.linalg.norm(W0))
    update_norm = float(torch.linalg.norm(delta))
    out = {
        "k": k,
        "epsilons": list(eps),
        "counts": counts,
        "max_cos": [_round(c) for c in max_cos.tolist()],
        "n_examined": int(max_cos.numel()),
        "shape": list(W.shape),
        "effective_rank": _round(ranks["effective_rank"]),
        "stable_rank": _round(ranks["stable_rank"]),
        "energy_rank_90": ranks["energy_rank_90"],
        "update_norm": _round(update_norm),
        "relative_update": _round(update_norm / base_norm) if base_norm > 0 else 0.0,
    }
    if HEADLINE_EPSILON in eps:
        out["epsilon"] = HEADLINE_EPSILON
        out["count"] = counts[eps.index(HEADLINE_EPSILON)]
    return check_finite(out, "intruder_dimensions")


# ============================================================================================ snapshots
def snapshot_modules(model: nn.Module, model_name: str) -> list[str]:
    """The matrices to measure: every adapter layer of an adapted model; for a model without adapter layers
    (full fine-tuning) the ``nn.Linear`` modules matching the model's default LoRA targets."""
    from lowrank_lab.adapters import adapter_layers
    from lowrank_lab.assets import model_spec

    layers = adapter_layers(model)
    if layers:
        return list(layers)
    targets = model_spec(model_name).default_target_modules
    names = [name for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and module_matches(targets, name)]
    if not names:
        raise ValueError(f"no nn.Linear of the model matches {model_name}'s default targets {targets}")
    return names


def _pretrained_weight(module: nn.Module, name: str) -> torch.Tensor:
    if isinstance(module, AdapterLayer):
        return module.base_layer.weight
    if isinstance(module, nn.Linear):
        return module.weight
    raise ValueError(f"module {name!r} is a {type(module).__name__}, not an nn.Linear or adapter layer")


def _get_module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"the model has no module {name!r}") from None


@torch.no_grad()
def weight_snapshot(model: nn.Module, module_names: Iterable[str]) -> dict[str, torch.Tensor]:
    """CPU float32 copies of the pre-trained weight of each named module (an adapter layer's
    ``base_layer.weight``, an ``nn.Linear``'s ``weight``). Call after the method prepared the model and
    before training."""
    names = list(module_names)
    if not names:
        raise ValueError("module_names is empty: nothing to snapshot")
    snapshot = {}
    for name in names:
        weight = _pretrained_weight(_get_module(model, name), name)
        snapshot[name] = weight.detach().to("cpu", torch.float32, copy=True)
    return snapshot


@torch.no_grad()
def _effective_weight(model: nn.Module, name: str, W0: torch.Tensor) -> torch.Tensor:
    module = _get_module(model, name)
    if isinstance(module, AdapterLayer):
        if module.merged or module.disabled:
            W = module.base_layer.weight
        else:
            W = module.merged_weight(module.base_layer.weight)
    else:
        W = _pretrained_weight(module, name)
    W = W.detach().to("cpu", torch.float32)
    if W.shape != W0.shape:
        raise ValueError(f"{name}: weight shape {tuple(W.shape)} differs from its snapshot {tuple(W0.shape)}")
    return W


def effective_weights(model: nn.Module, snapshot: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{name: (W0, W)}`` after training, both CPU float32: W0 from the snapshot; W the weight the layer
    computes with now (an adapter layer's ``merged_weight(base_layer.weight)`` unless it is merged or disabled,
    then its ``base_layer.weight``; an ``nn.Linear``'s ``weight``)."""
    return {name: (W0, _effective_weight(model, name, W0)) for name, W0 in snapshot.items()}


def intruder_summary(model: nn.Module, snapshot: Mapping[str, torch.Tensor], k: int = DEFAULT_K,
                     epsilons: Sequence[float] = DEFAULT_EPSILONS) -> dict:
    """:func:`intruder_dimensions` for every snapshotted matrix: ``per_layer`` {name: {...}} and totals:
    ``total`` (counts per epsilon summed over layers), ``count`` (at the headline epsilon), ``n_layers``,
    ``n_examined``, ``mean_effective_rank``, ``mean_stable_rank``, ``mean_energy_rank_90``,
    ``mean_relative_update``, ``seconds``."""
    start = time.perf_counter()
    k = _check_k(k)
    eps = _check_epsilons(epsilons)
    if not snapshot:
        raise ValueError("the snapshot is empty: nothing to measure")
    per_layer = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # eigh of <= 1536-wide matrices: 1 thread beat 2 on 2 shared cores (2.3 vs 2.8 s)
    try:
        for name, W0 in snapshot.items():  # one layer at a time: no second copy of every weight
            try:
                per_layer[name] = intruder_dimensions(W0, _effective_weight(model, name, W0), k=k, epsilons=eps)
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None
    finally:
        torch.set_num_threads(threads)
    layers = list(per_layer.values())

    def mean(key):
        return _round(sum(layer[key] for layer in layers) / len(layers))

    out = {
        "definition": "Shuttleworth et al. 2024 (arXiv 2410.21228): top-k left singular vectors of W whose max "
                      "|cos| with all left singular vectors of W0 is < epsilon",
        "k": k,
        "epsilons": list(eps),
        "total": [sum(layer["counts"][i] for layer in layers) for i in range(len(eps))],
        "n_layers": len(layers),
        "n_examined": sum(layer["n_examined"] for layer in layers),
        "mean_effective_rank": mean("effective_rank"),
        "mean_stable_rank": mean("stable_rank"),
        "mean_energy_rank_90": mean("energy_rank_90"),
        "mean_relative_update": mean("relative_update"),
        "per_layer": per_layer,
    }
    if HEADLINE_EPSILON in eps:
        out["epsilon"] = HEADLINE_EPSILON
        out["count"] = out["total"][eps.index(HEADLINE_EPSILON)]
    out["seconds"] = round(time.perf_counter() - start, 3)
    return check_finite(out, "intruders")


# ============================================================================================ representations
def _module_modes(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    return [(module, module.training) for module in model.modules()]


def _restore_modes(modes) -> None:
    for module, training in modes:
        module.training = training


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(model.parameters())
    return param.device, param.dtype


def _encoder(model: nn.Module) -> nn.Module:
    base = getattr(model, "base_model", None)
    return base if isinstance(base, nn.Module) else model


@torch.no_grad()
def sentence_embeddings(model: nn.Module, texts: Sequence[str], tokenizer, batch_size: int = PROBE_BATCH_SIZE,
                        max_length: int = PROBE_MAX_LENGTH) -> np.ndarray:
    """Mean-pooled (attention-masked) last hidden state of the model's encoder (``model.base_model``, adapters
    active), float64 numpy (len(texts) x hidden). Eval mode, no grad; the train/eval mode of every module is
    restored. Rows are batched by token length (fixed order), so the same texts always meet the same batches."""
    if isinstance(texts, str) or not texts:
        raise ValueError("texts must be a non-empty list of strings")
    encoder = _encoder(model)
    device, _ = _device_dtype(model)
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)
    lengths = [len(ids) for ids in encoded["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))
    keys = [key for key in ("input_ids", "attention_mask", "token_type_ids") if key in encoded]
    modes = _module_modes(model)
    model.eval()
    try:
        rows = []
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = tokenizer.pad({key: [encoded[key][i] for i in idx] for key in keys}, return_tensors="pt")
            batch = {key: value.to(device) for key, value in batch.items()}
            hidden = encoder(**batch).last_hidden_state.to(torch.float64)
            mask = batch["attention_mask"].to(torch.float64).unsqueeze(-1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            rows.append(pooled.cpu().numpy())
        pooled_all = np.concatenate(rows, axis=0)
        out = np.empty_like(pooled_all)
        out[np.asarray(order)] = pooled_all
    finally:
        _restore_modes(modes)
    _check_finite_array("sentence embeddings", out)
    return out


def _features(name: str, X) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (examples x features), got shape {X.shape}")
    _check_finite_array(name, X)
    return X


def _labels(name: str, y, n: int) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer) or (y < 0).any():
        raise ValueError(f"{name} must be {n} non-negative integer labels, got shape {y.shape} dtype {y.dtype}")
    return y.astype(np.int64)


def ridge_probe(train_X, train_y, test_X, test_y, l2: float = PROBE_L2) -> dict:
    """Closed-form ridge classifier on one-hot targets: features standardised with the train mean and std, a
    bias column (not penalised), weights from (Z^T Z + l2 I) W = Z^T Y; a test row's class is the argmax.
    Deterministic. Returns ``accuracy``, ``correct`` (0/1 per test row), ``n_train``, ``n_test``, ``l2``."""
    train_X, test_X = _features("train_X", train_X), _features("test_X", test_X)
    if train_X.shape[1] != test_X.shape[1]:
        raise ValueError(f"train_X has {train_X.shape[1]} features but test_X has {test_X.shape[1]}")
    train_y = _labels("train_y", train_y, train_X.shape[0])
    test_y = _labels("test_y", test_y, test_X.shape[0])
    if isinstance(l2, bool) or not isinstance(l2, (int, float)) or not math.isfinite(l2) or l2 < 0:
        raise ValueError(f"l2 must be a finite number >= 0, got {l2!r}")
    n_classes = int(max(train_y.max(), test_y.max())) + 1
    mean = train_X.mean(axis=0)
    std = train_X.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)

    def design(X):
        return np.hstack([(X - mean) / std, np.ones((X.shape[0], 1))])

    Z = design(train_X)
    Y = np.eye(n_classes)[train_y]
    penalty = np.full(Z.shape[1], float(l2))
    penalty[-1] = 0.0
    weights = np.linalg.lstsq(Z.T @ Z + np.diag(penalty), Z.T @ Y, rcond=None)[0]
    predicted = np.argmax(design(test_X) @ weights, axis=1)
    correct = (predicted == test_y).astype(int)
    return {"accuracy": float(correct.mean()), "correct": correct.tolist(),
            "n_train": int(train_X.shape[0]), "n_test": int(test_X.shape[0]), "l2": float(l2)}


def linear_cka(X, Y) -> float:
    """Linear CKA (Kornblith et al. 2019) of two representations of the same n examples (n x p, n x q):
    ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F) with column-centred Xc, Yc. 1 for identical, rotated or
    isotropically scaled representations; in [0, 1]."""
    X, Y = _features("X", X), _features("Y", Y)
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X and Y must hold the same examples, got {X.shape[0]} and {Y.shape[0]} rows")
    Xc = X - X.mean(axis=0)
    Yc = Y - Y.mean(axis=0)
    norm_x = np.linalg.norm(Xc.T @ Xc)
    norm_y = np.linalg.norm(Yc.T @ Yc)
    if norm_x == 0 or norm_y == 0:
        raise ValueError(f"linear_cka: {'X' if norm_x == 0 else 'Y'} has zero variance (every row the same)")
    value = float(np.linalg.norm(Yc.T @ Xc) ** 2 / (norm_x * norm_y))
    return min(max(value, 0.0), 1.0)


# ============================================================================================ base cache
def _cache_folder() -> Path:
    from lowrank_lab.runtime import cache_dir

    return cache_dir() / "forgetting"


def _versions() -> dict:
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


def _cache_paths(kind: str, model_name: str, task: str, protocol: dict) -> tuple[Path, Path, dict]:
    key = {"version": PROTOCOL_VERSION, "kind": kind, "model": model_name, "task": task, **protocol, **_versions()}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    stem = _cache_folder() / f"{kind}-{model_name}-{task}-{digest}"
    return stem.with_suffix(".json"), stem.with_suffix(".safetensors"), key


def _load_base_model(model_name: str, kind: str, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A fresh pre-trained model, without touching the caller's RNG (a new classifier head draws from it)."""
    from lowrank_lab.assets import load_model

    if model_name == "tiny-llama":
        raise ValueError("tiny-llama has random weights, so it has no pre-trained base to load: pass base=")
    with torch.random.fork_rng(devices=[]):
        model = load_model(model_name, kind=kind, num_labels=2 if kind == "classification" else None)
    return model.to(device=device, dtype=dtype).eval()


def probe_tasks(task_name: str) -> list[str]:
    """The classification tasks other than ``task_name`` (gsm is not a classification task)."""
    from lowrank_lab.assets import TASK_NAMES
    from lowrank_lab.presets import task_kind

    return [t for t in TASK_NAMES if t != task_name and task_kind(t) == "classification"]


def _probe_data(task: str, n_train: int, n_test: int):
    from lowrank_lab.assets import load_task

    data = load_task(task, max_train=n_train, max_eval=n_test)
    return (list(data.train["text"]), np.asarray(data.train["label"]),
            list(data.test["text"]), np.asarray(data.test["label"]))


def _base_probe(model_name, task, protocol, data, device, dtype, tokenizer, base, base_loader) -> dict:
    """Base reference for one probe task: accuracy, per-example correctness, test embeddings; computed on
    ``base`` when given, else read from the cache or computed on ``base_loader()`` and cached."""
    train_texts, train_y, test_texts, test_y = data
    emb = dict(batch_size=protocol["batch_size"], max_length=protocol["max_length"])

    def compute(encoder_model):
        train_X = sentence_embeddings(encoder_model, train_texts, tokenizer, **emb)
        test_X = sentence_embeddings(encoder_model, test_texts, tokenizer, **emb)
        probe = ridge_probe(train_X, train_y, test_X, test_y, l2=protocol["l2"])
        return {"accuracy": probe["accuracy"], "correct": probe["correct"], "test_X": test_X}

    if base is not None:
        return compute(base)
    json_path, tensor_path, key = _cache_paths("probe", model_name, task, {
        **protocol, "device": device.type, "dtype": str(dtype)})
    from safetensors import SafetensorError
    from safetensors.numpy import load_file, save_file

    try:
        record = read_json(json_path)
        test_X = load_file(str(tensor_path))["test_X"]
        if (isinstance(record, dict) and record.get("key") == key and test_X.shape[0] == len(test_texts)
                and len(record["correct"]) == len(test_texts)):
            _check_finite_array(f"cached base embeddings {tensor_path}", test_X)
            return {"accuracy": float(record["accuracy"]), "correct": [int(c) for c in record["correct"]],
                    "test_X": test_X.astype(np.float64), "cached": True}
    except (OSError, ValueError, KeyError, TypeError, SafetensorError):
        pass  # missing, truncated or from another protocol: recompute and overwrite
    result = compute(base_loader())
    atomic_write(tensor_path, lambda tmp: save_file({"test_X": np.ascontiguousarray(result["test_X"])}, tmp))
    write_json(json_path, {"key": key, "accuracy": result["accuracy"], "correct": result["correct"]})
    return {**result, "cached": False}


def retained_classification(model: nn.Module, tokenizer, task_name: str, base: nn.Module | None = None,
                            model_name: str | None = None, n_train: int = PROBE_N_TRAIN,
                            n_test: int = PROBE_N_TEST, l2: float = PROBE_L2, max_length: int = PROBE_MAX_LENGTH,
                            batch_size: int = PROBE_BATCH_SIZE) -> dict:
    """Linear-probe retention of a classification model trained on ``task_name``.

    For each other classification task: a ridge probe (:func:`ridge_probe`) on the model's sentence embeddings
    of that task's first ``n_train`` train rows, scored on its first ``n_test`` test rows; the same probe on the
    base encoder; and the linear CKA between base and fine-tuned embeddings of the test rows. ``base``: the
    pre-trained model to compare with; None loads ``model_name``'s pre-trained weights once and caches the
    base values on disk. Top level: ``probe_accuracy`` and ``base_probe_accuracy`` (means over probe tasks),
    ``accuracy_drop`` (base - fine-tuned), ``cka`` (mean), ``per_task``, ``protocol``, ``seconds``.
    """
    start = time.perf_counter()
    if base is None and model_name is None:
        raise ValueError("retained_classification needs model_name (to load and cache the base) or base=")
    for field, value in (("n_train", n_train), ("n_test", n_test), ("max_length", max_length),
                         ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{field} must be a positive int, got {value!r}")
    tasks = probe_tasks(task_name)
    protocol = {"n_train": n_train, "n_test": n_test, "l2": float(l2), "max_length": max_length,
                "batch_size": batch_size, "pooling": "mean over attention mask, last hidden state"}
    device, dtype = _device_dtype(model)
    emb = dict(batch_size=batch_size, max_length=max_length)
    per_task = {}
    loaded = []  # the pre-trained model, loaded at most once and only when a cache entry is missing

    def base_loader():
        if not loaded:
            loaded.append(_load_base_model(model_name, "classification", device, dtype))
        return loaded[0]

    for task in tasks:
        data = _probe_data(task, n_train, n_test)
        train_texts, train_y, test_texts, test_y = data
        reference = _base_probe(model_name, task, protocol, data, device, dtype, tokenizer, base, base_loader)
        train_X = sentence_embeddings(model, train_texts, tokenizer, **emb)
        test_X = sentence_embeddings(model, test_texts, tokenizer, **emb)
        probe = ridge_probe(train_X, train_y, test_X, test_y, l2=l2)
        per_task[task] = {
            "probe_accuracy": probe["accuracy"],
            "base_probe_accuracy": reference["accuracy"],
            "cka": linear_cka(reference["test_X"], test_X),
            "correct": probe["correct"],
            "base_correct": reference["correct"],
            "n_train": probe["n_train"],
            "n_test": probe["n_test"],
            "base_cached": bool(reference.get("cached", False)),
        }
    loaded.clear()
    values = list(per_task.values())

    def mean(key):
        return sum(v[key] for v in values) / len(values)

    out = {
        "kind": "classification",
        "probe_tasks": tasks,
        "probe_accuracy": mean("probe_accuracy"),
        "base_probe_accuracy": mean("base_probe_accuracy"),
        "accuracy_drop": mean("base_probe_accuracy") - mean("probe_accuracy"),
        "cka": mean("cka"),
        "per_task": per_task,
        "protocol": protocol,
        "seconds": round(time.perf_counter() - start, 3),
    }
    return check_finite(out, "retained")


# ============================================================================================ causal LM
def heldout_text() -> str:
    """The story's text without the Project Gutenberg header and licence (paragraphs joined by blank lines)."""
    from lowrank_lab.assets.models import mirror_dir

    path = mirror_dir("reasoning_gym", "reasoning-gym") / "data" / "in_the_year_2889.txt"
    text = path.read_text(encoding="utf-8")
    start = re.search(r"\*\*\* ?START OF TH(E|IS) PROJECT GUTENBERG EBOOK[^\n]*\n", text)
    end = re.search(r"\*\*\* ?END OF TH(E|IS) PROJECT GUTENBERG EBOOK", text)
    body = text[start.end() if start else 0: end.start() if end else len(text)]
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", body)]
    return "\n\n".join(p for p in paragraphs if p and not p.startswith(("Produced by", "End of Project Gutenberg")))


def heldout_passages(tokenizer, n_passages: int = HELDOUT_PASSAGES, n_tokens: int = HELDOUT_TOKENS) -> torch.Tensor:
    """The first ``n_passages`` consecutive ``n_tokens``-token windows of :func:`heldout_text` (n x tokens)."""
    ids = tokenizer(heldout_text(), add_special_tokens=False)["input_ids"]
    if len(ids) < n_passages * n_tokens:
        raise ValueError(f"the held-out text has {len(ids)} tokens, fewer than {n_passages} x {n_tokens}")
    return torch.tensor(ids[: n_passages * n_tokens], dtype=torch.long).view(n_passages, n_tokens)


@torch.no_grad()
def passage_losses(model: nn.Module, passages: torch.Tensor, batch_size: int = HELDOUT_BATCH_SIZE) -> list[float]:
    """Mean next-token cross-entropy of each passage (fp32 log-softmax, float64 means); eval mode, modes
    restored."""
    device, _ = _device_dtype(model)
    modes = _module_modes(model)
    model.eval()
    losses = []
    try:
        for start in range(0, passages.shape[0], batch_size):
            ids = passages[start:start + batch_size].to(device)
            logits = model(input_ids=ids).logits[:, :-1].float()  # fp32 log-softmax; the sums in float64
            loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
            losses.extend(loss.double().mean(dim=1).cpu().tolist())
    finally:
        _restore_modes(modes)
    _check_finite_array("held-out passage losses", np.asarray(losses))
    return losses


def retained_causal_lm(model: nn.Module, tokenizer, base: nn.Module | None = None, model_name: str | None = None,
                       n_passages: int = HELDOUT_PASSAGES, n_tokens: int = HELDOUT_TOKENS,
                       batch_size: int = HELDOUT_BATCH_SIZE) -> dict:
    """Held-out language modelling of a causal LM: mean next-token loss on fixed passages of general English
    (:data:`HELDOUT_SOURCE`), fine-tuned vs base (``base`` given, or ``model_name``'s pre-trained weights,
    cached). Top level: ``heldout_loss``, ``base_heldout_loss``, ``loss_increase`` (fine-tuned - base),
    ``per_passage``, ``base_per_passage``, ``protocol``, ``seconds``."""
    start = time.perf_counter()
    if base is None and model_name is None:
        raise ValueError("retained_causal_lm needs model_name (to load and cache the base) or base=")
    for field, value in (("n_passages", n_passages), ("n_tokens", n_tokens), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{field} must be a positive int, got {value!r}")
    if n_tokens < 2:
        raise ValueError(f"n_tokens must be >= 2, got {n_tokens}")
    passages = heldout_passages(tokenizer, n_passages, n_tokens)
    protocol = {"n_passages": n_passages, "n_tokens": n_tokens, "batch_size": batch_size, "source": HELDOUT_SOURCE}
    device, dtype = _device_dtype(model)
    cached = False
    if base is not None:
        base_losses = passage_losses(base, passages, batch_size)
    else:
        json_path, _, key = _cache_paths("heldout", model_name, "text", {
            **protocol, "device": device.type, "dtype": str(dtype),
            "passages_sha256": hashlib.sha256(passages.numpy().tobytes()).hexdigest()})
        base_losses = None
        try:
            record = read_json(json_path)
            if record.get("key") == key and len(record["per_passage"]) == n_passages:
                base_losses, cached = [float(x) for x in record["per_passage"]], True
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            pass
        if base_losses is None:
            base_model = _load_base_model(model_name, "causal_lm", device, dtype)
            base_losses = passage_losses(base_model, passages, batch_size)
            del base_model
            write_json(json_path, {"key": key, "per_passage": base_losses})
    losses = passage_losses(model, passages, batch_size)
    heldout = sum(losses) / len(losses)
    base_heldout = sum(base_losses) / len(base_losses)
    out = {
        "kind": "causal_lm",
        "heldout_loss": heldout,
        "base_heldout_loss": base_heldout,
        "loss_increase": heldout - base_heldout,
        "per_passage": losses,
        "base_per_passage": base_losses,
        "base_cached": cached,
        "protocol": protocol,
        "seconds": round(time.perf_counter() - start, 3),
    }
    return check_finite(out, "retained")


# ============================================================================================ entry point
def measure(model: nn.Module, model_name: str, task_name: str, tokenizer, snapshot: Mapping[str, torch.Tensor],
            base: nn.Module | None = None, k: int = DEFAULT_K, epsilons: Sequence[float] = DEFAULT_EPSILONS,
            **protocol) -> dict:
    """Everything this module measures about a trained model, as strict JSON:
    ``{"retained": ..., "intruders": ..., "seconds": s}``. ``retained`` is :func:`retained_classification`
    or :func:`retained_causal_lm` by the task's kind; ``intruders`` is :func:`intruder_summary` over the
    ``snapshot`` (:func:`weight_snapshot` of :func:`snapshot_modules`, taken before training). ``protocol``
    overrides the probe / held-out sizes (``n_train``, ``n_test``, ``l2`` ... or ``n_passages``, ...)."""
    from lowrank_lab.presets import task_kind

    start = time.perf_counter()
    intruders = intruder_summary(model, snapshot, k=k, epsilons=epsilons)
    if task_kind(task_name) == "causal_lm":
        retained = retained_causal_lm(model, tokenizer, base=base, model_name=model_name, **protocol)
    else:
        retained = retained_classification(model, tokenizer, task_name, base=base, model_name=model_name, **protocol)
    result = {"retained": retained, "intruders": intruders, "seconds": round(time.perf_counter() - start, 3)}
    check_finite(result, "forgetting")
    json.dumps(result, allow_nan=False)  # strict JSON, or raise here rather than in metrics.json
    return result
