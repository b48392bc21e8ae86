"""Process groups under torchrun (NCCL on CUDA, gloo on CPU) and the collectives the engine uses.

``python tools/train.py`` without torchrun is a single process with no process group.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional

import torch
import torch.distributed as dist

from softpool3d.engine.processes.attempts import agent_store, agree_on_attempt, uses_agent_store
from softpool3d.engine.processes.slurm_env import adopt_slurm_task_environment

_agreed_attempt: Optional[int] = None


@dataclass(frozen=True)
class DistInfo:
    """This process's place: ``rank`` of ``world_size``, and the device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto", timeout_s: float = 600.0) -> DistInfo:
    """Join torchrun's process group if ``WORLD_SIZE`` > 1; pick CUDA (:func:`cuda_device_index`) or the CPU.
    Under ``srun`` without torchrun the variables come from SLURM's (:mod:`~softpool3d.engine.processes.slurm_env`).

    ``device`` is ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``. A collective that
    waits longer than ``timeout_s`` for a peer (a rank that hangs) fails instead of blocking forever;
    a rank that dies ends the job sooner, as torchrun's agent stops the others.
    """
    adopt_slurm_task_environment()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is available")
    if use_cuda:
        index = cuda_device_index(local_rank)
        torch.cuda.set_device(index)
        target = torch.device("cuda", index)
    else:
        target = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        timeout = timedelta(seconds=timeout_s)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", store=_attempt_store(rank, world_size, timeout),
                                rank=rank, world_size=world_size, timeout=timeout)
    return DistInfo(rank, world_size, local_rank, target)


def cuda_device_index(local_rank: int) -> int:
    """The visible CUDA device of the process with ``LOCAL_RANK`` ``local_rank``: ``local_rank``
    modulo the visible count. A node whose processes each see all its GPUs gets GPU ``local_rank``;
    one whose launcher gives each process a single GPU (SLURM's ``--gpus-per-task=1``, or
    ``CUDA_VISIBLE_DEVICES`` per rank) gets index 0 for every ``LOCAL_RANK``."""
    return local_rank % max(1, torch.cuda.device_count())


def _attempt_store(rank: int, world_size: int, timeout: timedelta) -> Optional[dist.Store]:
    """Under torchrun, the agents' TCP store under a prefix of this attempt; None otherwise
    (``init_process_group`` then reads ``MASTER_ADDR``/``MASTER_PORT`` itself).

    The agents serve one store to every attempt (``TORCHELASTIC_USE_AGENT_STORE``), so the
    addresses that a killed attempt's ranks published are still there: without a fresh prefix
    the new ranks read them and fail to connect to peers that no longer exist. The attempt is
    the one all ranks agree on (:func:`~softpool3d.engine.processes.attempts.agree_on_attempt`).
    """
    global _agreed_attempt
    if not uses_agent_store():
        return None
    store = agent_store(world_size, timeout)
    _agreed_attempt = agree_on_attempt(store, rank, world_size, timeout)
    return dist.PrefixStore(f"softpool3d/attempt_{_agreed_attempt}/", store)


def restart_count() -> int:
    """How many times torchrun's agents have restarted this job's workers (``--max-restarts``), the
    same on every rank once the process group is up; 0 outside torchrun."""
    if _agreed_attempt is not None:
        return _agreed_attempt
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def cleanup() -> None:
    """Leave the process group, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (a no-op in one process) and return it."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` in one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
