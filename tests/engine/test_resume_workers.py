"""Exact resume with decoding workers, on the demo videos in subprocesses: a run SIGKILLed mid-epoch
at data.num_workers=2 and resumed (with 2 workers, or with another count) ends with every tensor of
model, optimizer and scheduler equal, bit for bit, to an uninterrupted run's; so does a run with
every small-set switch on (mixup/CutMix, EMA, precise BN, RandAugment, random erasing, the
class-balanced sampler, with repeat_aug and accumulate), its EMA included. And repeat_aug batches
in the engine: flattened per video, with steps per epoch counted in videos."""
import shutil

import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_engine_distributed import TOOLS, _run, _small

from softpool3d.datasets import load_annotations
from softpool3d.engine import builders
from softpool3d.engine.config import load_config
from softpool3d.engine.training.train import flatten_repeats, train

# 24 training videos (32 minus the carved val), batch 4: 4 steps per epoch (limited), a checkpoint every 2 steps, killed at
# step 7 (epoch 2, after its mid-epoch checkpoint at step 6).
COMMON = ["train.epochs=2", "train.limit_steps_per_epoch=4", "train.checkpoint_every_steps=2", "optim.name=adamw",
          "data.num_workers=2"]


def _assert_identical(a, b, where="checkpoint"):
    """Every tensor equal bit for bit (and every other value equal), recursively."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_identical(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def runs(demo_root, tmp_path_factory):
    """An uninterrupted run and a run SIGKILLed at step 7, both with 2 decoding workers."""
    root = tmp_path_factory.mktemp("resume_workers")
    _run([TOOLS / "train.py", *_small(demo_root, root / "straight", "x"), *COMMON])
    _run([TOOLS / "train.py", *_small(demo_root, root / "killed", "x"), *COMMON, "debug.kill_at_step=7"], expect=-9)
    checkpoint = _load(root / "killed" / "x" / "checkpoints" / "last.pt")
    assert (checkpoint["step"], checkpoint["epoch"], checkpoint["step_in_epoch"]) == (6, 1, 2)  # mid-epoch 2
    return root


@pytest.mark.slow
@pytest.mark.parametrize("workers", [2, 1, 0])
def test_resume_with_workers_is_bit_identical(runs, demo_root, tmp_path, workers):
    shutil.copytree(runs / "killed", tmp_path / "resumed")
    _run([TOOLS / "train.py", *_small(demo_root, tmp_path / "resumed", "x"), *COMMON, f"data.num_workers={workers}",
          "resume=auto"])
    straight = _load(runs / "straight" / "x" / "checkpoints" / "last.pt")
    resumed = _load(tmp_path / "resumed" / "x" / "checkpoints" / "last.pt")
    assert resumed["step"] == straight["step"] == 8
    for part in ("model", "optimizer", "scheduler"):
        _assert_identical(straight[part], resumed[part], part)
    assert len(straight["optimizer"]["state"]) == len(straight["model"]) - sum(
        k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in straight["model"])


# Every switch on, with repeat_aug 2 and accumulate 2: 24 videos / (4 x 2) = 3 steps an epoch; validation (and
# so precise BN) after epoch 1; checkpoints at steps 2, 3 (epoch end) and 4 (mid-epoch 2); killed at step 5.
SWITCHES = ["train.mixup_alpha=0.8", "train.cutmix_alpha=1.0", "train.mix_prob=0.9", "train.ema_decay=0.9",
            "train.precise_bn_batches=2", "data.rand_augment_n=2", "data.rand_augment_m=9", "data.random_erasing=0.5",
            "data.sampler=class_balanced", "data.repeat_aug=2", "train.accumulate=2", "train.val_every=1"]


@pytest.mark.slow
def test_resume_with_every_switch_on_is_bit_identical_including_the_ema(demo_root, tmp_path):
    runs = {}
    for name, extra in (("straight", []), ("killed", ["debug.kill_at_step=5"])):
        _run([TOOLS / "train.py", *_small(demo_root, tmp_path / name, "x"), *COMMON, *SWITCHES, *extra],
             expect=-9 if extra else 0)
    killed = _load(tmp_path / "killed" / "x" / "checkpoints" / "last.pt")
    assert (killed["step"], killed["epoch"], killed["step_in_epoch"], killed["switches"]["ema"]["updates"]) == (4, 1, 1, 4)
    _run([TOOLS / "train.py", *_small(demo_root, tmp_path / "killed", "x"), *COMMON, *SWITCHES, "resume=auto"])
    for name in ("straight", "killed"):
        runs[name] = _load(tmp_path / name / "x" / "checkpoints" / "last.pt")
    assert runs["killed"]["step"] == runs["straight"]["step"] == 6
    for part in ("model", "optimizer", "scheduler", "switches", "eval_weights"):
        _assert_identical(runs["straight"][part], runs["killed"][part], part)
    assert not torch.equal(runs["straight"]["switches"]["ema"]["weights"]["fc.weight"], runs["straight"]["model"]["fc.weight"])
    board = EventAccumulator(str(tmp_path / "straight" / "x" / "tensorboard"))
    board.Reload()
    assert {"val/top1", "val_raw/top1"} <= set(board.Tags()["scalars"])  # the EMA's and the raw weights'
    assert len(board.Scalars("val_raw/top1")) == 2


def test_flatten_repeats_keeps_each_videos_clips_with_its_label():
    clips = torch.arange(2 * 3).reshape(2, 3, 1, 1, 1, 1).expand(2, 3, 3, 2, 4, 4)
    flat, labels = flatten_repeats(clips, torch.tensor([7, 9]))
    assert flat.shape == (6, 3, 2, 4, 4)
    assert [int(c[0, 0, 0, 0]) for c in flat] == [0, 1, 2, 3, 4, 5]  # video 0's three clips, then video 1's
    assert labels.tolist() == [7, 7, 7, 9, 9, 9]


@pytest.mark.slow
def test_repeat_aug_epoch_sees_each_video_once_with_k_clips_per_video(demo_root, tmp_path, monkeypatch):
    """What the model (in training) and the loss receive: each step ``batch_size x k`` clips, video by
    video (its k clips differ), each labelled with its video's label; over the epoch each video's label once."""
    cfg = load_config(None, [*_small(demo_root, tmp_path, "k2"), "train.epochs=1", "data.repeat_aug=2"])
    annotations = load_annotations("ucf101", demo_root, "train")  # the train list minus the carved val
    inputs, targets = [], []
    build_model = builders.build_model

    def recording_model(*args, **kwargs):
        model = build_model(*args, **kwargs)
        model.register_forward_pre_hook(lambda module, args: inputs.append(args[0].clone()) if module.training else None)
        return model

    cross_entropy = F.cross_entropy

    def recording_cross_entropy(logits, labels, *args, **kwargs):
        targets.append(labels.clone())
        return cross_entropy(logits, labels, *args, **kwargs)

    monkeypatch.setattr(builders, "build_model", recording_model)
    monkeypatch.setattr(F, "cross_entropy", recording_cross_entropy)
    result = train(cfg)
    steps = len(annotations.videos) // 4  # batch 4: steps per epoch unchanged by repeat_aug
    assert result.step == steps and len(inputs) == len(targets) == steps
    for clips, labels in zip(inputs, targets):
        assert clips.shape == (4 * 2, 3, 4, 32, 32) and labels.shape == (4 * 2,)
        assert torch.equal(labels[0::2], labels[1::2])  # each video's two clips carry its label
    pairs = torch.cat(inputs).unflatten(0, (-1, 2))  # (videos, 2 clips, C, T, H, W)
    differ = [not torch.equal(a, b) for a, b in pairs]
    assert sum(differ) > len(differ) / 2  # two clips per video, not one twice (a random crop may repeat)
    seen = torch.cat(targets)[0::2]
    assert sorted(seen.tolist()) == sorted(int(label) for label in annotations.labels)
