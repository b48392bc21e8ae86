"""What the start-up benchmark counts: every process of a tree (children of any thread, workers of a fork
server), the CPU of a job's processes to their ends, and the many-row set it trains on."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
from torch.utils.data import DataLoader

from softpool3d.benchmarks.startup import _forked_by_server, _tree, write_rows_set
from softpool3d.datasets import worker_context


def test_the_tree_holds_children_of_every_thread_and_tells_fork_server_workers_apart():
    started, done = [], threading.Event()

    def start_and_wait() -> None:  # a child's parent is the thread that started it, while that thread lives
        started.append(subprocess.Popen(["sleep", "30"]))
        done.wait()

    thread = threading.Thread(target=start_and_wait)
    thread.start()
    while not started:
        time.sleep(0.01)
    loader = DataLoader(list(range(4)), batch_size=None, num_workers=1, persistent_workers=True,
                        multiprocessing_context=worker_context())
    try:
        next(iter(loader))
        worker = loader._iterator._workers[0].pid
        tree = _tree(os.getpid())
        assert started[0].pid in tree and worker in tree
        server = int(open(f"/proc/{worker}/stat").read().rsplit(")", 1)[1].split()[1])
        assert _forked_by_server(worker) and not _forked_by_server(server) and not _forked_by_server(os.getpid())
    finally:
        loader._iterator._shutdown_workers()
        done.set()
        thread.join()
        started[0].kill()
        started[0].wait()


def test_the_many_row_set_links_each_row_to_a_video_of_its_class(tmp_path):
    demo = tmp_path / "demo"
    for name in ("Grow", "Shrink"):
        (demo / name).mkdir(parents=True)
        for number in range(2):
            (demo / name / f"v_{name}_{number}.mp4").write_bytes(f"{name} {number}".encode())
    (demo / "classInd.txt").write_text("1 Grow\n2 Shrink\n")
    root = write_rows_set(demo, 5)
    rows = sorted(root.glob("train/*/*.mp4"))
    assert [path.name for path in rows] == [f"v{row:010d}_000000_000010.mp4" for row in (0, 2, 4, 1, 3)]
    for path in rows:
        assert path.read_text().split()[0] == path.parent.name  # a hard link to a video of its own class
    assert sorted(path.parent.name for path in root.glob("val/*/*.mp4")) == ["Grow", "Shrink"]
    assert write_rows_set(demo, 5) == root


_ORPHAN_CPU = """
import subprocess, sys
from softpool3d.benchmarks.startup import _adopt_orphans, _children_cpu_s, _reap_orphans
if sys.argv[1] == "adopt":
    _adopt_orphans()
busy = "import time; end = time.process_time() + 1.0\\nwhile time.process_time() < end: pass"
subprocess.run(["bash", "-c", f'"{sys.executable}" -c "$0" &', busy], check=True)  # bash ends, its child runs on
_reap_orphans()
print(_children_cpu_s())
"""


@pytest.mark.parametrize("adopt", [True, False], ids=["adopted", "left-to-init"])
def test_a_jobs_cpu_includes_the_processes_that_outlive_it(adopt):
    """The train part's tree CPU counts a process orphaned by its parent (as a fork server outlives its rank)
    to its end: a second of CPU burnt by an orphan is counted when adopted, missed when left to init."""
    done = subprocess.run([sys.executable, "-c", _ORPHAN_CPU, "adopt" if adopt else "no"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    cpu = float(done.stdout.strip().splitlines()[-1])
    assert cpu >= 0.9 if adopt else cpu < 0.5
