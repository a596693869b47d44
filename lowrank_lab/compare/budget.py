"""How each method meets a comparison's budget: LoRA rank r's trainable parameters on the model's default targets.

Each method's registration (``lowrank_lab.registry``) names its rule, and :func:`plan` applies it before any run:

* ``same_r``: rank r itself (LoRA, rsLoRA, both LoRA-Pro modes: they change the update, not the shapes);
* ``search_r``: the rank whose trainable count is closest to the budget (Bone, Bat: ``r·out`` numbers per layer),
  found by injecting candidate ranks into a copy of the model on the meta device and counting;
* ``budget``: the method spreads the budget itself (GeLoRA, by intrinsic dimension);
* ``steps``: matched by optimizer steps, not parameters (XGBLoRA's rank-1 boosters on a few blocks at a time);
* ``reference``: every parameter trains (full fine-tuning).

Every plan records the trainable count it gives, and the rule's sentence says when a method trains more or fewer
numbers than the budget (DoRA's magnitudes, XGBLoRA's boosters), so no table labels a method "the budget itself"
when it is not.
"""

from __future__ import annotations

import copy

from lowrank_lab import presets, recipes, registry

# The comparison's definition: its budget is the trainable count of this method at rank r (LoRA's, as in the papers'
# tables). Data, not a switch: every method, this one included, is matched by its own registered rule.
BUDGET_METHOD = "lora"


def _trainable(method: str, model, model_name: str, task, r: int) -> tuple[int, int] | None:
    """(trainable parameters, largest side of an adapted layer) of ``method`` at rank ``r`` on a copy of
    ``model``; None if ``r`` is refused (e.g. Bat needs r to divide every side)."""
    from lowrank_lab.adapters import adapter_layers, count_parameters

    try:
        prepared = recipes.prepare(method, copy.deepcopy(model), model_name, task, recipes.MethodOptions(r=r))
    except ValueError:
        return None
    sides = [max(layer.in_features, layer.out_features) for layer in adapter_layers(prepared).values()]
    return count_parameters(prepared)[0], max(sides, default=0)


def _search_rank(method: str, model, model_name: str, task, r: int, budget: int) -> tuple[int, int]:
    best, largest_side = None, None
    for candidate in range(1, 8 * r + 1):
        if largest_side is not None and candidate > largest_side:
            break  # no layer accepts a rank beyond its own size
        result = _trainable(method, model, model_name, task, candidate)
        if result is None:
            continue  # this rank is refused (Bat: not a divisor); a larger one may be accepted
        count, largest_side = result
        if best is None or abs(count - budget) < abs(best[1] - budget):
            best = (candidate, count)
        if count > budget:
            break  # counts grow with the rank: nothing beyond can be closer
    if best is None or not budget / 2 <= best[1] <= 2 * budget:
        got = "no rank was accepted" if best is None else f"closest: r={best[0]} with {best[1]:,}"
        raise ValueError(f"method {method!r} cannot meet the budget of LoRA r={r} ({budget:,} trainable "
                         f"parameters) on {model_name!r}: {got}")
    return best


def plan(methods, task_name: str, model_name: str, r: int) -> dict[str, dict]:
    """For each method: the options it runs with and the trainable count they give, checked before any run.

    Raises ``ValueError`` when a method cannot meet the budget (no rank gets within a factor of 2 of it).
    """
    from lowrank_lab.assets import load_model, load_task

    task = load_task(task_name, max_train=8, max_eval=8)  # only shapes and the head size matter here
    kind = presets.task_kind(task_name)
    model = load_model(model_name, kind=kind, num_labels=task.num_labels if kind == "classification" else None)
    # Counting needs shapes, not values: on the meta device every trial copy below is free.
    model = model.to("meta")
    reference = _trainable(BUDGET_METHOD, model, model_name, task, r)
    if reference is None:
        raise ValueError(f"r={r} is not a valid {BUDGET_METHOD} rank for {model_name!r}, so it defines no budget")
    budget = reference[0]
    planned = {}
    for method in methods:
        spec = registry.get(method)
        rule = spec.budget
        chosen, count = (1 if rule == "steps" else r), None  # XGBLoRA: the paper's rank-1 boosters
        if rule == "search_r":
            chosen, count = _search_rank(method, model, model_name, task, r, budget)
        elif rule == "same_r":  # "budget" (GeLoRA) needs real activations to choose ranks: not on the meta device
            counted = _trainable(method, model, model_name, task, chosen)
            count = counted[0] if counted else None
        text = spec.rule_text
        if rule == "same_r" and count is not None and count != budget and not spec.budget_text:
            # the generic sentence would be wrong: say what the method trains beyond (or below) rank r
            text = f"rank r, {count - budget:+,} trainable parameters against the budget"
        planned[method] = {"r": chosen, "rule": rule, "rule_text": text, "budget": budget, "trainable": count}
        if spec.plan_info is not None:
            planned[method].update(spec.plan_info(model, model_name, task))
    return planned
