"""A stalled rank names itself: every rank records the phase it is in, publishes it in the job's
key-value store (the c10d store torchrun or SLURM's rendezvous provides), and reads the others'.

Without this, one rank stuck in video loading ends a job with a bare collective timeout after
``train.dist_timeout_s``, naming nothing: every other rank waits in its all-reduce and only the
timeout speaks. Here, a watcher thread in each rank beats once a second with
``(beat, phase change count, step, phase)``; a rank whose phase has not changed for
``train.stall_warn_s`` is logged by every rank, with what it is doing, since when, and who waits
for it::

    rank 1 has not advanced for 6 s: waiting for data at step 3 (waiting for it: rank 0 in forward
    and backward at step 3)

"waiting for data" starts once a step's all-reduce is done: the optimizer update, logging and
step callbacks of the step before, then the wait for the next batch.
Every rank goes through the same phases in the same order, so the count of phase changes measures
how far a rank got: of the ranks that stopped advancing, those with the lowest count are the cause,
the others wait for them in a collective (DDP's gradient all-reduce inside the backward pass, the
step's all-reduce, a checkpoint's gather, a validation's sums).
A rank whose heartbeat itself stopped (a frozen or dead process) is named as such. The last such
report is attached to the error that ends the job (:meth:`StallWatch.annotate`).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Optional

import torch.distributed as dist

logger = logging.getLogger(__name__)

WAITING_FOR_DATA = "waiting for data"
FORWARD_BACKWARD = "forward and backward"
ALL_REDUCE = "all-reduce"
CHECKPOINT = "checkpoint"
VALIDATION = "validation"
TEST = "test"
STARTING = "starting"

@dataclass
class _Seen:
    value: tuple[int, int, int, str]  # (beat, phase count, step, phase)
    phase_since: float  # monotonic time at which this rank's phase count was first seen
    beat_since: float  # ... and its beat
    reported: float = 0.0  # when its stall was last logged


class StallWatch:
    """This rank's phase, and a thread that publishes it and reports the ranks that stopped advancing.

    ``store``: the job's c10d store (None: only the phase is recorded, nothing is watched). Use
    :meth:`for_job` to get one wired to the default process group.
    """

    def __init__(self, rank: int, world_size: int, warn_after_s: float, store: Optional[dist.Store] = None,
                 interval_s: float = 1.0) -> None:
        self.rank, self.world_size, self.warn_after_s = rank, world_size, warn_after_s
        self.store, self.interval_s = store, min(interval_s, max(warn_after_s / 4, 0.05))
        self.phase, self.step, self.changes = STARTING, 0, 0
        self.report: Optional[str] = None
        self._seen: dict[int, _Seen] = {}
        self._beat = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @classmethod
    def for_job(cls, rank: int, world_size: int, warn_after_s: float) -> "StallWatch":
        """A watch on the default process group's store, under a prefix of this attempt (torchrun
        restarts reuse the store); a recorder only in one process or with ``warn_after_s`` 0."""
        store = None
        if warn_after_s > 0 and world_size > 1 and dist.is_available() and dist.is_initialized():
            from softpool3d.engine.processes.distributed import restart_count

            store = dist.PrefixStore(f"softpool3d/heartbeat/{restart_count()}/",
                                     dist.distributed_c10d._get_default_store())
        return cls(rank, world_size, warn_after_s, store)

    def enter(self, phase: str, step: Optional[int] = None) -> None:
        """This rank is now in ``phase`` of step ``step`` (1-based: the step in flight, or the last
        one done for a checkpoint or a validation; None keeps the step). Cheap: no I/O."""
        self.phase, self.changes = phase, self.changes + 1
        if step is not None:
            self.step = step

    def __enter__(self) -> "StallWatch":
        if self.store is not None:
            self._thread = threading.Thread(target=self._run, name="softpool3d-stall-watch", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def annotate(self, error: BaseException) -> None:
        """Attach the last stall report, if any, to ``error`` (shown under its traceback)."""
        if self.report is not None:
            error.add_note(f"softpool3d: before this error, {self.report}")

    def _run(self) -> None:
        keys = [str(rank) for rank in range(self.world_size)]
        while not self._stop.wait(self.interval_s):
            try:
                self._beat += 1
                self.store.set(keys[self.rank], f"{self._beat}|{self.changes}|{self.step}|{self.phase}")
                present = [key for key in keys if self.store.check([key])]
                values = dict(zip(present, self.store.multi_get(present))) if present else {}
            except Exception as error:  # the store went away: the job is ending
                logger.debug("stall watch stopped: %s", error)
                return
            self.observe({int(key): _parse(value) for key, value in values.items()}, time.monotonic())

    def observe(self, heartbeats: dict[int, tuple[int, int, int, str]], now: float) -> list[str]:
        """Update what each rank was last seen doing from ``heartbeats`` (rank -> (beat, phase count,
        step, phase)) seen at monotonic time ``now``; log and return the stall reports due."""
        for rank, value in heartbeats.items():
            seen = self._seen.get(rank)
            if seen is None:
                self._seen[rank] = _Seen(value, now, now)
                continue
            if value[1] != seen.value[1]:
                seen.phase_since, seen.reported = now, 0.0
            if value[0] != seen.value[0]:
                seen.beat_since = now
            seen.value = value
        stalled = [rank for rank, seen in sorted(self._seen.items()) if now - seen.phase_since >= self.warn_after_s]
        if not stalled:
            return []
        behind = min(self._position(rank) for rank in stalled)
        causes = [rank for rank in stalled if self._position(rank) == behind]
        waiting = [rank for rank in stalled if rank not in causes]
        reports = []
        for rank in causes:
            seen = self._seen[rank]
            if seen.reported and now - seen.reported < self.warn_after_s:
                continue
            seen.reported = now
            reports.append(self._describe(rank, seen, now, waiting))
        for report in reports:
            logger.warning("%s", report)
            self.report = report
        return reports

    def _position(self, rank: int) -> int:
        return self._seen[rank].value[1]

    def _describe(self, rank: int, seen: _Seen, now: float, waiting: list[int]) -> str:
        _, _, step, phase = seen.value
        text = f"rank {rank} has not advanced for {now - seen.phase_since:.0f} s: {phase} at step {step}"
        silent = now - seen.beat_since
        if silent >= max(3 * self.interval_s, 2.0):
            text += f", and its heartbeat stopped {silent:.0f} s ago (the process is frozen or gone)"
        if waiting:
            others = "; ".join(f"rank {r} in {self._seen[r].value[3]} at step {self._seen[r].value[2]}"
                               for r in waiting)
            text += f" (waiting for it: {others})"
        return text


def _parse(raw: bytes) -> tuple[int, int, int, str]:
    beat, changes, step, phase = raw.decode().split("|", 3)
    return int(beat), int(changes), int(step), phase
