"""Imported by the fork server of :func:`~softpool3d.datasets.worker_context` alone (its preload
list), never by a process that trains: the server ignores the job-control signals SIGTERM and
SIGUSR1, and its children start with the default handlers again.

SLURM (``scancel``, ``scontrol requeue``, ``--signal=USR1@90``) and a terminal signal a job's whole
process group. The process that trains stops after the step in flight and writes a checkpoint
(:mod:`softpool3d.engine.processes.preemption`), and its DataLoader workers must keep serving it meanwhile:
a worker's parent is the fork server, and a worker whose parent died ends at once, failing the
step. The server itself still ends with the process it serves (its liveness pipe closes). SIGINT
the server already ignores (``multiprocessing.forkserver``).
"""
import os
import signal

_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

for _number in _SIGNALS:
    signal.signal(_number, signal.SIG_IGN)


def _default_handlers_in_child() -> None:
    for number in _SIGNALS:
        signal.signal(number, signal.SIG_DFL)


os.register_at_fork(after_in_child=_default_handlers_in_child)
