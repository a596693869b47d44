"""Full fine-tuning: every parameter of the model trains (the reference every low-rank method is measured against)."""

from __future__ import annotations


def prepare_full(model, model_name, task, options):
    """Full fine-tuning: every parameter trains; rank, alpha and target modules do not apply."""
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def _register() -> None:
    from lowrank_lab.registry import register_method

    # options_apply=False: its runs are the same whatever rank a comparison's budget names (and `train` refuses
    # --r/--alpha/--target-modules for it instead of ignoring them).
    register_method("full", prepare_full, style="baseline", budget="reference", options_apply=False, order=0,
                    color="C0")


_register()
