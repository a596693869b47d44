"""Data-parallel training under ``torchrun`` (PyTorch DistributedDataParallel), as used by ``train``.

Launch any script that calls :func:`lowrank_lab.train.train` with ``torchrun --nproc_per_node=N script.py``
(or ``accelerate launch``): when the process group is up, ``train`` wraps the model in DDP, gives each rank
its slice of every global batch (``TrainConfig.batch_size`` stays the *global* batch, so a run means the
same thing on 1 or N processes), and only rank 0 shows progress and writes files.

The CLI starts the group itself (:func:`init_from_env`), so this works with no script at all::

    torchrun --nproc_per_node=2 -m lowrank_lab train --method lora --task sentiment --scale smoke   # CPU: gloo
    accelerate launch --multi_gpu --num_processes=4 -m lowrank_lab train --method lora --task gsm --scale full

Both launchers set the same environment variables (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``); a plain ``python -m lowrank_lab`` has ``WORLD_SIZE`` unset and stays a
single process. On a machine without GPUs use ``torchrun``: ``accelerate launch --num_processes=2`` there
started a single process (accelerate 1.15, no ``accelerate config``).

Why methods need no changes: DDP all-reduces (averages) the gradients during ``backward``, so by the time
``optimizer.step()`` runs every rank holds the same averaged gradient. LoRA-Pro's adjustment therefore acts
on the all-reduced gradient, and any method whose choices are seeded (XGBLoRA's block picks) makes the same
choice on every rank.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_from_env(device: torch.device | str | None = None) -> bool:
    """Start the process group from a launcher's environment; True if this call started it.

    Does nothing (False) unless ``WORLD_SIZE`` > 1 and no group is up yet. The backend follows the device
    the run trains on: NCCL for CUDA (each process then uses the GPU of its ``LOCAL_RANK``), gloo for CPU.
    ``device=None`` means CUDA if available. Pair a True with :func:`teardown`.
    """
    size = os.environ.get("WORLD_SIZE", "1")
    if not size.isdigit() or int(size) < 1:
        raise ValueError(f"WORLD_SIZE must be a positive int, got {size!r}")
    if int(size) == 1 or not dist.is_available() or dist.is_initialized():
        return False
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return True


def teardown() -> None:
    """Leave the process group. No barrier: ``train`` ends with no collective pending, and after an error
    on one rank a barrier would hang the others instead of letting the launcher stop them."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that prints results and writes files."""
    return world()[1] == 0


def world() -> tuple[int, int]:
    """(world size, rank): (1, 0) when no process group is running."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def local_device(device: torch.device) -> torch.device:
    """Under torchrun each process drives the GPU of its ``LOCAL_RANK``; CPU stays CPU."""
    if device.type == "cuda" and world()[0] > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def check_batch_size(batch_size: int) -> None:
    size, _ = world()
    if batch_size % size:
        raise ValueError(f"batch_size must be divisible by the world size {size} (each rank takes an equal slice "
                         f"of the global batch), got {batch_size}")


def shard(batch: dict, rank: int, size: int) -> dict:
    """This rank's contiguous slice of a global batch (every tensor split along dim 0)."""
    if size == 1:
        return batch
    per_rank = next(iter(batch.values())).shape[0] // size
    return {k: v[rank * per_rank:(rank + 1) * per_rank] for k, v in batch.items()}


def mean_over_ranks(value: float, device: torch.device) -> float:
    """The average of a Python float over ranks (the loss every rank logs)."""
    size, _ = world()
    if size == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.item() / size


def wrap(model: torch.nn.Module, device: torch.device, find_unused_parameters: bool = False) -> torch.nn.Module:
    """DDP around ``model`` when a process group is up; the model itself otherwise.

    ``find_unused_parameters`` is needed when some trainable parameters sit out of the forward (XGBLoRA's
    idle boosters, for a whole round): DDP then marks them ready instead of waiting forever. It costs a graph
    traversal per step, so ``train`` turns it on only for optimizers that declare
    ``ddp_find_unused_parameters = True``.
    """
    if world()[0] == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters)
