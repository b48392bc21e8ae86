"""Reading a live stream so that the newest frames are always at hand: a thread decodes the source
(FFmpeg through PyAV: ``rtsp://``, ``udp://``, ``http(s)://``, a V4L2 camera ``/dev/videoN``, or a file)
into a ring buffer that keeps only the last seconds of frames, whatever the reader of the buffer does.

Decoding never waits for prediction, so it stays at the live edge: a slow consumer finds the newest
frames, not a backlog. A file (or an ``http(s)://`` file) is played at its own frame rate, as a camera
would deliver it. A stream that ends, stalls (no frame for ``stall_timeout`` seconds) or fails is
reported as an :class:`StreamEvent`; a stalled or failed live stream is opened again up to
``reconnects`` times. Stream time is the seconds since the first frame, continued across reconnects.
"""
from __future__ import annotations

import collections
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional
from urllib.parse import urlparse

import numpy as np

logger = logging.getLogger(__name__)

LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "udp", "rtp", "srt", "tcp")
"""URL schemes read as they arrive (not paced): the source sets the rate."""


@dataclass(frozen=True)
class Frame:
    """One decoded frame: ``time`` (stream seconds), ``arrival`` (``time.monotonic()`` when it was
    decoded and buffered) and ``pixels`` uint8 ``(H, W, 3)`` RGB."""

    index: int
    time: float
    arrival: float
    pixels: np.ndarray


@dataclass(frozen=True)
class StreamEvent:
    """``kind``: ``"opened"``, ``"stalled"``, ``"reconnected"``, ``"ended"`` (the source has no more
    frames), ``"lost"`` (stalled or failed and could not be opened again); ``detail`` says what happened."""

    kind: str
    detail: str
    time: Optional[float] = None


def is_camera(source: str) -> bool:
    return source.startswith("/dev/video")


def is_live(source: str) -> bool:
    """Whether ``source`` delivers frames at its own pace (a camera, a network stream of :data:`LIVE_SCHEMES`)."""
    return is_camera(source) or urlparse(source).scheme.lower() in LIVE_SCHEMES


def open_source(source: str, timeout: float):
    """``av.open`` of ``source`` with options suited to its kind; ``timeout`` seconds to open and per read."""
    import av

    scheme = urlparse(source).scheme.lower()
    options: dict[str, str] = {}
    if scheme == "udp":
        options = {"overrun_nonfatal": "1", "fifo_size": "1000000"}
    elif scheme in ("rtsp", "rtsps"):
        options = {"rtsp_transport": "tcp"}
    kind = {"format": "v4l2"} if is_camera(source) else {}
    return av.open(source, options=options, timeout=(timeout, timeout), **kind)


class StreamReader(threading.Thread):
    """Decode ``source`` into a ring buffer of the last ``keep_seconds`` of frames (daemon thread).

    Frames whose short side exceeds ``max_short_side`` are scaled down to it while decoding (the
    model's test scale: what the clip transform would resize them to anyway). ``on_frame`` is called
    with every frame (e.g. to render). Events go to :attr:`events`, a queue. ``paced`` (default: for
    files, not for live sources) plays the source at its frame rate: frame i arrives no sooner than its
    time in the stream after frame 0 arrived.
    """

    def __init__(self, source: str, keep_seconds: float, stall_timeout: float = 10.0, reconnects: int = 3,
                 max_short_side: Optional[int] = None, paced: Optional[bool] = None,
                 on_frame: Optional[Callable[[Frame], None]] = None) -> None:
        super().__init__(name="stream-reader", daemon=True)
        self.source = source
        self.keep_seconds = keep_seconds
        self.stall_timeout = stall_timeout
        self.reconnects = reconnects
        self.max_short_side = max_short_side
        self.paced = not is_live(source) if paced is None else paced
        self.on_frame = on_frame
        self.events: queue.Queue[StreamEvent] = queue.Queue()
        self.frames_decoded = 0
        self.fps: Optional[float] = None
        self.finished = threading.Event()
        self._buffer: collections.deque[Frame] = collections.deque()
        self._changed = threading.Condition()
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()

    def newest(self) -> Optional[Frame]:
        with self._changed:
            return self._buffer[-1] if self._buffer else None

    def frames_between(self, start: float, end: float) -> list[Frame]:
        """The buffered frames with ``start <= time < end`` (a small tolerance at both ends), oldest first."""
        epsilon = 1e-6
        with self._changed:
            return [f for f in self._buffer if start - epsilon <= f.time < end - epsilon]

    def wait(self, timeout: float) -> None:
        """Block until a frame arrives or the reader finishes, at most ``timeout`` seconds."""
        with self._changed:
            if not self.finished.is_set():
                self._changed.wait(timeout)

    def _push(self, frame: Frame) -> None:
        with self._changed:
            self._buffer.append(frame)
            while self._buffer and self._buffer[0].time < frame.time - self.keep_seconds:
                self._buffer.popleft()
            self._changed.notify_all()
        if self.on_frame is not None:
            self.on_frame(frame)

    def _pixels(self, frame) -> np.ndarray:
        short = min(frame.width, frame.height)
        if self.max_short_side is None or short <= self.max_short_side:
            return frame.to_ndarray(format="rgb24")
        scale = self.max_short_side / short
        width, height = round(frame.width * scale / 2) * 2, round(frame.height * scale / 2) * 2
        return frame.to_ndarray(format="rgb24", width=width, height=height)

    def run(self) -> None:
        try:
            self._read()
        except Exception as error:  # a reader that dies says why, and the consumer ends cleanly
            self.events.put(StreamEvent("lost", f"{type(error).__name__}: {error}"))
        finally:
            self.finished.set()
            with self._changed:
                self._changed.notify_all()

    def _read(self) -> None:
        import av

        attempts, offset, last_time, last_arrival = 0, 0.0, None, None
        while not self._stopping.is_set():
            try:
                container = open_source(self.source, self.stall_timeout)
            except (av.FFmpegError, OSError) as error:
                if last_time is None and attempts == 0 and not is_live(self.source):
                    self.events.put(StreamEvent("lost", f"cannot open {self.source}: {error}"))
                    return
                attempts += 1
                if attempts > self.reconnects:
                    self.events.put(StreamEvent("lost", f"cannot open {self.source}: {error} "
                                                        f"(after {self.reconnects} reconnects)", last_time))
                    return
                time.sleep(min(1.0, self.stall_timeout))
                continue
            if last_time is None:
                self.events.put(StreamEvent("opened", f"{self.source}"))
            else:
                self.events.put(StreamEvent("reconnected", f"{self.source} (attempt {attempts})", last_time))
                offset = last_time + (time.monotonic() - last_arrival) if last_arrival else last_time
            ended, reason = self._decode(container, offset)
            if self.frames_decoded:
                newest = self.newest()
                last_time, last_arrival = newest.time, newest.arrival
            if ended or self._stopping.is_set():
                if ended:
                    self.events.put(StreamEvent("ended", f"{self.source} has no more frames", last_time))
                return
            attempts += 1
            self.events.put(StreamEvent("stalled", reason, last_time))
            if attempts > self.reconnects:
                self.events.put(StreamEvent("lost", f"{self.source}: {reason} (after {self.reconnects} reconnects)",
                                            last_time))
                return

    def _decode(self, container, offset: float) -> tuple[bool, str]:
        """Decode ``container`` into the buffer (times shifted to follow ``offset``); ``(True, "")`` at
        the end of a file, ``(False, why)`` when a live stream stalls or fails."""
        import av

        with container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = stream.average_rate or stream.guessed_rate
            self.fps = self.fps or (float(rate) if rate else None)
            first_time: Optional[float] = None
            started: Optional[float] = None  # the arrival of the first frame: the others are paced from it
            try:
                for frame in container.decode(stream):
                    if self._stopping.is_set():
                        return False, "stopped"
                    seconds = frame.time if frame.time is not None else self.frames_decoded / (self.fps or 25.0)
                    if first_time is None:
                        first_time = seconds
                    stream_time = offset + seconds - first_time
                    if self.paced and started is not None:
                        delay = started + (seconds - first_time) - time.monotonic()
                        if delay > 0:
                            self._stopping.wait(delay)
                    pixels = self._pixels(frame)
                    arrival = time.monotonic()
                    started = arrival if started is None else started
                    self._push(Frame(self.frames_decoded, stream_time, arrival, pixels))
                    self.frames_decoded += 1
            except (av.FFmpegError, OSError) as error:
                if is_live(self.source) or self.frames_decoded == 0:
                    return False, f"no frame for {self.stall_timeout:g} s or a read failed ({type(error).__name__}: {error})"
                return True, ""
        return not is_live(self.source), "the stream closed"


def source_exists(source: str) -> bool:
    """Whether ``source`` is a URL or an existing path (a missing local file is the user's to fix)."""
    return urlparse(source).scheme.lower() not in ("", "file") or os.path.exists(source)
