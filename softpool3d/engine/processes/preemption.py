"""Stopping a job cleanly when the cluster asks: SIGTERM (``scancel``, ``scontrol requeue``, a
preempting scheduler, torchrun's agent), SIGINT (Ctrl-C) and SIGUSR1 (SLURM's ``--signal=USR1@90``
ahead of the time limit).

A signal only raises a flag (:class:`PreemptionWatch`); the training loop reads it at points where
every rank agrees (the step's one all-reduce, :func:`~softpool3d.engine.training.step_stats.reduce_step`,
and a small all-reduce after each epoch's checkpoint), so all ranks stop after the same step. The
step in flight, a checkpoint being written, a validation or the test all run to their end; then the
ranks write ``last.pt`` together and leave with :class:`Preempted`, which the command turns into
exit status :data:`PREEMPTED_EXIT_CODE`. ``resume=auto`` (or torchrun's / SLURM's restart, which
resume by themselves) continues bit-identically from that checkpoint.

A second SIGINT stops at once (``KeyboardInterrupt``), for a user who does not want to wait.
"""
from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any, Optional

import torch

from softpool3d.engine.processes.distributed import all_reduce_sum

logger = logging.getLogger(__name__)

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

PREEMPTED_EXIT_CODE = 75
"""Exit status of a job that stopped on a signal after writing its checkpoint: ``EX_TEMPFAIL`` of
``sysexits.h`` ("try again later"). A wrapper or an sbatch script requeues on it
(``tools/slurm/``); any other non-zero status is a failure not to retry blindly."""


class Preempted(Exception):
    """The job stopped after step ``step`` on ``signal_name``, with its state in ``checkpoint``."""

    def __init__(self, step: int, signal_name: str, checkpoint: Any) -> None:
        super().__init__(f"stopped on {signal_name} after step {step}; {checkpoint} holds the state: the same "
                         f"command with resume=auto continues from there (exit status {PREEMPTED_EXIT_CODE})")
        self.step, self.signal_name, self.checkpoint = step, signal_name, checkpoint


class PreemptionWatch:
    """Records the first of :data:`PREEMPTION_SIGNALS` this process receives, while installed.

    Use as a context manager around the job; outside the main thread (where Python cannot install
    handlers) it records nothing.
    """

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "PreemptionWatch":
        if threading.current_thread() is threading.main_thread():
            for number in PREEMPTION_SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _handle(self, number: int, frame: Optional[FrameType]) -> None:
        if self.received is not None and number == signal.SIGINT:
            raise KeyboardInterrupt
        if self.received is None:
            self.received = number

    @property
    def requested(self) -> bool:
        return self.received is not None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else "a peer's signal"

    def agreed(self, device: torch.device) -> bool:
        """Whether any rank received a signal (a collective: every rank calls it at the same point)."""
        return all_reduce_sum(torch.tensor([float(self.requested)], dtype=torch.float64, device=device)).item() > 0
