"""One job per run directory.

Before its first step, a job's rank 0 calls :func:`claim_run_dir`: it creates the run directory
and ``checkpoints/`` and writes a probe file in each (so an unwritable output fails at once, not at
the first checkpoint), takes an exclusive POSIX lock on ``<run_dir>/.lock``, and deletes the
temporary files of checkpoint writes that a killed job left behind.

The lock is held for the job's lifetime. The operating system drops it when the holding process
ends, however it ends (SIGKILL included), so it cannot go stale: a lock file whose holder is gone
is simply taken over, with a warning naming the old holder. A POSIX lock belongs to the process
that took it and is not inherited by forked children (DataLoader workers).
"""
from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from pathlib import Path
from typing import Optional, Union

from softpool3d.engine.checkpoint import remove_stale_temporaries
from softpool3d.engine.run_layout import RunLayout

logger = logging.getLogger(__name__)

class RunDirError(RuntimeError):
    """The run directory cannot be written, or another job holds it."""


class RunLock:
    """An exclusive lock on ``<run_dir>/.lock`` whose file says who holds it (pid, host, start time)."""

    def __init__(self, run_dir: Union[str, os.PathLike]) -> None:
        self.run_dir = Path(run_dir)
        self.path = RunLayout(self.run_dir).lock
        self._fd: Optional[int] = None

    def acquire(self) -> Optional[str]:
        """Take the lock or raise :class:`RunDirError` naming the directory and the holder.

        Returns the previous holder's description when it ended without releasing the lock (a
        killed job), else None.
        """
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as error:
            raise RunDirError(f"cannot open the lock file {self.path}: {error.strerror}") from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = os.pread(fd, 1024, 0).decode(errors="replace").strip() or "unknown holder"
            os.close(fd)
            if isinstance(error, (BlockingIOError, PermissionError)):
                raise RunDirError(f"run directory {self.run_dir} is in use by another job ({holder}); wait for it "
                                  f"to end, or pick another name= or output_dir=") from None
            raise RunDirError(f"cannot lock {self.path}: {error.strerror}") from None
        previous = os.pread(fd, 1024, 0).decode(errors="replace").strip() or None
        started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}, since {started}\n".encode(), 0)
        self._fd = fd
        return previous

    def release(self) -> None:
        """Empty the lock file (a clean end) and drop the lock."""
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing the descriptor releases the POSIX lock
        self._fd = None


def _check_writable(directory: Path) -> None:
    probe = directory / f".write-probe.{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as file:
            file.write(b"probe")
        probe.unlink()
    except OSError as error:
        where = f" ({error.filename})" if error.filename and Path(error.filename) != directory else ""
        raise RunDirError(f"output directory {directory} is not writable: {error.strerror or error}{where}") from None


def claim_run_dir(run_dir: Union[str, os.PathLike]) -> RunLock:
    """Check that ``run_dir`` and its ``checkpoints/`` are writable, lock it and remove stale
    temporary files; returns the held :class:`RunLock` (release it when the job ends)."""
    run_dir = Path(run_dir)
    layout = RunLayout(run_dir)
    _check_writable(run_dir)
    _check_writable(layout.checkpoints)
    lock = RunLock(run_dir)
    previous = lock.acquire()
    if previous is not None:
        logger.warning("took over the lock of %s from a job that ended without releasing it (%s)", run_dir, previous)
    stale = remove_stale_temporaries(layout.checkpoints)
    if stale:
        logger.warning("removed %d temporary file(s) of interrupted checkpoint writes from %s", len(stale),
                       layout.checkpoints)
    return lock
