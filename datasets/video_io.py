"""Reading frames from video files: decord first, PyAV as the fallback and the reference.

Decoding does not depend on process-wide state: decord's frames are read through its torch
bridge in a scope that restores the caller's bridge (pytorchvideo's decord decoder switches the
whole process to the torch bridge on import, which breaks ``get_batch(...).asnumpy()``). Only
decoding failures become :class:`VideoReadError`; any other exception propagates unchanged.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence, Union

import av
import decord
import numpy as np
import torch
from decord._ffi.base import DECORDError

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

_DECORD_LOG_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ", re.MULTILINE)


class VideoReadError(RuntimeError):
    """A video that neither decord nor PyAV can decode (missing, truncated, empty or corrupt)."""


class _DecordMisread(Exception):
    """decord opened a video but cannot decode its frames, or returned frames of the wrong shape."""


@dataclass(frozen=True)
class VideoInfo:
    """Frame count and frame rate of a video file; ``frame_step`` k > 1 where only every k-th source frame
    is stored (frame shards): ``num_frames`` then counts the stored frames, and clip samplers step
    ``sampling_rate / k`` of them."""

    num_frames: int
    fps: float
    frame_step: int = 1


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Capture what native code writes to file descriptor 2 (decord prints ``ERROR opening ...``
    from C++ there, and ``decord.logging.set_level`` does not silence it). The text is yielded
    in a list filled on exit. File descriptors are process-wide: another thread's output in
    that window is captured too, so callers write it back unless they report it otherwise."""
    captured: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.append(sink.read().decode("utf-8", "replace"))


def _open_decord(path: str) -> decord.VideoReader:
    """decord's reader for ``path``; its native error lines become the exception's message."""
    with _captured_stderr() as captured:
        try:
            reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
        except (DECORDError, RuntimeError) as error:
            failure = error
        else:
            failure = None
    text = captured[0].strip()
    if failure is None:
        if text:
            sys.stderr.write(text + "\n")
        return reader
    details = _DECORD_LOG_PREFIX.sub("", text).replace("\n", "; ")
    raise RuntimeError(f"{failure}".strip() + (f" ({details})" if details else "")) from failure


class _PyAVReader:
    """Frames of one video with PyAV, streamed: seek to the keyframe at or before the first
    wanted frame, decode forward, keep only the wanted frames. Peak memory is the clip plus the
    decoder's own buffers, whatever the video's length.

    Frame ``i`` is the ``i``-th frame of a decode from the start (presentation order). Opening
    reads the packets once without decoding them (their timestamps and keyframe flags) for the
    frame count and for seeking; a file whose timestamps cannot serve (missing or repeated) is
    decoded from the start, still keeping only the wanted frames.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoReadError(f"{path} has no video stream")
            stream = container.streams.video[0]
            self.fps = float(stream.average_rate or stream.guessed_rate or 0.0)
            timestamps, decode_stamps, keyframes = [], [], []
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                timestamps.append(packet.pts)
                decode_stamps.append(packet.dts if packet.dts is not None else packet.pts)
                keyframes.append(packet.is_keyframe)
        self.num_frames = len(timestamps)
        self._pts: np.ndarray | None = None
        if None not in timestamps and None not in decode_stamps:
            pts = np.array(timestamps, dtype=np.int64)
            order = np.argsort(pts, kind="stable")
            if len(np.unique(pts)) == len(pts):
                self._pts = pts[order]
                key = np.array(keyframes, dtype=bool)
                self._key_pts = pts[key]
                self._key_dts = np.array(decode_stamps, dtype=np.int64)[key]

    def _seek_target(self, first: int) -> int | None:
        """The decode timestamp of the last keyframe presented at or before frame ``first``."""
        if self._pts is None or not len(self._key_pts):
            return None
        candidates = np.flatnonzero(self._key_pts <= self._pts[first])
        if not len(candidates):
            return None
        best = candidates[np.argmax(self._key_pts[candidates])]
        return int(self._key_dts[best])

    def _decode(self, wanted: set[int], seek_to: int | None) -> dict[int, np.ndarray]:
        found: dict[int, np.ndarray] = {}
        last = max(wanted)
        with av.open(self.path) as container:
            stream = container.streams.video[0]
            if seek_to is None:
                for index, frame in enumerate(container.decode(stream)):
                    if index in wanted:
                        found[index] = frame.to_ndarray(format="rgb24")
                    if index >= last:
                        break
                return found
            try:
                container.seek(seek_to, stream=stream, backward=True, any_frame=False)
            except av.error.FFmpegError as error:
                logger.debug("cannot seek in %s (%s)", self.path, error)
                return found
            last_pts = self._pts[last]
            for frame in container.decode(stream):
                if frame.pts is None:
                    break
                index = int(np.searchsorted(self._pts, frame.pts))
                if index < len(self._pts) and self._pts[index] == frame.pts and index in wanted:
                    found[index] = frame.to_ndarray(format="rgb24")
                if frame.pts >= last_pts or len(found) == len(wanted):
                    break
        return found

    def frames(self, indices: Sequence[int]) -> np.ndarray:
        """uint8 ``(T, H, W, 3)`` RGB frames at ``indices`` (valid, non-empty)."""
        wanted = set(indices)
        seek_to = self._seek_target(min(wanted))
        found = self._decode(wanted, seek_to)
        if len(found) < len(wanted) and seek_to is not None:
            logger.debug("seeking in %s missed frames %s; decoding from the start", self.path, sorted(wanted - set(found)))
            found = self._decode(wanted, None)
        if len(found) < len(wanted):
            raise VideoReadError(f"{self.path}: frames {sorted(wanted - set(found))[:5]} could not be decoded")
        return np.stack([found[i] for i in indices])


class OpenVideo:
    """A video opened once: decord decodes only the frames asked for; a file decord cannot open,
    or whose frames it cannot decode or decodes to the wrong shape, is streamed by PyAV
    (:class:`_PyAVReader`) from then on. decord fails that way on small H.264 frames (decord
    0.6 on 16x16, 24x24 and 48x48, decord2 also on 32x32: ``ndarray.cc:171 Check failed``, a
    first frame of 4 to 12 channels), which PyAV decodes. Raises :class:`VideoReadError` for a
    missing file, one neither can read, or one without frames. decord's native error lines for
    a file it cannot open are not printed; their text is part of the error or debug log instead."""

    def __init__(self, path: PathLike) -> None:
        self.path = path
        self._reader: decord.VideoReader | None = None
        self._pyav: _PyAVReader | None = None
        if not os.path.isfile(path):
            raise VideoReadError(f"cannot read {path}: no such file")
        try:
            self._reader = _open_decord(str(path))
            self.info = VideoInfo(len(self._reader), float(self._reader.get_avg_fps()))
        except (DECORDError, RuntimeError) as decord_error:
            self._reader = None
            logger.debug("decord cannot open %s (%s); decoding with PyAV", path, decord_error)
            try:
                self._pyav = _PyAVReader(str(path))
            except av.error.FFmpegError as pyav_error:
                raise VideoReadError(f"cannot read {path}: decord: {decord_error}; PyAV: {pyav_error}") from pyav_error
            self.info = VideoInfo(self._pyav.num_frames, self._pyav.fps)
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
                return self._decord_frames(indices)
            except _DecordMisread as error:
                logger.debug("decord cannot decode frames %s of %s (%s); decoding with PyAV", indices, self.path, error)
                self._switch_to_pyav(indices, error)
        if max(indices) >= self._pyav.num_frames:
            raise VideoReadError(f"{self.path} has {self._pyav.num_frames} frames by PyAV, frame {max(indices)} was asked for")
        try:
            return torch.from_numpy(self._pyav.frames(indices))
        except av.error.FFmpegError as error:
            raise VideoReadError(f"cannot decode frames {indices} of {self.path} with PyAV: {error}") from error

    def _decord_frames(self, indices: list[int]) -> torch.Tensor:
        """decord's uint8 ``(T, H, W, 3)`` frames at ``indices``; :class:`_DecordMisread` when decord
        fails on them or returns another shape or dtype."""
        try:
            with decord.bridge.use_torch():
                batch = self._reader.get_batch(indices)
        except DECORDError as error:
            raise _DecordMisread(str(error).strip().splitlines()[0]) from error
        if not isinstance(batch, torch.Tensor):
            raise TypeError(f"decord's torch bridge returned {type(batch).__name__}, not a torch.Tensor")
        if batch.dtype != torch.uint8 or batch.dim() != 4 or batch.shape[0] != len(indices) or batch.shape[-1] != 3:
            raise _DecordMisread(f"decord returned {batch.dtype} {tuple(batch.shape)} for {len(indices)} RGB frames")
        return batch

    def _switch_to_pyav(self, indices: list[int], decord_error: Exception) -> None:
        """Decode this video with PyAV from now on (decord failed on frames ``indices``)."""
        self._reader = None
        try:
            self._pyav = _PyAVReader(str(self.path))
        except (av.error.FFmpegError, VideoReadError) as pyav_error:
            raise VideoReadError(f"cannot decode frames {indices} of {self.path}: decord: {decord_error}; "
                                 f"PyAV: {pyav_error}") from pyav_error


def video_info(path: PathLike) -> VideoInfo:
    """Frame count and fps of ``path``; raises :class:`VideoReadError` if it cannot be decoded."""
    return OpenVideo(path).info


def read_frames(path: PathLike, indices: Sequence[int]) -> torch.Tensor:
    """Decode the frames at ``indices`` of ``path``: uint8 ``(T, H, W, 3)`` RGB."""
    return OpenVideo(path).frames(indices)
