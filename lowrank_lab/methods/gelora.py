"""GeLoRA: per-layer LoRA ranks from the intrinsic dimension of hidden states.

Papers:

* GeLoRA — Abdessalam Ed-dib, Zhanibek Datbayev, Amine Mohamed Aboussalah, "GeLoRA: Geometric Adaptive
  Ranks for Efficient LoRA Fine-tuning", arXiv 2412.09250 (EMNLP 2025 Findings).
* TwoNN — Elena Facco, Maria d'Errico, Alex Rodriguez, Alessandro Laio, "Estimating the intrinsic dimension
  of datasets by a minimal neighborhood information", Scientific Reports 7, 12140 (2017).

**TwoNN.** If points fill a d-dimensional manifold with locally constant density, the ratio μ = r2/r1 of each
point's 2nd to 1st nearest-neighbour distance is Pareto distributed: P(μ > x) = x^(-d) for x ≥ 1, whatever
the density. So with the empirical CDF F, ``-log(1 - F(μ)) = d · log μ``: a line through the origin whose
slope is d. :func:`intrinsic_dimension` fits that line by least squares after discarding the largest
``discard_fraction`` of the μ (they come from sparse regions where the density is not constant), with
F(μ_(i)) = i/N over all N points (Facco et al.'s convention, also scikit-dimension's). ``method="mle"`` uses
the maximum-likelihood estimate instead: log μ ~ Exponential(d), and keeping the k smallest of N values is
Type-II censoring, so d = (k − 1) / (Σ_{i≤k} log μ_(i) + (N − k) log μ_(k)) (unbiased; k = N gives the
Pareto-shape MLE (N − 1)/Σ log μ).

**GeLoRA's rule.** Run the frozen model over a calibration sample; let d_{i-1} and d_i be the intrinsic
dimensions of the hidden states entering and leaving transformer block i (tokens, padding removed). The
paper's bound (its Theorems 3.1/3.2, as summarised by its reviewers; no code is public) says block i needs
an update of rank at least ``lb_i = max(d_i − d_{i-1}, 0)``. The paper's exact rounding and offset are not
verified; ours, documented: every targeted matrix of block i gets

    r_i = ceil(lb_i) + offset          (offset = RANK_OFFSET = 1, so a block whose bound is 0 still adapts)

clipped to [min_rank, min(m, n)]. With a parameter ``budget`` (Σ r·(m + n) over the targeted matrices, the
count of LoRA's A and B), the ranks are instead proportional to ``lb_i + offset`` and scaled so the budget
is met within ±1 % (largest-remainder rounding). The ranks are fixed before training; training is plain
LoRA with ``LoRAConfig(rank_pattern=ranks)``.

**The scale follows the rank (α ∝ r).** LoRA's update is s·B·A with s = α/r. With one α for every layer
(PEFT's plain ``rank_pattern``), a layer given rank 12 gets s = 16/12 = 1.33 and one given rank 4 gets
s = 4: the layers GeLoRA judges to need more capacity learn with a third of the step size, which largely
undoes the allocation (a fixed α measured s = 1.33…4 on MiniLM sentiment). We set α_i = s·r_i with s = α/r of
uniform LoRA at the budget rank (``alpha_pattern``), so every layer keeps uniform LoRA's scale and GeLoRA
differs from LoRA in where the rank goes, nothing else: the comparison the paper's claim is about. (rsLoRA's
α/√r_i would be the other principled choice; it changes the scale with the rank too, so it mixes the two
effects.) ``scale_rule="fixed_alpha"`` in ``options.extra`` restores one α for all layers.

Costs: one no-grad forward over the calibration sample, then one exact k-nearest-neighbour problem per
distinct hidden-state set (torch.cdist in row chunks: memory stays bounded by ``CHUNK_BYTES``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from ..adapters import inject
from ..layers.base import check_fraction, check_positive_int, module_matches, normalize_module_names
from ..layers.lora import lora_config as _lora_config

ID_METHODS = ("twonn", "mle")
SCALE_RULES = ("alpha_proportional_to_rank", "fixed_alpha")  # how each layer's scale follows its rank
RANK_OFFSET = 1  # r_i = ceil(lb_i) + RANK_OFFSET: GeLoRA's bound is often 0, and a rank-0 block learns nothing
BUDGET_TOLERANCE = 0.01  # a rank map meets a budget within ±1 %
CHUNK_BYTES = 64 * 2**20  # the distance rows computed at once take at most this much memory
CANDIDATES = 4  # nearest neighbours re-measured exactly (difference norms) after the float32 screen
DEFAULT_MAX_TOKENS = 4096  # tokens per hidden-state set (TwoNN settles with a few thousand points per layer)
CALIBRATION_EXAMPLES = {"classification": 256, "causal_lm": 32}  # rows of task.train the CLI recipe reads
CALIBRATION_MAX_LENGTH = {"classification": 128, "causal_lm": 256}


# ---------------------------------------------------------------------------------------------------
# TwoNN / MLE intrinsic dimension
# ---------------------------------------------------------------------------------------------------
def _check_method(method: Any) -> str:
    if method not in ID_METHODS:
        raise ValueError(f"method must be one of {ID_METHODS}, got {method!r}")
    return method


def _as_points(X: Any) -> torch.Tensor:
    """X as a CPU float64 (N, D) tensor, refused (ValueError naming X) if not 2-D, too small or not finite."""
    if isinstance(X, torch.Tensor):
        points = X.detach().to("cpu", torch.float64)
    else:
        try:
            points = torch.as_tensor(np.asarray(X, dtype=np.float64))
        except (TypeError, ValueError):
            raise ValueError(f"X must be an (N, D) array or tensor of numbers, got {type(X).__name__}") from None
    if points.ndim != 2:
        raise ValueError(f"X must be 2-D (N points, D features), got shape {tuple(points.shape)}")
    if points.shape[0] < 3:
        raise ValueError(f"X must have at least 3 points, got {points.shape[0]} (each point needs two neighbours)")
    if points.shape[1] < 1:
        raise ValueError(f"X must have at least 1 feature, got shape {tuple(points.shape)}")
    if not torch.isfinite(points).all():
        bad = int((~torch.isfinite(points)).any(dim=1).sum())
        raise ValueError(f"X must be finite, got NaN or inf in {bad} of {points.shape[0]} points")
    return points


def neighbour_ratios(X: Any) -> torch.Tensor:
    """μ_i = r2/r1 (2nd over 1st nearest-neighbour distance) of every distinct point of X, float64.

    Exact duplicates are dropped first (r1 = 0 would make μ infinite): TwoNN counts distinct points. The
    cloud is centred and scaled to max |x| = 1 (μ is invariant to both; this keeps the squared norms inside
    cdist far from overflow and cancellation). A float32 ``torch.cdist`` over row chunks (memory bounded by
    ``CHUNK_BYTES``) screens the ``CANDIDATES`` closest points, which are re-measured in float64 as norms of
    differences; a row whose screen cannot rule out a closer point (its error bound is too wide) is screened
    again in float64. So r1 and r2 are the exact nearest-neighbour distances.
    """
    points = torch.unique(_as_points(X), dim=0)
    n = points.shape[0]
    if n < 3:
        raise ValueError(f"X must have at least 3 distinct points, got {n} after dropping duplicates "
                         f"(all points identical?)")
    points = points - points.mean(dim=0)
    points = points / points.abs().max()
    screen = points.float()
    n_features = points.shape[1]
    k = min(CANDIDATES, n - 1)
    # float32 cdist (x·y expansion) errs by at most ~(D + 2)·eps32·(|x|² + |y|²) in a squared distance.
    error_per_norm = 2 * (n_features + 2) * torch.finfo(torch.float32).eps
    norms = points.norm(dim=1)
    rows = max(1, CHUNK_BYTES // (8 * max(n, k * n_features)))
    mu = torch.empty(n, dtype=torch.float64)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        chunk, own = points[start:stop], torch.arange(start, stop)
        dist = torch.cdist(screen[start:stop], screen)
        dist[torch.arange(len(own)), own] = math.inf  # a point is not its own neighbour
        screened, candidates = dist.topk(k, dim=1, largest=False)
        exact = (chunk[:, None, :] - points[candidates]).norm(dim=-1).sort(dim=1).values
        # A point y outside the k candidates is at least (k-th screened distance)² - error away. Any y that could
        # beat the exact r2 has |y| <= |x| + r2 (triangle inequality), which bounds its error without the
        # largest norm of the cloud (outlier tokens with huge activations would make that bound useless).
        # If such a y cannot be ruled out, the screen was too coarse for this row: redo it in float64.
        reach = (norms[start:stop] + exact[:, 1]).square()
        slack = error_per_norm * (norms[start:stop].square() + reach)
        unsure = screened[:, -1].double().square() - slack <= exact[:, 1].square()
        if k < n - 1 and unsure.any():  # float64 screen for those rows (its error is ~1e-16·D, not ~1e-7·D)
            rows_unsure = own[unsure]
            full = torch.cdist(points[rows_unsure], points)
            full[torch.arange(len(rows_unsure)), rows_unsure] = math.inf
            again = full.topk(k, dim=1, largest=False).indices
            exact[unsure] = (points[rows_unsure][:, None, :] - points[again]).norm(dim=-1).sort(dim=1).values
        mu[start:stop] = exact[:, 1] / exact[:, 0]
    return mu


def _dimension_from_ratios(mu: torch.Tensor, method: str, discard_fraction: float) -> float:
    n = mu.numel()
    n_keep = int(n * (1 - discard_fraction))
    if method == "twonn":
        n_keep = min(n_keep, n - 1)  # F(μ_(N)) = 1 would put -log(0) on the line
    if n_keep < 2:
        raise ValueError(f"discard_fraction={discard_fraction} leaves {n_keep} of {n} ratios; need at least 2")
    log_mu = torch.sort(mu).values[:n_keep].log()
    if not log_mu.any():
        raise ValueError("every point's two nearest neighbours are equidistant (all kept μ = 1): the "
                         "intrinsic dimension is undefined")
    if method == "mle":
        return ((n_keep - 1) / (log_mu.sum() + (n - n_keep) * log_mu[-1])).item()
    survival = -torch.log1p(-torch.arange(1, n_keep + 1, dtype=torch.float64) / n)  # -log(1 - F(μ_(i)))
    return (log_mu @ survival / (log_mu @ log_mu)).item()  # least squares through the origin


def intrinsic_dimension(X: Any, method: str = "twonn", discard_fraction: float = 0.1) -> float:
    """Intrinsic dimension of a point cloud X (N points × D features; tensor or array) as a float.

    ``method``: "twonn" (Facco et al.'s line fit) or "mle" (censored maximum likelihood). ``discard_fraction``:
    the fraction of largest ratios μ left out of the fit. Duplicate points are dropped first. Bad input (fewer
    than 3 distinct points, NaN or inf) raises ValueError.
    """
    _check_method(method)
    discard_fraction = check_fraction("discard_fraction", discard_fraction)
    return _dimension_from_ratios(neighbour_ratios(X), method, discard_fraction)


@dataclass(frozen=True)
class IDEstimate:
    """An intrinsic dimension with a bootstrap percentile interval."""

    dimension: float
    low: float
    high: float
    level: float
    n_bootstrap: int


def intrinsic_dimension_interval(X: Any, method: str = "twonn", discard_fraction: float = 0.1,
                                 n_bootstrap: int = 200, level: float = 0.9, seed: int = 0) -> IDEstimate:
    """:func:`intrinsic_dimension` plus a bootstrap ``level`` interval.

    The ratios μ_i are (nearly) independent draws of one Pareto law, so we resample the ratios, not the
    points: resampled points would be duplicates, and the neighbours need no recomputing.
    """
    _check_method(method)
    discard_fraction = check_fraction("discard_fraction", discard_fraction)
    check_positive_int("n_bootstrap", n_bootstrap)
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise ValueError(f"level must be a number in (0, 1), got {level!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    mu = neighbour_ratios(X)
    generator = torch.Generator().manual_seed(seed)
    draws = torch.tensor([
        _dimension_from_ratios(mu[torch.randint(mu.numel(), (mu.numel(),), generator=generator)], method,
                               discard_fraction)
        for _ in range(n_bootstrap)
    ], dtype=torch.float64)
    tail = (1 - level) / 2
    low, high = torch.quantile(draws, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return IDEstimate(_dimension_from_ratios(mu, method, discard_fraction), low, high, float(level), n_bootstrap)


# ---------------------------------------------------------------------------------------------------
# Hidden states of every transformer block
# ---------------------------------------------------------------------------------------------------
def find_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The transformer blocks: the longest ``nn.ModuleList`` of same-class modules that contain Linears.

    BERT: ``bert.encoder.layer.*``; Llama: ``model.layers.*``. Raises ValueError when there is none.
    """
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        if not any(isinstance(sub, nn.Linear) for sub in module[0].modules()):
            continue
        if best is None or len(module) > len(best[1]):
            best = (name, module)
    if best is None:
        raise ValueError(f"model ({type(model).__name__}) has no nn.ModuleList of blocks containing nn.Linear "
                         f"layers; pass blocks=[...module paths...]")
    prefix = f"{best[0]}." if best[0] else ""
    return [(f"{prefix}{i}", child) for i, child in enumerate(best[1])]


def _resolve_blocks(model: nn.Module, blocks: Iterable[str] | None) -> list[tuple[str, nn.Module]]:
    if blocks is None:
        return find_blocks(model)
    if isinstance(blocks, str):
        raise ValueError(f"blocks must be a list of module paths, got the string {blocks!r}")
    names = list(blocks)
    if not names:
        raise ValueError("blocks must not be empty")
    modules = dict(model.named_modules())
    missing = [name for name in names if name not in modules]
    if missing:
        raise ValueError(f"blocks {missing} are not modules of the model")
    return [(name, modules[name]) for name in names]


def _first_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    raise TypeError(f"a block's hidden states must be a tensor or a tuple starting with one, got {type(value).__name__}")


@dataclass
class HiddenStates:
    """Token hidden states entering (``inputs[i]``) and leaving (``outputs[i]``) block i: (tokens, width)."""

    block_names: list[str]
    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor]

    @property
    def n_tokens(self) -> int:
        return self.inputs[0].shape[0]


@torch.no_grad()
def collect_hidden_states(model: nn.Module, batches: Iterable[dict], blocks: Iterable[str] | None = None,
                          max_tokens: int | None = DEFAULT_MAX_TOKENS, seed: int = 0) -> HiddenStates:
    """Run ``model`` (eval mode, no grad) over ``batches`` and keep each block's input and output per token.

    Forward hooks read every block's hidden states; tokens where the batch's ``attention_mask`` is 0
    (padding) are dropped. When more than ``max_tokens`` tokens remain, the same random subset (drawn from
    ``seed``) is kept in every set, so all layers are measured on the same tokens. ``labels`` in a batch are
    not passed to the model. The model's train/eval mode is restored afterwards.
    """
    if max_tokens is not None:
        check_positive_int("max_tokens", max_tokens)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    named_blocks = _resolve_blocks(model, blocks)
    inputs: list[list[torch.Tensor]] = [[] for _ in named_blocks]
    outputs: list[list[torch.Tensor]] = [[] for _ in named_blocks]
    mask: dict[str, torch.Tensor | None] = {"tokens": None}

    def keep(hidden: torch.Tensor) -> torch.Tensor:
        selected = mask["tokens"]
        if selected is None:
            return hidden.reshape(-1, hidden.shape[-1]).float().cpu()
        if hidden.shape[:-1] != selected.shape:
            raise RuntimeError(f"block hidden states {tuple(hidden.shape)} do not match the attention mask "
                               f"{tuple(selected.shape)}")
        return hidden[selected].float().cpu()

    def pre_hook(i):
        def hook(module, args, kwargs):
            inputs[i].append(keep(_first_tensor(args[0] if args else kwargs["hidden_states"])))
        return hook

    def post_hook(i):
        def hook(module, args, output):
            outputs[i].append(keep(_first_tensor(output)))
        return hook

    handles = []
    for i, (_, block) in enumerate(named_blocks):
        handles.append(block.register_forward_pre_hook(pre_hook(i), with_kwargs=True))
        handles.append(block.register_forward_hook(post_hook(i)))
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        for batch in batches:
            feed = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            attention = feed.get("attention_mask")
            mask["tokens"] = attention.bool() if attention is not None else None
            model(**feed)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if not inputs[0]:
        raise ValueError("batches is empty: nothing to measure")
    ins = [torch.cat(chunks) for chunks in inputs]
    outs = [torch.cat(chunks) for chunks in outputs]
    n = ins[0].shape[0]
    if max_tokens is not None and n > max_tokens:
        keep_rows = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_tokens].sort().values
        ins, outs = [h[keep_rows] for h in ins], [h[keep_rows] for h in outs]
    return HiddenStates([name for name, _ in named_blocks], ins, outs)


# ---------------------------------------------------------------------------------------------------
# Profile -> lower bounds -> ranks
# ---------------------------------------------------------------------------------------------------
@dataclass
class IDProfile:
    """Intrinsic dimensions entering (``d_in``) and leaving (``d_out``) each block, and GeLoRA's bounds."""

    block_names: list[str]
    d_in: list[float]
    d_out: list[float]
    n_tokens: int
    method: str
    discard_fraction: float

    @property
    def lower_bounds(self) -> list[float]:
        """lb_i = max(d_i − d_{i−1}, 0): the rank block i's update needs at least (GeLoRA)."""
        return [max(d_out - d_in, 0.0) for d_in, d_out in zip(self.d_in, self.d_out)]

    def table(self) -> str:
        lines = [f"{'block':<28} {'d_in':>7} {'d_out':>7} {'lb':>6}"]
        for name, d_in, d_out, lb in zip(self.block_names, self.d_in, self.d_out, self.lower_bounds):
            lines.append(f"{name:<28} {d_in:>7.2f} {d_out:>7.2f} {lb:>6.2f}")
        return "\n".join(lines)


def profile_from_hidden_states(states: HiddenStates, method: str = "twonn",
                               discard_fraction: float = 0.1) -> IDProfile:
    """The ID of every hidden-state set. A block's input that equals the previous block's output (a plain
    residual stack) is measured once."""
    _check_method(method)
    discard_fraction = check_fraction("discard_fraction", discard_fraction)
    d_in, d_out = [], []
    for i, (h_in, h_out) in enumerate(zip(states.inputs, states.outputs)):
        same = i > 0 and torch.equal(h_in, states.outputs[i - 1])
        d_in.append(d_out[-1] if same else intrinsic_dimension(h_in, method, discard_fraction))
        d_out.append(intrinsic_dimension(h_out, method, discard_fraction))
    return IDProfile(list(states.block_names), d_in, d_out, states.n_tokens, method, discard_fraction)


def intrinsic_dimension_profile(model: nn.Module, batches: Iterable[dict], blocks: Iterable[str] | None = None,
                                max_tokens: int | None = DEFAULT_MAX_TOKENS, seed: int = 0,
                                method: str = "twonn", discard_fraction: float = 0.1) -> IDProfile:
    """:func:`collect_hidden_states` then the ID of every set (all arguments checked before the forward)."""
    _check_method(method)
    check_fraction("discard_fraction", discard_fraction)
    states = collect_hidden_states(model, batches, blocks=blocks, max_tokens=max_tokens, seed=seed)
    return profile_from_hidden_states(states, method, discard_fraction)


def _targets(model: nn.Module, target_modules) -> list[tuple[str, nn.Linear]]:
    linears = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if target_modules is None:
        return linears
    targets = normalize_module_names("target_modules", target_modules, allow_empty=False)
    matched = [(name, module) for name, module in linears if module_matches(targets, name)]
    if not matched:
        raise ValueError(f"target_modules={target_modules!r} matched no nn.Linear module of the model")
    return matched


def lora_budget(model: nn.Module, target_modules, r: int) -> int:
    """Trainable parameters of uniform LoRA rank ``r`` on ``target_modules``: Σ r·(in + out)."""
    check_positive_int("r", r)
    return sum(r * (m.in_features + m.out_features) for _, m in _targets(model, target_modules))


def rank_map_parameters(model: nn.Module, ranks: dict[str, int]) -> int:
    """Σ r·(in + out) of a rank map over the model's Linear modules (the adapter parameters it trains)."""
    modules = dict(model.named_modules())
    return sum(r * (modules[name].in_features + modules[name].out_features) for name, r in ranks.items())


def _check_rank_args(min_rank, offset, budget) -> None:
    check_positive_int("min_rank", min_rank)
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset must be a non-negative int, got {offset!r}")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))
                               or not math.isfinite(budget) or budget <= 0):
        raise ValueError(f"budget must be a positive number of parameters, got {budget!r}")


def _checked_targets(model: nn.Module, target_modules, budget, min_rank, offset) -> list[tuple[str, nn.Linear]]:
    """The targeted Linears, after every check that needs no hidden states (so it runs before the forward)."""
    _check_rank_args(min_rank, offset, budget)
    targets = _targets(model, target_modules)
    cost = [m.in_features + m.out_features for _, m in targets]
    cap = [min(m.in_features, m.out_features) for _, m in targets]
    if any(min_rank > c for c in cap):
        raise ValueError(f"min_rank={min_rank} exceeds the smallest targeted matrix's min(in, out)={min(cap)}")
    if budget is not None:
        floor_cost = sum(min_rank * c for c in cost)
        if budget < floor_cost:
            raise ValueError(f"budget must be at least {floor_cost:,} parameters (min_rank={min_rank} for each of "
                             f"the {len(targets)} targeted modules), got {budget:,}")
        ceiling = sum(c * k for c, k in zip(cost, cap))
        if budget > ceiling:
            raise ValueError(f"budget must be at most {ceiling:,} parameters (full rank everywhere), got {budget:,}")
    return targets


def _round_to_budget(real: list[float], cost: list[int], cap: list[int], budget: float) -> list[int]:
    """Integer ranks near ``real`` whose Σ rank·cost is closest to ``budget``: floors, then +1 by largest
    remainder while that brings the total closer (ties: module order, so the result is deterministic)."""
    ranks = [int(math.floor(x + 1e-9)) for x in real]
    total = sum(r * c for r, c in zip(ranks, cost))
    order = sorted(range(len(real)), key=lambda i: (-(real[i] - ranks[i]), i))
    for i in order:
        if ranks[i] < cap[i] and abs(total + cost[i] - budget) < abs(total - budget):
            ranks[i] += 1
            total += cost[i]
    return ranks


def allocate_ranks(profile: IDProfile, model: nn.Module, target_modules=None, budget: float | None = None,
                   min_rank: int = 1, offset: int = RANK_OFFSET) -> dict[str, int]:
    """Rank map {module path: r} for the targeted Linear modules, from ``profile``'s lower bounds.

    Without ``budget``: r = ceil(lb_i) + ``offset`` for every target in block i, clipped to
    [``min_rank``, min(in, out)]. With ``budget`` (adapter parameters, Σ r·(in + out)): r ∝ lb_i + offset,
    scaled to the budget, met within ±1 %. Targets outside every block (e.g. a pooler) get ``min_rank``.
    """
    targets = _checked_targets(model, target_modules, budget, min_rank, offset)
    weights = [lb + offset for lb in profile.lower_bounds]
    block_of = []
    for name, _ in targets:
        owner = [i for i, block in enumerate(profile.block_names) if name.startswith(block + ".")]
        block_of.append(owner[0] if owner else None)
    cost = [m.in_features + m.out_features for _, m in targets]
    cap = [min(m.in_features, m.out_features) for _, m in targets]

    if budget is None:
        ranks = [min_rank if b is None else min(max(math.ceil(profile.lower_bounds[b] - 1e-9) + offset, min_rank), c)
                 for b, c in zip(block_of, cap)]
        return {name: r for (name, _), r in zip(targets, ranks)}
    if not any(weights[b] > 0 for b in block_of if b is not None):
        weights = [1.0] * len(weights)  # every bound 0 and offset 0: spread the budget uniformly

    def real_ranks(scale: float) -> list[float]:
        return [float(min_rank) if b is None else min(max(scale * weights[b], min_rank), c)
                for b, c in zip(block_of, cap)]

    def spent(scale: float) -> float:
        return sum(x * c for x, c in zip(real_ranks(scale), cost))

    low, high = 0.0, 1.0
    while spent(high) < budget and high < 1e12:
        high *= 2
    for _ in range(200):  # bisection: spent() is continuous and non-decreasing in the scale
        mid = (low + high) / 2
        low, high = (mid, high) if spent(mid) < budget else (low, mid)
    ranks = _round_to_budget(real_ranks(high), cost, cap, budget)
    total = sum(r * c for r, c in zip(ranks, cost))
    if abs(total - budget) > BUDGET_TOLERANCE * budget:
        raise ValueError(f"budget={budget:,} cannot be met within ±{BUDGET_TOLERANCE:.0%} with these module sizes "
                         f"(closest: {total:,})")
    return {name: r for (name, _), r in zip(targets, ranks)}


def gelora_ranks(model: nn.Module, batches: Iterable[dict], budget: float | None = None, min_rank: int = 1, *,
                 target_modules=None, offset: int = RANK_OFFSET, max_tokens: int | None = DEFAULT_MAX_TOKENS,
                 seed: int = 0, method: str = "twonn", discard_fraction: float = 0.1,
                 blocks: Iterable[str] | None = None) -> dict[str, int]:
    """GeLoRA's rank map for ``LoRAConfig(rank_pattern=...)``: measure, bound, allocate.

    ``batches``: the calibration sample (dicts of model inputs, e.g. a ``lowrank_lab.data.make_loader``).
    ``target_modules``: the modules LoRA will adapt (None: every Linear). ``budget``, ``min_rank``, ``offset``:
    see :func:`allocate_ranks`. The same batches and ``seed`` give the same map.
    """
    _check_method(method)
    check_fraction("discard_fraction", discard_fraction)
    _checked_targets(model, target_modules, budget, min_rank, offset)  # fails before the forward pass
    profile = intrinsic_dimension_profile(model, batches, blocks=blocks, max_tokens=max_tokens, seed=seed,
                                          method=method, discard_fraction=discard_fraction)
    return allocate_ranks(profile, model, target_modules, budget=budget, min_rank=min_rank, offset=offset)


# ---------------------------------------------------------------------------------------------------
# CLI recipe
# ---------------------------------------------------------------------------------------------------
def calibration_loader(task, tokenizer, n_examples: int | None = None, batch_size: int = 16):
    """The first rows of ``task.train`` as unshuffled batches: the calibration sample of the CLI recipe."""
    from ..data import make_loader

    if n_examples is not None:
        check_positive_int("calibration_examples", n_examples)
    n = min(len(task.train), n_examples if n_examples is not None else CALIBRATION_EXAMPLES[task.kind])
    return make_loader(task.train.select(range(n)), tokenizer, task.kind, batch_size=batch_size,
                       max_length=CALIBRATION_MAX_LENGTH[task.kind])


def prepare_gelora(model, model_name, task, options):
    """GeLoRA recipe: ranks from the frozen model's hidden-state IDs on a calibration sample of ``task.train``,
    then LoRA with ``rank_pattern``. Default budget: uniform LoRA rank ``options.r`` on the same targets.

    ``options.extra`` may set ``budget``, ``min_rank``, ``offset``, ``max_tokens``, ``calibration_examples``,
    ``calibration_seed`` and ``scale_rule`` (``SCALE_RULES``; default: α ∝ r, every layer at LoRA's scale).
    """
    from ..assets import load_tokenizer  # transformers: imported only when the recipe runs

    extra = dict(options.extra)
    unknown = set(extra) - {"budget", "min_rank", "offset", "max_tokens", "calibration_examples", "calibration_seed",
                            "scale_rule"}
    if unknown:
        raise ValueError(f"options.extra has keys gelora does not know: {sorted(unknown)}")
    scale_rule = extra.get("scale_rule", "alpha_proportional_to_rank")
    if scale_rule not in SCALE_RULES:
        raise ValueError(f"scale_rule must be one of {SCALE_RULES}, got {scale_rule!r}")
    config = _lora_config(model_name, task, options, use_rslora=False)
    budget = extra["budget"] if extra.get("budget") is not None else lora_budget(model, config.target_modules, options.r)
    loader = calibration_loader(task, load_tokenizer(model_name), extra.get("calibration_examples"))
    ranks = gelora_ranks(model, loader, budget=budget, min_rank=extra.get("min_rank", 1),
                         target_modules=config.target_modules, offset=extra.get("offset", RANK_OFFSET),
                         max_tokens=extra.get("max_tokens", DEFAULT_MAX_TOKENS),
                         seed=extra.get("calibration_seed", 0))
    # α_i = (α / r) · r_i: every layer keeps uniform LoRA's scale s = α/r (module docstring)
    alphas = {name: config.alpha / options.r * rank for name, rank in ranks.items()} \
        if scale_rule == "alpha_proportional_to_rank" else {}
    return inject(model, replace(config, rank_pattern=ranks, alpha_pattern=alphas))


GELORA_CLAIMS = (
    {"paper": "GeLoRA (arXiv 2412.09250)", "claim": "intrinsic-dimension ranks beat uniform LoRA at the same budget",
     "paper_evidence": "DeBERTaV3 GLUE: better than LoRA at equal budget (numbers not verified)", "baseline": "lora",
     "kind": "better", "sesoi": 0.01},
)


def _register() -> None:
    from ..registry import register_method

    # Plain LoRA training with per-layer ranks: LoRA's learning rates (no lr of its own).
    register_method("gelora", prepare_gelora, style="analysis", paper="arXiv 2412.09250", budget="budget", order=9,
                    claims=GELORA_CLAIMS, color="C8")


_register()
