"""End to end on the demo videos in subprocesses: 2-process DDP keeps ranks identical, a SIGKILLed
run resumes to the same weights (and its lock is taken over), a SIGKILLed rank ends a torchrun job
quickly, ``torchrun --max-restarts`` resumes by itself, and 2-process evaluation counts each video
once and agrees with 1 process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from softpool3d.engine.config import load_config

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools"
JOB_TIMEOUT_S = 300  # a job still running after this fails its test (subprocess.TimeoutExpired)

pytestmark = pytest.mark.slow


def _small(demo_root, output_dir, name):
    return [
        f"output_dir={output_dir}", f"name={name}", f"data.root={demo_root}", "data.make_demo=false",
        "data.num_frames=4", "data.crop_size=32", "data.train_scale=[32,40]", "data.test_scale=32",
        "data.batch_size=4", "data.test_batch_size=8", "data.num_workers=0", "data.num_clips=2", "data.num_crops=3",
        "model.width=4", "optim.name=sgd", "optim.lr=0.05", "train.deterministic=true", "train.device=cpu",
        "train.test_after_train=false", "train.val_every=100",
    ]


def _run(args, processes=1, expect=0, restarts=0):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                     f"--max-restarts={restarts}"]
    done = subprocess.run(launcher + [str(arg) for arg in args], env=env, capture_output=True, text=True,
                          timeout=JOB_TIMEOUT_S)
    if expect == "nonzero":
        assert done.returncode != 0, f"exit 0\n{done.stdout[-3000:]}"
    else:
        assert done.returncode == expect, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


@pytest.fixture(scope="module")
def ddp_run(demo_root, tmp_path_factory):
    """Two gloo processes, 2 epochs of 2 steps, each rank writing its parameters' digest after every step."""
    output = tmp_path_factory.mktemp("ddp")
    _run([TOOLS / "train.py", *_small(demo_root, output, "ddp"), "train.epochs=2", "train.limit_steps_per_epoch=2",
          "debug.step_checksums=true"], processes=2)
    return output / "ddp"


def test_two_processes_hold_identical_weights_after_each_step(ddp_run):
    ranks = [[json.loads(line) for line in (ddp_run / "debug" / f"rank{r}.jsonl").read_text().splitlines()]
             for r in (0, 1)]
    assert [row["step"] for row in ranks[0]] == [1, 2, 3, 4]
    assert ranks[0] == ranks[1]
    assert len({row["digest"] for row in ranks[0]}) == 4  # the weights did change every step


def test_sigkilled_run_resumes_to_the_same_weights(demo_root, tmp_path):
    common = [*_small(demo_root, tmp_path, "x"), "train.epochs=2", "train.limit_steps_per_epoch=3",
              "train.checkpoint_every_steps=2"]
    straight = [TOOLS / "train.py", *common, f"output_dir={tmp_path / 'straight'}"]
    _run(straight)
    killed = [TOOLS / "train.py", *common, f"output_dir={tmp_path / 'killed'}"]
    _run(killed + ["debug.kill_at_step=4"], expect=-9)
    last = tmp_path / "killed" / "x" / "checkpoints" / "last.pt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    assert (checkpoint["step"], checkpoint["epoch"], checkpoint["step_in_epoch"]) == (4, 1, 1)  # mid-epoch
    holder = (tmp_path / "killed" / "x" / ".lock").read_text()
    assert holder.startswith("pid ")  # the killed job never released its lock
    resumed = _run(killed + ["resume=auto"])
    assert f"took over the lock of {tmp_path / 'killed' / 'x'} from a job that ended without releasing it " \
           f"({holder.strip()})" in resumed.stdout
    a = _weights(tmp_path / "straight" / "x" / "checkpoints" / "last.pt")
    b = _weights(last)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigkilled_rank_ends_the_torchrun_job_quickly(demo_root, tmp_path):
    """Rank 1 SIGKILLs itself after step 2 of 12; rank 0 must not wait for it in a collective. Such a
    wait would last the run's distributed timeout, longer than the job's subprocess timeout, so the
    job would fail this test by timing out instead of ending with rank 1's exit code."""
    run = tmp_path / "k"
    overrides = [*_small(demo_root, tmp_path, "k"), "train.epochs=3", "train.limit_steps_per_epoch=4",
                 "debug.kill_at_step=2", "debug.kill_rank=1", "debug.step_checksums=true"]
    assert JOB_TIMEOUT_S < load_config(None, overrides).train.dist_timeout_s
    done = _run([TOOLS / "train.py", *overrides], processes=2, expect="nonzero")
    assert "exitcode  : -9" in done.stderr + done.stdout
    assert [json.loads(line)["step"] for line in (run / "debug" / "rank1.jsonl").read_text().splitlines()] == [1, 2]
    assert len((run / "debug" / "rank0.jsonl").read_text().splitlines()) < 12


def test_torchrun_restart_resumes_by_itself_to_the_same_weights(ddp_run, demo_root, tmp_path):
    """``--max-restarts=1``: rank 1 is SIGKILLed after step 3 of 4 (first attempt only); the restarted
    job resumes from last.pt, exits 0, and ends with the weights of the uninterrupted ``ddp_run``.
    Both use ``data.num_workers=0``."""
    args = [TOOLS / "train.py", *_small(demo_root, tmp_path, "ddp"), "train.epochs=2", "train.limit_steps_per_epoch=2",
            "debug.step_checksums=true", "train.checkpoint_every_steps=1", "debug.kill_at_step=3", "debug.kill_rank=1"]
    done = _run(args, processes=2, restarts=1)
    assert "torchrun restarted the job (restart 1): resuming from its last checkpoint" in done.stdout
    assert f"resumed from {tmp_path / 'ddp' / 'checkpoints' / 'last.pt'} at epoch 1, step 3" in done.stdout
    straight = [json.loads(line) for line in (ddp_run / "debug" / "rank0.jsonl").read_text().splitlines()]
    restarted = [json.loads(line) for line in (tmp_path / "ddp" / "debug" / "rank0.jsonl").read_text().splitlines()]
    assert restarted == straight  # steps 1-3 of the first attempt, step 4 of the second
    a = _weights(ddp_run / "checkpoints" / "last.pt")
    b = _weights(tmp_path / "ddp" / "checkpoints" / "last.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_process_evaluation_counts_each_video_once_and_agrees(ddp_run, demo_root):
    checkpoint = ddp_run / "checkpoints" / "last.pt"
    test_dir = ddp_run / "test-last"  # tools/test.py writes beside the run's own test/
    _run([TOOLS / "test.py", checkpoint])
    one = json.loads((test_dir / "predictions.json").read_text())
    _run([TOOLS / "test.py", checkpoint], processes=2)
    two = json.loads((test_dir / "predictions.json").read_text())
    test_videos = len((Path(demo_root) / "testlist01.txt").read_text().split())
    assert one["num_videos"] == two["num_videos"] == test_videos
    assert [row["views"] for row in two["predictions"]] == [6] * two["num_videos"]
    assert [row["video_index"] for row in two["predictions"]] == list(range(two["num_videos"]))
    assert [row["prediction"] for row in one["predictions"]] == [row["prediction"] for row in two["predictions"]]
    for a, b in zip(one["predictions"], two["predictions"]):
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
    assert one["top1"] == two["top1"]
