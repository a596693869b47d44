"""Training-procedure methods: optimizer-style (LoRA-Pro), schedule-style (XGBLoRA), analysis-style (GeLoRA)."""
