"""The set-up of the fork server of :func:`~softpool3d.datasets.worker_context`, the last module of its
preload list and never imported by a process that trains: the server freezes what its imports made
(torch and the datasets, preloaded so that every worker it forks starts with them) and handles the
job-control signals.

``gc.freeze`` moves every object tracked so far into the collector's permanent generation, as Python's
documentation advises before forking: the workers' collections never walk, so never copy, the
pages they inherit, and the server's own exit skips them (seconds of CPU: BENCHMARKS.md, "Start-up
and exit of a command").

The server ignores SIGTERM and SIGUSR1, and its children start with the default handlers again.
SLURM (``scancel``, ``scontrol requeue``, ``--signal=USR1@90``) and a terminal signal a job's whole
process group. The process that trains stops after the step in flight and writes a checkpoint
(:mod:`softpool3d.engine.processes.preemption`), and its DataLoader workers must keep serving it meanwhile:
a worker's parent is the fork server, and a worker whose parent died ends at once, failing the
step. The server itself still ends with the process it serves (its liveness pipe closes). SIGINT
the server already ignores (``multiprocessing.forkserver``).
"""
import gc
import os
import signal

gc.freeze()

_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

for _number in _SIGNALS:
    signal.signal(_number, signal.SIG_IGN)


def _default_handlers_in_child() -> None:
    for number in _SIGNALS:
        signal.signal(number, signal.SIG_DFL)


os.register_at_fork(after_in_child=_default_handlers_in_child)
