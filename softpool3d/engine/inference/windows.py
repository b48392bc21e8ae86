"""Windows of long videos: spans of seconds, and the frames each set of views covers."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ViewUnit:
    """What one set of views covers: frames ``first .. end - 1`` of video ``video``, seconds ``start .. stop``."""

    video: int
    first: int
    end: int
    start: float
    stop: float


def window_spans(duration: float, window: float, stride: float) -> list[tuple[float, float]]:
    """``(start, end)`` seconds of windows of ``window`` seconds every ``stride`` seconds covering
    ``[0, duration]`` in order: the last one ends at ``duration`` (so 10 s, window 2, stride 1 gives
    9); a video shorter than ``window`` is one window."""
    if window <= 0 or stride <= 0:
        raise ValueError(f"window and stride must be positive seconds, got {window} and {stride}")
    if duration <= window:
        return [(0.0, duration)]
    count = math.ceil(round((duration - window) / stride, 6)) + 1
    starts = [min(i * stride, duration - window) for i in range(count)]
    return [(float(round(start, 6)), float(round(start + window, 6))) for start in starts]


def window_units(video: int, num_frames: int, fps: float, window: float, stride: float) -> list[ViewUnit]:
    """The :class:`ViewUnit` of each of :func:`window_spans`' windows of video ``video`` (``num_frames`` at ``fps``)."""
    units = []
    for start, stop in window_spans(num_frames / fps, window, stride):
        first = min(int(round(start * fps)), num_frames - 1)
        end = max(first + 1, min(num_frames, int(round(stop * fps))))
        units.append(ViewUnit(video, first, end, start, stop))
    return units
