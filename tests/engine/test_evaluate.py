"""Multi-view evaluation against a hand-computed reference; sharding covers every item once; metrics;
unreadable videos left out of the metrics and named."""
import csv
import json
import shutil

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from softpool3d.datasets import build_dataset, worker_context
from softpool3d.datasets.clip_dataset import UNREADABLE
from softpool3d.engine.evaluation.evaluate import UnreadableVideosError, evaluate
from softpool3d.engine.evaluation.metrics import confusion_matrix, per_class_accuracy, per_class_rows, topk_correct, worst_classes
from softpool3d.engine.evaluation.testing import write_predictions
from softpool3d.engine.inputs import ClipNormalizer
from softpool3d.engine.processes.distributed import DistInfo
from softpool3d.engine.processes.sampler import ShardSampler


class Views(Dataset):
    """``num_videos x num_views`` items whose "clip" is a random logit vector, so the model is the identity."""

    def __init__(self, num_videos=7, num_views=3, num_classes=6):
        self.classes = [f"c{i}" for i in range(num_classes)]
        self.num_videos, self.num_views = num_videos, num_views
        self.logits = torch.randn(num_videos * num_views, num_classes, generator=torch.Generator().manual_seed(0))
        self.labels = torch.arange(num_videos) % num_classes

    def __len__(self):
        return self.num_videos * self.num_views

    def __getitem__(self, index):
        return self.logits[index], int(self.labels[index // self.num_views]), index // self.num_views


CPU = DistInfo(0, 1, 0, torch.device("cpu"))
FLOAT_IN = ClipNormalizer((0.45,) * 3, (0.225,) * 3)
"""Passes the float "clips" (logits) of these datasets to the model unchanged."""


def test_softmax_is_averaged_over_each_videos_views():
    data = Views()
    result = evaluate(torch.nn.Identity(), data, CPU, batch_size=4, normalizer=FLOAT_IN)
    reference = data.logits.double().softmax(1).reshape(data.num_videos, data.num_views, -1).mean(1)
    torch.testing.assert_close(result.probabilities, reference, rtol=1e-6, atol=1e-7)
    assert torch.equal(result.labels, data.labels) and (result.views == 3).all()
    predicted = reference.argmax(1)
    assert result.top1 == pytest.approx((predicted == data.labels).double().mean().item())


@pytest.mark.parametrize("length,world", [(10, 2), (11, 2), (7, 3), (2, 4)])
def test_shards_cover_every_item_exactly_once(length, world):
    seen = sorted(i for rank in range(world) for i in ShardSampler(length, rank, world))
    assert seen == list(range(length))


def test_topk_and_confusion_match_loops():
    scores = torch.randn(50, 7, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 7, (50,), generator=torch.Generator().manual_seed(2))
    order = scores.argsort(1, descending=True).tolist()
    for k, count in zip((1, 3, 9), topk_correct(scores, labels, (1, 3, 9))):
        assert count == sum(labels[i].item() in order[i][:k] for i in range(50))
    matrix = confusion_matrix(scores.argmax(1), labels, 7)
    loop = torch.zeros(7, 7, dtype=torch.int64)
    for truth, guess in zip(labels.tolist(), scores.argmax(1).tolist()):
        loop[truth, guess] += 1
    assert torch.equal(matrix, loop)
    torch.testing.assert_close(per_class_accuracy(matrix), loop.diagonal().double() / loop.sum(1).double())


def test_predictions_files_hold_every_video(tmp_path):
    result = evaluate(torch.nn.Identity(), Views(), CPU, batch_size=5, normalizer=FLOAT_IN)
    csv_path, json_path = write_predictions(result, tmp_path)
    assert csv_path.read_text().count("\n") == 7 + 1
    summary = json.loads(json_path.read_text())
    assert summary["num_videos"] == 7 and len(summary["predictions"]) == 7
    assert summary["top1"] == pytest.approx(result.top1)
    assert sorted(row["video_index"] for row in summary["predictions"]) == list(range(7))
    with (tmp_path / "per_class.csv").open() as file:
        per_class = list(csv.DictReader(file))
    assert [row["class"] for row in per_class] == result.classes
    assert sum(int(row["count"]) for row in per_class) == 7


def test_per_class_rows_and_worst_classes_match_a_loop():
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 3])
    guesses = torch.tensor([0, 1, 1, 2, 1, 1, 0, 2, 2, 0])
    rows = per_class_rows(confusion_matrix(guesses, labels, 5), ["a", "b", "c", "d", "e"])
    for k, row in enumerate(rows):
        mine = guesses[labels == k].tolist()
        assert row["count"] == len(mine)
        assert row["accuracy"] == (mine.count(k) / len(mine) if mine else None)
        wrong = [g for g in mine if g != k]
        expected = max(sorted(set(wrong)), key=wrong.count) if wrong else None
        assert row["most_confused_with"] == (None if expected is None else "abcde"[expected])
        assert row["confused_count"] == (wrong.count(expected) if wrong else 0)
    assert [row["class"] for row in worst_classes(rows, 3)] == ["d", "a", "b"]


class WithUnreadable(Views):
    """``Views`` whose videos in ``bad`` yield ``UNREADABLE`` items for the views in ``bad_views``."""

    def __init__(self, bad=(2, 5), bad_views=(0, 1, 2), **kwargs):
        super().__init__(**kwargs)
        self.bad, self.bad_views = set(bad), set(bad_views)
        self.videos = [f"/data/v{i}.mp4" for i in range(self.num_videos)]

    def __getitem__(self, index):
        clip, label, video = super().__getitem__(index)
        if video in self.bad and index % self.num_views in self.bad_views:
            return torch.zeros_like(clip), UNREADABLE, video
        return clip, label, video


@pytest.mark.parametrize("bad_views", [(0, 1, 2), (1,)])
def test_unreadable_videos_are_left_out_and_named(bad_views):
    data = WithUnreadable(bad_views=bad_views)
    result = evaluate(torch.nn.Identity(), data, CPU, batch_size=4, max_bad_fraction=0.3, normalizer=FLOAT_IN)
    kept = [v for v in range(data.num_videos) if v not in data.bad]
    reference = data.logits.double().softmax(1).reshape(data.num_videos, data.num_views, -1).mean(1)[kept]
    torch.testing.assert_close(result.probabilities, reference, rtol=1e-6, atol=1e-7)
    assert result.video_indices.tolist() == kept and result.videos == [data.videos[v] for v in kept]
    assert result.left_out == ["/data/v2.mp4", "/data/v5.mp4"]
    assert result.coverage == "5 of 7 videos" and result.total_videos == 7
    predicted = reference.argmax(1)
    assert result.top1 == pytest.approx((predicted == data.labels[kept]).double().mean().item())


def test_more_unreadable_videos_than_the_fraction_stop_naming_them():
    with pytest.raises(UnreadableVideosError, match=r"2 of 7 videos .*max_bad_fraction=0.25.*/data/v2.mp4, /data/v5.mp4"):
        evaluate(torch.nn.Identity(), WithUnreadable(), CPU, batch_size=4, max_bad_fraction=0.25, normalizer=FLOAT_IN)
    evaluate(torch.nn.Identity(), WithUnreadable(), CPU, batch_size=4, max_bad_fraction=2 / 7, normalizer=FLOAT_IN)


def test_predictions_carry_the_video_path_and_what_was_left_out(tmp_path):
    result = evaluate(torch.nn.Identity(), WithUnreadable(), CPU, batch_size=4, max_bad_fraction=0.5,
                      normalizer=FLOAT_IN)
    csv_path, json_path = write_predictions(result, tmp_path)
    rows = list(csv.DictReader(csv_path.open()))
    assert [row["video"] for row in rows] == [f"/data/v{i}.mp4" for i in (0, 1, 3, 4, 6)]
    assert [int(row["video_index"]) for row in rows] == [0, 1, 3, 4, 6]
    summary = json.loads(json_path.read_text())
    assert (summary["num_videos"], summary["total_videos"]) == (5, 7)
    assert summary["left_out"] == ["/data/v2.mp4", "/data/v5.mp4"]


def test_clip_dataset_test_views_of_a_bad_video_collate_as_unreadable(demo_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    lines = (root / "testlist01.txt").read_text().split()
    (root / lines[1]).write_bytes(b"")
    dataset = build_dataset("ucf101", root, "test", train=False, num_frames=4, crop_size=32, test_scale=32,
                            num_clips=2, num_crops=3)
    batches = list(DataLoader(dataset, batch_size=8, num_workers=2, multiprocessing_context=worker_context()))
    labels = torch.cat([labels for _, labels, _ in batches])
    videos = torch.cat([videos for _, _, videos in batches])
    assert torch.equal(videos[labels == UNREADABLE], torch.full((6,), 1))
    assert (labels[videos != 1] >= 0).all()
    assert batches[0][0].shape == (8, 3, 4, 32, 32)
