"""One method, one file: the registry finds a new method without an edit to any existing file, everywhere.

A throwaway method lives in a temporary package that declares an entry point of group ``lowrank_lab.methods``
(a ``.dist-info`` folder on ``PYTHONPATH``, exactly what ``pip install`` of a plugin leaves behind): ``train``,
``compare`` (whose runs are child processes), save/load and export all see it. And no method name is switched on
in the logic of cli, compare, io, presets or plotting.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import lowrank_lab
from lowrank_lab import registry

PLUGIN = textwrap.dedent('''
    """A throwaway method for tests: LoRA with alpha = r (scale 1), its own config name and PEFT export."""
    from dataclasses import dataclass
    from typing import ClassVar

    from lowrank_lab.layers.lora import LoRAConfig, lora_config, lora_to_peft
    from lowrank_lab.registry import register_method


    @dataclass
    class TinyConfig(LoRAConfig):
        method: ClassVar[str] = "tinylora"


    def prepare_tiny(model, model_name, task, options):
        from dataclasses import fields, replace

        from lowrank_lab.adapters import inject

        base = lora_config(model_name, task, options)
        config = TinyConfig(**{f.name: getattr(base, f.name) for f in fields(base)})
        return inject(model, replace(config, alpha=float(options.r)))


    register_method("tinylora", prepare_tiny, config_class=TinyConfig, peft_exporter=lora_to_peft, order=50,
                    claims=({"paper": "test", "claim": "tiny beats LoRA", "paper_evidence": "none",
                             "baseline": "lora", "kind": "better", "sesoi": 0.01},))
''')


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The package ``tinyplugin`` with an entry point, importable here and in child processes."""
    root = tmp_path / "site"
    (root / "tinyplugin").mkdir(parents=True)
    (root / "tinyplugin" / "__init__.py").write_text(PLUGIN)
    info = root / "tinyplugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tinyplugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[lowrank_lab.methods]\ntinylora = tinyplugin\n")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    registry.discover(force=True)
    yield root
    for table in (registry.REGISTRY, registry.METHODS, registry.CONFIG_CLASSES, registry.PEFT_EXPORTERS):
        table.pop("tinylora", None)
    sys.modules.pop("tinyplugin", None)


def test_a_plugin_is_found_and_gets_the_whole_protocol(plugin, tmp_path):
    from lowrank_lab.compare import compare, reproduction_claims

    assert "tinylora" in registry.names(compare_only=True)
    assert any(c["method"] == "tinylora" for c in reproduction_claims())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out = tmp_path / "train"
    done = subprocess.run([sys.executable, "-m", "lowrank_lab", "train", "--method", "tinylora", "--task", "sentiment",
                           "--scale", "smoke", "--out", str(out), "--quiet"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((out / "metrics.json").read_text())["scaling"] == 1.0  # alpha = r
    # compare trains each run in a child process: the entry point is found there too
    results = compare("sentiment", scale="smoke", seeds=2, out=tmp_path / "cmp", methods=("lora", "tinylora"),
                      show_progress=False)
    assert [r["status"] for r in results["runs"]] == ["ok"] * 4
    assert any(r["method"] == "tinylora" and r["baseline"] == "lora" for r in results["reproduction"])
    assert results["matching"]["tinylora"]["rule"] == "same_r"


def test_a_plugins_adapter_saves_loads_and_exports(plugin, tmp_path):
    from lowrank_lab import recipes
    from lowrank_lab.assets import load_model, load_task

    task = load_task("sentiment", max_train=4, max_eval=4)
    model = recipes.prepare("tinylora", load_model("minilm", kind="classification", num_labels=2), "minilm", task)
    layer = next(iter(lowrank_lab.adapter_layers(model).values()))
    layer.lora_B.data.normal_()  # a non-zero update, or everything "matches"
    lowrank_lab.save_adapter(model, tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "adapter_config.json").read_text())["method"] == "tinylora"
    fresh = load_model("minilm", kind="classification", num_labels=2)
    lowrank_lab.load_adapter(fresh, tmp_path / "ours")
    assert next(iter(lowrank_lab.adapter_layers(fresh).values())).lora_B.equal(layer.lora_B)
    lowrank_lab.export_peft(model, tmp_path / "peft")
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["peft_type"] == "LORA"


def test_a_plugin_that_fails_to_import_is_named(monkeypatch):
    monkeypatch.setenv(registry.PLUGINS_ENV, "no_such_plugin_module")
    with pytest.raises(ImportError, match="no_such_plugin_module"):
        registry.discover(force=True)
    monkeypatch.delenv(registry.PLUGINS_ENV)
    registry.discover(force=True)


def test_bad_registrations_are_refused_before_any_table_changes():
    before = dict(registry.REGISTRY)
    for kwargs, match in [(dict(budget="nope"), "budget must be one of"), (dict(style="nope"), "style must be one of"),
                          (dict(lr={"classification": 1e-3}), "missing"),
                          (dict(claims=({"claim": "x"},)), "lacks"),
                          (dict(claims=({"paper": "p", "claim": "c", "paper_evidence": "e", "baseline": "lora",
                                         "kind": "nope"},)), "claim kind")]:
        with pytest.raises(ValueError, match=match):
            registry.register_method("broken", lambda *a: None, **kwargs)
    with pytest.raises(ValueError, match="already registered"):
        registry.register_method("lora", lambda *a: None)
    assert registry.REGISTRY == before


def test_optimizer_and_schedule_methods_refuse_layer_kinds_they_do_not_know():
    """LoRA-Pro and XGBLoRA test exact layer kinds: a LoRA subclass (DoRA: a magnitude too) is refused by name,
    never stepped as plain LoRA."""
    from lowrank_lab.assets import load_model, load_task
    from lowrank_lab.methods.lora_pro import LoRAProAdamW
    from lowrank_lab.methods.xgblora import XGBLoRA
    from lowrank_lab import recipes

    task = load_task("sentiment", max_train=4, max_eval=4)
    model = recipes.prepare("dora", load_model("minilm", kind="classification", num_labels=2), "minilm", task)
    with pytest.raises(ValueError, match="DoRALinear"):
        LoRAProAdamW(model, lr=1e-3)
    with pytest.raises(ValueError, match="DoRALinear"):
        XGBLoRA(model, total_steps=4, steps_per_round=2)


LOGIC_MODULES = ("cli.py", "io.py", "presets.py", "plotting.py", "compare/budget.py", "compare/runs.py",
                 "compare/tuning.py", "compare/verdicts.py", "compare/report.py", "compare/study.py",
                 "compare/__init__.py", "experiment.py", "train.py")


def _method_literals_in_logic(path: Path, names: set[str]) -> list[str]:
    """Method-name string literals used as switches: compared with something named like a method, passed as an
    argument, or used as a subscript, outside module-level UPPER_CASE tables (data)."""
    tree = ast.parse(path.read_text())
    data_lines = set()
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if all(isinstance(t, ast.Name) and t.id.isupper() for t in targets):
                data_lines.update(range(node.lineno, node.end_lineno + 1))
    found = []
    for node in ast.walk(tree):
        literals = []
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any("method" in ast.unparse(o) for o in operands):
                literals = [o for o in operands if isinstance(o, ast.Constant)]
        elif isinstance(node, ast.Call):
            literals = [a for a in [*node.args, *(k.value for k in node.keywords)] if isinstance(a, ast.Constant)]
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            literals = [node.slice]
        for literal in literals:
            if isinstance(literal.value, str) and literal.value in names and literal.lineno not in data_lines:
                found.append(f"{path.name}:{literal.lineno}: {literal.value!r}")
    return found


def test_no_method_name_is_switched_on_in_the_logic():
    root = Path(lowrank_lab.__file__).parent
    names = set(registry.names()) - {"full"} | {"xgblora", "lora", "bone", "bat", "dora"}  # "full" is also a scale
    problems = [p for module in LOGIC_MODULES for p in _method_literals_in_logic(root / module, names)]
    assert not problems, "method names switched on outside the registry:\n" + "\n".join(problems)
