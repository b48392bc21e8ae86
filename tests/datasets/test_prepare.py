"""tools/prepare_videos.py's engine: same paths, frame counts and fps at a smaller size; a corrupt
file is named and listed while the rest converts; a second run only skips."""
from __future__ import annotations

import logging

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from softpool3d.datasets import write_video
from softpool3d.datasets.prepare import FAILED_LIST, prepare_videos, scaled_size


def _decode(path) -> tuple[np.ndarray, float, int]:
    """All frames ``(T, H, W, 3)``, the fps and the keyframe count, by PyAV."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames, keyframes = [], 0
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            keyframes += frame.key_frame
        return np.stack(frames), float(stream.average_rate), keyframes


def _frames(num_frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """Smooth gradients drifting over time (content a resize keeps), plus a moving block."""
    yy, xx = np.mgrid[0:height, 0:width]
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        frames[t] = np.stack([(xx * 4 + t * 3) % 256, (yy * 4 + seed * 40) % 256, np.full_like(xx, 128)], -1)
        frames[t, 8:24, t : t + 16] = (255, 255, 0)
    return frames


@pytest.fixture
def tree(tmp_path):
    src = tmp_path / "src"
    write_video(src / "a" / "one.mp4", _frames(20, 48, 64, 0), fps=25)
    write_video(src / "b" / "two.avi", _frames(23, 64, 48, 1), fps=30, codec="mpeg4")
    write_video(src / "three.mp4", _frames(17, 48, 64, 2), fps=25, keyframe_interval=250)
    (src / "b" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + b"\x17" * 900)
    (src / "trainlist01.txt").write_text("a/one.mp4 1\n")
    return src, tmp_path / "dst"


def test_videos_keep_paths_frames_fps_and_content_at_the_new_size(tree, caplog):
    src, dst = tree
    with caplog.at_level(logging.WARNING):
        summary = prepare_videos(src, dst, short_side=32, keyframe_interval=4, workers=2, progress=False)
    assert summary.converted == 3 and summary.skipped == 0
    assert [path for path, _ in summary.failed] == [str(src / "b" / "broken.mp4")]
    assert "broken.mp4" in caplog.text and "broken.mp4" in (dst / FAILED_LIST).read_text()
    assert not (dst / "b" / "broken.mp4").exists()
    assert (dst / "trainlist01.txt").read_text() == "a/one.mp4 1\n"
    for relative in ("a/one.mp4", "b/two.avi", "three.mp4"):
        source, source_fps, _ = _decode(src / relative)
        output, output_fps, keyframes = _decode(dst / relative)
        assert abs(len(output) - len(source)) <= 1 and output_fps == pytest.approx(source_fps)
        assert output.shape[1:3] == scaled_size(source.shape[2], source.shape[1], 32)[::-1]
        assert min(output.shape[1:3]) == 32
        assert keyframes >= len(output) // 4  # a keyframe every 4 frames (x264 may add scene cuts)
        expected = F.interpolate(torch.from_numpy(source).permute(0, 3, 1, 2).float(), size=output.shape[1:3],
                                 mode="area").permute(0, 2, 3, 1)
        assert (expected[: len(output)] - torch.from_numpy(output).float()).abs().mean() < 8  # same pictures


def test_second_run_skips_finished_outputs_and_removes_stale_temporaries(tree):
    src, dst = tree
    prepare_videos(src, dst, short_side=32, workers=0, progress=False)
    written = {path: path.stat().st_mtime_ns for path in dst.rglob("*.mp4")}
    stale = dst / "a" / ".one.mp4.prepare-tmp"
    stale.write_bytes(b"half a file")
    again = prepare_videos(src, dst, short_side=32, workers=0, progress=False)
    assert (again.converted, again.skipped, len(again.failed)) == (0, 3, 1)
    assert {path: path.stat().st_mtime_ns for path in dst.rglob("*.mp4")} == written
    assert not stale.exists()
    assert again.output_bytes < again.source_bytes


def test_bad_arguments_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        prepare_videos(tmp_path / "nowhere", tmp_path / "dst")
    with pytest.raises(ValueError, match="inside the source"):
        prepare_videos(tmp_path, tmp_path / "dst")
