"""XGBLoRA: "Less is More: Extreme Gradient Boost Rank-1 Adaption for Efficient Finetuning of LLMs"
(Y. Zhang, H. Zhu, A. Liu, H. Yu, P. Koniusz, I. King; arXiv 2410.19694).

Gradient boosting over tiny LoRA "boosters" (lesson 00's notation). A budget of T optimizer steps
(``total_steps``) is split into R = T/κ rounds; round k picks L_s of the model's n_ℓ blocks (transformer
layers) at random, trains a fresh rank-r booster (B_k, A_k) on each target projection of those blocks for κ
steps, with the penalty (λ/2)(‖A_k‖² + ‖B_k‖²) (the paper's Ω), then merges it (Eq. 8) and starts over:

    W ← W + ν · s · B_k A_k          (shrinkage ν, ``shrinkage``, 1 in the paper; s = LoRA's α/r)

Plain LoRA is the special case κ = T, all blocks, λ = 0: one round, one booster per layer.

No official code exists. Our choices where the paper is silent or was
not readable, each an argument of :class:`XGBLoRA`:

* the layer subset is redrawn once per round (not per step), from ``(seed, round)`` only, so every DDP
  rank picks the same blocks without communicating;
* a booster's Adam state is cleared when it is merged (it is a new parameter); one global LR schedule
  (``train.warmup_cosine``) covers all T steps, with no per-round warmup;
* Ω enters as its gradient λ·p, added to the boosters' (already clipped) gradients inside ``step()``;
* merges are computed in fp32; for fp16/bf16 weights a copy of W0 is kept and every merge rewrites
  W = W0 + ΣΔ from it, so round-off does not pile up over hundreds of merges (``keep_base_copy``);
* re-initialised boosters draw from a generator seeded by ``(seed, round)`` (identical on every rank) and
  leave the global RNG alone;
* the merged deltas are kept as stacked factors per layer, so the result is exactly a LoRA adapter of rank
  r × (rounds that layer was picked): :meth:`XGBLoRA.to_lora` turns the model into one, which
  ``save_adapter`` / ``export_peft`` / ``merge_and_unload`` / ``unload`` (the base weights back) handle.

The schedule is a ``torch.optim.AdamW`` subclass, so it plugs into ``lowrank_lab.train.train``, the CLI's
``make_optimizer`` hook and a Hugging Face ``Trainer``. The model is injected once with rank-r LoRA on all
target modules; inactive layers are switched off (``layer.disabled``): their forward is the plain base
layer, so they cost nothing and get no gradient. All boosters keep ``requires_grad=True`` (what training
loops and DDP see stays fixed; the class sets ``ddp_find_unused_parameters = True``, which ``train`` passes
to DDP so it does not wait for the idle boosters' gradients).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import nn

from ..layers.base import NonFiniteError, check_positive_float, check_positive_int
from ..layers.lora import LoRALinear

# The booster layers a round merges and resets (exact types: a LoRA subclass carries state a round does not know).
SUPPORTED_LAYERS = (LoRALinear,)

# Which transformer layer a module belongs to: BERT "encoder.layer.3.", Llama "model.layers.3.", GPT-2 "h.3.".
DEFAULT_BLOCK_PATTERN = r"(?:^|\.)(?:layer|layers|h|blocks|block)\.(\d+)(?:\.|$)"
# The paper's best ablation picked 11 of LLaMA3-8B's 32 layers per round (as its public reviews report).
PAPER_BLOCK_FRACTION = 11 / 32
# Default number of rounds when steps_per_round is not given: κ = ceil(K / DEFAULT_ROUNDS). Boosting's claim rests
# on many rounds; with 16, a global cosine schedule leaves the last few rounds almost untrained.
DEFAULT_ROUNDS = 32
# Peak learning rates of the recipe (registered as presets.LEARNING_RATES["xgblora"]). A booster lives for κ
# steps, not K, so it needs larger steps than one LoRA. Probe at the cpu preset (MiniLM sentiment, seed 0, 128
# steps, r=1, L_s=2/6, κ=8; val acc on 1,000): 1e-3 -> 0.535, 5e-3 -> 0.680, 1e-2 -> 0.738, 2e-2 -> 0.745 (LoRA r8
# at 1e-3: ~0.79). causal_lm: LoRA's 2e-4 times the same factor 10. A short probe says it is too small: SmolLM2-135M
# gsm, cpu preset cut to 20 steps (`--max-steps 20`), seed 0, answer loss: 1e-3 -> 1.151, 2e-3 -> 1.094, 5e-3 -> 1.014,
# 1e-2 -> 0.990 (LoRA r8 at 2e-4: 1.163). Not yet changed: one seed and a third of the preset's 60 steps.
XGBLORA_LEARNING_RATES = {"classification": 1e-2, "causal_lm": 2e-3}
SCHEDULE_ATTR = "lowrank_lab_xgblora"
# The schedule io asks before saving (a generic attribute: io knows no method by name, see io._refuse_unfinished_schedule).
UNFINISHED_SCHEDULE_ATTR = "lowrank_lab_schedule"
SETTINGS_ATTR = "lowrank_lab_xgblora_settings"


def _check_nonnegative_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _check_seed(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"seed must be a non-negative int, got {value!r}")
    return value


def default_blocks_per_round(n_blocks: int) -> int:
    """The paper's ratio L_s/L = 11/32, rounded, at least one block."""
    return max(1, round(PAPER_BLOCK_FRACTION * n_blocks))


def default_steps_per_round(total_steps: int) -> int:
    """κ giving about ``DEFAULT_ROUNDS`` rounds over T steps (the paper's κ is not known)."""
    return max(1, math.ceil(total_steps / DEFAULT_ROUNDS))


def block_key(module_name: str, pattern: str = DEFAULT_BLOCK_PATTERN) -> int | str:
    """The block (layer index) a module belongs to; a module outside every numbered block is its own block."""
    found = re.search(pattern, module_name)
    return int(found.group(1)) if found else module_name


def group_blocks(module_names, pattern: str = DEFAULT_BLOCK_PATTERN) -> dict[int | str, list[str]]:
    """Block key -> module names, numbered blocks first in index order, then unnumbered modules by name."""
    groups: dict[int | str, list[str]] = {}
    for name in module_names:
        groups.setdefault(block_key(name, pattern), []).append(name)
    order = sorted(groups, key=lambda k: (0, k, "") if isinstance(k, int) else (1, 0, k))
    return {key: groups[key] for key in order}


def round_blocks(seed: int, round_index: int, n_blocks: int, blocks_per_round: int) -> list[int]:
    """Indices (into the ordered blocks) picked in round ``round_index``: a function of (seed, round) only,
    so every DDP rank, and a resumed run, draws the same subset without communicating."""
    rng = np.random.default_rng([seed, round_index])
    return sorted(int(i) for i in rng.choice(n_blocks, size=blocks_per_round, replace=False))


def _cuda_devices(params) -> list[int]:
    """The CUDA devices ``torch.random.fork_rng`` must save and restore for these tensors ([] on CPU)."""
    return sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})


def _round_seed(seed: int, round_index: int) -> int:
    """Seed of the re-initialisation after ``round_index`` (a different stream from the block choice)."""
    return int(np.random.SeedSequence([seed, round_index, 1]).generate_state(1)[0])


class XGBLoRA(torch.optim.AdamW):
    """The XGBLoRA schedule over ``total_steps`` (K) optimizer steps, as an AdamW optimizer.

    Inject rank-r LoRA first (``inject(model, LoRAConfig(r=1, target_modules=...))``); each LoRA layer is a
    booster slot. Every ``step()`` is AdamW on the active boosters (plus the penalty's gradient λ·p) and on
    the other trainable parameters (a classifier head, trained throughout); every ``steps_per_round``-th step,
    and at step K, the round ends (:meth:`finish_round`): the active boosters are merged into their frozen
    weights (ν · s · B·A in fp32), recorded, re-initialised (LoRA init: random A, B = 0) and their Adam state
    cleared; then the next round's blocks are switched on. With ν = 1 the model's output is unchanged right
    after a merge (the booster's ΔW moved into W, the new boosters start at B = 0); ν < 1 keeps part of it.

    Arguments (κ, L_s, ν, λ; the paper writes α_t for ν):

    * ``total_steps`` T and ``steps_per_round`` κ ≤ T: R = ceil(T/κ) rounds, the last one possibly shorter.
    * ``blocks_per_round`` L_s in [1, L]; None = the paper's ratio 11/32 of the L blocks.
    * ``shrinkage`` ν (a constant, 1 in the paper); ``booster_penalty`` λ ≥ 0.
    * ``lr``, ``betas``, ``eps``, ``weight_decay``: AdamW's, for boosters and other parameters alike
      (decay applies to matrices only, as in ``train.make_optimizer``); wrap in ``train.warmup_cosine``.
    * ``seed``: the block choice and the re-initialisations depend only on it and the round index.
    * ``block_pattern``: regex whose first group is a module's block index (default: ``.layer.N.``,
      ``.layers.N.``, ``.h.N.``, ``.blocks.N.``); an adapted module outside every block is a block of its own.
    * ``keep_base_copy``: keep W0 and rewrite W = W0 + ΣΔ at each merge (one rounding in total). None =
      only for weights below fp32 (fp16/bf16), where repeated in-place merges would lose small updates.

    The record grows by r(m+n) fp32 numbers per merged layer per round; once r × picks exceeds mn/(m+n) a dense
    ΔW would be smaller (re-compressing the stack by SVD is left to the user; lesson 03, exercise 6).
    Resuming from ``state_dict()`` is not supported: the round counters and the record are not in it.
    """

    ddp_find_unused_parameters = True  # idle boosters get no gradient for a whole round (lowrank_lab.distributed)

    def __init__(self, model: nn.Module, total_steps: int, steps_per_round: int, blocks_per_round: int | None = None,
                 lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 booster_penalty: float = 0.0, shrinkage: float = 1.0, seed: int = 0,
                 block_pattern: str = DEFAULT_BLOCK_PATTERN, keep_base_copy: bool | None = None):
        from ..adapters import adapter_layers, get_config
        from ..layers.lora import LoRAConfig

        # Everything is checked before the model is touched.
        config = get_config(model)
        layers = adapter_layers(model)
        # Exact kinds, not isinstance: a LoRA subclass (DoRA) carries state a merge-and-reset round does not know.
        if type(config) is not LoRAConfig or not layers or not all(type(l) in SUPPORTED_LAYERS for l in layers.values()):
            kinds = sorted({type(l).__name__ for l in layers.values()}) or "none"
            raise ValueError("XGBLoRA needs a model injected with plain LoRA boosters (inject(model, LoRAConfig(r=1, "
                             f"...)) first); its adapter layers are {kinds}")
        if any(layer.merged for layer in layers.values()):
            raise ValueError("the model's LoRA layers are merged; unmerge(model) before handing it to XGBLoRA")
        check_positive_int("total_steps", total_steps)
        if isinstance(steps_per_round, bool) or not isinstance(steps_per_round, int) or not 1 <= steps_per_round <= total_steps:
            raise ValueError(f"steps_per_round must be an int in [1, total_steps={total_steps}], got {steps_per_round!r}")
        try:
            re.compile(block_pattern)
        except (re.error, TypeError) as exc:
            raise ValueError(f"block_pattern must be a valid regex, got {block_pattern!r} ({exc})") from None
        blocks = group_blocks(layers, block_pattern)
        if blocks_per_round is None:
            blocks_per_round = default_blocks_per_round(len(blocks))
        if isinstance(blocks_per_round, bool) or not isinstance(blocks_per_round, int) or not 1 <= blocks_per_round <= len(blocks):
            raise ValueError(f"blocks_per_round must be an int in [1, L={len(blocks)}] (the model's blocks), "
                             f"got {blocks_per_round!r}")
        check_positive_float("lr", lr)
        _check_nonnegative_float("weight_decay", weight_decay)
        self.booster_penalty = _check_nonnegative_float("booster_penalty", booster_penalty)
        self.shrinkage = check_positive_float("shrinkage", shrinkage)
        self.seed = _check_seed(seed)
        if keep_base_copy is not None and not isinstance(keep_base_copy, bool):
            raise ValueError(f"keep_base_copy must be a bool or None, got {keep_base_copy!r}")

        booster_ids = {id(p) for layer in layers.values() for p in (layer.lora_A, layer.lora_B)}
        others = [p for p in model.parameters() if p.requires_grad and id(p) not in booster_ids]
        groups = [  # the same decay split as train.make_optimizer, boosters in a group of their own
            {"params": [p for layer in layers.values() for p in (layer.lora_A, layer.lora_B)], "booster": True,
             "weight_decay": weight_decay},
            {"params": [p for p in others if p.ndim >= 2], "booster": False, "weight_decay": weight_decay},
            {"params": [p for p in others if p.ndim < 2], "booster": False, "weight_decay": 0.0},
        ]
        super().__init__([g for g in groups if g["params"]], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

        self.model = model
        self.lora_config = config
        self.layers = layers
        self.blocks = blocks
        self.block_names = list(blocks)  # position -> block key (a layer index, or a module name)
        self.total_steps = total_steps
        self.steps_per_round = steps_per_round
        self.blocks_per_round = blocks_per_round
        self.block_pattern = block_pattern
        self.round = 0  # index of the round in progress
        self.step_in_round = 0
        self.global_step = 0
        self.picks = {name: 0 for name in layers}  # finished rounds in which each layer was active
        self.rounds_log: list[list[int | str]] = []  # the block keys picked in each started round
        self.finished = False
        # Merged deltas as stacked factors: ΔW = (B_stack · scales) @ A_stack, in the compute dtype.
        self._A: dict[str, torch.Tensor] = {}
        self._B: dict[str, torch.Tensor] = {}
        self._scales: dict[str, torch.Tensor] = {}
        low_precision = {name: layer.base_layer.weight.element_size() < 4 for name, layer in layers.items()}
        self._base_copy = {name: layer.base_layer.weight.detach().clone() for name, layer in layers.items()
                           if (keep_base_copy if keep_base_copy is not None else low_precision[name])}
        self.active: list[str] = []
        self._activate()
        setattr(model, SCHEDULE_ATTR, self)
        setattr(model, UNFINISHED_SCHEDULE_ATTR, self)

    # ------------------------------------------------------------------------------------------ queries
    @classmethod
    def of(cls, model: nn.Module) -> "XGBLoRA":
        """The schedule last attached to ``model`` (e.g. after ``experiment.run_method("xgblora", ...)``)."""
        schedule = getattr(model, SCHEDULE_ATTR, None)
        if schedule is None:
            raise ValueError("model has no XGBLoRA schedule; build XGBLoRA(model, ...) first")
        return schedule

    @property
    def n_rounds(self) -> int:
        """R = ceil(K / κ)."""
        return math.ceil(self.total_steps / self.steps_per_round)

    def blocks_for_round(self, round_index: int) -> list[int | str]:
        """The block keys round ``round_index`` trains (a function of the seed and the index only)."""
        picked = round_blocks(self.seed, round_index, len(self.block_names), self.blocks_per_round)
        return [self.block_names[i] for i in picked]

    def active_parameter_count(self) -> int:
        """Booster parameters trained in the current round: L_s blocks × r(m+n) per target projection."""
        return sum(self.layers[n].lora_A.numel() + self.layers[n].lora_B.numel() for n in self.active)

    def merged_rank(self, name: str) -> int:
        """Columns stored for layer ``name``: r × (rounds it was picked), the rank bound of its ΔW."""
        return self._A[name].shape[0] if name in self._A else 0

    def merged_delta(self, name: str) -> torch.Tensor:
        """ΔW merged so far into layer ``name`` (out × in, fp32 or wider): Σ_k ν s B_k A_k."""
        layer = self.layers[name]
        if name not in self._A:
            return torch.zeros_like(layer.base_layer.weight, dtype=layer.compute_dtype)
        return (self._B[name] * self._scales[name]) @ self._A[name]

    def stored_factor_count(self) -> int:
        """Numbers held for the merged deltas (all layers): Σ R(m+n)."""
        return sum(self._A[n].numel() + self._B[n].numel() for n in self._A)

    # ------------------------------------------------------------------------------------------ schedule
    def _activate(self) -> None:
        """Switch on the boosters of this round's blocks; every other booster is bypassed (plain base layer)."""
        picked = self.blocks_for_round(self.round)
        self.rounds_log.append(picked)
        self.active = [name for key in picked for name in self.blocks[key]]
        active = set(self.active)
        for name, layer in self.layers.items():
            layer.disabled = name not in active

    def _booster_params(self, names):
        return [p for name in names for p in (self.layers[name].lora_A, self.layers[name].lora_B)]

    @torch.no_grad()
    def step(self, closure=None):
        """AdamW on the active boosters (+ λ·p) and the other trainable parameters; ends the round when due."""
        if self.finished:
            raise RuntimeError("this XGBLoRA schedule is finished (to_lora was called); build a new one to train on")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        active = {id(p) for p in self._booster_params(self.active)}
        for param in self._booster_params(self.layers):
            if id(param) not in active:
                param.grad = None  # a stale (zero) gradient would still let AdamW's decay move it
            elif self.booster_penalty and param.grad is not None:
                param.grad.add_(param, alpha=self.booster_penalty)  # ∇ of (λ/2)‖p‖²
        super().step()
        self.step_in_round += 1
        self.global_step += 1
        if self.step_in_round == self.steps_per_round or self.global_step == self.total_steps:
            self.finish_round()
        return loss

    @torch.no_grad()
    def _merge(self, names) -> None:
        """Merge the boosters of ``names`` into their weights and record them; all checked before any write."""
        planned = []
        for name in names:
            layer = self.layers[name]
            if not bool(layer.lora_B.detach().any()):
                continue  # never moved: nothing to merge, no rank spent
            dtype = layer.compute_dtype
            A = layer.lora_A.detach().to(dtype, copy=True)  # own copies: the boosters are re-initialised in place
            B = layer.lora_B.detach().to(dtype, copy=True)
            scale = torch.full((A.shape[0],), self.shrinkage * layer.scaling, dtype=dtype, device=A.device)
            stack_A = torch.cat([self._A[name], A]) if name in self._A else A
            stack_B = torch.cat([self._B[name], B], dim=1) if name in self._B else B
            scales = torch.cat([self._scales[name], scale]) if name in self._scales else scale
            if name in self._base_copy:  # W = W0 + ΣΔ, one rounding in total
                new = self._base_copy[name].to(dtype) + (stack_B * scales) @ stack_A
            else:  # fp32/fp64 weights: add this round's delta in place
                new = layer.base_layer.weight.to(dtype) + (B * scale) @ A
            if not torch.isfinite(new).all():
                raise NonFiniteError(f"merging the booster of {name!r} would write non-finite values; "
                                 "refusing (no weight changed)")
            planned.append((name, new, stack_A, stack_B, scales))
        for name, new, stack_A, stack_B, scales in planned:
            self.layers[name].base_layer.weight.copy_(new)
            self._A[name], self._B[name], self._scales[name] = stack_A, stack_B, scales

    def _merge_active(self) -> None:
        self._merge(self.active)
        for name in self.active:
            self.picks[name] += 1
        self.step_in_round = 0

    @torch.no_grad()
    def finish_round(self) -> None:
        """End the round now: merge the active boosters, count the picks, re-initialise the boosters (seeded by
        (seed, round)), clear their Adam state and switch on the next round's blocks."""
        self._merge_active()
        with torch.random.fork_rng(devices=_cuda_devices(self._booster_params(self.active))):  # global RNG untouched
            torch.manual_seed(_round_seed(self.seed, self.round))
            for name in self.active:
                self.layers[name].reset_parameters(self.lora_config.init)
        for param in self._booster_params(self.active):
            self.state.pop(param, None)
        self.round += 1
        self._activate()

    # ------------------------------------------------------------------------------------------ export
    def export_config(self):
        """The LoRAConfig of the accumulated adapter: merged layers only, rank r × picks each (full paths)."""
        from ..layers.lora import LoRAConfig

        merged = [name for name in self.layers if name in self._A]
        if not merged:
            raise ValueError("nothing has been merged yet: train at least one round before exporting")
        c = self.lora_config
        return LoRAConfig(r=c.r, alpha=c.alpha, target_modules=tuple(merged), dropout=c.dropout,
                          use_rslora=c.use_rslora, rank_pattern={n: self.merged_rank(n) for n in merged
                                                                 if self.merged_rank(n) != c.r},
                          modules_to_save=c.modules_to_save, init=c.init)

    @torch.no_grad()
    def to_lora(self) -> nn.Module:
        """Turn the model, in place, into a plain LoRA model carrying everything boosting merged.

        Boosters trained in an unfinished round are merged first. The frozen weights go back to W0, and each
        merged layer gets a LoRA of rank r·p (p = rounds that picked the layer) with A = the stacked A_k and
        B = the stacked ν·s·B_k divided by the export's scale s' (``LoRAConfig.scaling_for(r·p)``), so s'·B·A is
        the recorded ΔW. The
        output is unchanged (fp32 round-off). Then ``save_adapter``, ``export_peft``, ``merge_and_unload`` (the
        merged model) and ``unload`` (the base model) apply. The schedule is finished afterwards.
        """
        from ..adapters import install, unload

        if self.finished:
            raise RuntimeError("to_lora was already called on this schedule")
        if self.step_in_round:
            self._merge_active()
        config = self.export_config()
        # Everything is built before the model changes: the restored weights and the new LoRA layers.
        restored = {name: self._base_copy[name] if name in self._base_copy
                    else self.layers[name].base_layer.weight.to(self.layers[name].compute_dtype) - self.merged_delta(name)
                    for name in config.target_modules}
        with torch.random.fork_rng(devices=_cuda_devices(self.model.parameters())):  # their init is overwritten below
            planned = {name: config.create_layer(name, self.layers[name].base_layer) for name in config.target_modules}
        for name, layer in planned.items():
            layer.lora_A.copy_(self._A[name])
            layer.lora_B.copy_(self._B[name] * (self._scales[name] / layer.scaling))
        for layer in self.layers.values():
            layer.disabled = False
        for name, weight in restored.items():
            self.layers[name].base_layer.weight.copy_(weight)
        unload(self.model)
        install(self.model, config, planned)
        self.finished = True
        return self.model


# ---------------------------------------------------------------------------------------------------
# Recipe: ``python -m lowrank_lab train --method xgblora`` (registered in lowrank_lab.methods)
# ---------------------------------------------------------------------------------------------------
@dataclass
class XGBLoRASettings:
    """The schedule's knobs as given in ``MethodOptions.extra`` (CLI flags); None = the default."""

    steps_per_round: int | None = None  # κ; None -> default_steps_per_round(K)
    blocks_per_round: int | None = None  # L_s; None -> default_blocks_per_round(L)
    shrinkage: float = 1.0  # ν
    booster_penalty: float = 0.0  # λ

    def __post_init__(self):
        for name in ("steps_per_round", "blocks_per_round"):
            if getattr(self, name) is not None:
                check_positive_int(name, getattr(self, name))
        self.shrinkage = check_positive_float("shrinkage", self.shrinkage)
        self.booster_penalty = _check_nonnegative_float("booster_penalty", self.booster_penalty)

    @classmethod
    def from_extra(cls, extra: dict) -> "XGBLoRASettings":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(extra) - known)
        if unknown:
            raise ValueError(f"xgblora options must be among {sorted(known)}, got unknown {unknown}")
        return cls(**extra)

    def check_steps(self, total_steps: int | None) -> None:
        """κ ≤ K, checked as soon as K is known (the CLI checks it before loading anything)."""
        if total_steps is not None and self.steps_per_round is not None and self.steps_per_round > total_steps:
            raise ValueError(f"steps_per_round must be an int in [1, total_steps={total_steps}], "
                             f"got {self.steps_per_round!r}")


def prepare_xgblora(model, model_name, task, options):
    """LoRA boosters of rank ``options.r`` on the target modules (+ the new head), and the schedule's settings
    kept on the model for :func:`make_xgblora_optimizer` (which knows K)."""
    from ..layers.lora import prepare_lora

    settings = XGBLoRASettings.from_extra(options.extra)  # bad options fail before the model is modified
    model = prepare_lora(model, model_name, task, options)
    setattr(model, SETTINGS_ATTR, settings)
    return model


def make_xgblora_optimizer(model, config) -> XGBLoRA:
    """The schedule over ``config.max_steps`` steps with the settings :func:`prepare_xgblora` stored."""
    settings = getattr(model, SETTINGS_ATTR, None) or XGBLoRASettings()
    settings.check_steps(config.max_steps)
    return XGBLoRA(model, total_steps=config.max_steps,
                   steps_per_round=settings.steps_per_round or default_steps_per_round(config.max_steps),
                   blocks_per_round=settings.blocks_per_round, lr=config.lr, weight_decay=config.weight_decay,
                   booster_penalty=settings.booster_penalty, shrinkage=settings.shrinkage, seed=config.seed)


# ---------------------------------------------------------------------------------------------------
# Registration (lowrank_lab.registry): CLI flags, the knob grid compare --tune-lr tries, the claim.
# ---------------------------------------------------------------------------------------------------
def _cli_options():
    import argparse

    from ..registry import CliOption

    def bounded(kind, what, low, high=None, inclusive=False):
        def parse(text):
            try:
                value = kind(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
            ok = (value >= low if inclusive else value > low) and (high is None or value <= high)
            if not ok or (kind is float and not math.isfinite(value)):
                raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
            return value
        return parse

    return (
        CliOption("steps_per_round", bounded(int, "a positive int", 0),
                  "kappa: optimizer steps per boosting round, <= --max-steps (default: ~1/32 of them)"),
        CliOption("blocks_per_round", bounded(int, "a positive int", 0),
                  "L_s: layers that get boosters each round (default: 11/32 of the model's layers)"),
        CliOption("shrinkage", bounded(float, "a positive number <= 10", 0.0, 10.0),
                  "alpha_t of the merge W += alpha_t*s*B*A (default 1)"),
        CliOption("booster_penalty", bounded(float, "a number in [0, 1e4]", 0.0, 1e4, inclusive=True),
                  "lambda of the penalty (lambda/2)(|A|^2 + |B|^2) on the boosters (default 0)"),
    )


def _check_extra(extra: dict, total_steps: int | None) -> None:
    XGBLoRASettings.from_extra(extra).check_steps(total_steps)


def _plan_info(model, model_name, task) -> dict:
    """The number of blocks L (it bounds blocks_per_round), counted on rank-1 boosters of a copy of the model."""
    import copy

    from ..adapters import adapter_layers
    from ..layers.lora import prepare_lora
    from ..recipes import MethodOptions

    boosters = prepare_lora(copy.deepcopy(model), model_name, task, MethodOptions(r=1))
    return {"blocks": len(group_blocks(adapter_layers(boosters)))}


def knob_grid(info: dict, steps: int | None, budget: int | None = None) -> list[dict]:
    """Schedule knobs tuned at the selected rate where the paper leaves them open: blocks per round L_s and steps
    per round kappa (keeping at least 32 rounds), varied ONE AT A TIME around the default (2 x 16 on MiniLM at the
    cpu budget), so the grid is the default's neighbours; ``budget`` caps the number of configurations (compare
    gives every method the same number of tuning runs, and XGBLoRA splits them between rates and knobs)."""
    blocks = info["blocks"]
    default_blocks = default_blocks_per_round(blocks)
    if steps is None:  # full scale: K follows the data size; keep the default kappa
        grid = [{"blocks_per_round": b} for b in sorted({blocks}) if b != default_blocks]
    else:
        kappa = max(1, steps // DEFAULT_ROUNDS)
        grid = [{"blocks_per_round": b, "steps_per_round": kappa} for b in sorted({blocks}) if b != default_blocks]
        grid += [{"blocks_per_round": default_blocks, "steps_per_round": k} for k in sorted({max(1, steps // 64)})
                 if k != kappa]
    return grid if budget is None else grid[:max(0, budget)]


XGBLORA_CLAIMS = (
    {"paper": "XGBLoRA (arXiv 2410.19694)", "claim": "rank-1 boosting beats LoRA with far fewer trainable parameters",
     "paper_evidence": "abstract: better than LoRA, fewer parameters and less memory (tables not verified)",
     "baseline": "lora", "kind": "fewer_params", "sesoi": 0.01},
)


def _register() -> None:
    from ..registry import register_method

    register_method("xgblora", prepare_xgblora, make_optimizer=make_xgblora_optimizer, lr=XGBLORA_LEARNING_RATES,
                    style="schedule", paper="arXiv 2410.19694", budget="steps", order=5, claims=XGBLORA_CLAIMS,
                    cli_options=_cli_options(), check_extra=_check_extra, knob_grid=knob_grid, plan_info=_plan_info,
                    color="C5")


_register()
