"""Clip pipeline: decoding against PyAV, split parsers on official formats, bad files, deterministic views."""
from __future__ import annotations

import logging
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from softpool3d.datasets import (
    DEMO_CLASSES,
    AnnotationError,
    OpenVideo,
    VideoReadError,
    build_dataset,
    load_annotations,
    read_frames,
    video_info,
    worker_context,
    write_video,
)
from softpool3d.datasets.sampling import crop_offsets, random_clip, uniform_clips

CLIP = dict(num_frames=4, sampling_rate=2, crop_size=48, train_scale=(48, 56), test_scale=48)


def _pyav_decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def _moving_frames(num_frames: int = 20, height: int = 48, width: int = 64) -> np.ndarray:
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 60, (num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        frames[t, 10:30, 2 * t : 2 * t + 12] = (250, 40 + 5 * t, 120)
    return frames


@pytest.mark.parametrize("name, codec", [("clip.mp4", "libx264"), ("clip.avi", "mpeg4"), ("clip.webm", "libvpx-vp9")])
def test_read_frames_equals_pyav_decode(tmp_path, name, codec):
    path = tmp_path / name
    write_video(path, _moving_frames(), codec=codec)
    reference = _pyav_decode(path)
    indices = [0, 7, 3, 19, 19, 12]
    frames = read_frames(path, indices)
    assert frames.dtype == torch.uint8 and frames.shape == (6, 48, 64, 3)
    assert np.array_equal(frames.numpy(), reference[indices])
    info = video_info(path)
    assert info.num_frames == len(reference) == 20
    assert info.fps == pytest.approx(25.0)


def test_pyav_fallback_gives_the_same_frames(tmp_path, monkeypatch):
    import decord

    path = tmp_path / "clip.mp4"
    write_video(path, _moving_frames())

    def refuse(*args, **kwargs):
        raise RuntimeError("decord refuses this file")

    monkeypatch.setattr(decord, "VideoReader", refuse)
    assert np.array_equal(read_frames(path, [2, 5, 11]).numpy(), _pyav_decode(path)[[2, 5, 11]])


def test_unreadable_files_raise_video_read_error(tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    for path in (corrupt, empty, tmp_path / "missing.mp4"):
        with pytest.raises(VideoReadError, match=path.name):
            OpenVideo(path)
    good = tmp_path / "good.mp4"
    write_video(good, _moving_frames(6))
    with pytest.raises(VideoReadError, match="6 frames"):
        read_frames(good, [6])


def test_sampling_loops_short_videos_and_spreads_test_clips():
    assert random_clip(3, 4, 2) == [0, 2, 1, 0]
    assert all(0 <= c[0] <= 93 and c[-1] == c[0] + 6 for c in (random_clip(100, 4, 2) for _ in range(20)))
    assert uniform_clips(3, 4, 2, 1) == [[0, 2, 1, 0]]
    clips = uniform_clips(100, 4, 2, 3)
    assert [c[0] for c in clips] == [0, 46, 93] and clips[2][-1] == 99
    assert uniform_clips(100, 4, 2, 1) == [[46, 48, 50, 52]]
    assert crop_offsets((48, 80), 48, 3) == [(0, 0), (0, 16), (0, 32)]
    assert crop_offsets((80, 48), 48, 3) == [(0, 0), (16, 0), (32, 0)]


def _write_ucf(root: Path) -> None:
    (root / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Archery\n")
    (root / "trainlist01.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\nArchery/v_Archery_g08_c01.avi 2\n"
    )
    (root / "testlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\nArchery/v_Archery_g01_c01.avi\n")
    for line in ["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "Archery/v_Archery_g08_c01.avi",
                 "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", "Archery/v_Archery_g01_c01.avi"]:
        (root / line).parent.mkdir(parents=True, exist_ok=True)
        (root / line).touch()


def test_ucf101_lists_and_class_index(tmp_path):
    _write_ucf(tmp_path)
    train = load_annotations("ucf101", tmp_path, "train")
    test = load_annotations("ucf101", tmp_path, "test")
    assert train.classes == test.classes == ["ApplyEyeMakeup", "Archery"]
    assert train.labels == [0, 1] and test.labels == [0, 1]
    assert test.videos[1] == tmp_path / "Archery" / "v_Archery_g01_c01.avi"
    (tmp_path / "trainlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\nArchery/v_Archery_g08_c01.avi 7\n")
    with pytest.raises(AnnotationError, match=r"trainlist01.txt:2"):
        load_annotations("ucf101", tmp_path, "train")


def test_hmdb51_split_markers(tmp_path):
    splits = tmp_path / "testTrainMulti_7030_splits"
    splits.mkdir()
    (splits / "brush_hair_test_split1.txt").write_text("a.avi 1 \nb.avi 2 \nc.avi 0 \n")
    (splits / "cartwheel_test_split1.txt").write_text("d.avi 2 \ne.avi 1 \n")
    for cls, name in [("brush_hair", "a"), ("brush_hair", "b"), ("brush_hair", "c"), ("cartwheel", "d"), ("cartwheel", "e")]:
        (tmp_path / cls).mkdir(exist_ok=True)
        (tmp_path / cls / f"{name}.avi").touch()
    train = load_annotations("hmdb51", tmp_path, "train")
    test = load_annotations("hmdb51", tmp_path, "test")
    assert train.classes == ["brush_hair", "cartwheel"]
    assert [p.name for p in train.videos] == ["a.avi", "e.avi"] and train.labels == [0, 1]
    assert [p.name for p in test.videos] == ["b.avi", "d.avi"] and test.labels == [0, 1]
    (splits / "cartwheel_test_split1.txt").write_text("d.avi 2\ne.avi 3\n")
    with pytest.raises(AnnotationError, match=r"cartwheel_test_split1.txt:2"):
        load_annotations("hmdb51", tmp_path, "train")


def test_kinetics_csv_nested_and_flat_with_missing_videos_reported(tmp_path, caplog):
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    (annotations / "train.csv").write_text(
        "label,youtube_id,time_start,time_end,split\n"
        "abseiling,aaa,10,20,train\n"
        "zumba,bbb,0,10,train\n"
        "zumba,ccc,5,15,train\n"
    )
    (annotations / "validate.csv").write_text("label,youtube_id,time_start,time_end,split\nabseiling,ddd,1,11,validate\n")
    (tmp_path / "train" / "abseiling").mkdir(parents=True)
    (tmp_path / "train" / "abseiling" / "aaa_000010_000020.mp4").touch()
    (tmp_path / "train" / "bbb_000000_000010.mkv").touch()
    (tmp_path / "validate").mkdir()
    (tmp_path / "validate" / "ddd_000001_000011.mp4").touch()
    with caplog.at_level(logging.WARNING):
        train = load_annotations("kinetics700", tmp_path, "train")
    assert train.classes == ["abseiling", "zumba"]
    assert [p.name for p in train.videos] == ["aaa_000010_000020.mp4", "bbb_000000_000010.mkv"]
    assert train.labels == [0, 1]
    assert "1 of 3 annotated videos are missing" in caplog.text and "ccc_000005_000015" in caplog.text
    assert load_annotations("kinetics700", tmp_path, "val").labels == [0]
    (annotations / "train.csv").write_text("label,youtube_id,time_start,time_end,split\nzumba,bbb,zero,10,train\n")
    with pytest.raises(AnnotationError, match=r"train.csv:2"):
        load_annotations("kinetics700", tmp_path, "train")


def test_custom_folders_and_csv(tmp_path):
    for split, cls, name in [("train", "cat", "1.mp4"), ("train", "dog", "2.mp4"), ("test", "dog", "3.mp4")]:
        (tmp_path / split / cls).mkdir(parents=True, exist_ok=True)
        (tmp_path / split / cls / name).touch()
    test = load_annotations("custom", tmp_path, "test")
    assert test.classes == ["cat", "dog"] and test.labels == [1]
    table = tmp_path / "list.tsv"
    table.write_text("path\tlabel\ntrain/cat/1.mp4\tcat\ntest/dog/3.mp4\tdog\n")
    listed = load_annotations("custom", tmp_path, "train", annotations=table)
    assert listed.labels == [0, 1] and listed.videos[1] == tmp_path / "test/dog/3.mp4"
    table.write_text("train/cat/1.mp4\n")
    with pytest.raises(AnnotationError, match=r"list.tsv:1"):
        load_annotations("custom", tmp_path, "train", annotations=table)


def test_demo_set_layout(demo_root):
    train = load_annotations("ucf101", demo_root, "train")
    val = load_annotations("ucf101", demo_root, "val")
    test = load_annotations("ucf101", demo_root, "test")
    assert train.classes == val.classes == list(DEMO_CLASSES)
    assert len(train.videos) == 3 * len(DEMO_CLASSES) and len(val.videos) == len(DEMO_CLASSES)
    assert len(test.videos) == 2 * len(DEMO_CLASSES)
    assert not set(train.videos) & set(test.videos) and not set(val.videos) & (set(train.videos) | set(test.videos))
    assert video_info(test.videos[0]).num_frames == 16


def test_test_views_are_deterministic_and_indexed_by_video(demo_root):
    def views():
        dataset = build_dataset("ucf101", demo_root, "test", train=False, num_clips=2, num_crops=3, **CLIP)
        return dataset, [dataset[i] for i in range(0, len(dataset), 5)]

    dataset, first = views()
    _, second = views()
    assert dataset.num_views == 6 and len(dataset) == 6 * dataset.num_videos
    for (clip_a, label_a, video_a), (clip_b, label_b, video_b), index in zip(first, second, range(0, len(dataset), 5)):
        assert torch.equal(clip_a, clip_b) and label_a == label_b
        assert video_a == video_b == index // 6
        assert clip_a.shape == (3, 4, 48, 48) and clip_a.dtype == torch.uint8


@pytest.mark.parametrize("train", [True, False])
def test_clips_leave_the_loader_as_uint8(demo_root, train):
    dataset = build_dataset("ucf101", demo_root, "train" if train else "test", train=train, **CLIP)
    loader = DataLoader(dataset, batch_size=4, num_workers=2, multiprocessing_context=worker_context())
    clips, labels, videos = next(iter(loader))
    assert clips.dtype == torch.uint8 and clips.shape == (4, 3, 4, 48, 48)
    assert torch.equal(labels, torch.tensor([dataset.labels[int(v)] for v in videos]))


def test_epoch_survives_corrupt_empty_and_missing_files(demo_root, tmp_path, caplog):
    root = tmp_path / "bad"
    root.mkdir()
    lines = (Path(demo_root) / "testlist01.txt").read_text().split()
    for name in ["classInd.txt", "testlist01.txt"]:
        (root / name).write_text((Path(demo_root) / name).read_text())
    for line in lines:
        (root / line).parent.mkdir(parents=True, exist_ok=True)
        (root / line).write_bytes((Path(demo_root) / line).read_bytes())
    (root / lines[0]).write_bytes(b"\x00\x00\x00\x18ftypisom" + b"\x17" * 900)
    (root / lines[1]).write_bytes(b"")
    (root / lines[2]).unlink()
    with caplog.at_level(logging.WARNING):
        dataset = build_dataset("ucf101", root, "test", train=True, **CLIP)
    assert "1 of 16 annotated videos are missing" in caplog.text
    (root / lines[3]).unlink()
    loader = DataLoader(dataset, batch_size=4, num_workers=2, multiprocessing_context=worker_context())
    seen = [video for _, _, videos in loader for video in videos.tolist()]
    assert len(seen) == dataset.num_videos == 15
    skipped = dataset.skipped_files()
    assert sorted(Path(p).name for p in skipped) == sorted(Path(l).name for l in (lines[0], lines[1], lines[3]))
    assert not {0, 1, 2} & set(seen)
