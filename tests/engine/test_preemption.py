"""Preemption end to end in subprocesses: SIGTERM to the whole process group (DataLoader workers and
fork server included, as SLURM and a terminal send it) or SIGUSR1 before a validation stops the job
with a checkpoint and exit status 75, and ``resume=auto`` ends with the weights of an uninterrupted
run; under torchrun a signal that reaches one rank stops both after the same step."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from softpool3d.engine.processes.preemption import PREEMPTED_EXIT_CODE

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "tools" / "train.py"
JOB_TIMEOUT_S = 300

pytestmark = pytest.mark.slow


def _small(demo_root, output_dir, name, workers=0):
    return [
        f"output_dir={output_dir}", f"name={name}", f"data.root={demo_root}", "data.make_demo=false",
        "data.num_frames=4", "data.crop_size=32", "data.train_scale=[32,40]", "data.test_scale=32",
        "data.batch_size=4", "data.test_batch_size=8", f"data.num_workers={workers}", "data.num_clips=2",
        "data.num_crops=1", "model.width=4", "optim.name=sgd", "optim.lr=0.05", "train.deterministic=true",
        "train.device=cpu", "train.test_after_train=false", "train.val_every=1", "train.epochs=2",
        "train.limit_steps_per_epoch=3",
    ]


def _run(args, processes=1):
    """The job's CompletedProcess; it runs in a session of its own, so that a signal to its process
    group reaches it, its workers and its fork server, and nothing else."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    return subprocess.run(launcher + [str(arg) for arg in args], env=env, capture_output=True, text=True,
                          timeout=JOB_TIMEOUT_S, start_new_session=True)


def _checked(done, expect):
    assert done.returncode == expect, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _checkpoint(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _same_weights(a, b):
    a, b = _checkpoint(a)["model"], _checkpoint(b)["model"]
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def straight(demo_root, tmp_path_factory):
    """The uninterrupted job: 2 epochs of 3 steps, 2 DataLoader workers, validation every epoch."""
    output = tmp_path_factory.mktemp("straight")
    _checked(_run([TRAIN, *_small(demo_root, output, "x", workers=2)]), 0)
    return output / "x" / "checkpoints" / "last.pt"


@pytest.mark.parametrize("signal, at_step, group, stopped", [
    ("TERM", 4, True, (5, 1, 2)),  # mid-epoch: the signal is read by step 5's all-reduce
    ("USR1", 3, False, (3, 1, 0)),  # an epoch's last step: validation runs, then the epoch's checkpoint
], ids=["sigterm-to-the-group-mid-epoch", "sigusr1-before-validation"])
def test_signal_stops_with_a_checkpoint_and_resumes_to_the_same_weights(straight, demo_root, tmp_path, signal,
                                                                         at_step, group, stopped):
    args = [TRAIN, *_small(demo_root, tmp_path, "x", workers=2)]
    done = _checked(_run(args + [f"debug.signal_at_step={at_step}", f"debug.signal={signal}",
                                 f"debug.signal_group={str(group).lower()}"]), PREEMPTED_EXIT_CODE)
    last = tmp_path / "x" / "checkpoints" / "last.pt"
    assert f"stopped on SIG{signal} after step {stopped[0]}; {last} holds the state" in done.stdout
    checkpoint = _checkpoint(last)
    assert (checkpoint["step"], checkpoint["epoch"], checkpoint["step_in_epoch"]) == stopped
    assert not (tmp_path / "x" / ".lock").read_text()  # released: the job ended cleanly
    resumed = _checked(_run(args + ["resume=auto"]), 0)
    assert f"resumed from {last} at epoch {stopped[1]}, step {stopped[0]}" in resumed.stdout
    assert _checkpoint(last)["step"] == 6
    assert _same_weights(straight, last)


def test_one_rank_signalled_stops_both_ranks_after_the_same_step(demo_root, tmp_path):
    """Only rank 1 gets SIGINT, after step 2; the flag travels in step 3's all-reduce, both ranks
    stop after step 3 and the resumed job ends where an uninterrupted one does."""
    common = [TRAIN, *_small(demo_root, tmp_path, "x"), "train.val_every=100", "debug.step_checksums=true"]
    straight = [*common, f"output_dir={tmp_path / 'straight'}"]
    _checked(_run(straight, processes=2), 0)
    stopped = [*common, f"output_dir={tmp_path / 'stopped'}"]
    done = _run(stopped + ["debug.signal_at_step=2", "debug.signal_rank=1", "debug.signal=INT"], processes=2)
    assert done.returncode != 0
    log = done.stdout + done.stderr
    assert "stopped on SIGINT after step 3" in log  # rank 1 (its warning)
    assert "stopped on a peer's signal after step 3" in log  # rank 0, which got no signal
    assert f"exitcode  : {PREEMPTED_EXIT_CODE}" in log  # torchrun's report of its workers
    run = tmp_path / "stopped" / "x"
    assert _checkpoint(run / "checkpoints" / "last.pt")["step"] == 3
    for rank in (0, 1):
        assert [json.loads(line)["step"] for line in (run / "debug" / f"rank{rank}.jsonl").read_text().splitlines()] \
            == [1, 2, 3]
    _checked(_run(stopped + ["resume=auto"], processes=2), 0)
    assert _same_weights(tmp_path / "straight" / "x" / "checkpoints" / "last.pt", run / "checkpoints" / "last.pt")
