"""Self-checking exercises of lesson 07 (scaling up): training memory in bytes, bf16 / fp16 numbers, the global
batch under data parallelism, and the steps a preset resolves to.

Each check computes its reference its own way (tensors on the meta device, bit patterns, a simulated sharding
of a batch) and never prints the answer; the worked solutions are in
``lessons/solutions/07_scaling_up_solutions.ipynb``.
"""

from __future__ import annotations

import math

import torch

from lowrank_lab import presets
from lowrank_lab.exercises import not_attempted, number_answer, number_list, passed, require, whole_answer

# One decoder block of SmolLM2-135M: the seven projections LoRA adapts, as (out m, in n) = nn.Linear.weight's
# shape; none has a bias.
SMOLLM2_BLOCK = {
    "q_proj": (576, 576), "k_proj": (192, 576), "v_proj": (192, 576), "o_proj": (576, 576),
    "gate_proj": (1536, 576), "up_proj": (1536, 576), "down_proj": (576, 1536),
}

# Gradients whose fate in fp16 exercise 2 asks about.
FP16_GRADIENTS = (1e-4, 1e-6, 5e-8, 3e-8, 2e-8)


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _training_bytes(layers: dict, r: int | None) -> int:
    """fp32 parameters + gradients + two Adam moments of a model made of ``layers``, built on the meta device
    (no memory used): full fine-tuning when ``r`` is None, else LoRA of rank ``r`` on every layer."""
    frozen, trained = [], []
    for m, n in layers.values():
        weight = torch.empty(m, n, device="meta")
        if r is None:
            trained.append(weight)
        else:
            frozen.append(weight)
            trained += [torch.empty(r, n, device="meta"), torch.empty(m, r, device="meta")]
    parameters = _bytes(frozen) + _bytes(trained)
    gradients = _bytes(torch.empty_like(t) for t in trained)
    moments = 2 * _bytes(torch.empty_like(t) for t in trained)  # exp_avg and exp_avg_sq
    return parameters + gradients + moments


def check_memory_bytes(full_bytes, lora_bytes, layers: dict = SMOLLM2_BLOCK, r: int = 8) -> bool:
    """Exercise 1: bytes of fp32 parameters + gradients + Adam moments (no step counters) of a model made of
    ``layers``, trained fully (``full_bytes``) and with LoRA of rank ``r`` on every layer (``lora_bytes``)."""
    name = "Exercise 1 (memory in bytes)"
    if not_attempted(name, full_bytes, lora_bytes):
        return False
    full_ref, lora_ref = _training_bytes(layers, None), _training_bytes(layers, r)
    full_bytes, lora_bytes = whole_answer(name, full_bytes, "full_bytes"), whole_answer(name, lora_bytes, "lora_bytes")
    require(name, full_bytes == full_ref,
            "full fine-tuning: every number of every weight is trained; count 4 bytes for it, 4 for its gradient "
            "and 8 for its two Adam moments (m x n numbers per layer, not m + n)")
    passed(name, lora_bytes == lora_ref,
           "LoRA: the frozen weights still take 4 bytes per number; only the factors A (r x n) and B (m x r) "
           "have gradients and Adam moments, and the factors are parameters too (4 bytes each)")
    return True


def check_low_precision(bf16_spacing_at_1000, flushed_in_fp16) -> bool:
    """Exercise 2: the distance from 1000 to the next larger bf16 number, and which of :data:`FP16_GRADIENTS`
    become exactly 0 when cast to fp16."""
    name = "Exercise 2 (bf16 spacing, fp16 underflow)"
    if not_attempted(name, bf16_spacing_at_1000, flushed_in_fp16):
        return False
    # The next bf16 number: add one to the last bit of 1000's bf16 bit pattern.
    thousand = torch.tensor(1000.0, dtype=torch.bfloat16)
    above = (thousand.view(torch.int16) + 1).view(torch.bfloat16)
    spacing = above.float().item() - thousand.float().item()
    bf16_spacing_at_1000 = number_answer(name, bf16_spacing_at_1000, "the bf16 spacing at 1000")
    spacing_right = math.isclose(bf16_spacing_at_1000, spacing, rel_tol=1e-9)
    zeros = {g for g in FP16_GRADIENTS if torch.tensor(g, dtype=torch.float32).half().item() == 0.0}
    given = number_list(name, flushed_in_fp16, "the flushed gradients", single=True)  # list, set, array, tensor
    # each given number as the FP16_GRADIENTS entry it stands for: the same number read back from a float32
    # tensor (g[g.half() == 0].tolist()) is 1.9999999...e-08, not 2e-08; float32 keeps 7 digits
    answer = {next((g for g in FP16_GRADIENTS if math.isclose(value, g, rel_tol=1e-6)), value) for value in given}
    require(name, answer <= set(FP16_GRADIENTS),
            f"list only numbers taken from FP16_GRADIENTS = {FP16_GRADIENTS}")
    # One hint for both parts: a spacing is a power of two and the flushed set one of 32 subsets, so telling which
    # part is wrong would let each be found by trying a few values.
    passed(name, spacing_right and answer == zeros,
           "not both right. (i) bf16 keeps 7 fraction bits: between 2^e and 2^(e+1) its numbers are 2^e x 2^-7 "
           "apart; which power of two is just below 1000? (ii) fp16's subnormals reach down to 2^-24 "
           "(torch.finfo(torch.float16).tiny is the smallest *normal* number); round-to-nearest sends a number to 0 "
           "only when it is closer to 0 than to 2^-24.")
    return True


def _per_rank_examples(batch_size: int, processes: int) -> int:
    """How many examples one rank gets from a global batch: shard a batch of indices as training does."""
    from lowrank_lab.distributed import shard

    batch = {"index": torch.arange(batch_size)}
    slices = [shard(batch, rank, processes)["index"] for rank in range(processes)]
    if sum(len(s) for s in slices) != batch_size:
        return -1  # the batch does not split evenly (training refuses such a batch_size)
    return len(slices[0])


def check_global_batch(examples_per_step, batch_size, grad_accum_steps, processes: int = 4,
                       per_process_batch: int = 8, accumulation: int = 4) -> bool:
    """Exercise 3: ``processes`` processes each take micro-batches of ``per_process_batch`` examples and
    accumulate ``accumulation`` of them per optimizer step (the per-process convention of plain DDP scripts).
    Answers: the examples behind one optimizer step, and the ``TrainConfig`` fields (``batch_size``,
    ``grad_accum_steps``) that make lowrank_lab run exactly that on the same processes."""
    name = "Exercise 3 (global batch)"
    if not_attempted(name, examples_per_step, batch_size, grad_accum_steps):
        return False
    seen = sum(per_process_batch for _process in range(processes) for _micro in range(accumulation))
    examples_per_step = whole_answer(name, examples_per_step, "the examples per step")
    batch_size = whole_answer(name, batch_size, "batch_size")
    grad_accum_steps = whole_answer(name, grad_accum_steps, "grad_accum_steps")
    per_rank = _per_rank_examples(batch_size, processes) if 0 < batch_size <= 1_000_000 else -1
    right = examples_per_step == seen and per_rank == per_process_batch and batch_size * grad_accum_steps == seen
    # One hint for the three numbers: each is small, so telling which one is wrong would let it be found by trying.
    passed(name, right,
           "not all three right. (i) every process contributes its own micro-batches, and every micro-batch before "
           "the optimizer step counts; (ii) in lowrank_lab, TrainConfig.batch_size is the global micro-batch: each "
           "rank takes batch_size / (number of processes) of it, so choose it so that each rank holds the same "
           "micro-batch as in the DDP script; (iii) the accumulation count must then give the same examples per step.")
    return True


def check_resolved_steps(steps, n_rows: int, task: str = "gsm") -> bool:
    """Exercise 4: the optimizer steps of ``task``'s full preset (LoRA) on a training set of 3 x ``n_rows``
    examples, run on 4 GPUs with ``grad_accum_steps=2`` (every other field as in the preset)."""
    name = "Exercise 4 (steps of a preset)"
    if not_attempted(name, steps):
        return False
    preset = presets.train_preset(task, "full", "lora")
    examples, per_step = preset["epochs"] * 3 * n_rows, preset["batch_size"] * 2  # global batch: GPUs don't enter
    reference = max(1, -(-examples // per_step))
    steps = whole_answer(name, steps, "the number of steps")
    passed(name, steps == reference,
           "count the examples of `epochs` passes over the tripled data and divide by the examples one optimizer "
           "step takes, rounding a last partial step up; is TrainConfig.batch_size per GPU or global (section (d))?")
    return True
