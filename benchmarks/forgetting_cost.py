"""What ``lowrank_lab.forgetting.measure`` costs after a run, against the run's own wall time.

    python benchmarks/forgetting_cost.py                 # MiniLM trec (cold cache, then warm)
    python benchmarks/forgetting_cost.py --smollm2       # + SmolLM2-135M gsm (loads 517 MB; first use converts it)
    python benchmarks/forgetting_cost.py --json runs/forgetting_cost.json

The model measured is a LoRA model (the method's default targets: MiniLM query+value; SmolLM2 all 7
projections) with random non-zero B: the cost does not depend on what the weights learned. "cold" is the
first measurement with an empty base cache (the base model is loaded and its reference values computed and
written); "warm" is the next one, which only reads them. The cache used here is a temporary folder, so the
real ``cache_dir()/forgetting`` is neither used nor filled.

The fraction is of a committed cpu run's ``wall_time_s`` (MiniLM: results/study-trec-minilm-cpu/runs/
lora-lr0.005-s1/metrics.json). No SmolLM2 gsm run is committed, so its fraction is of an assumed 480 s (the
~8 min a SmolLM2 gsm cpu run takes on 2 cores). Timings on a shared machine swing by 2-3x: the 1-minute load
average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP, as lowrank_lab/__init__ does

import torch  # noqa: E402

from lowrank_lab import forgetting as F  # noqa: E402
from lowrank_lab.adapters import adapter_layers, inject  # noqa: E402
from lowrank_lab.assets import load_model, load_tokenizer, model_spec  # noqa: E402
from lowrank_lab.layers.lora import LoRAConfig  # noqa: E402

MINILM_RUN = ROOT / "results/study-trec-minilm-cpu/runs/lora-lr0.005-s1/metrics.json"
SMOLLM2_ASSUMED_WALL_S = 480.0


def lora_model(model_name: str, kind: str, num_labels: int | None):
    torch.manual_seed(0)
    model = load_model(model_name, kind=kind, num_labels=num_labels)
    targets = model_spec(model_name).default_target_modules
    model = inject(model, LoRAConfig(r=8, alpha=16, target_modules=targets))
    snapshot = F.weight_snapshot(model, F.snapshot_modules(model, model_name))
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            layer.lora_B.normal_(0.0, 0.01)  # a trained-looking non-zero update
    return model, snapshot


def timed(label: str, model, model_name: str, task: str, tok, snapshot, wall_s: float, rows: list) -> dict:
    load = os.getloadavg()[0]
    start = time.perf_counter()
    result = F.measure(model, model_name, task, tok, snapshot)
    seconds = time.perf_counter() - start
    row = {"case": label, "seconds": round(seconds, 2), "intruders_s": result["intruders"]["seconds"],
           "retained_s": result["retained"]["seconds"], "fraction_of_run": round(seconds / wall_s, 4),
           "run_wall_s": round(wall_s, 1), "load_1min": round(load, 2)}
    rows.append(row)
    print(f"{label:24s} {seconds:7.1f} s  (intruders {row['intruders_s']:5.1f} s, retained {row['retained_s']:5.1f} s)"
          f"  = {100 * seconds / wall_s:5.1f}% of a {wall_s:.0f} s run   [load {load:.1f}]", flush=True)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smollm2", action="store_true", help="also measure SmolLM2-135M on gsm (slow to load)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the rows here as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows: list = []
    with tempfile.TemporaryDirectory(prefix="forgetting-cost-") as tmp:
        F._cache_folder = lambda: Path(tmp)  # an empty base cache, thrown away afterwards
        minilm_wall = json.loads(MINILM_RUN.read_text())["wall_time_s"]
        print(f"MiniLM reference run: {MINILM_RUN.relative_to(ROOT)} wall_time_s = {minilm_wall:.1f}")
        print(f"probe protocol: n_train={F.PROBE_N_TRAIN} n_test={F.PROBE_N_TEST} l2={F.PROBE_L2} "
              f"max_length={F.PROBE_MAX_LENGTH}; held-out: {F.HELDOUT_PASSAGES} x {F.HELDOUT_TOKENS} tokens")
        tok = load_tokenizer("minilm")
        model, snapshot = lora_model("minilm", "classification", 6)
        timed("minilm trec, cold cache", model, "minilm", "trec", tok, snapshot, minilm_wall, rows)
        result = timed("minilm trec, warm cache", model, "minilm", "trec", tok, snapshot, minilm_wall, rows)
        r = result["retained"]
        print(f"  probe accuracy {r['probe_accuracy']:.3f} (base {r['base_probe_accuracy']:.3f}), CKA {r['cka']:.4f}, "
              f"intruders {result['intruders']['count']} in {result['intruders']['n_layers']} layers")
        if args.smollm2:
            del model
            tok = load_tokenizer("smollm2-135m")
            model, snapshot = lora_model("smollm2-135m", "causal_lm", None)
            timed("smollm2 gsm, cold cache", model, "smollm2-135m", "gsm", tok, snapshot, SMOLLM2_ASSUMED_WALL_S, rows)
            result = timed("smollm2 gsm, warm cache", model, "smollm2-135m", "gsm", tok, snapshot,
                           SMOLLM2_ASSUMED_WALL_S, rows)
            r = result["retained"]
            print(f"  held-out loss {r['heldout_loss']:.4f} (base {r['base_heldout_loss']:.4f}), intruders "
                  f"{result['intruders']['count']} in {result['intruders']['n_layers']} layers "
                  f"(fraction of an ASSUMED {SMOLLM2_ASSUMED_WALL_S:.0f} s run: none is committed)")
    if args.json:
        from lowrank_lab.files import write_json

        write_json(args.json, {"rows": rows, "threads": args.threads})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
