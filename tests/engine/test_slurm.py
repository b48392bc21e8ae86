"""Under a real SLURM on this machine (munged, slurmctld and slurmd started by the fixture, one node
of 2 CPUs): the environment of an srun task, ``sbatch`` of tools/slurm/srun_per_task.sbatch with
2 tasks that trains and tests the demo, and ``scontrol requeue`` of the running job, which stops on
SIGTERM with a checkpoint and resumes to the weights of the uninterrupted job. Skipped, with the
reason, where SLURM cannot start (``.ci/install_slurm`` installs it)."""
import json
import os
import re
import sys
import time
from pathlib import Path

import pytest
import torch

from softpool3d.engine.processes.preemption import PREEMPTED_EXIT_CODE
from softpool3d.engine.processes.slurm_env import expand_nodelist, slurm_task_environment
from slurm_cluster import SlurmUnavailable, start_cluster

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "tools" / "slurm" / "srun_per_task.sbatch"
JOB_TIMEOUT_S = 600
DONE = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")


def test_an_srun_task_takes_its_place_from_slurms_variables():
    environ = {"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "4242",
               "SLURM_JOB_NODELIST": "gpu[07-08,10],login"}
    assert slurm_task_environment(environ) == {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1",
                                               "MASTER_ADDR": "gpu07", "MASTER_PORT": "19242"}
    assert slurm_task_environment({**environ, "MASTER_PORT": "29400"})["MASTER_PORT"] == "29400"
    assert slurm_task_environment({**environ, "RANK": "3"}) == {}  # torchrun's processes keep torchrun's
    assert slurm_task_environment({**environ, "SLURM_NTASKS": "1"}) == {}  # one task: one process
    assert slurm_task_environment({k: v for k, v in environ.items() if k != "SLURM_PROCID"}) == {}
    assert expand_nodelist("rack[1-2]-n[08-9]") == ["rack1-n08", "rack1-n09", "rack2-n08", "rack2-n09"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    try:
        cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    except SlurmUnavailable as why:
        pytest.skip(f"SLURM cannot start here: {why}")
    yield cluster
    cluster.stop()


@pytest.mark.slow
def test_node_lists_expand_as_scontrol_does(slurm):
    nodelist = "gpu[07-08,10],login,rack[1-2]-n[08-9]"
    assert expand_nodelist(nodelist) == slurm.run("scontrol", "show", "hostnames", nodelist).stdout.split()


def _args(demo_root, output_dir):
    return [f"output_dir={output_dir}", "name=x", f"data.root={demo_root}", "data.make_demo=false",
            "data.num_frames=4", "data.crop_size=32", "data.train_scale=[32,40]", "data.test_scale=32",
            "data.batch_size=4", "data.test_batch_size=8", "data.num_workers=0", "data.num_clips=2", "data.num_crops=1",
            "model.width=4", "optim.name=sgd", "optim.lr=0.05", "train.deterministic=true", "train.device=cpu",
            "train.val_every=100", "train.epochs=2", "train.limit_steps_per_epoch=2", "train.checkpoint_every_steps=1"]


def _submit(slurm, folder, args):
    """``sbatch`` of the shipped template with its GPU lines overridden for this CPU-only node."""
    env = {**slurm.env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{slurm.env['PATH']}"}
    slurm.env = env
    done = slurm.run("sbatch", "--parsable", f"--chdir={folder}", "--nodes=1", "--ntasks-per-node=2", "--gres=none",
                     "--cpus-per-task=1", "--time=30", f"--output={folder}/slurm-%j.out", str(TEMPLATE), *args)
    return done.stdout.strip().split(";")[0]


def _checkpoint(path):
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def straight_job(slurm, demo_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sbatch")
    job_id = _submit(slurm, folder, _args(demo_root, folder))
    job = slurm.wait(job_id, DONE, JOB_TIMEOUT_S)
    log = (folder / f"slurm-{job_id}.out").read_text()
    assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", f"{job}\n{log[-3000:]}"
    return folder / "x", log


@pytest.mark.slow
def test_sbatch_of_two_tasks_trains_and_tests_the_demo(straight_job, demo_root):
    run, log = straight_job
    assert "world size 2, data.num_workers 0 per process" in log  # the startup summary of rank 0
    checkpoint = _checkpoint(run / "checkpoints" / "last.pt")
    assert (checkpoint["step"], checkpoint["epoch"]) == (4, 2)
    metrics = json.loads((run / "metrics.json").read_text())
    test_videos = len((Path(demo_root) / "testlist01.txt").read_text().split())
    assert metrics["world_size"] == 2 and metrics["step"] == 4 and metrics["test_videos"] == test_videos
    assert 0.0 <= metrics["test_top1"] <= 1.0


@pytest.mark.slow
def test_scontrol_requeue_of_a_running_job_resumes_it_to_the_same_weights(slurm, straight_job, demo_root, tmp_path):
    """Rank 0 sleeps 8 s after step 1 (its checkpoint written); the job is requeued meanwhile. SLURM
    sends SIGTERM to every task: both finish their step, write last.pt and exit 75; the job starts
    again, resumes there and ends with the straight job's weights."""
    job_id = _submit(slurm, tmp_path, [*_args(demo_root, tmp_path), "debug.stall_at_step=1", "debug.stall_rank=0",
                                       "debug.stall_s=8"])
    last = tmp_path / "x" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not (last.is_file() and _checkpoint(last)["step"] >= 1) and time.monotonic() < deadline:
        time.sleep(0.5)
    slurm.run("scontrol", "requeue", job_id)
    slurm.wait(job_id, ("PENDING",), JOB_TIMEOUT_S)
    slurm.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")  # SLURM holds a requeued job a while
    job = slurm.wait(job_id, DONE, JOB_TIMEOUT_S)
    log = (tmp_path / f"slurm-{job_id}.out").read_text()
    assert job["JobState"] == "COMPLETED" and job["Restarts"] == "1", f"{job}\n{log[-3000:]}"
    stopped = re.findall(r"stopped on SIGTERM after step (\d+); ", log)
    assert len(stopped) == 2 and stopped[0] == stopped[1], log[-3000:]  # both ranks, after the same step
    assert log.count(f"continues from there (exit status {PREEMPTED_EXIT_CODE})") == 2
    assert f"resumed from {last} at epoch {(int(stopped[0]) - 1) // 2}, step {stopped[0]}" in log
    a, b = _checkpoint(straight_job[0] / "checkpoints" / "last.pt")["model"], _checkpoint(last)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
