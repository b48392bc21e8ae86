"""Live recognition with bounded latency (``softpool3d-predict CHECKPOINT --stream URL``).

A :class:`~softpool3d.engine.inference.stream_reader.StreamReader` thread keeps the newest seconds of the stream
in a ring buffer. Windows of ``window`` seconds start every ``stride`` seconds of stream time
(window ``k`` covers ``[k * stride, k * stride + window)``). Whenever the predictor is free it takes
the **latest** complete window, never an older one: windows that completed while it was busy are
skipped and counted, never queued. So a prediction's latency (from the arrival of its window's last
frame to the prediction) stays below one stride plus one forward pass however slow the model is,
while the stream runs, instead of growing without bound as a queue would make it. (The window that
completes as a file ends has no successor to take its place: it may wait for the pass then running.)

Each window's views are cut by the test path of :class:`~softpool3d.datasets.ClipDataset` (the
same sampler and transform as ``softpool3d-test`` and offline windows) and run through
:func:`~softpool3d.engine.evaluation.evaluate.forward_views`, so a window predicts what the same frames predict
offline. One JSON line per prediction (and per stream event, and a summary at the end) goes to
stdout or ``--out``: a prediction's ``start``/``end`` (stream seconds), ``frames`` in the window,
``newest`` (the stream time of the newest decoded frame when the window was taken: less than one
stride past the window's last frame), ``top_k``, ``latency`` and ``forward`` (seconds) and the
``windows_skipped`` so far.

The bound assumes the reader thread gets the CPU time to decode at the stream's rate; on a machine
too loaded for that, decoding itself falls behind and the latency grows by the decoding delay.
"""
from __future__ import annotations

import json
import logging
import math
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import IO, Optional, Sequence

import numpy as np
import torch

from softpool3d.datasets import VideoInfo
from softpool3d.engine import builders
from softpool3d.engine.config import ConfigError
from softpool3d.engine.evaluation.evaluate import forward_views
from softpool3d.engine.inference.predict import Recognizer
from softpool3d.engine.inference.stream_reader import Frame, StreamReader, source_exists

logger = logging.getLogger(__name__)


@dataclass
class _BufferedVideo:
    """The frames of one window, read as :meth:`ClipDataset.test_view` reads an ``OpenVideo``, and its
    frame rate ``fps`` (frames the window holds over the window's seconds)."""

    pixels: list[np.ndarray]
    fps: float
    path: str = "stream"

    @property
    def info(self) -> VideoInfo:
        return VideoInfo(len(self.pixels), self.fps)

    def frames(self, indices: Sequence[int]) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.pixels[i] for i in indices]))


@dataclass
class StreamSummary:
    """What a stream run did: predictions made, windows skipped, frames decoded and frames that fell in
    no predicted window, and each prediction's latency and forward seconds."""

    predictions: int = 0
    windows_skipped: int = 0
    frames: int = 0
    frames_unused: int = 0
    latencies: list[float] = field(default_factory=list)
    forwards: list[float] = field(default_factory=list)
    end: str = ""
    stream_seconds: float = 0.0

    def record(self) -> dict:
        def quantiles(values: list[float]) -> dict:
            if not values:
                return {}
            array = np.asarray(values)
            return {"p50": round(float(np.percentile(array, 50)), 4), "p95": round(float(np.percentile(array, 95)), 4),
                    "max": round(float(array.max()), 4)}

        return {"event": "summary", "end": self.end, "predictions": self.predictions,
                "windows_skipped": self.windows_skipped, "frames": self.frames, "frames_unused": self.frames_unused,
                "stream_seconds": round(self.stream_seconds, 3), "latency": quantiles(self.latencies),
                "forward": quantiles(self.forwards)}


class StreamRenderer(threading.Thread):
    """Write every frame the reader hands over to an H.264 ``path``, with the latest prediction drawn on
    (:attr:`caption`). Frames wait in a bounded queue; when encoding falls behind, frames are dropped
    (counted in :attr:`dropped`), never the reader held back."""

    def __init__(self, path: Path, fps: float, capacity: int = 64) -> None:
        super().__init__(name="stream-render", daemon=True)
        self.path, self.fps = path, fps
        self.frames: queue.Queue[Optional[Frame]] = queue.Queue(capacity)
        self.caption = "waiting for the first window"
        self.dropped = 0
        self.written = 0

    def offer(self, frame: Frame) -> None:
        try:
            self.frames.put_nowait(frame)
        except queue.Full:
            self.dropped += 1

    def close(self) -> None:
        self.frames.put(None)
        self.join()

    def run(self) -> None:
        import av
        from PIL import Image

        from softpool3d.engine.inference.render import draw_caption

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(self.path), "w") as target:
            stream, last_pts = None, -1
            while (frame := self.frames.get()) is not None:
                if stream is None:
                    stream = target.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1001))
                    stream.height, stream.width = frame.pixels.shape[0] // 2 * 2, frame.pixels.shape[1] // 2 * 2
                    stream.pix_fmt = "yuv420p"
                    stream.codec_context.time_base = Fraction(1, 1000)
                    stream.options = {"crf": "23", "preset": "veryfast"}
                pts = max(last_pts + 1, round(frame.time * 1000))
                image = Image.fromarray(frame.pixels[: stream.height, : stream.width])
                draw_caption(image, self.caption)
                video_frame = av.VideoFrame.from_image(image)
                video_frame.pts, video_frame.time_base = pts, Fraction(1, 1000)
                target.mux(stream.encode(video_frame))
                last_pts = pts
                self.written += 1
            if stream is not None:
                target.mux(stream.encode())


class StreamPredictor:
    """Predict on the latest complete window of a :class:`StreamReader` whenever free (see the module)."""

    def __init__(self, recognizer: Recognizer, window: float, stride: float, top_k: int = 5,
                 num_clips: Optional[int] = None, num_crops: Optional[int] = None) -> None:
        if window <= 0 or stride <= 0:
            raise ConfigError(f"--window and --stride must be positive seconds, got {window} and {stride}")
        self.recognizer, self.window, self.stride, self.top_k = recognizer, window, stride, top_k
        data = recognizer.cfg.data
        self.clips = builders.build_test_clips(recognizer.cfg, ["stream"], recognizer.classes,
                                               num_clips or int(data.num_clips), num_crops or int(data.num_crops))

    def probabilities(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """Mean softmax ``(K,)`` over the test views of ``frames`` (uint8 ``(H, W, 3)`` each), one forward pass."""
        video = _BufferedVideo(list(frames), len(frames) / self.window)
        views = torch.stack([self.clips.test_view(video, view, (0, len(frames))) for view in range(self.clips.num_views)])
        recognizer = self.recognizer
        with torch.no_grad():
            logits = forward_views(recognizer.runner, views, recognizer.device, recognizer.amp, recognizer.normalizer)
        return logits.float().softmax(dim=1).mean(dim=0).double().cpu().numpy()

    def warm_up(self) -> None:
        """One forward pass on a black window, so the first real window does not pay for the first call."""
        data = self.recognizer.cfg.data
        side = int(data.test_scale)
        self.probabilities([np.zeros((side, side, 3), dtype=np.uint8)] * int(data.num_frames) * int(data.sampling_rate))

    def latest_complete(self, newest: float, period: float) -> int:
        """The index of the latest window whose last frame (at ``end - period``) is in, given the newest frame's time."""
        return math.floor((newest - self.window + period) / self.stride + 1e-6)

    def run(self, reader: StreamReader, out: IO[str], renderer: Optional[StreamRenderer] = None) -> StreamSummary:
        """Predict until the stream ends or is lost, or until ``KeyboardInterrupt`` (then ``end="interrupted"``);
        every prediction, event and the summary are written to ``out`` as JSON lines."""
        summary, covered, next_window = StreamSummary(), set(), 0
        classes = self.recognizer.classes

        def write(record: dict) -> None:
            out.write(json.dumps(record) + "\n")
            out.flush()

        def drain_events() -> None:
            while True:
                try:
                    event = reader.events.get_nowait()
                except queue.Empty:
                    return
                record = {"event": event.kind, "detail": event.detail}
                if event.time is not None:
                    record["time"] = round(event.time, 3)
                write(record)
                if event.kind in ("stalled", "lost"):
                    logger.warning("stream %s: %s", event.kind, event.detail)
                if event.kind in ("ended", "lost"):
                    summary.end = event.kind

        try:
            while True:
                drain_events()
                newest = reader.newest()
                finished = reader.finished.is_set()
                if newest is not None:
                    period = 1.0 / (reader.fps or 25.0)
                    latest = self.latest_complete(newest.time, period)
                    if latest >= next_window:
                        summary.windows_skipped += latest - next_window
                        start = latest * self.stride
                        frames = reader.frames_between(start, start + self.window)
                        next_window = latest + 1
                        if frames:
                            begun = time.monotonic()
                            probabilities = self.probabilities([f.pixels for f in frames])
                            done = time.monotonic()
                            latency = done - frames[-1].arrival
                            summary.predictions += 1
                            summary.latencies.append(latency)
                            summary.forwards.append(done - begun)
                            covered.update(f.index for f in frames)
                            top = [{"label": classes[i], "score": round(float(probabilities[i]), 6)}
                                   for i in np.argsort(-probabilities, kind="stable")[: self.top_k]]
                            write({"start": round(start, 3), "end": round(start + self.window, 3),
                                   "frames": len(frames), "newest": round(newest.time, 3), "top_k": top,
                                   "latency": round(latency, 4),
                                   "forward": round(done - begun, 4), "windows_skipped": summary.windows_skipped})
                            if renderer is not None:
                                renderer.caption = f"{top[0]['label']} {top[0]['score']:.2f}"
                        continue
                if finished:
                    drain_events()
                    break
                reader.wait(0.2)
        except KeyboardInterrupt:
            summary.end = "interrupted"
        reader.stop()
        reader.join(timeout=5)
        newest = reader.newest()
        summary.frames = reader.frames_decoded
        summary.frames_unused = reader.frames_decoded - len(covered)
        summary.stream_seconds = newest.time if newest is not None else 0.0
        summary.end = summary.end or "ended"
        return summary


def run_stream(checkpoint: str, source: str, *, window: float = 2.0, stride: float = 1.0, top_k: int = 5,
               num_clips: Optional[int] = None, num_crops: Optional[int] = None, out: Optional[str] = None,
               render_path: Optional[str] = None, stall_timeout: float = 10.0, reconnects: int = 3,
               device: Optional[str] = None, runtime: str = "eager", onnx: Optional[str] = None,
               overrides: Sequence[str] = (), recognizer: Optional[Recognizer] = None) -> int:
    """``softpool3d-predict CHECKPOINT --stream SOURCE``: JSON lines to ``out`` (default stdout) until the
    stream ends (exit 0), is lost (exit 1) or SIGINT (exit 0); the summary line last. ``recognizer``:
    one already built (the checkpoint is then not read again)."""
    if not source_exists(source):
        raise FileNotFoundError(f"--stream {source}: no such file (and not a URL)")
    if out is not None and Path(out).suffix.lower() != ".jsonl":
        raise ConfigError(f"--out {out}: a stream writes JSON lines, name it FILE.jsonl")
    if stall_timeout <= 0 or reconnects < 0:
        raise ConfigError(f"--stall-timeout must be positive and --reconnect 0 or more, got {stall_timeout}, {reconnects}")
    if recognizer is None:
        recognizer = Recognizer.from_checkpoint(checkpoint, device, overrides, runtime, onnx)
    predictor = StreamPredictor(recognizer, window, stride, top_k, num_clips, num_crops)
    renderer: Optional[StreamRenderer] = None
    reader = StreamReader(source, keep_seconds=window + 2 * stride + 1.0, stall_timeout=stall_timeout,
                          reconnects=reconnects, max_short_side=2 * int(recognizer.cfg.data.test_scale),
                          on_frame=lambda frame: renderer.offer(frame) if renderer is not None else None)
    logger.info("%s: %s on %s (%s), windows of %g s every %g s", source, recognizer.cfg.model.name,
                recognizer.device, runtime, window, stride)
    handle = sys.stdout if out is None else open(out, "w", encoding="utf-8")
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
    predictor.warm_up()
    try:
        reader.start()
        if render_path is not None:
            while reader.fps is None and not reader.finished.is_set():
                reader.wait(0.1)
            renderer = StreamRenderer(Path(render_path), reader.fps or 25.0)
            renderer.start()
        summary = predictor.run(reader, handle, renderer)
        record = summary.record()
        if renderer is not None:
            renderer.close()
            record.update(rendered=renderer.written, render_dropped=renderer.dropped, render=str(render_path))
        handle.write(json.dumps(record) + "\n")
        handle.flush()
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, previous)
        if handle is not sys.stdout:
            handle.close()
    logger.info("stream %s: %d predictions, %d windows skipped, latency p95 %s s", summary.end,
                summary.predictions, summary.windows_skipped, record["latency"].get("p95"))
    return 1 if summary.end == "lost" else 0
