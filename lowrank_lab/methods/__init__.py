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


# Full mode moves W by Adam's full-FT direction projected onto LoRA's tangent space, so it takes full
# fine-tuning's learning rate; efficient mode runs Adam on A and B, so it takes LoRA's.
register_method("lora-pro", prepare_lora, make_optimizer=_lora_pro_optimizer("full"), lr=LEARNING_RATES["full"])
register_method("lora-pro-efficient", prepare_lora, make_optimizer=_lora_pro_optimizer("efficient"), lr=LEARNING_RATES["lora"])
register_method("gelora", prepare_gelora)  # plain LoRA training with per-layer ranks: LoRA's learning rates
register_method("xgblora", prepare_xgblora, make_optimizer=make_xgblora_optimizer, lr=XGBLORA_LEARNING_RATES)
