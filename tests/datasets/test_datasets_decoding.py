"""Decoding that no global state can break: decord's bridge, its native error output, PyAV streaming."""
from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import av
import decord
import numpy as np
import pytest
import torch
from decord._ffi.base import DECORDError
from torch.utils.data import DataLoader

from softpool3d.datasets import (
    OpenVideo,
    VideoReadError,
    build_dataset,
    read_frames,
    video_info,
    worker_context,
    write_video,
)
from softpool3d.datasets.sampling import uniform_clips

CLIP = dict(num_frames=4, sampling_rate=2, crop_size=48, train_scale=(48, 56), test_scale=48)


def _pyav_decode(path: Path) -> np.ndarray:
    """Every frame of ``path``, decoded by PyAV from frame 0: the reference."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def _frames(num_frames: int, height: int = 48, width: int = 64) -> np.ndarray:
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 60, (num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        frames[t, 8:28, (3 * t) % (width - 12) : (3 * t) % (width - 12) + 12] = (250, (7 * t) % 256, 90)
    return frames


@pytest.fixture
def refuse_decord(monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("decord refuses this file")

    monkeypatch.setattr(decord, "VideoReader", refuse)


@pytest.fixture
def torch_bridge():
    """Import pytorchvideo's decord decoder, which sets decord's bridge to torch for the process
    (on first import; later tests set it again as that import did)."""
    importlib.import_module("pytorchvideo.data.encoded_video_decord")
    decord.bridge.set_bridge("torch")
    yield
    decord.bridge.reset_bridge()


@pytest.mark.parametrize(
    "name, codec, keyframe_interval",
    [("bframes.mp4", "libx264", 12), ("mpeg4.mkv", "mpeg4", 10), ("vp9.webm", "libvpx-vp9", 16), ("mpeg4.avi", "mpeg4", 9)],
)
def test_pyav_streaming_equals_a_full_decode(tmp_path, refuse_decord, name, codec, keyframe_interval):
    path = tmp_path / name
    write_video(path, _frames(90), codec=codec, keyframe_interval=keyframe_interval)
    reference = _pyav_decode(path)
    video = OpenVideo(path)
    assert video.info.num_frames == len(reference) == 90 and video.info.fps == pytest.approx(25.0)
    for indices in ([0, 1, 2], [13, 15, 17, 19], [44, 30, 44, 89], [89], [50, 52, 54, 56, 58, 60], list(range(0, 90, 11))):
        assert np.array_equal(video.frames(indices).numpy(), reference[indices]), indices


def test_av1_file_is_read_as_pyav_decodes_it(tmp_path):
    """decord 0.6 cannot open AV1 (PyAV reads it); decord2, with FFmpeg 8, can."""
    path = tmp_path / "av1.mp4"
    write_video(path, _frames(40), codec="libsvtav1", keyframe_interval=16)
    reference = _pyav_decode(path)
    assert video_info(path).num_frames == len(reference) == 40
    assert np.array_equal(read_frames(path, [3, 20, 21, 39]).numpy(), reference[[3, 20, 21, 39]])


_PEAK_SCRIPT = """
import sys
import decord
from softpool3d.datasets import OpenVideo
def refuse(*args, **kwargs):
    raise RuntimeError("decord refuses this file")
def status(key):
    return int(next(line for line in open("/proc/self/status") if line.startswith(key)).split()[1])
decord.VideoReader = refuse
OpenVideo(sys.argv[2]).frames([0, 1])
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # reset the peak (VmHWM) to the current resident size
rss = status("VmRSS")
OpenVideo(sys.argv[1]).frames([int(i) for i in sys.argv[3:]])
print(status("VmHWM") - rss)
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc/self/clear_refs")
def test_pyav_fallback_keeps_only_the_clip_in_memory(tmp_path):
    long, short = tmp_path / "long.mkv", tmp_path / "short.mkv"
    frames = _frames(200, 160, 240)
    write_video(long, frames, codec="mpeg4", keyframe_interval=25)
    write_video(short, frames[:4], codec="mpeg4")
    indices = [180, 183, 186, 189]
    result = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(long), str(short), *map(str, indices)],
                            capture_output=True, text=True, check=True)
    growth_kb = int(result.stdout.split()[-1])
    whole_kb = frames.nbytes // 1024
    print(f"peak growth for one clip: {growth_kb} KiB; a whole decode holds {whole_kb} KiB")
    assert growth_kb < whole_kb / 4


def test_clips_load_after_pytorchvideo_sets_the_torch_bridge(demo_root, torch_bridge):
    assert decord.bridge._CURRENT_BRIDGE.type == "torch"
    path = next(Path(demo_root).glob("*/*.mp4"))
    assert np.array_equal(read_frames(path, [0, 5, 15]).numpy(), _pyav_decode(path)[[0, 5, 15]])
    dataset = build_dataset("ucf101", demo_root, "test", train=False, **CLIP)
    for workers in (0, 1):
        loader = DataLoader(dataset, batch_size=8, num_workers=workers,
                            multiprocessing_context=worker_context() if workers else None)
        seen = [v for _, _, videos in loader for v in videos.tolist()]
        assert seen == list(range(dataset.num_videos))
    assert dataset.skipped_files() == []
    assert decord.bridge._CURRENT_BRIDGE.type == "torch"


def test_a_bug_propagates_and_a_decode_failure_goes_to_pyav_then_is_a_video_read_error(demo_root, monkeypatch):
    path = next(Path(demo_root).glob("*/*.mp4"))
    reference = _pyav_decode(path)
    video = OpenVideo(path)

    def buggy(self, indices):
        raise TypeError("a bug, not bad data")

    monkeypatch.setattr(decord.VideoReader, "get_batch", buggy)
    with pytest.raises(TypeError, match="a bug"):
        video.frames([0, 1])

    def broken(self, indices):
        raise DECORDError("cannot decode frame 1")

    monkeypatch.setattr(decord.VideoReader, "get_batch", broken)
    assert np.array_equal(video.frames([0, 1]).numpy(), reference[[0, 1]])
    assert np.array_equal(video.frames([9, 3]).numpy(), reference[[9, 3]])  # PyAV from now on

    def unreadable(*args, **kwargs):
        raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")

    video = OpenVideo(path)
    monkeypatch.setattr(av, "open", unreadable)
    with pytest.raises(VideoReadError, match=f"{path.name}: decord: cannot decode frame 1; PyAV: .*Invalid data"):
        video.frames([0, 1])


def test_frames_of_the_wrong_shape_from_decord_go_to_pyav(demo_root, monkeypatch):
    path = next(Path(demo_root).glob("*/*.mp4"))
    video = OpenVideo(path)
    monkeypatch.setattr(decord.VideoReader, "get_batch", lambda self, indices: torch.zeros(len(indices), 64, 64, 6,
                                                                                            dtype=torch.uint8))
    assert np.array_equal(video.frames([4, 2]).numpy(), _pyav_decode(path)[[4, 2]])


def _write_table(path: Path, videos: list[Path]) -> None:
    path.write_text("".join(f"{video.name},{video.stem}\n" for video in videos))


def test_small_videos_decord_misreads_load_through_pyav_in_every_split(tmp_path):
    """H.264 at 16x16, 24x24 and 48x48 (decord 0.6 and decord2) and 32x32 (decord2): decord opens them
    but fails on their frames (``ndarray.cc:171 Check failed``) or returns too many channels."""
    root, tables = tmp_path / "videos", tmp_path / "lists"
    tables.mkdir()
    videos = []
    for side in (16, 24, 32, 48):
        videos.append(root / f"side{side}.mp4")
        write_video(videos[-1], _frames(12, side, side)[:, :side, :side], keyframe_interval=5)
    for split in ("train", "val", "test"):
        _write_table(tables / f"{split}.csv", videos)
    references = {video.name: _pyav_decode(video) for video in videos}
    options = dict(annotations=tables, num_frames=4, sampling_rate=2, crop_size=16, train_scale=(16, 20), test_scale=16)
    as_decoded = lambda frames, _: frames.permute(3, 0, 1, 2)  # noqa: E731  (uint8 (C, T, H, W), no resizing)
    first_frames = lambda total, num_frames, rate, generator: list(range(0, num_frames * rate, rate))  # noqa: E731
    for split in ("train", "val", "test"):
        train = split == "train"
        exact = build_dataset("custom", root, split, train=train, transform=as_decoded, train_sampler=first_frames,
                              **options)
        for index in range(exact.num_videos):
            clip, label, video = exact[index]
            reference = references[Path(exact.videos[video]).name]
            indices = [0, 2, 4, 6] if train else uniform_clips(len(reference), 4, 2, 1)[0]
            assert label == exact.labels[video] and np.array_equal(clip.permute(1, 2, 3, 0).numpy(), reference[indices])
        loaded = build_dataset("custom", root, split, train=train, **options)
        clips, labels, _ = next(iter(DataLoader(loaded, batch_size=4, num_workers=1,
                                                multiprocessing_context=worker_context())))
        assert clips.shape == (4, 3, 4, 16, 16) and labels.tolist() == [0, 1, 2, 3] and loaded.skipped_files() == []


def test_decord_native_open_errors_are_not_printed(tmp_path, capfd):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypisom" + b"\x17" * 900)
    with pytest.raises(VideoReadError) as error:
        OpenVideo(corrupt)
    captured = capfd.readouterr()
    assert "ERROR opening" not in captured.err and "moov atom" not in captured.err
    assert "ERROR opening" in str(error.value) and corrupt.name in str(error.value)


def test_read_frames_returns_a_tensor_whatever_the_bridge(demo_root, torch_bridge):
    assert decord.bridge._CURRENT_BRIDGE.type == "torch"
    path = next(Path(demo_root).glob("*/*.mp4"))
    frames = read_frames(path, [2, 2, 9])
    assert isinstance(frames, torch.Tensor) and frames.dtype == torch.uint8 and frames.shape == (3, 64, 64, 3)
    assert torch.equal(frames[0], frames[1])
