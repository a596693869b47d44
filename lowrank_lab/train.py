"""One small training loop for every method and both task kinds, plus evaluation.

``train(model, task, tokenizer, config)`` runs ``config.max_steps`` optimizer steps and returns a
JSON-serialisable history. Per optimizer step it:

1. runs ``grad_accum_steps`` micro-batches, each loss scaled by ``1/grad_accum_steps`` before
   ``backward`` (so the summed gradient is the mean over the micro-batches; a causal-LM micro-batch loss
   is its own mean over solution tokens, so micro-batches are weighted equally, not by token count);
2. clips the gradient norm over the trainable parameters (if ``max_grad_norm``);
3. calls ``optimizer.step()`` exactly once, then ``scheduler.step()``.

Mixed precision (``TrainConfig.precision``, :class:`MixedPrecision`): "bf16" runs the forward passes under
``torch.autocast`` (CPU or CUDA), "fp16" adds a ``GradScaler`` (CUDA only), "auto" picks bf16 on a GPU with
native bf16 and fp32 elsewhere. Parameters and optimizer state stay fp32; "fp32" (the default) runs exactly
the code path it always did.

Any ``torch.optim.Optimizer`` can be passed in: methods that change the update rule (LoRA-Pro) bring
their own optimizer and reuse this loop unchanged.

Under ``torchrun`` (a process group is up) the same call trains data-parallel with DDP: ``batch_size`` is
the global batch, each rank takes its slice, rank 0 logs and writes (``lowrank_lab.distributed``).

A run either finishes or raises :class:`TrainingFailed`: :class:`TrainingDiverged` when the loss, an update
or an evaluation went non-finite (checked after the final update too, so a run never scores NaN logits as
an accuracy), plain :class:`TrainingFailed` for anything else that broke after training started. Errors in
the setup (bad config, wrong precision for the device) stay ``ValueError`` and happen before any step.
"""

from __future__ import annotations

import contextlib
import math
import re
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

from lowrank_lab import distributed, files
from lowrank_lab.adapters import count_parameters
from lowrank_lab.layers.base import NonFiniteError
from lowrank_lab.data import IGNORE_INDEX, collate_prompts, make_loader
from lowrank_lab.runtime import get_device, progress_enabled, seed_everything

# ---------------------------------------------------------------------------------------------- failures


class TrainingFailed(RuntimeError):
    """Training started and could not finish. ``step`` is the optimizer step it failed at and ``history`` what
    was recorded until then (strict JSON: no NaN), with ``history["status"]`` saying what happened."""

    status = "failed"

    def __init__(self, message: str, step: int | None = None, history: dict | None = None):
        super().__init__(message)
        self.step = step
        self.history = history


class TrainingDiverged(TrainingFailed, FloatingPointError):
    """The training loss, an update (a weight, a LoRA-Pro step, an XGBLoRA merge) or an evaluation loss went
    non-finite. A result, not a crash: the same settings diverge again (a ``FloatingPointError`` too)."""

    status = "diverged"


def check_finite_parameters(model: torch.nn.Module) -> None:
    """Raise :class:`TrainingDiverged` naming the first parameter or buffer that holds NaN or infinity."""
    for kind, named in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, tensor in named:
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise TrainingDiverged(f"{kind} {name} holds non-finite values after the update")


def _check_finite_metrics(metrics: dict, split: str) -> dict:
    bad = {k: v for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)}
    if bad:
        raise TrainingDiverged(f"{split} evaluation is non-finite ({', '.join(f'{k}={v}' for k, v in bad.items())}): "
                               "the model's outputs are NaN or infinite")
    return metrics


# ---------------------------------------------------------------------------------------------- config


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


PRECISIONS = ("fp32", "bf16", "fp16", "auto")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainConfig:
    """Everything that defines a training run. Invalid values raise ``ValueError`` naming field and value."""

    lr: float = field(default=5e-4, metadata={"help": "peak learning rate (after warmup)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW decay on matrices (not biases/norms)"})
    warmup_ratio: float = field(default=0.06, metadata={"help": "fraction of max_steps warming up linearly"})
    max_steps: int = field(default=100, metadata={"help": "optimizer steps (not micro-batches)"})
    batch_size: int = field(default=16, metadata={"help": "examples per micro-batch"})
    grad_accum_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "clip threshold; None = no clipping"})
    max_length: int = field(default=128, metadata={"help": "tokens per example (truncated beyond)"})
    group_by_length: bool = field(default=False, metadata={
        "help": "batch training rows of similar length together (less padding; data.LengthGroupedBatches)"})
    eval_every: int | None = field(default=None, metadata={"help": "evaluate every N steps; None = at end"})
    eval_batch_size: int = field(default=32, metadata={"help": "batch size for evaluation"})
    max_generate: int | None = field(
        default=0, metadata={"help": "causal_lm: validation problems answered by generation; 0 = skip, None = all"}
    )
    max_new_tokens: int = field(default=256, metadata={"help": "generation budget per answer"})
    seed: int = field(default=0, metadata={"help": "seeds torch (dropout) and the data order"})
    head_lr: float | None = field(default=None, metadata={
        "help": "peak lr of the task's new head (head_modules); None = lr. A shared-rate protocol fixes it so the "
                "head can learn whatever rate the adapters share"})
    head_modules: tuple = field(default=(), metadata={"help": "module names of the new head that head_lr applies to"})
    device: str | None = field(default=None, metadata={"help": "'cpu', 'cuda', ...; None = runtime.get_device()"})
    log_every: int = field(default=10, metadata={"help": "progress-bar loss/lr refresh interval in steps"})
    precision: str = field(default="fp32", metadata={
        "help": "'fp32' | 'bf16' (autocast; CPU or CUDA) | 'fp16' (autocast + GradScaler; CUDA only) | "
                "'auto' (bf16 on a CUDA GPU with native bf16, else fp32); parameters stay fp32"})

    def __post_init__(self):
        def fail(name, what):
            raise ValueError(f"{name} must be {what}, got {getattr(self, name)!r}")

        if not _is_number(self.lr) or self.lr <= 0:
            fail("lr", "a positive float")
        if not _is_number(self.weight_decay) or self.weight_decay < 0:
            fail("weight_decay", "a float >= 0")
        if not _is_number(self.warmup_ratio) or not 0 <= self.warmup_ratio < 1:
            fail("warmup_ratio", "a float in [0, 1)")
        for name in ("max_steps", "batch_size", "grad_accum_steps", "eval_batch_size", "max_new_tokens",
                     "log_every"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                fail(name, "a positive int")
        if not _is_int(self.max_length) or self.max_length < 2:
            fail("max_length", "an int >= 2")
        if not isinstance(self.group_by_length, bool):
            fail("group_by_length", "a bool")
        if self.max_grad_norm is not None and (not _is_number(self.max_grad_norm) or self.max_grad_norm <= 0):
            fail("max_grad_norm", "a positive float or None")
        if self.eval_every is not None and (not _is_int(self.eval_every) or self.eval_every < 1):
            fail("eval_every", "a positive int or None")
        if self.max_generate is not None and (not _is_int(self.max_generate) or self.max_generate < 0):
            fail("max_generate", "an int >= 0 or None")
        if not _is_int(self.seed) or self.seed < 0:
            fail("seed", "a non-negative int")
        if self.head_lr is not None and (not _is_number(self.head_lr) or self.head_lr <= 0):
            fail("head_lr", "a positive float or None")
        if not isinstance(self.head_modules, (tuple, list)) or not all(isinstance(m, str) and m for m in self.head_modules):
            fail("head_modules", "a tuple of module names")
        if self.head_lr is not None and not self.head_modules:
            fail("head_modules", "non-empty when head_lr is set (the modules head_lr applies to)")
        self.head_modules = tuple(self.head_modules)
        if self.device is not None:
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError):
                fail("device", "a torch device string such as 'cpu' or 'cuda', or None")
        if self.precision not in PRECISIONS:
            fail("precision", f"one of {PRECISIONS}")
        if self.device is not None:  # an explicit device is checked now; device=None is checked in train()
            resolve_precision(self.precision, self.device)

    @property
    def warmup_steps(self) -> int:
        return round(self.warmup_ratio * self.max_steps)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------- precision


def resolve_precision(precision: str, device) -> str:
    """The precision a run on ``device`` uses: "auto" -> "bf16" on a CUDA GPU with native bf16 (Ampere or
    newer), else "fp32". "fp16" needs CUDA: its GradScaler and fp16 kernels are a GPU recipe."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        native_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
        return "bf16" if native_bf16 else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"precision 'fp16' needs a CUDA device (fp16 autocast + GradScaler), got device "
                         f"{str(device)!r}; use 'bf16' (CPU or CUDA) or 'fp32'")
    if precision == "bf16" and not torch.amp.is_autocast_available(device.type):
        raise ValueError(f"precision 'bf16' needs torch.autocast on the device, which {str(device)!r} lacks")
    return precision


class MixedPrecision:
    """Autocast around the forward passes, and for fp16 a GradScaler around backward and the step.

    Autocast runs matmuls in the low dtype but leaves the parameters (and so the optimizer state) in fp32.
    bf16 keeps fp32's exponent range, so nothing under- or overflows and no scaling is needed. fp16 has 5
    exponent bits: gradients below ~6e-8 flush to 0, so the loss is multiplied by a scale S before backward.
    :meth:`step` divides the gradients by S (``unscale_``) *before* clipping, so the clip threshold and the
    optimizer (LoRA-Pro's adjustment included) see the true gradients. If any of them is inf/NaN, the scaler
    skips ``optimizer.step()`` (no weight changes; LoRA-Pro never sees it) and halves S. A skipped step is not
    an optimizer step: a schedule that counts its own steps (XGBLoRA's rounds) sees one fewer, while the
    learning-rate schedule still advances.
    """

    def __init__(self, precision: str, device):
        if precision != "fp32" and precision not in AUTOCAST_DTYPES:
            raise ValueError(f"precision must be 'fp32' or one of {tuple(AUTOCAST_DTYPES)} (resolved), "
                             f"got {precision!r}")
        self.precision = precision
        self.device = torch.device(device)
        self.scaler = torch.amp.GradScaler(self.device.type) if precision == "fp16" else None

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[self.precision])

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(self, optimizer: torch.optim.Optimizer, params, max_grad_norm: float | None) -> bool:
        """Clip the (unscaled) gradient norm of ``params`` and step; False when fp16 skipped the step."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        if max_grad_norm is not None:  # clip the accumulated gradient, before the step uses it
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        if self.scaler is None:
            optimizer.step()
            return True
        scale = self.scaler.get_scale()
        self.scaler.step(optimizer)  # skips optimizer.step() if unscale_ found an inf/NaN
        self.scaler.update()
        return self.scaler.get_scale() >= scale  # update() lowers the scale exactly when it skipped


# ---------------------------------------------------------------------------------------------- optimizer


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> LambdaLR:
    """Linear warmup to the optimizer's lr over ``warmup_steps``, then cosine decay to 0 at ``total_steps``.

    LambdaLR calls the factor with the number of ``scheduler.step()`` calls made so far, i.e. the index
    (from 0) of the optimizer step about to run: step 1 uses ``lr/warmup_steps``, step ``warmup_steps``
    the full lr, and after ``total_steps`` steps the factor is exactly 0.
    """
    if not _is_int(total_steps) or total_steps < 1:
        raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
    if not _is_int(warmup_steps) or not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be an int in [0, total_steps={total_steps}], got {warmup_steps!r}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def head_parameters(model: torch.nn.Module, head_modules) -> list[torch.nn.Parameter]:
    """The trainable parameters of the modules named ``head_modules`` (a name or a path suffix, as in PEFT)."""
    from lowrank_lab.layers.base import module_matches

    names = tuple(head_modules)
    found = {id(p): p for name, module in model.named_modules() if name and module_matches(names, name)
             for p in module.parameters() if p.requires_grad}
    if names and not found:
        raise ValueError(f"head_modules {list(names)} match no trainable module of the model")
    return list(found.values())


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float = 0.0, head_lr: float | None = None,
                   head_modules=()) -> torch.optim.AdamW:
    """AdamW over the trainable parameters. Decay only matrices: biases and LayerNorm/RMSNorm gains are
    1-D, and shrinking them toward 0 is not regularisation (BERT/GPT practice). With ``head_lr`` the parameters
    of ``head_modules`` (a new task head) get their own peak rate; the schedule scales every group alike."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (requires_grad=True)")
    head = {id(p) for p in head_parameters(model, head_modules)} if head_lr is not None else set()
    groups = []
    for rate, members in ((lr, [p for p in params if id(p) not in head]), (head_lr, [p for p in params if id(p) in head])):
        groups += [{"params": [p for p in members if p.ndim >= 2], "weight_decay": weight_decay, "lr": rate},
                   {"params": [p for p in members if p.ndim < 2], "weight_decay": 0.0, "lr": rate}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


# ---------------------------------------------------------------------------------------------- helpers


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def _forever(loader):
    """Yield batches epoch after epoch; each epoch reshuffles from the loader's own generator."""
    while True:
        yield from loader


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """Peak memory and what it measures: CUDA's allocator peak on the device, else the PROCESS-WIDE peak
    resident set size (everything this Python process ever held, including data and earlier models)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10), "process_peak_rss"


def _rounded(metrics: dict) -> dict:
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()}


# ---------------------------------------------------------------------------------------------- evaluation

_FINAL = re.compile(r"####\s*\$?\s*(-?[\d,]*\.?\d+)")
_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*|-?\.\d+")


def parse_answer(text: str) -> str | None:
    """The final answer in a generated solution: the last ``#### N``, else the last number, else None."""
    found = _FINAL.findall(text) or _NUMBER.findall(text)
    if not found:
        return None
    return found[-1].replace(",", "").rstrip(".")


def answers_match(predicted: str | None, reference: str) -> bool:
    """Numeric comparison, so "18", "18.0" and "18," all match "18"."""
    if predicted is None:
        return False
    try:
        return math.isclose(float(predicted), float(str(reference).replace(",", "")), abs_tol=1e-6)
    except ValueError:
        return predicted.strip() == str(reference).strip()


@torch.no_grad()
def generate_answers(model, questions: list[str], tokenizer, batch_size: int, max_new_tokens: int,
                     device) -> list[str]:
    """Greedy completions for ``questions`` (left-padded batches), decoded without special tokens."""
    outputs = []
    for start in range(0, len(questions), batch_size):
        batch = _to_device(collate_prompts(questions[start:start + batch_size], tokenizer), device)
        new = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )[:, batch["input_ids"].shape[1]:]
        outputs += tokenizer.batch_decode(new, skip_special_tokens=True)
    return outputs


def evaluate(
    model: torch.nn.Module,
    dataset,
    tokenizer,
    kind: str,
    batch_size: int = 32,
    max_length: int = 128,
    max_generate: int | None = 0,
    max_new_tokens: int = 256,
    device=None,
    per_example: bool = False,
) -> dict:
    """Metrics on ``dataset`` (model in eval mode, no grad; the previous train/eval mode is restored).

    * classification -> ``{"accuracy", "loss"}`` (mean cross-entropy per example).
    * causal_lm -> ``{"answer_loss", "exact_match", "n_generated"}``: ``answer_loss`` is the teacher-forced
      cross-entropy averaged over all solution tokens; ``exact_match`` is over the first ``max_generate``
      rows (None = all, 0 = skip, then it is None), answered by greedy generation.

    ``per_example=True`` adds ``"per_example"``, in the dataset's own order (what a paired bootstrap over test
    examples resamples): classification ``{"predicted", "label"}`` (class ids); causal_lm ``{"answer_loss_sum",
    "answer_tokens", "exact_match"}`` (each problem's summed token loss and its number of solution tokens, so a
    resample's token-weighted mean is exact; 0/1 per generated problem).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            total_loss, count, correct = 0.0, 0, 0
            rows: dict[str, list] = {"predicted": [], "label": []} if kind == "classification" else \
                {"answer_loss_sum": [], "answer_tokens": []}
            for batch in make_loader(dataset, tokenizer, kind, batch_size, max_length):
                batch = _to_device(batch, device)
                out = model(**batch)
                if kind == "classification":
                    n = batch["labels"].numel()
                    predicted = out.logits.argmax(-1)
                    correct += (predicted == batch["labels"]).sum().item()
                    if per_example:
                        rows["predicted"] += predicted.tolist()
                        rows["label"] += batch["labels"].tolist()
                else:  # HF shifts labels by one and averages over the non-ignored targets
                    targets = batch["labels"][:, 1:]
                    n = (targets != IGNORE_INDEX).sum().item()
                    if per_example:  # each problem's own summed token loss (the batch mean hides it)
                        token_loss = torch.nn.functional.cross_entropy(
                            out.logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX,
                            reduction="none")
                        rows["answer_loss_sum"] += token_loss.sum(1).tolist()
                        rows["answer_tokens"] += (targets != IGNORE_INDEX).sum(1).tolist()
                total_loss += out.loss.item() * n
                count += n
            if kind == "classification":
                metrics = {"accuracy": correct / max(count, 1), "loss": total_loss / max(count, 1)}
                return {**metrics, "per_example": rows} if per_example else metrics

            n_gen = len(dataset) if max_generate is None else min(max_generate, len(dataset))
            exact, matched = None, []
            if n_gen:
                problems = dataset.select(range(n_gen)) if hasattr(dataset, "select") else dataset[:n_gen]
                texts = generate_answers(model, [r["question"] for r in problems], tokenizer, batch_size,
                                         max_new_tokens, device)
                matched = [int(answers_match(parse_answer(t), r["answer"])) for t, r in zip(texts, problems)]
                exact = sum(matched) / n_gen
            metrics = {"answer_loss": total_loss / max(count, 1), "exact_match": exact, "n_generated": n_gen}
            return {**metrics, "per_example": {**rows, "exact_match": matched}} if per_example else metrics
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------------------------------- training


def _write_history(history: dict, out_dir, rank: int) -> None:
    if out_dir is not None and rank == 0:
        files.write_json(Path(out_dir) / "history.json", history)


def _failed(err: TrainingFailed, history: dict, step: int, out_dir, rank: int) -> TrainingFailed:
    """``err`` with the step and the history so far (marked with its status) attached, and written."""
    err.step = err.step or step
    history.update(status=err.status, error=str(err), failed_at_step=err.step, final=None)
    err.history = history
    _write_history(history, out_dir, rank)
    return err



def train(
    model: torch.nn.Module,
    task,
    tokenizer,
    config: TrainConfig,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler=None,
    out_dir=None,
    show_progress: bool = True,
    predictions: dict | None = None,
) -> dict:
    """Train ``model`` on ``task.train`` for ``config.max_steps`` optimizer steps; return the history.

    ``optimizer`` defaults to :func:`make_optimizer` (AdamW); ``scheduler`` defaults to
    :func:`warmup_cosine` on whichever optimizer is used. Evaluates on ``task.validation`` every
    ``eval_every`` steps (without generation, which is slow) and at the end (with ``max_generate``
    generations), then once on ``task.test``. A non-finite loss, parameter (after the last update too) or
    evaluation stops the run with :class:`TrainingDiverged` (a ``FloatingPointError``); any other error after
    training started is re-raised as :class:`TrainingFailed`. Both carry the history recorded so far.

    History keys: ``config``, ``task``, ``kind``, ``step``/``train_loss``/``lr``/``step_time_s`` (one entry
    per optimizer step), ``evals`` (``[{"step", **metrics}]``), ``final`` (``{"validation", "test"}``),
    ``median_step_time_s``, ``peak_memory_mb`` (+ ``peak_memory_kind``: CUDA allocator peak, or the
    process-wide peak RSS on CPU), ``trainable_params``, ``total_params``, ``wall_time_s``, ``device``,
    ``precision`` (resolved: "auto" becomes what ran), ``skipped_steps`` (fp16 steps the GradScaler
    skipped on inf/NaN gradients; always empty otherwise) and ``status`` ("ok"; a failure's history says
    "diverged" or "failed", with ``error`` and ``failed_at_step``).
    Written to ``out_dir/history.json`` when ``out_dir`` is given.

    ``predictions``: a dict to fill with the final evaluations' per-example rows (``{"validation": ..., "test":
    ...}``, see :func:`evaluate`'s ``per_example``); the caller writes them (``predictions.json`` of a run).
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    start = time.perf_counter()
    device = distributed.local_device(torch.device(config.device) if config.device else get_device())
    world_size, rank = distributed.world()
    distributed.check_batch_size(config.batch_size)
    precision = resolve_precision(config.precision, device)  # e.g. fp16 on CPU: refused before any change
    amp = MixedPrecision(precision, device)
    model.to(device)
    seed_everything(config.seed)  # dropout masks; the data order has its own generator
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    loader = make_loader(task.train, tokenizer, task.kind, config.batch_size, config.max_length,
                         shuffle=True, seed=config.seed, group_by_length=config.group_by_length)
    batches = _forever(loader)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if optimizer is None:
        optimizer = make_optimizer(model, config.lr, config.weight_decay, config.head_lr, config.head_modules)
    elif config.head_lr is not None:
        raise ValueError(f"head_lr applies to the default AdamW; the method's own optimizer "
                         f"({type(optimizer).__name__}) sets its rates itself, got head_lr={config.head_lr!r}")
    if scheduler is None:
        scheduler = warmup_cosine(optimizer, config.warmup_steps, config.max_steps)
    n_trainable, n_total = count_parameters(model)
    # DDP under torchrun: averages gradients in backward.
    forward_model = distributed.wrap(model, device, getattr(optimizer, "ddp_find_unused_parameters", False))

    def run_eval(dataset, generate, split, final=False):
        with amp.autocast():
            metrics = evaluate(model, dataset, tokenizer, task.kind, config.eval_batch_size, config.max_length,
                               config.max_generate if generate else 0, config.max_new_tokens, device,
                               per_example=final and predictions is not None)
        rows = metrics.pop("per_example", None)
        metrics = _check_finite_metrics(_rounded(metrics), split)
        if rows is not None:  # only after the finite check: a diverged run records no predictions
            predictions[split] = rows
        return metrics

    history = {
        "config": config.to_dict(), "task": task.name, "kind": task.kind, "device": str(device),
        "precision": precision, "trainable_params": n_trainable, "total_params": n_total,
        "step": [], "train_loss": [], "lr": [], "step_time_s": [], "evals": [], "skipped_steps": [],
    }
    model.train()
    bar = tqdm(total=config.max_steps, desc=f"train {task.name}", disable=not show_progress or rank != 0 or not progress_enabled())
    step = 0
    try:
        for step in range(1, config.max_steps + 1):
            _sync(device)
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for _ in range(config.grad_accum_steps):
                batch = distributed.shard(next(batches), rank, world_size)
                with amp.autocast():
                    loss = forward_model(**_to_device(batch, device)).loss
                mean_loss = distributed.mean_over_ranks(loss.item(), device)  # every rank stops together
                if not math.isfinite(mean_loss):
                    raise TrainingDiverged(
                        f"non-finite training loss {mean_loss} at step {step}; stopping "
                        f"(lr={optimizer.param_groups[0]['lr']:.3g}: try a lower lr or max_grad_norm)"
                    )
                amp.backward(loss / config.grad_accum_steps)
                step_loss += mean_loss / config.grad_accum_steps
            lr = optimizer.param_groups[0]["lr"]
            if not amp.step(optimizer, trainable, config.max_grad_norm):
                history["skipped_steps"].append(step)
            scheduler.step()
            _sync(device)
            history["step_time_s"].append(time.perf_counter() - t0)
            history["step"].append(step)
            history["train_loss"].append(step_loss)
            history["lr"].append(lr)

            if step % config.log_every == 0 or step == config.max_steps:
                recent = history["train_loss"][-config.log_every:]
                bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", lr=f"{lr:.2e}")
            bar.update()
            if config.eval_every and step % config.eval_every == 0 and step != config.max_steps:
                history["evals"].append({"step": step, **run_eval(task.validation, False, "validation")})
        bar.close()  # before the final evaluation prints anything

        check_finite_parameters(model)  # the last update is not followed by a loss that would reveal it
        validation = run_eval(task.validation, True, "validation", final=True)
        history["evals"].append({"step": config.max_steps, **validation})
        test = run_eval(task.test, True, "test", final=True) if task.test is not None and len(task.test) else None
        history["final"] = {"validation": validation, "test": test}
        history["median_step_time_s"] = statistics.median(history["step_time_s"])
        history["peak_memory_mb"], history["peak_memory_kind"] = peak_memory_mb(device)
        history["wall_time_s"] = time.perf_counter() - start
    except TrainingFailed as err:
        raise _failed(err, history, step, out_dir, rank) from err.__cause__
    except NonFiniteError as err:  # a refused merge or optimizer step: the update itself diverged
        raise _failed(TrainingDiverged(str(err)), history, step, out_dir, rank) from err
    except Exception as err:  # after setup, anything else is a failure of this run, not of its arguments
        raise _failed(TrainingFailed(f"{type(err).__name__}: {err}"), history, step, out_dir, rank) from err
    finally:
        bar.close()
    history["status"] = "ok"
    _write_history(history, out_dir, rank)
    return history
