"""End to end on the demo videos in subprocesses: 2-process DDP keeps ranks identical, a SIGKILLed
run resumes to the same weights, and 2-process evaluation counts each video once and agrees
with 1 process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
TOOLS = REPO / "tools"


def _small(demo_root, output_dir, name):
    return [
        f"output_dir={output_dir}", f"name={name}", f"data.root={demo_root}", "data.make_demo=false",
        "data.num_frames=4", "data.crop_size=32", "data.train_scale=[32,40]", "data.test_scale=32",
        "data.batch_size=4", "data.test_batch_size=8", "data.num_workers=0", "data.num_clips=2", "data.num_crops=3",
        "model.width=4", "optim.name=sgd", "optim.lr=0.05", "train.deterministic=true", "train.device=cpu",
        "train.test_after_train=false", "train.val_every=100",
    ]


def _run(args, processes=1, expect=0):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    done = subprocess.run(launcher + [str(arg) for arg in args], env=env, capture_output=True, text=True, timeout=300)
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
    _run(killed + ["resume=auto"])
    a = _weights(tmp_path / "straight" / "x" / "checkpoints" / "last.pt")
    b = _weights(last)
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
