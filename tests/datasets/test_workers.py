"""Worker processes (datasets/workers.py): started by ``worker_context``, a worker does not inherit
the parent's PyAV state, whose scaler threads' locks deadlock a forked child (av 18 and av 19);
with ``freeze_inherited_objects`` it ends with a main process killed outright."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest

from softpool3d.datasets import worker_context

# The frame the parent converted; a forked child inherits it, a worker of worker_context imports this
# module afresh and gets None.
_parent_frame = None


def _convert_at_another_size() -> None:
    frame = _parent_frame or av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), dtype=np.uint8), format="rgb24")
    frame.reformat(32, 24, format="yuv420p")


def test_a_worker_converts_frames_after_the_parent_did(monkeypatch):
    """The parent converts a frame first (as writing or decoding a video with PyAV does), which
    gives the scaler a pool of slice threads. A forked child converting at another size then waits
    forever on a lock of those threads (av 19 for any frame, av 18 for one the parent used); a
    worker of ``worker_context`` finishes."""
    frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), dtype=np.uint8), format="rgb24")
    frame.reformat(64, 48, format="yuv420p")
    monkeypatch.setattr(f"{__name__}._parent_frame", frame)
    worker = worker_context().Process(target=_convert_at_another_size)
    worker.start()
    worker.join(timeout=60)
    hung = worker.is_alive()
    if hung:
        worker.kill()
        worker.join()
    assert not hung and worker.exitcode == 0, f"the worker {'hung' if hung else f'exited {worker.exitcode}'}"


_KILLED_MAIN = """
import os, signal, sys
import torch
from torch.utils.data import DataLoader, Dataset
from softpool3d.datasets import freeze_inherited_objects, worker_context

class Pids(Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, index):
        return os.getpid()

if __name__ == "__main__":
    loader = DataLoader(Pids(), batch_size=None, num_workers=1, multiprocessing_context=worker_context(),
                        worker_init_fn=freeze_inherited_objects)
    batches = iter(loader)
    print(next(batches), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.slow
def test_workers_end_with_a_main_process_killed_outright(tmp_path):
    """A DataLoader worker's parent is the fork server; when the main process is SIGKILLed the
    server, then the worker (DataLoader's watchdog checks every 5 s), must end instead of running on."""
    script, out = tmp_path / "main.py", tmp_path / "out.txt"
    script.write_text(_KILLED_MAIN)
    with out.open("w") as handle:
        done = subprocess.run([sys.executable, str(script)], stdout=handle, timeout=300)
    assert done.returncode == -signal.SIGKILL
    worker = int(out.read_text())
    deadline = time.monotonic() + 60
    while Path(f"/proc/{worker}").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    alive = Path(f"/proc/{worker}").exists() and "zombie" not in Path(f"/proc/{worker}/status").read_text()
    if alive:
        os.kill(worker, signal.SIGKILL)
    assert not alive, f"worker {worker} outlived its main process by 60 s"


_EARLY_SERVER = """
import gc, json, os, sys

class Seen:  # a map-style dataset; this script imports torch only under __main__, so not in the fork server
    def __len__(self):
        return 1

    def __getitem__(self, index):
        with open(f"/proc/{os.getppid()}/maps") as maps:
            parent_has_torch = "libtorch" in maps.read()
        return json.dumps({"parent": os.getppid(), "parent_has_torch": parent_has_torch, "gc_enabled": gc.isenabled(),
                           "frozen": gc.get_freeze_count()})

if __name__ == "__main__":
    from multiprocessing import forkserver
    from torch.utils.data import DataLoader
    from softpool3d.datasets import start_worker_server, worker_context

    start_worker_server().join()
    server = forkserver._forkserver._forkserver_pid
    loader = DataLoader(Seen(), batch_size=None, num_workers=1, multiprocessing_context=worker_context())
    print(json.dumps({"server": server, **json.loads(next(iter(loader)))}))
"""


@pytest.fixture(scope="module")
def early_server_worker(tmp_path_factory):
    """What a loader's worker saw, in a main process that started the fork server early."""
    script = tmp_path_factory.mktemp("early_server") / "main.py"
    script.write_text(_EARLY_SERVER)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_an_early_worker_server_holds_torch_and_forks_the_workers(early_server_worker):
    """``start_worker_server`` starts the fork server before any loader; a loader's worker is then
    forked from that server, which had imported torch (the preload) before it forked the worker, so
    the worker inherits torch instead of importing it again."""
    seen = early_server_worker
    assert seen["server"] is not None
    assert seen["parent"] == seen["server"]
    assert seen["parent_has_torch"]


def test_the_worker_server_freezes_its_imports_and_its_workers_inherit_them_frozen(early_server_worker):
    """The fork server froze what its imports (torch, the datasets) made, the collector still on: a
    worker (no ``worker_init_fn`` here) starts with the server's objects in the collector's permanent
    generation and its collector on."""
    seen = early_server_worker
    assert seen["parent_has_torch"] and seen["gc_enabled"]
    assert seen["frozen"] > 100_000
