"""Each small-set switch turned on in a short training run, read back where it lands: the clips that
reach the model and the targets that reach the loss (mixup, CutMix, random erasing), the classes of
the videos drawn (``data.sampler=class_balanced``), the clips the dataset decodes (RandAugment) and
the BatchNorm statistics the run ends with (precise BN). Each is checked against a computation of
its own here: the raw clips rebuilt from the indices the dataset was asked for, the mixing weight
recovered from the blend, the erased box from the pixels, the statistics from the layers' inputs."""
from collections import Counter

import pytest
import torch
from torch.utils.data import Dataset

from softpool3d.datasets import ClipDataset
from softpool3d.datasets.transforms import TrainTransform
from softpool3d.engine import builders
from softpool3d.engine.checkpoint import load_checkpoint
from softpool3d.engine.config import load_config
from softpool3d.engine.training.switches.mixing import SoftTargetCrossEntropy
from softpool3d.engine.training.train import train

CLASSES = ["dark", "mid", "bright"]


class SeededClips(Dataset):
    """Video ``i`` has label ``labels[i]`` and one float clip ``(3, 4, 16, 16)``: its class's brightness
    plus noise seeded by ``i``, the same at every fetch (so a batch can be rebuilt from its indices).
    ``fetched`` lists the indices asked for, in order."""

    def __init__(self, labels, train: bool = True, num_views: int = 1):
        self.labels, self.classes = list(labels), list(CLASSES)
        self.num_videos, self.num_views = len(self.labels), 1 if train else num_views
        self.num_missing, self.source = 0, ""  # ClipDataset's provenance, shown in the start-up summary
        self.fetched = []

    def __len__(self):
        return self.num_videos * self.num_views

    def skipped_files(self):
        return []

    def set_epoch(self, epoch):
        """Like ``ClipDataset``'s; these clips do not change with the epoch."""

    def clip(self, video: int) -> torch.Tensor:
        noise = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(video))
        return (self.labels[video] - 1.0) + 0.3 * noise

    def __getitem__(self, index):
        self.fetched.append(index)
        video = index // self.num_views
        return self.clip(video), self.labels[video], video


class Recorder:
    """What training feeds the model and the loss: ``inputs`` (each training-mode forward's clips),
    ``targets`` (each loss call's targets) and ``train_set`` (the :class:`SeededClips` trained on)."""

    def __init__(self, monkeypatch, labels):
        self.inputs, self.targets, self.train_set = [], [], None
        build_model, forward = builders.build_model, SoftTargetCrossEntropy.forward

        def build_dataset(cfg, split, train, num_clips=1, num_crops=1):
            dataset = SeededClips(labels, train, num_clips * num_crops)
            if train:
                self.train_set = dataset
            return dataset

        def recording_model(*args, **kwargs):
            model = build_model(*args, **kwargs)
            model.register_forward_pre_hook(lambda m, a: self.inputs.append(a[0].detach().clone()) if m.training else None)
            return model

        def recording_loss(module, logits, targets):
            self.targets.append(targets.detach().clone())
            return forward(module, logits, targets)

        monkeypatch.setattr(builders, "build_dataset", build_dataset)
        monkeypatch.setattr(builders, "build_model", recording_model)
        monkeypatch.setattr(SoftTargetCrossEntropy, "forward", recording_loss)

    def raw_batches(self, batch_size: int, steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The clips ``(N, C, T, H, W)`` and labels ``(N,)`` of each step's batch, before any switch,
        rebuilt from the indices the training set was asked for."""
        fetched = self.train_set.fetched
        batches = []
        for step in range(steps):
            videos = fetched[step * batch_size:(step + 1) * batch_size]
            batches.append((torch.stack([self.train_set.clip(v) for v in videos]),
                            torch.tensor([self.train_set.labels[v] for v in videos])))
        return batches


def _cfg(tmp_path, *extra):
    return load_config(None, [
        f"output_dir={tmp_path}", "name=run", f"data.root={tmp_path}", "data.make_demo=false", "data.batch_size=4",
        "data.num_workers=0", "data.test_batch_size=6", "model.width=4", "train.epochs=1", "optim.name=sgd",
        "optim.lr=0.05", "train.deterministic=true", "train.device=cpu", "train.test_after_train=false", *extra,
    ])


LABELS_12 = [video % 3 for video in range(12)]


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mixing_reaches_the_model_and_the_loss(tmp_path, monkeypatch, kind):
    """Every step's clips are the raw batch mixed with its reverse (mixup: one blend weight ``lam`` for
    the batch, read back from the clips; CutMix: one box of the partner, the same in every clip and
    frame, ``lam`` = the share left uncovered), and the loss gets the labels mixed with that ``lam``."""
    record = Recorder(monkeypatch, LABELS_12)
    train(_cfg(tmp_path, f"train.{kind}_alpha=1.0", "train.mix_prob=1.0", "train.limit_steps_per_epoch=2"))
    assert len(record.inputs) == len(record.targets) == 2
    lams = []
    for (raw, labels), got, targets in zip(record.raw_batches(4, 2), record.inputs, record.targets):
        raw, got = raw.double(), got.double()
        partner = raw.flip(0)
        if kind == "mixup":
            lam = float(((got - partner) * (raw - partner)).sum() / ((raw - partner) ** 2).sum())
            torch.testing.assert_close(got, lam * raw + (1 - lam) * partner, rtol=0, atol=1e-5)
        else:
            pasted = (got != raw).any(0).any(0).any(0)  # (H, W): where any clip shows its partner
            rows, cols = pasted.any(1).nonzero().flatten(), pasted.any(0).nonzero().flatten()
            assert pasted.any(), "CutMix pasted no box"
            box = torch.zeros_like(pasted)
            box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
            assert torch.equal(pasted, box), "the pasted pixels are not one box"
            torch.testing.assert_close(got, torch.where(box, partner, raw), rtol=0, atol=0)
            lam = 1 - float(box.double().mean())
        lams.append(lam)
        assert 0 < lam < 1
        one_hot = torch.nn.functional.one_hot(labels, 3).double()
        torch.testing.assert_close(targets.double(), lam * one_hot + (1 - lam) * one_hot.flip(0), rtol=0, atol=1e-5)
    assert lams[0] != lams[1]  # a fresh draw each step


def test_random_erasing_reaches_the_model(tmp_path, monkeypatch):
    """``data.random_erasing=1``: each clip the model gets is its raw clip with one box, the same
    through every channel and frame, set to 0 (the dataset's mean colour after normalization); the
    loss gets the plain labels."""
    record = Recorder(monkeypatch, LABELS_12)
    train(_cfg(tmp_path, "data.random_erasing=1.0", "train.limit_steps_per_epoch=2"))
    assert len(record.inputs) == 2
    erased = 0
    for (raw, labels), got, targets in zip(record.raw_batches(4, 2), record.inputs, record.targets):
        assert torch.equal(targets, labels)
        for clip, source in zip(got, raw):
            changed = clip != source  # (C, T, H, W)
            if not changed.any():
                continue
            erased += 1
            assert (clip[changed] == 0).all()
            pixels = changed.any(0).any(0)
            assert torch.equal(changed, pixels.expand_as(changed)), "the box differs between channels or frames"
            rows, cols = pixels.any(1).nonzero().flatten(), pixels.any(0).nonzero().flatten()
            assert int(pixels.sum()) == len(rows) * len(cols) == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
            assert 0.02 * 256 - 16 < int(pixels.sum()) < 256 / 3 + 16  # torchvision's scale (0.02, 1/3), rounded sides
    assert erased >= 6  # of 8 clips: with probability 1 a box is missing only when 10 tries do not fit one


def test_class_balanced_sampler_draws_each_class_about_equally(tmp_path, monkeypatch):
    """48 training videos, 36 of class 0 and 6 each of classes 1 and 2: the uniform sampler would draw
    exactly 36/6/6 in an epoch; ``class_balanced`` draws with replacement, each class with probability
    1/3 (16 each on average; fewer than 9 of a rare class has probability 0.005)."""
    labels = [0] * 36 + [1] * 6 + [2] * 6
    record = Recorder(monkeypatch, labels)
    train(_cfg(tmp_path, "data.sampler=class_balanced", "data.batch_size=8"))
    drawn = record.train_set.fetched
    assert len(drawn) == 48 and len(set(drawn)) < 48  # with replacement
    reached = torch.cat(record.targets).tolist()
    assert reached == [labels[video] for video in drawn]  # the drawn videos' labels reach the loss
    counts = Counter(reached)
    assert counts[1] >= 9 and counts[2] >= 9 and counts[0] <= 26, counts


def test_rand_augment_reaches_the_training_clips(demo_root, tmp_path, monkeypatch):
    """``data.rand_augment_n/m``: the clips of the first step are the demo videos' training clips with
    RandAugment (built here from the plain dataset and a ``TrainTransform`` of those settings), not
    without it."""
    inputs, fetched = [], []
    build_model, getitem = builders.build_model, ClipDataset.__getitem__

    def recording_model(*args, **kwargs):
        model = build_model(*args, **kwargs)
        model.register_forward_pre_hook(lambda m, a: inputs.append(a[0].detach().clone()) if m.training else None)
        return model

    def recording_getitem(dataset, index):
        if dataset.train:
            fetched.append(index)
        return getitem(dataset, index)

    monkeypatch.setattr(builders, "build_model", recording_model)
    monkeypatch.setattr(ClipDataset, "__getitem__", recording_getitem)
    overrides = [f"output_dir={tmp_path}", "name=run", f"data.root={demo_root}", "data.make_demo=false",
                 "data.num_frames=4", "data.crop_size=32", "data.train_scale=[32,40]", "data.test_scale=32",
                 "data.batch_size=4", "data.test_batch_size=8", "data.num_workers=0", "data.num_clips=1",
                 "data.num_crops=1", "model.width=4", "train.epochs=1", "train.limit_steps_per_epoch=1",
                 "train.device=cpu", "train.test_after_train=false"]
    cfg = load_config(None, [*overrides, "data.rand_augment_n=2", "data.rand_augment_m=9"])
    train(cfg)
    assert len(inputs) == 1 and len(fetched) == 4
    drawn = list(fetched)
    plain = builders.build_dataset(load_config(None, overrides), "train", train=True)
    augmented = builders.build_dataset(load_config(None, overrides), "train", train=True)
    augmented.transform = TrainTransform(32, (32, 40), True, rand_augment_n=2, rand_augment_m=9)
    normalize = builders.build_normalizer(cfg)
    expected = normalize(torch.stack([augmented[index][0] for index in drawn]))
    without = normalize(torch.stack([plain[index][0] for index in drawn]))
    torch.testing.assert_close(inputs[0], expected, rtol=0, atol=0)
    assert not torch.equal(inputs[0], without)


def test_precise_bn_sets_the_statistics_to_the_mean_over_its_batches(tmp_path, monkeypatch):
    """``train.precise_bn_batches=2``: after the last step, before validation, the model runs 2 more
    training-mode batches, and every BatchNorm of the checkpointed model holds the mean over those
    batches of each batch's per-channel mean and unbiased variance of the layer's input, computed
    here in float64 from the inputs the layers received."""
    record = Recorder(monkeypatch, LABELS_12)
    layer_inputs = []  # per training-mode forward of the model: {BatchNorm name: its input}
    build_model = builders.build_model

    def recording_model(*args, **kwargs):
        model = build_model(*args, **kwargs)
        model.register_forward_pre_hook(lambda m, a: layer_inputs.append({}) if m.training else None)
        for name, layer in model.named_modules():
            if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
                layer.register_forward_pre_hook(
                    lambda m, a, name=name: layer_inputs[-1].__setitem__(name, a[0].detach().double()) if m.training else None)
        return model

    monkeypatch.setattr(builders, "build_model", recording_model)
    forwards_at_last_step = []
    result = train(_cfg(tmp_path, "train.precise_bn_batches=2", "train.limit_steps_per_epoch=2"),
                   step_callbacks=[lambda context: forwards_at_last_step.append(len(layer_inputs))])
    precise = layer_inputs[forwards_at_last_step[-1]:]
    assert len(forwards_at_last_step) == 2 and len(precise) == 2, "precise BN ran no batches after training"
    state = load_checkpoint(result.last_checkpoint)["model"]
    assert precise[0].keys() and all(batch.keys() == precise[0].keys() for batch in precise)
    for name in precise[0]:
        dims = [0, *range(2, precise[0][name].dim())]
        mean = torch.stack([batch[name].mean(dims) for batch in precise]).mean(0)
        var = torch.stack([batch[name].var(dims, unbiased=True) for batch in precise]).mean(0)
        torch.testing.assert_close(state[f"{name}.running_mean"].double(), mean, rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(state[f"{name}.running_var"].double(), var, rtol=1e-5, atol=1e-6, msg=name)
