"""Two nodes on one machine: two torchrun agents (``--nnodes=2 --node-rank=0|1``, c10d rendezvous on
127.0.0.1) sharing one run folder as nodes share a filesystem. Two nodes of one process each train
the weights of one node of two processes; one process (global rank 0) writes the run's files; a node
lost mid-epoch (its agent and worker SIGKILLed) ends the job on the other; a worker killed under
``--max-restarts=1`` on both nodes resumes to the same weights."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from softpool3d.engine.config import load_config

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "tools" / "train.py"
JOB_TIMEOUT_S = 540  # less than train.dist_timeout_s: a job that waited on a lost node fails by timing out

pytestmark = pytest.mark.slow


def _small(demo_root, output_dir):
    return [
        f"output_dir={output_dir}", "name=x", f"data.root={demo_root}", "data.make_demo=false", "data.num_frames=4",
        "data.crop_size=32", "data.train_scale=[32,40]", "data.test_scale=32", "data.batch_size=4",
        "data.test_batch_size=8", "data.num_workers=0", "model.width=4", "optim.name=sgd", "optim.lr=0.05",
        "train.deterministic=true", "train.device=cpu", "train.test_after_train=false", "train.val_every=2",
        "train.epochs=2", "train.limit_steps_per_epoch=2", "debug.step_checksums=true",
    ]


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _node(rank, port, args, restarts=0):
    """Node ``rank``'s torchrun agent (one process), in a session of its own (a node to lose whole)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={rank}",
               "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=two-nodes",
               f"--max-restarts={restarts}", str(TRAIN), *map(str, args)]
    return subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _two_nodes(args, restarts=0):
    port = _free_port()
    first = _node(0, port, args, restarts)  # hosts the rendezvous store
    time.sleep(1)
    return first, _node(1, port, args, restarts)


def _wait(node):
    """The node's exit status and output; a node still running after ``JOB_TIMEOUT_S`` is killed
    whole (agent and workers), so that a hung job leaves nothing behind for the next test."""
    try:
        out, _ = node.communicate(timeout=JOB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _kill_node(node)
        raise
    return node.returncode, out


def _kill_node(node):
    """SIGKILL a node's agent and its workers (torchrun starts each worker in a session of its own)."""
    workers = [int(path.parent.name) for path in Path("/proc").glob("[0-9]*/stat") if _parent(path) == node.pid]
    os.killpg(node.pid, signal.SIGKILL)
    for worker in workers:
        try:
            os.kill(worker, signal.SIGKILL)
        except ProcessLookupError:
            pass
    node.wait()


def _parent(stat):
    try:
        return int(stat.read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _digests(run, rank):
    return [json.loads(line) for line in (run / "debug" / f"rank{rank}.jsonl").read_text().splitlines()]


def _weights(run):
    return torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["model"]


@pytest.fixture(scope="module")
def one_node(demo_root, tmp_path_factory):
    """The reference: one node of two processes (``--standalone``)."""
    output = tmp_path_factory.mktemp("one-node")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(TRAIN), *map(str, _small(demo_root, output))], env=_env(), capture_output=True,
                          text=True, timeout=JOB_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return output / "x"


def test_two_nodes_train_the_weights_of_one_node_and_one_process_writes_the_run(one_node, demo_root, tmp_path):
    nodes = _two_nodes(_small(demo_root, tmp_path))
    results = [_wait(node) for node in nodes]
    assert [code for code, _ in results] == [0, 0], "\n".join(out[-3000:] for _, out in results)
    run = tmp_path / "x"
    for rank in (0, 1):
        assert _digests(run, rank) == _digests(one_node, rank)  # every step's weights, on both ranks
    a, b = _weights(one_node), _weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((run / "metrics.json").read_text())["world_size"] == 2
    assert len(list((run / "tensorboard").iterdir())) == 1  # one events file: one writer
    logged = [out for _, out in results if "checkpoint: " in out]
    assert len(logged) == 1  # only global rank 0 reports the run's files, not each node's local rank 0
    assert sorted(path.name for path in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]


def test_a_lost_node_ends_the_job_on_the_other(demo_root, tmp_path):
    """Node 1 (agent and worker) is SIGKILLed while global rank 1 sleeps after step 2 of 8; node 0's
    worker fails its collective (the peer is gone) and its agent ends the job, well before the
    collective timeout (this job's subprocess timeout is shorter than ``train.dist_timeout_s``).
    With the c10d rendezvous either agent may host global rank 1; the test kills the one whose
    worker has RANK=1. Before that, a job started on a third "node" in the same run folder is
    refused by the run lock, which names global rank 0 as its holder."""
    args = [*_small(demo_root, tmp_path), "train.epochs=4", "train.val_every=100", "debug.stall_at_step=2",
            "debug.stall_rank=1", "debug.stall_s=600"]
    assert JOB_TIMEOUT_S < load_config(None, args).train.dist_timeout_s
    nodes = _two_nodes(args)
    digests = tmp_path / "x" / "debug" / "rank1.jsonl"
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while (not digests.is_file() or len(digests.read_text().splitlines()) < 2) and time.monotonic() < deadline:
        time.sleep(0.2)
    workers = {node: [int(path.parent.name) for path in Path("/proc").glob("[0-9]*/stat") if _parent(path) == node.pid]
               for node in nodes}  # torchrun starts its workers in sessions of their own
    second = next(node for node in nodes if any(b"\0RANK=1\0" in Path(f"/proc/{pid}/environ").read_bytes()
                                                for pid in workers[node]))
    first = next(node for node in nodes if node is not second)
    rank0 = next(pid for pid in workers[first] if b"\0RANK=0\0" in Path(f"/proc/{pid}/environ").read_bytes())
    intruder = subprocess.run([sys.executable, str(TRAIN), *args], env=_env(), capture_output=True, text=True,
                              timeout=JOB_TIMEOUT_S)
    assert intruder.returncode != 0
    assert f"is in use by another job (pid {rank0} on host {socket.gethostname()}, since " in intruder.stdout + \
        intruder.stderr, intruder.stderr[-3000:]
    _kill_node(second)
    code, out = _wait(first)
    assert code != 0, out[-3000:]
    assert len(_digests(tmp_path / "x", 0)) == 2


def test_a_worker_killed_under_max_restarts_resumes_on_both_nodes_to_the_same_weights(one_node, demo_root, tmp_path):
    """Global rank 1 is SIGKILLed after step 3 while rank 0 sleeps outside any collective, so the
    agent of rank 0 sees a healthy worker and restarts it for the rendezvous that the other node
    re-joins: a membership change, which torchrun does not count as a restart. The two new workers
    get different ``TORCHELASTIC_RESTART_COUNT``s and must still agree that they resume."""
    args = [*_small(demo_root, tmp_path), "train.checkpoint_every_steps=1", "debug.kill_at_step=3", "debug.kill_rank=1",
            "debug.stall_at_step=3", "debug.stall_rank=0", "debug.stall_s=15"]
    results = [_wait(node) for node in _two_nodes(args, restarts=1)]
    assert [code for code, _ in results] == [0, 0], "\n".join(out[-3000:] for _, out in results)
    out = "".join(out for _, out in results)
    assert f"resumed from {tmp_path / 'x' / 'checkpoints' / 'last.pt'} at epoch 1, step 3" in out
    assert _digests(tmp_path / "x", 0) == _digests(one_node, 0)
    a, b = _weights(one_node), _weights(tmp_path / "x")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
