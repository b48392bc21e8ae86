"""softpool3d-predict --stream against real servers on 127.0.0.1: an HTTP server serving an MPEG-TS file
(played at its frame rate) and a sender process encoding H.264 live to udp://. Window times are
monotone, each window's top-k is the model's on the same frames decoded offline by PyAV, latency stays
within one stride plus one forward pass when the model is slower than real time (windows skipped and
counted, never queued), a file is played at its frame rate, a stream that ends or stalls is reported, and
SIGINT ends with a summary."""
import functools
import http.server
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from softpool3d.datasets import DEMO_CLASSES, write_video
from softpool3d.datasets import transforms
from softpool3d.datasets.sampling import uniform_clips
from softpool3d.engine import cli
from softpool3d.engine.inference.predict import Recognizer
from softpool3d.engine.inference.stream import run_stream
from softpool3d.engine.inference.stream_reader import StreamReader

CLASSES = list(DEMO_CLASSES)
FPS = 25


@pytest.fixture(scope="module")
def checkpoint(make_checkpoint):
    return make_checkpoint("r3d_18", CLASSES, "model.width=4")


def moving_frames(count: int, seed: int = 0) -> np.ndarray:
    """uint8 ``(count, 64, 80, 3)``: a textured background with a bright block moving across it."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 120, (64, 80, 3), dtype=np.uint8)
    frames = np.repeat(background[None], count, axis=0)
    for index in range(count):
        top, left = (3 * index) % 40, (5 * index) % 56
        frames[index, top:top + 24, left:left + 24] = (230, 220, 40)
    return frames


@pytest.fixture(scope="module")
def ts_video(tmp_path_factory):
    """A 3.2 s H.264 MPEG-TS file at 25 fps (80 frames of 64x80)."""
    path = tmp_path_factory.mktemp("served") / "clip.ts"
    write_video(path, moving_frames(80), fps=FPS, keyframe_interval=10)
    return path


@pytest.fixture
def http_server(ts_video):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(ts_video.parent))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{ts_video.name}"
    server.shutdown()
    server.server_close()


def offline_probabilities(recognizer, path, start, end):
    """Mean softmax over the config's views of frames ``[start, end)`` s, decoded by PyAV, cut by the formula."""
    with av.open(str(path)) as container:
        frames = torch.from_numpy(np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]))
    frames = frames[round(start * FPS): round(end * FPS)]
    data = recognizer.cfg.data
    transform = transforms.TestTransform(data.crop_size, data.test_scale, data.num_crops)
    views = [transform(frames[indices], crop) for indices in uniform_clips(len(frames), data.num_frames,
                                                                          data.sampling_rate, data.num_clips)
             for crop in range(data.num_crops)]
    mean = torch.tensor(list(data.mean)).view(1, 3, 1, 1, 1)
    std = torch.tensor(list(data.std)).view(1, 3, 1, 1, 1)
    with torch.no_grad():
        return recognizer.model((torch.stack(views).float() / 255 - mean) / std).softmax(1).mean(0).numpy()


def read_lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.mark.slow
def test_http_stream_predicts_every_window_as_offline_then_ends_cleanly(checkpoint, ts_video, http_server, tmp_path):
    out = tmp_path / "stream.jsonl"
    render = tmp_path / "annotated.mp4"
    assert cli.predict_main([str(checkpoint), "--stream", http_server, "--window", "0.64", "--stride", "0.32",
                             "--top-k", "3", "--out", str(out), "--render", str(render)]) == 0
    lines = read_lines(out)
    windows = [line for line in lines if "start" in line]
    events = [line["event"] for line in lines if "event" in line]
    assert events == ["opened", "ended", "summary"]
    summary = lines[-1]
    assert summary["end"] == "ended" and summary["frames"] == 80 and summary["predictions"] == len(windows)
    starts = [w["start"] for w in windows]
    assert starts == sorted(set(starts)) and len(windows) >= 2  # the first window and the last, at least
    indices = [round(w["start"] / 0.32) for w in windows]
    assert all(abs(w["start"] - k * 0.32) < 1e-6 and abs(w["end"] - w["start"] - 0.64) < 1e-6
               for w, k in zip(windows, indices))
    assert summary["windows_skipped"] == indices[-1] + 1 - len(windows)
    recognizer = Recognizer.from_checkpoint(checkpoint, "cpu")
    for window in windows:
        assert window["frames"] == 16
        reference = offline_probabilities(recognizer, ts_video, window["start"], window["end"])
        assert [t["label"] for t in window["top_k"]] == [CLASSES[i] for i in np.argsort(-reference)[:3]]
        np.testing.assert_allclose([t["score"] for t in window["top_k"]], np.sort(reference)[::-1][:3], atol=2e-6)
        assert 0 <= window["forward"] <= window["latency"]
        assert window["end"] - 1 / FPS - 1e-3 <= window["newest"] < window["end"] - 1 / FPS + 0.32
    with av.open(str(render)) as container:
        assert sum(1 for _ in container.decode(video=0)) == summary["rendered"] > 0


def test_a_file_is_played_at_its_frame_rate(ts_video, monkeypatch):
    """Frame i arrives no sooner than i / 25 s after frame 0 (a lower bound: load only delays frames), even
    where frame 0 took long to convert (as a cold scaler on a loaded machine does: 30 ms here)."""
    convert = StreamReader._pixels
    calls = []

    def slow_first(reader, frame):
        calls.append(1)
        if len(calls) == 1:
            time.sleep(0.03)
        return convert(reader, frame)

    monkeypatch.setattr(StreamReader, "_pixels", slow_first)
    frames = []
    reader = StreamReader(str(ts_video), keep_seconds=1.0, on_frame=frames.append)
    reader.start()
    reader.join(timeout=60)
    assert [event.kind for event in iter_events(reader)] == ["opened", "ended"]
    assert len(frames) == 80 and [f.index for f in frames] == list(range(80))
    for frame in frames[1:]:
        assert frame.time == pytest.approx(frame.index / FPS, abs=1e-6)
        assert frame.arrival - frames[0].arrival >= frame.time - 0.01, frame.index


def iter_events(reader):
    while not reader.events.empty():
        yield reader.events.get_nowait()


class SlowModel(torch.nn.Module):
    """The model with ``seconds`` of sleep before every forward pass: slower than real time."""

    def __init__(self, model, seconds):
        super().__init__()
        self.model, self.seconds = model, seconds

    def forward(self, x):
        time.sleep(self.seconds)
        return self.model(x)


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_udp_stream_slower_model_skips_windows_keeps_latency_bounded_and_reports_the_stall(
        checkpoint, tmp_path):
    video = tmp_path / "live.mp4"
    write_video(video, moving_frames(150, seed=1), fps=FPS)
    port = free_udp_port()
    recognizer = Recognizer.from_checkpoint(checkpoint, "cpu")
    recognizer.runner = SlowModel(recognizer.model, 0.5)
    sender = subprocess.Popen([sys.executable, "-m", "softpool3d.benchmarks.stream_sender",
                               f"udp://127.0.0.1:{port}?pkt_size=1316", str(video), "0.5"], stdout=subprocess.PIPE, text=True)
    assert sender.stdout.readline().strip() == "ready"
    out = tmp_path / "udp.jsonl"
    stride = 0.2
    try:
        code = run_stream(str(checkpoint), f"udp://127.0.0.1:{port}", window=0.64, stride=stride, top_k=2,
                          out=str(out), stall_timeout=1.5, reconnects=1, recognizer=recognizer)
    finally:
        sender.wait(timeout=60)
    assert code == 1  # the broadcast stopped: stalled, then lost
    lines = read_lines(out)
    events = [line["event"] for line in lines if "event" in line]
    assert events[0] == "opened" and events[-3:] == ["stalled", "lost", "summary"]
    windows = [line for line in lines if "start" in line]
    summary = lines[-1]
    assert summary["end"] == "lost" and summary["predictions"] == len(windows) >= 3
    indices = [round(w["start"] / stride) for w in windows]
    assert indices == sorted(set(indices))
    skipped = sum(b - a - 1 for a, b in zip(indices, indices[1:]))
    assert skipped >= len(windows) - 1  # each 0.5 s forward spans two or more 0.2 s strides
    assert summary["windows_skipped"] == indices[0] + skipped
    assert summary["frames_unused"] > 0
    period = 1 / FPS
    for window in windows:
        assert window["forward"] >= 0.5 and window["latency"] >= window["forward"]
        # the latest complete window when the predictor was free: its last frame is the newest, or less than
        # one stride older (an older window would have been queued)
        assert window["end"] - period - 1e-3 <= window["newest"] < window["end"] - period + stride, window


@pytest.mark.slow
def test_sigint_ends_the_stream_with_a_summary_line(checkpoint, tmp_path):
    video = tmp_path / "long.mp4"
    write_video(video, moving_frames(500), fps=FPS)
    command = [sys.executable, "-c", "import sys; from softpool3d.engine.cli import predict_main; "
               "sys.exit(predict_main())", str(checkpoint), "--stream", str(video), "--window", "0.64",
               "--stride", "0.32"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = json.loads(process.stdout.readline())
    while "start" not in first:
        first = json.loads(process.stdout.readline())
    process.send_signal(signal.SIGINT)
    rest, errors = process.communicate(timeout=60)
    assert process.returncode == 0, errors
    assert "Traceback" not in errors
    summary = json.loads(rest.strip().splitlines()[-1])
    assert summary["event"] == "summary" and summary["end"] == "interrupted" and summary["predictions"] >= 1
    assert summary["stream_seconds"] < 19


def test_stream_user_errors_are_one_error_line(checkpoint, tmp_path, caplog):
    assert cli.predict_main([str(checkpoint), "--stream", str(tmp_path / "missing.mp4")]) == 2
    assert cli.predict_main([str(checkpoint), "--stream", "udp://127.0.0.1:9", "--out", str(tmp_path / "x.json")]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= 40]
    assert "missing.mp4" in errors[0] and "FILE.jsonl" in errors[1]
    with pytest.raises(SystemExit):
        cli.predict_main([str(checkpoint), str(tmp_path / "a.mp4"), "--stream", "udp://127.0.0.1:9"])
