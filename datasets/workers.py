"""Worker processes for decoding: how they start, and a set-up that keeps them from copying the
memory they inherit and from outliving the main process."""
from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import threading
from multiprocessing import forkserver
from multiprocessing.context import BaseContext
from typing import Optional

# What the fork server imports once, so that each worker it forks starts with them loaded; the server's
# set-up (worker_server, which freezes what the others made) last.
_PRELOAD = ["__main__", "softpool3d.datasets", "softpool3d.datasets.worker_server"]

# Signals a cluster or a terminal sends to a job's whole process group; the process that trains
# acts on them (a checkpoint, then exit), its DataLoader workers keep serving it until then.
_JOB_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def worker_context() -> BaseContext:
    """The start method of every worker process (DataLoader workers, ``prepare_videos``' pool):
    a fork server, with ``spawn`` where the platform has none.

    A plain ``fork`` copies the parent's locks as they are. PyAV's scaler keeps a pool of slice
    threads, so a worker forked after the parent converted a frame (writing or reading a video
    with PyAV) can wait forever on a lock of a thread it does not have: with av 19 whatever the
    worker converts, with av 18 when it converts with the parent's scaler.
    The fork server is a fresh, single-threaded process started once per parent; it imports
    ``_PRELOAD`` once, and forks each worker from that clean state (BENCHMARKS.md, "Worker
    start methods", has the start-up time and memory this costs next to ``fork``).
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    return context


def start_worker_server() -> Optional[threading.Thread]:
    """Start :func:`worker_context`'s fork server now, in a background thread, so that it imports
    its preloaded modules (torch among them, through ``softpool3d.datasets``) while the caller goes
    on (building its model, its datasets) instead of when its first loader starts its workers.

    A loader that starts workers before the server is up waits for it (``ensure_running`` holds the
    server's lock), so calling this is never needed for correctness; where the platform has no fork
    server it does nothing and returns None, else it returns the thread that starts the server.
    The server is started by fork and exec, not a plain fork, so a caller that PyAV already made
    multi-threaded may call this too.
    """
    if worker_context().get_start_method() != "forkserver":
        return None
    thread = threading.Thread(target=forkserver.ensure_running, name="softpool3d-worker-server", daemon=True)
    thread.start()
    return thread


def freeze_inherited_objects(worker_id: int) -> None:
    """``worker_init_fn`` for DataLoaders: move every object inherited from the parent (the fork
    server, under :func:`worker_context`) into the garbage collector's permanent generation, and
    let go of the fork server's liveness pipe, and ignore SIGTERM, SIGINT and SIGUSR1.

    A forked worker shares the parent's memory until it writes to it, and a full collection
    writes to the header of every tracked object it walks, so an unfrozen parent leaves each
    worker with a private copy of every page holding one: about 85 MB after importing torch alone
    (PyTorch issue 13246). The fork server already froze its imports
    (:mod:`softpool3d.datasets.worker_server`); this freezes what it made after them, and a parent
    started otherwise (``spawn`` where there is no fork server). Frozen objects are never walked;
    they are still freed when their reference count drops to zero.

    A child of the fork server holds the write end of the pipe by which the server learns that the
    process it serves has ended. DataLoader workers exit when their parent does, and their parent
    is the server, so a main process killed outright (SIGKILL, OOM) would leave the server and its
    workers running for good; closing the pipe here lets the server, then the workers, end with it.

    SLURM and a terminal send SIGTERM, SIGINT or SIGUSR1 to the whole process group; the main
    process finishes its step and writes a checkpoint on them (:mod:`softpool3d.engine.processes.preemption`),
    which it cannot do if its workers died of the same signal. A worker still ends when its loader
    shuts down or its main process is gone. ``worker_id`` is unused.
    """
    gc.freeze()
    for number in _JOB_SIGNALS:
        signal.signal(number, signal.SIG_IGN)
    server = forkserver._forkserver
    if server._forkserver_pid is None and server._forkserver_alive_fd is not None:  # a child of the server
        os.close(server._forkserver_alive_fd)
        server._forkserver_alive_fd = None
