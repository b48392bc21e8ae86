"""A stalled rank names itself (engine/processes/stall_watch.py) and a DataLoader worker killed by the
machine's limits gets a cause and a remedy (engine/processes/loader_failures.py): the watch's bookkeeping on
made-up heartbeats, torch's own error for a SIGKILLed worker, and a torchrun job whose rank 1 sleeps
before fetching its data, read from rank 0's log."""
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from softpool3d.engine.processes.loader_failures import explain_loader_failure, loader_failure_advice
from softpool3d.engine.processes.loaders import dead_worker_signals, run_loader
from softpool3d.engine.processes.stall_watch import ALL_REDUCE, FORWARD_BACKWARD, WAITING_FOR_DATA, StallWatch

REPO = Path(__file__).resolve().parents[2]


def test_the_rank_behind_is_named_with_the_ranks_that_wait_for_it(caplog):
    watch = StallWatch(rank=0, world_size=3, warn_after_s=5)
    beats = {0: (1, 7, 3, FORWARD_BACKWARD), 1: (1, 4, 3, WAITING_FOR_DATA), 2: (1, 9, 3, ALL_REDUCE)}
    assert watch.observe(beats, now=100.0) == []
    beats = {rank: (2, *value[1:]) for rank, value in beats.items()}  # every process beats, none advances
    assert watch.observe(beats, now=104.0) == []
    beats = {rank: (3, *value[1:]) for rank, value in beats.items()}
    with caplog.at_level(logging.WARNING):
        reports = watch.observe(beats, now=106.0)
    assert reports == ["rank 1 has not advanced for 6 s: waiting for data at step 3 (waiting for it: rank 0 in "
                       "forward and backward at step 3; rank 2 in all-reduce at step 3)"]
    assert reports[0] in caplog.text
    error = RuntimeError("Timed out waiting 600000ms for recv operation to complete")
    watch.annotate(error)
    assert error.__notes__ == [f"softpool3d: before this error, {reports[0]}"]
    assert watch.observe({rank: (4, *value[1:]) for rank, value in beats.items()}, now=107.0) == []  # once per 5 s


def test_a_rank_that_advances_is_not_named_and_a_silent_heartbeat_is():
    watch = StallWatch(rank=0, world_size=2, warn_after_s=5)
    for second in range(0, 12):  # rank 0 changes phase every second; rank 1's process stopped beating
        watch.observe({0: (second, second, second, FORWARD_BACKWARD), 1: (1, 4, 2, WAITING_FOR_DATA)},
                      now=float(second))
    assert watch.report == ("rank 1 has not advanced for 10 s: waiting for data at step 2, and its heartbeat "
                            "stopped 10 s ago (the process is frozen or gone)")


class _KillsItsWorker(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's out-of-memory killer does


@pytest.mark.slow
def test_a_worker_killed_like_the_oom_killer_does_gets_its_cause_and_remedy():
    """A worker of the fork server is not the main process's child: torch says only "exited
    unexpectedly"; the status the fork server passes on tells SIGKILL."""
    loader = run_loader(_KillsItsWorker(), None, None, 1, torch.device("cpu"))
    with pytest.raises(RuntimeError) as caught:
        next(iter(loader))
    assert "exited unexpectedly" in str(caught.value)  # torch's words, naming no cause
    pid = loader._iterator._workers[0].pid
    assert dead_worker_signals()[pid] == signal.SIGKILL
    explain_loader_failure(caught.value, 1, dead_worker_signals())
    [note] = caught.value.__notes__
    assert note.startswith("softpool3d: a DataLoader worker was killed with SIGKILL, most likely by the kernel's "
                           "out-of-memory killer") and "data.num_workers (now 1)" in note


def test_a_full_dev_shm_gets_the_shm_size_remedy():
    bus = ("DataLoader worker (pid 4242) is killed by signal: Bus error. It is possible that dataloader's workers "
           "are out of shared memory. Please try to raise your shared memory limit.")
    full = "unable to write to file </torch_4242_1234_0>: No space left on device (28)"
    for message in (bus, full):
        advice = loader_failure_advice(message, 8)
        assert advice.startswith("shared memory is full (/dev/shm") and "--shm-size=8g" in advice
        assert "data.num_workers (now 8)" in advice
    assert loader_failure_advice("CUDA out of memory", 8) is None


@pytest.mark.slow
def test_a_rank_stalled_in_its_data_wait_is_named_by_the_other_rank_and_in_the_final_error(demo_root, tmp_path):
    """Rank 1 sleeps 20 s after step 2, before fetching step 3's batch; with ``stall_warn_s=2`` rank 0
    names it within seconds, and when rank 0's collective times out (``dist_timeout_s=8``) its error
    names rank 1 too."""
    args = [
        f"output_dir={tmp_path}", "name=stall", f"data.root={demo_root}", "data.make_demo=false", "data.num_frames=4",
        "data.crop_size=32", "data.train_scale=[32,40]", "data.test_scale=32", "data.batch_size=4",
        "data.num_workers=0", "model.width=4", "optim.name=sgd", "train.device=cpu", "train.test_after_train=false",
        "train.val_every=100", "train.epochs=1", "train.limit_steps_per_epoch=4", "train.stall_warn_s=2",
        "train.dist_timeout_s=8", "debug.stall_at_step=2", "debug.stall_rank=1", "debug.stall_s=20",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(REPO / "tools" / "train.py"), *args], env=env, capture_output=True, text=True,
                          timeout=300)
    log = done.stdout + done.stderr
    assert done.returncode != 0, log[-3000:]
    named = ": waiting for data at step 3 (waiting for it: rank 0 in forward and backward at step 3)"
    rank0 = [line for line in done.stdout.splitlines() if " WARNING rank 1 has not advanced for " in line]
    assert any(line.endswith(named) for line in rank0), log[-3000:]
    assert re.search(r"softpool3d: before this error, rank 1 has not advanced for \d+ s" + re.escape(named), log), \
        log[-3000:]
