"""Prepare a video dataset for fast clip loading: re-encode every video with a smaller short side
and a short keyframe interval, keeping the relative path, the frame count and the frame rate.

Decoding a random clip costs every frame from the keyframe before it, at full resolution, so
full-HD sources with a keyframe every few seconds make the loader the bottleneck of training.
After :func:`prepare_videos` a clip decodes few frames it throws away, each of them small.
Annotations keep working unchanged, since paths, frame counts and fps do not change.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Union

import av
from tqdm import tqdm

from softpool3d.datasets.annotations import VIDEO_EXTENSIONS
from softpool3d.datasets.workers import worker_context

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

DEFAULT_SHORT_SIDE = 320
# Chosen by measurement (BENCHMARKS.md, "Clip loading on 720p sources"): 720p sources at a short
# side of 256, random 8x8 clips; decord decoded a clip in 563 / 482 / 444 / 487 / 449 ms with a
# keyframe every 250 / 64 / 32 / 16 / 8 frames, the files took 9.5 / 9.6 / 10.2 / 11.5 / 13.7 MB.
# 32 is as fast as the shortest intervals and 11 % smaller than 16.
DEFAULT_KEYFRAME_INTERVAL = 32
DEFAULT_CRF = 23
FAILED_LIST = "failed.txt"
_TEMP_SUFFIX = ".prepare-tmp"
# H.264 goes into every container the loaders read; WebM allows only VP8/VP9/AV1, so a ``.webm``
# name gets a Matroska file (WebM is a Matroska subset; decoders probe the content, not the name).
_FORMATS = {".webm": "matroska", ".mkv": "matroska", ".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".avi": "avi",
            ".mpeg": "matroska", ".mpg": "matroska"}


@dataclass
class PrepareSummary:
    """What a :func:`prepare_videos` run did; sizes in bytes over the videos present in ``DST``."""

    converted: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    source_bytes: int = 0
    output_bytes: int = 0
    seconds: float = 0.0

    def describe(self) -> str:
        if self.output_bytes and self.source_bytes >= self.output_bytes:
            ratio = f"{self.source_bytes / self.output_bytes:.2f}x smaller"
        elif self.output_bytes:
            ratio = f"{self.output_bytes / self.source_bytes:.2f}x larger"
        else:
            ratio = "nothing written"
        return (
            f"{self.converted} converted, {self.skipped} already done, {len(self.failed)} failed in {self.seconds:.1f} s; "
            f"{self.source_bytes / 1e6:.1f} MB of sources -> {self.output_bytes / 1e6:.1f} MB ({ratio})"
        )


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """``(width, height)`` with the short side at ``short_side`` (never enlarged), both even."""
    scale = min(short_side / min(width, height), 1.0)
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def reencode_video(source: PathLike, target: PathLike, short_side: int = DEFAULT_SHORT_SIDE,
                   keyframe_interval: int = DEFAULT_KEYFRAME_INTERVAL, crf: int = DEFAULT_CRF) -> int:
    """Write ``source`` as H.264 (``yuv420p``) to ``target``, short side resized, every frame kept at the
    source's frame rate; audio is dropped. Writes a temporary file next to ``target`` and renames it,
    so ``target`` is complete or absent. Returns the number of frames written."""
    source, target = Path(source), Path(target)
    temp = target.with_name(f".{target.name}{_TEMP_SUFFIX}")
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    try:
        with av.open(str(source)) as reader, av.open(str(temp), "w", format=_FORMATS.get(target.suffix.lower(), "mp4")) as writer:
            video = reader.streams.video[0]
            rate = video.average_rate or video.guessed_rate or Fraction(25)
            width, height = scaled_size(video.codec_context.width, video.codec_context.height, short_side)
            stream = writer.add_stream("libx264", rate=rate)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.gop_size = keyframe_interval
            stream.options = {"crf": str(crf), "preset": "fast", "threads": "1"}
            time_base = 1 / Fraction(rate)
            for frame in reader.decode(video):
                small = frame.reformat(width, height, format="yuv420p", interpolation="AREA")
                small.pts, small.time_base = written, time_base
                writer.mux(stream.encode(small))
                written += 1
            writer.mux(stream.encode())
        if written == 0:
            raise ValueError("no video frames")
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    return written


def _convert(source: Path, target: Path, short_side: int, keyframe_interval: int, crf: int) -> str | None:
    """Worker body: ``None`` on success, else the error (never raises, so one bad file stops nothing)."""
    try:
        reencode_video(source, target, short_side, keyframe_interval, crf)
    except Exception as error:  # PyAV raises many types (av.error.*, ValueError, OSError)
        return f"{type(error).__name__}: {error}"
    return None


def find_videos(root: PathLike) -> list[Path]:
    """Video files under ``root`` (by extension), sorted, relative to ``root``."""
    root = Path(root)
    return sorted(
        path.relative_to(root) for path in root.rglob("*")
        if path.suffix.lower() in VIDEO_EXTENSIONS and path.is_file()
    )


def prepare_videos(
    src: PathLike,
    dst: PathLike,
    *,
    short_side: int = DEFAULT_SHORT_SIDE,
    keyframe_interval: int = DEFAULT_KEYFRAME_INTERVAL,
    crf: int = DEFAULT_CRF,
    workers: int | None = None,
    progress: bool = True,
) -> PrepareSummary:
    """Re-encode every video under ``src`` to the same relative path under ``dst`` (see
    :func:`reencode_video`), in ``workers`` processes (default: one per CPU; 0 runs in this process)
    started by :func:`~softpool3d.datasets.workers.worker_context`.

    Other files (annotation lists) are copied, so ``dst`` can stand in for ``src`` as a dataset root.
    Outputs that exist are skipped (they are written atomically, so they are complete), which makes
    a second run cheap and an interrupted one resumable; leftover temporary files are removed.
    A file that cannot be converted is logged by name and listed, with its error, in
    ``dst/failed.txt`` (tab-separated); the others are converted all the same.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"source folder {src} does not exist")
    if short_side < 2 or keyframe_interval < 1:
        raise ValueError(f"short_side must be >= 2 and keyframe_interval >= 1, got {short_side} and {keyframe_interval}")
    if dst.resolve().is_relative_to(src.resolve()):
        raise ValueError(f"destination {dst} is inside the source folder {src}")
    started = time.perf_counter()
    dst.mkdir(parents=True, exist_ok=True)
    for stale in dst.rglob(f"*{_TEMP_SUFFIX}"):
        stale.unlink()
    videos = find_videos(src)
    for other in src.rglob("*"):  # annotation lists and the like, so that DST can replace SRC as data.root
        if other.is_file() and other.suffix.lower() not in VIDEO_EXTENSIONS and not (dst / other.relative_to(src)).exists():
            (dst / other.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(other, dst / other.relative_to(src))
    todo = [relative for relative in videos if not (dst / relative).is_file()]
    summary = PrepareSummary(skipped=len(videos) - len(todo))
    if workers is None:
        workers = os.cpu_count() or 1
    jobs = [(src / relative, dst / relative, short_side, keyframe_interval, crf) for relative in todo]
    bar = tqdm(total=len(jobs), desc="prepare videos", unit="video", disable=not progress, dynamic_ncols=True)
    results: list[tuple[Path, str | None]] = []
    if workers == 0:
        for job in jobs:
            results.append((job[0], _convert(*job)))
            bar.update(1)
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=worker_context()) as pool:
            futures = {pool.submit(_convert, *job): job[0] for job in jobs}
            for future in as_completed(futures):
                results.append((futures[future], future.result()))
                bar.update(1)
    bar.close()
    for source, error in sorted(results, key=lambda item: item[0]):
        if error is None:
            summary.converted += 1
        else:
            logger.warning("cannot convert %s: %s", source, error)
            summary.failed.append((str(source), error))
    failed_list = dst / FAILED_LIST
    if summary.failed:
        failed_list.write_text("".join(f"{path}\t{error}\n" for path, error in summary.failed), encoding="utf-8")
    else:
        failed_list.unlink(missing_ok=True)
    for relative in videos:
        if (dst / relative).is_file():
            summary.source_bytes += (src / relative).stat().st_size
            summary.output_bytes += (dst / relative).stat().st_size
    summary.seconds = time.perf_counter() - started
    return summary
