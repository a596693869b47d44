"""Training-procedure methods: optimizer-style (LoRA-Pro), schedule-style (XGBLoRA), analysis-style (GeLoRA).

Importing this package registers their CLI recipes (``python -m lowrank_lab train --method ...``).
"""

from ..recipes import prepare_lora, register_method
from ..presets import LEARNING_RATES
from .lora_pro import LoRAProAdamW
from .xgblora import XGBLORA_LEARNING_RATES, make_xgblora_optimizer, prepare_xgblora
from .gelora import prepare_gelora


def _lora_pro_optimizer(mode: str):
    def make(model, config):
        return LoRAProAdamW(model, lr=config.lr, mode=mode, weight_decay=config.weight_decay)

    return make


# Both modes take LoRA's learning rate, as in the paper (LoRA, LoRA-Pro and full FT all at 2e-5 on Llama-2).
# Full mode moves W by Adam's direction projected onto LoRA's tangent space, a fraction of a full-FT Adam step,
# so full FT's own rate under-trains it. Probe (cpu preset, MiniLM sentiment, seed 0, 128 steps, val acc on
# 1,000): lora-pro at 5e-5 (full FT's rate) 0.638, 2e-4 0.779, 1e-3 0.801; LoRA at 1e-3: 0.789.
register_method("lora-pro", prepare_lora, make_optimizer=_lora_pro_optimizer("full"), lr=LEARNING_RATES["lora"])
register_method("lora-pro-efficient", prepare_lora, make_optimizer=_lora_pro_optimizer("efficient"), lr=LEARNING_RATES["lora"])
register_method("gelora", prepare_gelora)  # plain LoRA training with per-layer ranks: LoRA's learning rates
register_method("xgblora", prepare_xgblora, make_optimizer=make_xgblora_optimizer, lr=XGBLORA_LEARNING_RATES)
