"""Training-procedure methods: optimizer-style (LoRA-Pro), schedule-style (XGBLoRA), analysis-style (GeLoRA),
and the full fine-tuning baseline.

Each module registers its methods with :mod:`lowrank_lab.registry` when imported; ``registry.discover`` imports
every module of this package (a new file here is found without editing this one).
"""
