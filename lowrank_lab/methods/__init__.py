"""Training-procedure methods: optimizer-style (LoRA-Pro), schedule-style (XGBLoRA), analysis-style (GeLoRA).

Importing this package registers their CLI recipes (``python -m lowrank_lab train --method ...``).
"""

from ..recipes import prepare_lora, register_method
from ..presets import LEARNING_RATES
from .lora_pro import LoRAProAdamW


def _lora_pro_optimizer(mode: str):
    def make(model, config):
        return LoRAProAdamW(model, lr=config.lr, mode=mode, weight_decay=config.weight_decay)

    return make


# Full mode moves W by Adam's full-FT direction projected onto LoRA's tangent space, so it takes full
# fine-tuning's learning rate; efficient mode runs Adam on A and B, so it takes LoRA's.
register_method("lora-pro", prepare_lora, make_optimizer=_lora_pro_optimizer("full"), lr=LEARNING_RATES["full"])
register_method("lora-pro-efficient", prepare_lora, make_optimizer=_lora_pro_optimizer("efficient"), lr=LEARNING_RATES["lora"])
