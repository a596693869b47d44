"""Tokenization and batching for the two task kinds.

* ``classification``: tokenize ``text`` (truncated to ``max_length``), pad each batch to its own longest
  row (dynamic padding), labels are the integer ``label`` column.
* ``causal_lm`` (gsm): ``prompt`` = the question (through the tokenizer's chat template when it has one),
  ``completion`` = ``solution`` + eos. The model sees ``prompt + completion``; ``labels`` are ``-100`` on the
  prompt and on padding, so the loss counts only solution tokens (the usual SFT recipe). Too-long rows are
  cut from the end of the solution.

Tokenization happens in the collate function, per batch: no ``datasets.map`` cache files, and any row
subset (``dataset.select``) works unchanged.

Training batches can be grouped by length (``group_by_length``, as in HF Trainer): each batch then pads to
about its own rows' length instead of the longest of 16 random rows, which on the sentiment sentences halves
the tokens a step processes. :class:`LengthGroupedBatches` says how the order stays random.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Sampler

IGNORE_INDEX = -100  # torch's cross_entropy default ignore_index, also what transformers uses
KINDS = ("classification", "causal_lm")


def format_prompt(question: str, tokenizer) -> str:
    """The text the model is given before its answer: chat template if the tokenizer has one."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": question}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"Question: {question}\nAnswer:"


def encode_prompt(question: str, tokenizer) -> list[int]:
    """Token ids of :func:`format_prompt`. A chat template already spells out its special tokens, so
    only the plain format gets the tokenizer's own (e.g. a BOS)."""
    templated = bool(getattr(tokenizer, "chat_template", None))
    text = format_prompt(question, tokenizer)
    return tokenizer(text, add_special_tokens=not templated)["input_ids"]


def encode_causal_lm(question: str, solution: str, tokenizer, max_length: int) -> dict:
    """One training row: ``input_ids`` = prompt + solution + eos; ``labels`` = -100 on the prompt.

    Keeps the whole prompt and cuts the solution's end when the row is longer than ``max_length``. A prompt
    that alone would fill ``max_length`` keeps its last tokens, so at least one solution token is left to
    learn from (a row with no target would make the batch loss 0/0).
    """
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 for causal_lm, got {max_length}")
    prompt = encode_prompt(question, tokenizer)
    templated = bool(getattr(tokenizer, "chat_template", None))
    # The plain format ends in "Answer:", so the solution starts after a space.
    completion = tokenizer((solution if templated else " " + solution), add_special_tokens=False)["input_ids"]
    completion = completion + [tokenizer.eos_token_id]
    prompt = prompt[-(max_length - 1):]
    completion = completion[: max_length - len(prompt)]
    return {
        "input_ids": prompt + completion,
        "labels": [IGNORE_INDEX] * len(prompt) + completion,
    }


def _pad(rows: list[list[int]], value: int, left: bool = False) -> torch.Tensor:
    width = max(len(r) for r in rows)
    padded = [([value] * (width - len(r)) + r) if left else (r + [value] * (width - len(r))) for r in rows]
    return torch.tensor(padded, dtype=torch.long)


class ClassificationCollator:
    """Rows with ``text``/``label`` -> ``input_ids``, ``attention_mask`` (+ ``token_type_ids``), ``labels``."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, rows: list[dict]) -> dict:
        texts = [r["text"] for r in rows]
        batch = self.tokenizer(
            texts, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt"
        )
        batch = dict(batch)
        batch["labels"] = torch.tensor([int(r["label"]) for r in rows], dtype=torch.long)
        return batch


class CausalLMCollator:
    """Rows with ``question``/``solution`` -> right-padded ``input_ids``, ``attention_mask``, ``labels``.

    Padding is masked by position, not by token id: Llama tokenizers pad with the eos token, and the eos
    that ends each solution must stay a target.
    """

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, rows: list[dict]) -> dict:
        enc = [encode_causal_lm(r["question"], r["solution"], self.tokenizer, self.max_length) for r in rows]
        ids = [e["input_ids"] for e in enc]
        return {
            "input_ids": _pad(ids, self.tokenizer.pad_token_id),
            "attention_mask": _pad([[1] * len(i) for i in ids], 0),
            "labels": _pad([e["labels"] for e in enc], IGNORE_INDEX),
        }


def collate_prompts(questions: list[str], tokenizer) -> dict:
    """Left-padded prompts for batched generation: every row's answer then starts at the same column."""
    ids = [encode_prompt(q, tokenizer) for q in questions]
    return {
        "input_ids": _pad(ids, tokenizer.pad_token_id, left=True),
        "attention_mask": _pad([[1] * len(i) for i in ids], 0, left=True),
    }


def make_collator(tokenizer, kind: str, max_length: int):
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    cls = ClassificationCollator if kind == "classification" else CausalLMCollator
    return cls(tokenizer, max_length)


def row_length(row: dict) -> int:
    """A row's length in characters (a cheap stand-in for tokens, used only to group rows of similar length)."""
    if "text" in row:
        return len(row["text"])
    return len(row["question"]) + len(row["solution"])


class LengthGroupedBatches(Sampler):
    """Batches of rows of similar length, in a random order drawn from ``generator``.

    Each epoch: shuffle all rows, cut the permutation into groups of ``batch_size * group_batches`` rows,
    sort each group by length and cut it into batches, then shuffle the order of all batches. Every row is
    used once per epoch (the last batch may be short, as with a plain DataLoader), which rows meet in a
    batch is random up to their length, and the order of long and short batches is random.
    """

    def __init__(self, lengths: list[int], batch_size: int, generator: torch.Generator, group_batches: int = 32):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(group_batches, int) or group_batches < 1:
            raise ValueError(f"group_batches must be a positive int, got {group_batches!r}")
        self.lengths, self.batch_size, self.generator = list(lengths), batch_size, generator
        self.group = batch_size * group_batches

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        batches = []
        for start in range(0, len(order), self.group):
            group = sorted(order[start:start + self.group], key=self.lengths.__getitem__)
            batches += [group[i:i + self.batch_size] for i in range(0, len(group), self.batch_size)]
        for b in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[b]


def make_loader(
    dataset,
    tokenizer,
    kind: str,
    batch_size: int,
    max_length: int,
    shuffle: bool = False,
    seed: int = 0,
    group_by_length: bool = False,
) -> DataLoader:
    """A DataLoader over a ``datasets.Dataset`` (or any list of dict rows).

    Shuffling draws from the loader's own ``torch.Generator`` seeded with ``seed``, so the batch order
    depends only on ``seed`` and is untouched by other RNG use (dropout, init). Each new epoch reshuffles
    from that generator, so epochs differ but runs repeat exactly. ``group_by_length`` (with ``shuffle``)
    batches rows of similar length together (:class:`LengthGroupedBatches`). Single process: tokenizing is
    cheap next to a forward pass on 2 cores.
    """
    generator = torch.Generator().manual_seed(seed)
    collate = make_collator(tokenizer, kind, max_length)
    if group_by_length:
        if not shuffle:
            raise ValueError("group_by_length needs shuffle=True (it is a way of shuffling training batches)")
        lengths = [row_length(row) for row in dataset]
        return DataLoader(dataset, batch_sampler=LengthGroupedBatches(lengths, batch_size, generator),
                          collate_fn=collate)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator if shuffle else None,
        collate_fn=collate,
    )
