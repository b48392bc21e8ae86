"""Reading frames from video files: decord first, PyAV as the fallback and the reference."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import av
import numpy as np
import torch

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]


class VideoReadError(RuntimeError):
    """A video that neither decord nor PyAV can decode (missing, truncated, empty or corrupt)."""


@dataclass(frozen=True)
class VideoInfo:
    """Frame count and frame rate of a video file."""

    num_frames: int
    fps: float


def decode_with_pyav(path: PathLike, last_index: int | None = None) -> tuple[list[np.ndarray], float]:
    """Frames ``0..last_index`` (all when ``None``) as RGB ``(H, W, 3)`` arrays, and the fps."""
    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            if last_index is not None and len(frames) > last_index:
                break
    return frames, fps


class OpenVideo:
    """A video opened once: decord decodes only the frames asked for; files decord cannot open
    are decoded whole by PyAV. Raises :class:`VideoReadError` for a file neither can read or
    one without frames."""

    def __init__(self, path: PathLike) -> None:
        self.path = path
        self._reader = None
        self._frames: list[np.ndarray] = []
        try:
            from decord import VideoReader, cpu

            self._reader = VideoReader(str(path), ctx=cpu(0), num_threads=1)
            self.info = VideoInfo(len(self._reader), float(self._reader.get_avg_fps()))
        except Exception as decord_error:  # decord raises its own DECORDError and RuntimeErrors
            logger.debug("decord cannot open %s (%s); decoding with PyAV", path, decord_error)
            try:
                self._frames, fps = decode_with_pyav(path)
            except Exception as pyav_error:
                raise VideoReadError(f"cannot read {path}: decord: {decord_error}; PyAV: {pyav_error}") from pyav_error
            self.info = VideoInfo(len(self._frames), fps)
        if self.info.num_frames < 1:
            raise VideoReadError(f"{path} has no frames")

    def frames(self, indices: Sequence[int]) -> torch.Tensor:
        """uint8 ``(T, H, W, 3)`` RGB frames at ``indices`` (in order, repeats allowed)."""
        indices = [int(i) for i in indices]
        if not indices or min(indices) < 0:
            raise ValueError(f"indices must be a non-empty sequence of non-negative ints, got {indices}")
        if max(indices) >= self.info.num_frames:
            raise VideoReadError(f"{self.path} has {self.info.num_frames} frames, frame {max(indices)} was asked for")
        if self._reader is not None:
            try:
                return torch.from_numpy(self._reader.get_batch(indices).asnumpy())
            except Exception as error:
                raise VideoReadError(f"cannot decode frames {indices} of {self.path}: {error}") from error
        return torch.from_numpy(np.stack([self._frames[i] for i in indices]))


def video_info(path: PathLike) -> VideoInfo:
    """Frame count and fps of ``path``; raises :class:`VideoReadError` if it cannot be decoded."""
    return OpenVideo(path).info


def read_frames(path: PathLike, indices: Sequence[int]) -> torch.Tensor:
    """Decode the frames at ``indices`` of ``path``: uint8 ``(T, H, W, 3)`` RGB."""
    return OpenVideo(path).frames(indices)
