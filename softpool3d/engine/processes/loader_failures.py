"""What to change when a DataLoader worker dies of the machine's limits: the kernel's
out-of-memory killer (the worker ends with SIGKILL) or a full ``/dev/shm`` (a bus error in the
worker, or ``No space left on device`` writing a batch to shared memory).

PyTorch reports these as ``DataLoader worker (pid N) is killed by signal: Killed.``, or, for a
worker started from the fork server, only ``DataLoader worker (pid(s) N) exited unexpectedly``;
neither names a cause or a remedy. :func:`explain_loader_failure` attaches both to the error.
"""
from __future__ import annotations

import re
import shutil
import signal
from typing import Mapping, Optional

SHM = "/dev/shm"


def _free_shm() -> str:
    try:
        usage = shutil.disk_usage(SHM)
    except OSError:
        return f"{SHM} is missing"
    return f"{SHM}: {usage.free / 2**20:.0f} MiB free of {usage.total / 2**20:.0f} MiB"


def loader_failure_advice(message: str, num_workers: int, worker_signals: Mapping[int, int] = {}) -> Optional[str]:
    """The cause and remedy for a DataLoader failure with ``message`` (None if it is not one), for a
    job with ``num_workers`` decoding workers per process; ``worker_signals`` (pid -> the signal
    that ended it, :func:`~softpool3d.engine.processes.loaders.dead_worker_signals`) tells how a worker
    reported as "exited unexpectedly" died."""
    if "DataLoader worker" in message and "exited unexpectedly" in message:
        listed = re.search(r"pid\(s\) ([\d, ]+)\)", message)
        pids = [int(pid) for pid in re.findall(r"\d+", listed.group(1))] if listed else []
        for pid in pids:
            if worker_signals.get(pid) == signal.SIGKILL:
                message = f"DataLoader worker (pid {pid}) is killed by signal: Killed."
            elif worker_signals.get(pid) == signal.SIGBUS:
                message = f"DataLoader worker (pid {pid}) is killed by signal: Bus error."
    if "DataLoader worker" in message and "killed by signal: Killed" in message:
        return (f"a DataLoader worker was killed with SIGKILL, most likely by the kernel's out-of-memory killer "
                f"(`dmesg | grep -i oom` tells): lower data.num_workers (now {num_workers}) or data.batch_size, "
                f"or give the job more memory (SLURM: --mem; Docker: --memory)")
    if ("DataLoader worker" in message and "Bus error" in message) or (
            "No space left on device" in message and "/torch_" in message):
        return (f"shared memory is full ({_free_shm()}); DataLoader workers hand their batches over in {SHM}: "
                f"give the container more (Docker: --shm-size=8g or --ipc=host; Kubernetes: an emptyDir with "
                f"medium Memory on {SHM}), or lower data.num_workers (now {num_workers}) or data.batch_size")
    if "DataLoader worker" in message and "exited unexpectedly" in message:
        return (f"a DataLoader worker ended without a Python error: a crash in a decoder, or the out-of-memory "
                f"killer; `dmesg` tells; data.num_workers=0 (now {num_workers}) shows a decoder crash in the "
                f"main process")
    return None


def explain_loader_failure(error: BaseException, num_workers: int, worker_signals: Mapping[int, int] = {}) -> None:
    """Attach :func:`loader_failure_advice` to ``error`` as a note, when it applies."""
    advice = loader_failure_advice(str(error), num_workers, worker_signals)
    if advice is not None:
        error.add_note(f"softpool3d: {advice}")
