"""Per-sample training randomness: a clip depends on (seed, epoch, index, repeat) only, never on
the DataLoader worker, the worker count or the global RNG; repeat_aug decodes a video once."""
from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader

from softpool3d.datasets import Annotations, build_dataset, load_annotations, worker_context
from softpool3d.datasets import clip_dataset
from softpool3d.datasets.clip_dataset import ClipDataset
from softpool3d.datasets.sampling import random_clip, sample_generator

CLIP = dict(num_frames=4, sampling_rate=2, crop_size=32, train_scale=(32, 48))


def _clips_by_index(dataset, num_workers: int, shuffle: bool = False) -> dict[int, torch.Tensor]:
    order = torch.Generator().manual_seed(123) if shuffle else None
    loader = DataLoader(dataset, batch_size=3, num_workers=num_workers, shuffle=shuffle, generator=order,
                        multiprocessing_context=worker_context() if num_workers else None)
    return {int(v): clip for clips, _, videos in loader for clip, v in zip(clips, videos)}


def test_sample_generator_depends_on_the_tuple_only():
    draws = lambda *key: torch.rand(4, generator=sample_generator(*key))  # noqa: E731
    assert torch.equal(draws(0, 1, 2, 0), draws(0, 1, 2, 0))
    keys = [(0, 1, 2, 0), (1, 1, 2, 0), (0, 2, 2, 0), (0, 1, 3, 0), (0, 1, 2, 1), (0, 1, 2, -1)]
    assert len({tuple(draws(*k).tolist()) for k in keys}) == len(keys)
    starts = Counter(random_clip(10, 4, 2, sample_generator(0, 0, i, 0))[0] for i in range(800))
    assert set(starts) == {0, 1, 2, 3}  # room = 10 - 7 = 3, every start reached ...
    assert min(starts.values()) > 150  # ... about uniformly (200 each)


def test_same_sample_same_clip_with_0_1_2_workers_and_any_order(demo_root):
    dataset = build_dataset("ucf101", demo_root, "train", train=True, seed=7, **CLIP)
    dataset.set_epoch(3)
    reference = _clips_by_index(dataset, 0)
    assert sorted(reference) == list(range(dataset.num_videos))
    torch.manual_seed(999)  # the global RNG plays no part
    for workers, shuffle in [(1, False), (2, False), (2, True)]:
        clips = _clips_by_index(dataset, workers, shuffle)
        assert clips.keys() == reference.keys()
        assert all(torch.equal(clips[i], reference[i]) for i in reference), (workers, shuffle)
    dataset.set_epoch(4)
    next_epoch = _clips_by_index(dataset, 2)
    assert sum(not torch.equal(next_epoch[i], reference[i]) for i in reference) > 0.9 * len(reference)
    other_seed = build_dataset("ucf101", demo_root, "train", train=True, seed=8, **CLIP)
    other_seed.set_epoch(3)
    assert not torch.equal(other_seed[0][0], reference[0])


def test_replacement_of_an_unreadable_video_is_drawn_per_sample(demo_root, tmp_path):
    parsed = load_annotations("ucf101", demo_root, "train")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypisom" + b"\x17" * 900)
    annotations = Annotations([corrupt, *parsed.videos], [0, *parsed.labels], parsed.classes)
    dataset = ClipDataset(annotations, train=True, seed=1, **CLIP)
    dataset.set_epoch(2)
    clip, label, video = dataset[0]
    assert video != 0 and label == dataset.labels[video]
    for workers in (1, 2):
        loader = DataLoader(dataset, batch_size=2, num_workers=workers, multiprocessing_context=worker_context())
        clips, labels, videos = next(iter(loader))
        assert torch.equal(clips[0], clip) and (int(labels[0]), int(videos[0])) == (label, video)
    assert [str(corrupt)] == dataset.skipped_files()


def test_repeat_aug_decodes_once_and_returns_k_independent_clips(demo_root, monkeypatch):
    opened, decodes = [], []

    class CountingVideo(clip_dataset.OpenVideo):
        def __init__(self, path):
            super().__init__(path)
            opened.append(path)

        def frames(self, indices):
            decodes.append(list(indices))
            return super().frames(indices)

    monkeypatch.setattr(clip_dataset, "OpenVideo", CountingVideo)
    single = build_dataset("ucf101", demo_root, "train", train=True, seed=5, **CLIP)
    repeated = build_dataset("ucf101", demo_root, "train", train=True, seed=5, repeat_aug=3, **CLIP)
    for dataset in (single, repeated):
        dataset.set_epoch(1)
    opened.clear(), decodes.clear()
    clips, label, video = repeated[4]
    assert clips.shape == (3, 3, 4, 32, 32) and (label, video) == (repeated.labels[4], 4)
    assert len(opened) == 1 and len(decodes) == 1  # one open, one decode for the three clips
    assert torch.equal(clips[0], single[4][0])  # repeat 0 is the clip repeat_aug=1 draws
    assert not torch.equal(clips[0], clips[1]) and not torch.equal(clips[1], clips[2])
    positions = random_clip(16, 4, 2, sample_generator(5, 1, 4, 0))
    assert decodes[0] == positions  # the frames are drawn by repeat 0's generator (demo videos: 16 frames)
    batch, labels, _ = next(iter(DataLoader(repeated, batch_size=2, num_workers=1, multiprocessing_context=worker_context())))
    assert batch.shape == (2, 3, 3, 4, 32, 32) and torch.equal(batch[1], repeated[1][0])
    with pytest.raises(ValueError, match="repeat_aug"):
        build_dataset("ucf101", demo_root, "test", train=False, repeat_aug=2, **CLIP)
