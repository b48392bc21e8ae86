"""Extending the loader: a new dataset format is one registered class, a new sampler or transform
one argument of ClipDataset; both checked against the lines written and frames decoded by PyAV."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import av
import numpy as np
import pytest
import torch

from softpool3d.datasets import (
    DATASET_NAMES,
    Annotations,
    ClipDataset,
    DatasetFormat,
    build_dataset,
    list_datasets,
    load_annotations,
    make_index,
    register_dataset,
)
from softpool3d.datasets import registry
from softpool3d.datasets.annotations import read_lines
from softpool3d.datasets.clip_dataset import UNREADABLE
from softpool3d.datasets.sampling import randint, sample_generator

CLIP = dict(num_frames=4, sampling_rate=2, crop_size=32, train_scale=(32, 40), test_scale=32)


@pytest.fixture
def restore_registry() -> Iterator[None]:
    """Formats registered by the test are gone after it."""
    saved = dict(registry._FORMATS)
    yield
    registry._FORMATS.clear()
    registry._FORMATS.update(saved)


def _pyav_decode(path: Path) -> np.ndarray:
    """Every frame of ``path``, uint8 ``(T, H, W, 3)``, decoded by PyAV from the start."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def _write_lists(demo_root: Path, folder: Path) -> tuple[list[str], list[str]]:
    """``train.txt`` and ``test.txt`` with one ``<Class>/<file>`` a line (the demo set's lists
    without the UCF-101 class index), the test list with one video that does not exist."""
    train = [line.split()[0] for line in (demo_root / "trainlist01.txt").read_text().splitlines() if line]
    test = [line.split()[0] for line in (demo_root / "testlist01.txt").read_text().splitlines() if line]
    test.append("Rotate/v_Rotate_g99_c01.mp4")
    folder.mkdir()
    (folder / "train.txt").write_text("\n".join(train) + "\n")
    (folder / "test.txt").write_text("\n".join(test) + "\n")
    return train, test


def test_a_format_registered_in_one_class_builds_every_split(demo_root, tmp_path, restore_registry):
    parsed = []

    @register_dataset("videolist")
    class VideoList(DatasetFormat):
        """``<split>.txt`` with one ``<Class>/<file>`` a line; classes are the folder names."""

        def plan(self, root: Path, annotations: Path | None, split: str) -> tuple[str, bool]:
            return ("test", False) if split == "test" else ("train", True)

        def parse(self, root: Path, annotations: Path | None, source: str, fold: int):
            lists = sorted(annotations.glob("*.txt"))
            classes = sorted({line.split("/")[0] for path in lists for _, line in read_lines(path)})
            lines = [line for _, line in read_lines(annotations / f"{source}.txt")]
            parsed.append(source)
            return make_index([root / line for line in lines], [classes.index(line.split("/")[0]) for line in lines],
                              classes, lists)

    train_lines, test_lines = _write_lists(demo_root, tmp_path / "lists")
    published = ["kinetics700", "kinetics600", "kinetics400", "ucf101", "hmdb51", "custom"]
    assert list_datasets() == [*published, "videolist"] and "videolist" in DATASET_NAMES
    options = dict(annotations=tmp_path / "lists", val_fraction=0.25, **CLIP)
    train = build_dataset("videolist", demo_root, "train", train=True, **options)
    val = build_dataset("videolist", demo_root, "val", train=False, **options)
    test = build_dataset("videolist", demo_root, "test", train=False, **options)

    classes = sorted({line.split("/")[0] for line in train_lines})
    assert train.classes == val.classes == test.classes == classes
    assert set(train.videos) | set(val.videos) == {demo_root / line for line in train_lines}
    assert not set(train.videos) & set(val.videos)
    assert len(val.videos) == len(classes)  # a quarter of each class's 4 videos, the default carving unit
    assert test.num_missing == 1 and list(test.videos) == [demo_root / line for line in test_lines[:-1]]
    for dataset in (train, val, test):
        assert [classes[label] for label in dataset.labels] == [path.parent.name for path in dataset.videos]
    clip, label, video = train[5]
    assert clip.shape == (3, 4, 32, 32) and (label, video) == (train.labels[5], 5)

    assert parsed == ["train", "test"]  # val came from the cached train index, as every later start does
    load_annotations("videolist", demo_root, "train", tmp_path / "lists")
    assert parsed == ["train", "test"]
    with pytest.raises(ValueError, match="'ucf101' is already registered"):
        register_dataset("ucf101")(VideoList)


def segment_sampler(total: int, num_frames: int, sampling_rate: int, generator: torch.Generator) -> list[int]:
    """One random frame in each of ``num_frames`` equal segments of the video (TSN's sampling)."""
    bounds = [total * k // num_frames for k in range(num_frames + 1)]
    return [low + randint(max(high - low, 1), generator) for low, high in zip(bounds, bounds[1:])]


class CornerCrop:
    """Training: the top-left ``size`` square, in [0, 1], flipped when the generator says so."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, frames: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        clip = frames[:, : self.size, : self.size].permute(3, 0, 1, 2).float() / 255
        return clip.flip(-1) if randint(2, generator) else clip


def _expected(frames: np.ndarray, size: int, flip: bool) -> torch.Tensor:
    clip = torch.from_numpy(np.ascontiguousarray(frames[:, :size, :size])).permute(3, 0, 1, 2).float() / 255
    return clip.flip(-1) if flip else clip


def test_custom_train_sampler_and_transform_get_the_items_generators(demo_root):
    parsed = load_annotations("ucf101", demo_root, "train")
    dataset = ClipDataset(parsed, train=True, num_frames=4, crop_size=24, seed=3, repeat_aug=2,
                          train_sampler=segment_sampler, transform=CornerCrop(24))
    dataset.set_epoch(2)
    for index in (0, 7, 13):
        clips, label, video = dataset[index]
        assert clips.shape == (2, 3, 4, 24, 24) and (label, video) == (dataset.labels[index], index)
        decoded = _pyav_decode(dataset.videos[index])
        first = sample_generator(3, 2, index, 0)
        positions = segment_sampler(len(decoded), 4, 2, first)  # repeat 0's generator: frames, then its flip
        flips = [randint(2, first), randint(2, sample_generator(3, 2, index, 1))]
        for repeat in range(2):
            assert torch.equal(clips[repeat], _expected(decoded[positions], 24, bool(flips[repeat])))

    def short(total, num_frames, sampling_rate, generator):
        return [0] * (num_frames - 1)

    with pytest.raises(ValueError, match="train_sampler gave 3 frame indices, expected num_frames=4"):
        ClipDataset(parsed, train=True, num_frames=4, train_sampler=short, transform=CornerCrop(24))[0]


def test_custom_test_sampler_and_transform_keep_views_and_unreadable_items(demo_root, tmp_path):
    def ends(total: int, num_frames: int, sampling_rate: int, num_clips: int) -> list[list[int]]:
        return [list(range(num_frames)), list(range(total - num_frames, total))]

    def corners(frames: torch.Tensor, crop_index: int) -> torch.Tensor:
        picked = frames[:, :20, :20] if crop_index == 0 else frames[:, -20:, -20:]
        return picked.permute(3, 0, 1, 2).float()

    parsed = load_annotations("ucf101", demo_root, "test")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypisom" + b"\x17" * 900)
    annotations = Annotations([*parsed.videos[:2], corrupt], [*parsed.labels[:2], 0], parsed.classes)
    dataset = ClipDataset(annotations, train=False, num_frames=4, num_clips=2, num_crops=2, crop_size=20,
                          test_sampler=ends, transform=corners)
    assert len(dataset) == 3 * 4
    for video in range(2):
        decoded = torch.from_numpy(_pyav_decode(dataset.videos[video]))
        for view, (frames, rows) in enumerate([(slice(0, 4), slice(0, 20)), (slice(0, 4), slice(-20, None)),
                                               (slice(-4, None), slice(0, 20)), (slice(-4, None), slice(-20, None))]):
            clip, label, index = dataset[video * 4 + view]
            assert (label, index) == (dataset.labels[video], video)
            assert torch.equal(clip, decoded[frames, rows, rows].permute(3, 0, 1, 2).float())
    clip, label, index = dataset[2 * 4 + 3]
    assert label == UNREADABLE and index == 2 and torch.equal(clip, torch.zeros(3, 4, 20, 20))
