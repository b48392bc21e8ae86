"""Step callbacks: functions the training loop calls after every optimizer step.

Tests install them with ``train(cfg, step_callbacks=[...])``; the ``debug`` config section
installs the ones that subprocess and torchrun tests need (:func:`debug_callbacks`): per-rank
parameter checksums and fault injection (SIGKILL, a preemption signal or a stall at a step). The
loop itself knows nothing of them.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig
from torch import nn

from softpool3d.engine.processes.distributed import barrier, restart_count


@dataclass
class StepContext:
    """What a step callback sees: the step just done (1-based), its epoch (0-based), this process's
    rank, the model (without its DDP wrapper) and the run directory."""

    step: int
    epoch: int
    rank: int
    model: nn.Module
    run_dir: Path


StepCallback = Callable[[StepContext], None]


def parameter_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter's bytes, in order (equal digests = equal weights).

    Buffers are left out: under DDP each rank's BatchNorm statistics follow its own batches
    until the next forward pass broadcasts rank 0's.
    """
    digest = hashlib.sha256()
    for tensor in model.parameters():
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def write_step_checksum(context: StepContext) -> None:
    """Append ``{"step", "digest"}`` (:func:`parameter_digest`) to ``<run_dir>/debug/rank<R>.jsonl``."""
    path = context.run_dir / "debug" / f"rank{context.rank}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as file:
        file.write(json.dumps({"step": context.step, "digest": parameter_digest(context.model)}) + "\n")


@dataclass
class KillAtStep:
    """After optimizer step ``step``, SIGKILL rank ``rank`` (-1: every rank), on a job's first attempt
    only (not after a torchrun restart). Every rank must install it: it waits at a barrier first."""

    step: int
    rank: int = -1

    def __call__(self, context: StepContext) -> None:
        if context.step == self.step and restart_count() == 0:
            barrier()
            if self.rank in (-1, context.rank):
                os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class SignalAtStep:
    """After optimizer step ``step``, rank ``rank`` (-1: every rank) sends ``SIG<name>`` to itself, or
    to its whole process group with ``group``; on a job's first attempt only."""

    step: int
    rank: int = -1
    name: str = "TERM"
    group: bool = False

    def __call__(self, context: StepContext) -> None:
        if context.step == self.step and restart_count() == 0 and self.rank in (-1, context.rank):
            number = signal.Signals[f"SIG{self.name}"]
            if self.group:
                os.killpg(os.getpgid(0), number)
            else:
                os.kill(os.getpid(), number)


@dataclass
class StallAtStep:
    """After optimizer step ``step``, rank ``rank`` sleeps ``seconds`` before fetching its next batch."""

    step: int
    rank: int
    seconds: float

    def __call__(self, context: StepContext) -> None:
        if context.step == self.step and context.rank == self.rank:
            time.sleep(self.seconds)


def debug_callbacks(debug: DictConfig) -> list[StepCallback]:
    """The callbacks the ``debug`` config section asks for: ``step_checksums``, ``kill_at_step``
    (with ``kill_rank``), ``signal_at_step`` and ``stall_at_step`` (with their options)."""
    callbacks: list[StepCallback] = []
    if debug.step_checksums:
        callbacks.append(write_step_checksum)
    if debug.kill_at_step >= 0:
        callbacks.append(KillAtStep(debug.kill_at_step, debug.kill_rank))
    if debug.signal_at_step >= 0:
        callbacks.append(SignalAtStep(debug.signal_at_step, debug.signal_rank, debug.signal, debug.signal_group))
    if debug.stall_at_step >= 0:
        callbacks.append(StallAtStep(debug.stall_at_step, debug.stall_rank, debug.stall_s))
    return callbacks
