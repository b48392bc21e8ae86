"""The training loop in one process on synthetic clips: files written, NaN policy, resume, fine-tuning."""
import json
import math

import pytest
import torch
from torch.utils.data import Dataset

from softpool3d import builders
from softpool3d.checkpoint import load_checkpoint
from softpool3d.config import load_config
from softpool3d.optim import param_groups, warmup_cosine
from softpool3d.train import NonFiniteLossError, seed_everything, train


class SyntheticClips(Dataset):
    """Class ``c`` is a clip of constant brightness ``c`` plus noise; ``nan_item`` yields a NaN clip."""

    def __init__(self, train: bool, num_clips: int = 1, num_crops: int = 1, nan_item: int = -1, fail_after=None):
        self.classes = ["dark", "mid", "bright"]
        self.num_videos = 12
        self.num_views = 1 if train else num_clips * num_crops
        self.train, self.nan_item, self.fail_after = train, nan_item, fail_after

    def __len__(self):
        return self.num_videos * self.num_views

    def __getitem__(self, index):
        if self.fail_after is not None:
            self.fail_after[0] -= 1
            if self.fail_after[0] < 0:
                raise KeyboardInterrupt("simulated crash")
        video = index // self.num_views
        label = video % 3
        generator = None if self.train else torch.Generator().manual_seed(index)
        clip = (label - 1.0) + 0.3 * torch.randn(3, 4, 16, 16, generator=generator)
        if index == self.nan_item:
            clip = torch.full_like(clip, float("nan"))
        return clip, label, video


@pytest.fixture
def synthetic(monkeypatch):
    options = {}

    def build(cfg, split, train, num_clips=1, num_crops=1):
        if not train:
            return SyntheticClips(train, num_clips, num_crops)
        return SyntheticClips(train, nan_item=options.get("nan_item", -1), fail_after=options.get("fail_after"))

    monkeypatch.setattr(builders, "build_dataset", build)
    return options


def _cfg(tmp_path, *extra):
    return load_config(None, [
        f"output_dir={tmp_path}", "name=run", "data.make_demo=false", "data.batch_size=4", "data.num_workers=0",
        "data.test_batch_size=5", "data.num_clips=2", "data.num_crops=1", "model.width=4", "train.epochs=2",
        "train.val_every=1", "optim.name=sgd", "optim.lr=0.05", "train.deterministic=true", *extra,
    ])


def test_warmup_cosine_matches_formula():
    assert warmup_cosine(0, 100, 10, 0.1, 0.0) == pytest.approx(0.1)
    assert warmup_cosine(5, 100, 10, 0.1, 0.0) == pytest.approx(0.55)
    for step in (10, 40, 77, 100):
        expected = 0.5 * (1 + math.cos(math.pi * (step - 10) / 90))
        assert warmup_cosine(step, 100, 10, 0.1, 0.0) == pytest.approx(expected)
    assert warmup_cosine(100, 100, 10, 0.1, 0.2) == pytest.approx(0.2)


def test_no_weight_decay_on_norms_and_biases():
    model = torch.nn.Sequential(torch.nn.Conv3d(3, 4, 3), torch.nn.BatchNorm3d(4), torch.nn.Linear(4, 2))
    decay, no_decay = param_groups(model, 0.1)
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert {id(p) for p in no_decay["params"]} == {id(model[0].bias), id(model[1].weight), id(model[1].bias),
                                                   id(model[2].bias)}
    assert no_decay["weight_decay"] == 0.0


def test_train_writes_checkpoints_config_tensorboard_and_predictions(tmp_path, synthetic):
    result = train(_cfg(tmp_path))
    run = tmp_path / "run"
    assert result.step == 2 * 3  # 12 clips / batch 4 = 3 steps per epoch
    assert (run / "config.yaml").is_file()
    checkpoint = load_checkpoint(run / "checkpoints" / "last.pt")
    assert checkpoint["step"] == 6 and checkpoint["epoch"] == 2 and checkpoint["classes"] == ["dark", "mid", "bright"]
    assert set(checkpoint) >= {"optimizer", "scheduler", "scaler", "rng", "config", "sampler_epoch"}
    assert (run / "checkpoints" / "best.pt").is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "test" / "predictions.csv").read_text().count("\n") == 12 + 1
    assert result.test.num_videos == 12 and (result.test.views == 2).all()
    assert json.loads((run / "metrics.json").read_text())["test_top1"] == result.test.top1


def test_fine_tuning_loads_backbone_new_head_and_freezes_stages(tmp_path, synthetic):
    source = train(_cfg(tmp_path / "src", "train.epochs=1", "train.test_after_train=false")).last_checkpoint
    pretrained = load_checkpoint(source)["model"]
    cfg = _cfg(tmp_path / "ft", "train.epochs=1", "train.test_after_train=false", f"model.pretrained={source}",
               "model.freeze_stages=2")
    model = builders.build_model(cfg, num_classes=5)
    assert model.fc.weight.shape == (5, 32)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in pretrained.items() if not k.startswith("fc."))
    tuned = load_checkpoint(train(cfg).last_checkpoint)["model"]
    frozen = [k for k in pretrained if k.startswith(("stem.", "layer1."))]
    assert frozen and all(torch.equal(tuned[k], pretrained[k]) for k in frozen)
    assert not torch.equal(tuned["layer2.0.conv1.0.weight"], pretrained["layer2.0.conv1.0.weight"])


def test_nonfinite_loss_stops_naming_the_step(tmp_path, synthetic):
    synthetic["nan_item"] = 5
    with pytest.raises(NonFiniteLossError, match=r"step \d+ \(epoch 1"):
        train(_cfg(tmp_path, "train.nonfinite=stop"))


def test_nonfinite_loss_skip_leaves_weights_finite(tmp_path, synthetic):
    synthetic["nan_item"] = 5
    result = train(_cfg(tmp_path, "train.nonfinite=skip", "train.test_after_train=false"))
    state = load_checkpoint(result.last_checkpoint)["model"]
    assert all(torch.isfinite(v.float()).all() for v in state.values())


def test_crash_mid_epoch_then_resume_auto_reaches_the_same_weights(tmp_path, synthetic):
    options = ["train.epochs=3", "train.test_after_train=false", "train.checkpoint_every_steps=2"]
    straight = train(_cfg(tmp_path / "a", *options))
    synthetic["fail_after"] = [4 * 4]  # 4 batches of 4 clips: the 5th step (epoch 2) crashes
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tmp_path / "b", *options))
    crashed = load_checkpoint(tmp_path / "b" / "run" / "checkpoints" / "last.pt")
    assert (crashed["step"], crashed["epoch"], crashed["step_in_epoch"]) == (4, 1, 1)
    synthetic["fail_after"] = None
    resumed = train(_cfg(tmp_path / "b", *options, "resume=auto"))
    assert resumed.step == straight.step == 9
    a = load_checkpoint(straight.last_checkpoint)
    b = load_checkpoint(resumed.last_checkpoint)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert b["optimizer"]["state"].keys() == a["optimizer"]["state"].keys()
    assert all(torch.equal(a["optimizer"]["state"][k]["momentum_buffer"], b["optimizer"]["state"][k]["momentum_buffer"])
               for k in a["optimizer"]["state"])


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_with_accumulation_and_clipping_trains(tmp_path, synthetic, amp):
    cfg = _cfg(tmp_path, "train.epochs=1", "train.test_after_train=false", f"train.amp={amp}", "train.accumulate=2",
               "data.batch_size=2", "train.grad_clip=0.5", "train.deterministic=false")
    seed_everything(cfg.train.seed)  # as the trainer does before building its model
    initial = builders.build_model(cfg, 3).state_dict()
    result = train(cfg)
    assert result.step == 3  # 12 clips / (2 clips x 2 micro-batches)
    state = load_checkpoint(result.last_checkpoint)
    assert (state["scaler"] is not None) == (amp == "fp16")
    weights = state["model"]["fc.weight"]
    assert torch.isfinite(weights).all() and weights.dtype == torch.float32
    assert not torch.equal(weights, initial["fc.weight"])
