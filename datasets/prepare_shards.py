"""Prepare a video dataset as frame shards: every video's frames as JPEG at a chosen short side,
optionally every k-th frame only, packed into tar shards with an index
(:mod:`softpool3d.datasets.shard_index`); :class:`~softpool3d.datasets.shard_dataset.ShardDataset`
reads them.

A random clip from a video costs every frame from the keyframe before it; from shards it costs
reading and decoding exactly the clip's JPEGs. JPEG frames take more bytes than H.264: ``k``
(frames kept) and the short side (pixels per frame) trade that space back for speed.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tarfile
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Union

import av
import numpy as np
import torch
from torchvision.io import encode_jpeg
from tqdm import tqdm

from softpool3d.datasets.annotations import VIDEO_EXTENSIONS
from softpool3d.datasets.atomic import atomic_writer
from softpool3d.datasets.builder import SPLITS
from softpool3d.datasets.index import PathList, VideoIndex
from softpool3d.datasets.prepare import FAILED_LIST, PrepareSummary, find_videos, scaled_size
from softpool3d.datasets.registry import dataset_format
from softpool3d.datasets.shard_index import (INDEX_NAME, SHARD_FOLDER, ShardIndex, decode_index, encode_index,
                                             relative_key)
from softpool3d.datasets.workers import worker_context

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

DEFAULT_QUALITY = 90
DEFAULT_SHARD_SIZE = 1 << 30
_PARTIAL = ".partial"


@dataclass
class VideoFrames:
    """A video's stored frames: ``jpegs`` every ``step``-th of its ``num_frames`` source frames, ``height x width``."""

    jpegs: list[bytes]
    num_frames: int
    fps: float
    step: int
    height: int
    width: int


def video_frames(source: PathLike, short_side: int, quality: int, step: int) -> VideoFrames:
    """Decode ``source`` with PyAV from the start (presentation order, as the loaders count frames) and
    keep every ``step``-th frame, short side resized to ``short_side`` (never enlarged; area
    interpolation, as :func:`~softpool3d.datasets.prepare.reencode_video`), as JPEG of ``quality``."""
    jpegs: list[bytes] = []
    count = 0
    with av.open(str(source)) as reader:
        video = reader.streams.video[0]
        fps = float(video.average_rate or video.guessed_rate or Fraction(25))
        width, height = scaled_size(video.codec_context.width, video.codec_context.height, short_side)
        for frame in reader.decode(video):
            if count % step == 0:
                pixels = frame.reformat(width, height, format="rgb24", interpolation="AREA").to_ndarray()
                jpegs.append(encode_jpeg(torch.from_numpy(pixels).permute(2, 0, 1).contiguous(), quality=quality).numpy().tobytes())
            count += 1
    if count == 0:
        raise ValueError("no video frames")
    return VideoFrames(jpegs, count, fps, step, height, width)


def _convert(source: Path, short_side: int, quality: int, step: int) -> VideoFrames | str:
    """Worker body: the frames, or the error text (never raises, so one bad file stops nothing)."""
    try:
        return video_frames(source, short_side, quality, step)
    except Exception as error:  # PyAV raises many types (av.error.*, ValueError, OSError)
        return f"{type(error).__name__}: {error}"


class ShardWriter:
    """Appends videos to ``folder/shard-NNNNNN.tar`` files of about ``shard_size`` bytes.

    A shard is written as ``.partial`` and renamed when full, then its record (``.json``: each
    video's path, key, frame count, fps, step, size and member offsets) is written atomically:
    a shard with a record is complete, and a rerun keeps it and skips its videos.
    """

    def __init__(self, folder: Path, shard_size: int) -> None:
        self.folder, self.shard_size = folder, shard_size
        folder.mkdir(parents=True, exist_ok=True)
        for partial in folder.glob(f"*{_PARTIAL}"):
            partial.unlink()
        for tar in folder.glob("shard-*.tar"):
            if not tar.with_suffix(".json").is_file():
                tar.unlink()
        self.records = {tar.name: json.loads(tar.with_suffix(".json").read_text(encoding="utf-8"))
                        for tar in sorted(folder.glob("shard-*.tar"))}
        self.records = {name: record for name, record in self.records.items()
                        if (folder / name).stat().st_size == record["size"]}
        self._number = 1 + max((int(name[6:12]) for name in self.records), default=-1)
        self._tar: tarfile.TarFile | None = None
        self._videos: list[dict] = []
        self._keys: set[str] = set()

    def done(self) -> set[str]:
        """Relative paths of the videos in complete shards."""
        return {video["path"] for record in self.records.values() for video in record["videos"]}

    def _member(self, name: str, data: bytes) -> tuple[int, int]:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        self._tar.addfile(info, _Reader(data))
        return self._tar.offset - ((len(data) + tarfile.BLOCKSIZE - 1) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE, len(data)

    def add(self, relative: str, frames: VideoFrames) -> None:
        """Append the video at ``relative`` (its path under the source folder) to the open shard."""
        if self._tar is None:
            self._name = f"shard-{self._number:06d}.tar"
            self._tar = tarfile.open(self.folder / (self._name + _PARTIAL), "w", format=tarfile.PAX_FORMAT)
            self._videos, self._keys = [], set()
        key = relative_key(relative)
        while key in self._keys:  # two paths that differ only in their extension or dots
            key += "_"
        self._keys.add(key)
        meta = {"path": relative, "num_frames": frames.num_frames, "fps": frames.fps, "step": frames.step,
                "height": frames.height, "width": frames.width}
        self._member(f"{key}.json", json.dumps(meta).encode())
        members = [self._member(f"{key}.{i * frames.step:06d}.jpg", jpeg) for i, jpeg in enumerate(frames.jpegs)]
        self._videos.append({**meta, "key": key, "frames": members})
        if self._tar.offset >= self.shard_size:
            self.close()

    def close(self) -> None:
        """Finish the open shard (if any): end of archive, rename, record."""
        if self._tar is None:
            return
        self._tar.close()
        partial = self.folder / (self._name + _PARTIAL)
        os.replace(partial, self.folder / self._name)
        record = {"size": (self.folder / self._name).stat().st_size, "videos": self._videos}
        with atomic_writer(self.folder / Path(self._name).with_suffix(".json")) as out:
            out.write(json.dumps(record).encode())
        self.records[self._name] = record
        self._tar, self._number = None, self._number + 1


class _Reader:
    """The minimal file object ``TarFile.addfile`` copies from."""

    def __init__(self, data: bytes) -> None:
        self.data, self.position = data, 0

    def read(self, size: int = -1) -> bytes:
        end = len(self.data) if size < 0 else self.position + size
        chunk, self.position = self.data[self.position : end], min(end, len(self.data))
        return chunk


def build_index(records: dict[str, dict], lists: dict[str, VideoIndex], plans: dict, meta: dict) -> ShardIndex:
    """The :class:`ShardIndex` of the shard ``records`` (by shard name), videos sorted by path."""
    shards = sorted(records)
    videos = sorted(((video, number) for number, name in enumerate(shards) for video in records[name]["videos"]),
                    key=lambda item: item[0]["path"].encode("utf-8", "surrogateescape"))
    counts = np.array([len(video["frames"]) for video, _ in videos], dtype=np.int64)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64) if len(videos) else np.zeros(0, np.int64)
    members = np.array([member for video, _ in videos for member in video["frames"]], dtype=np.int64).reshape(-1, 2)

    def column(key: str, dtype: type) -> np.ndarray:
        return np.array([video[key] for video, _ in videos], dtype=dtype)

    return ShardIndex(
        paths=np.array([video["path"].encode("utf-8", "surrogateescape") for video, _ in videos], dtype="S"),
        shard=np.array([number for _, number in videos], dtype=np.int32), num_frames=column("num_frames", np.int32),
        fps=column("fps", np.float64), step=column("step", np.int32), height=column("height", np.int32),
        width=column("width", np.int32), first=first, count=counts.astype(np.int32), offset=members[:, 0],
        size=members[:, 1].astype(np.int32), shards=[f"{SHARD_FOLDER}/{name}" for name in shards],
        shard_sizes=[records[name]["size"] for name in shards], meta=meta, lists=lists, plans=plans)


def annotation_lists(name: str, src: Path, annotations: Path | None) -> tuple[dict[str, VideoIndex], dict]:
    """Every annotation list of dataset ``name`` under ``src`` (per list and fold, paths relative to
    ``src``) and the plan of every split (``[list, carve]``, or the format's error text)."""
    dataset = dataset_format(name)
    folder = annotations if annotations is not None else dataset.default_annotations(src)
    lists: dict[str, VideoIndex] = {}
    plans: dict = {}
    for fold in dataset.folds or (1,):
        for split in SPLITS:
            try:
                source, carve = dataset.plan(src, folder, split)
                if f"{source}@{fold}" not in lists:
                    index = dataset.parse(src, folder, source, fold)
                    relative = [os.path.relpath(path, src).replace(os.sep, "/") for path in index.videos]
                    lists[f"{source}@{fold}"] = VideoIndex(PathList.from_paths(relative), index.labels, index.present,
                                                           index.classes, [os.path.relpath(f, src) for f in index.files])
            except (ValueError, FileNotFoundError) as error:  # AnnotationError is a ValueError
                plans[f"{split}@{fold}"] = str(error)
                continue
            plans[f"{split}@{fold}"] = [source, carve]
    if not lists:
        raise FileNotFoundError(f"{name} under {src}: no annotation list could be read ({'; '.join(plans.values())})")
    return lists, plans


def _ordered(pool: ProcessPoolExecutor | None, jobs: list[tuple], depth: int) -> Iterator[tuple[tuple, VideoFrames | str]]:
    """``(job, result)`` in the order of ``jobs``, at most ``depth`` in flight (bounded memory)."""
    if pool is None:
        for job in jobs:
            yield job, _convert(*job)
        return
    pending: deque[tuple[tuple, Future]] = deque()
    for job in jobs:
        pending.append((job, pool.submit(_convert, *job)))
        if len(pending) >= depth:
            done, future = pending.popleft()
            yield done, future.result()
    while pending:
        done, future = pending.popleft()
        yield done, future.result()


def prepare_shards(
    src: PathLike,
    dst: PathLike,
    *,
    dataset: str,
    annotations: PathLike | None = None,
    short_side: int = 320,
    quality: int = DEFAULT_QUALITY,
    frame_step: int = 1,
    shard_size: int = DEFAULT_SHARD_SIZE,
    workers: int | None = None,
    progress: bool = True,
) -> PrepareSummary:
    """Write every video under ``src`` as JPEG frames (:func:`video_frames`) into tar shards of about
    ``shard_size`` bytes under ``dst/shards/``, and ``dst/index.npz`` (:mod:`softpool3d.datasets.shard_index`)
    with the annotation lists of dataset ``dataset`` (a registered name; ``annotations`` as for
    :func:`~softpool3d.datasets.build_dataset`). ``workers`` processes decode and encode (default one
    per CPU; 0 runs in this process).

    Other files are copied, as :func:`~softpool3d.datasets.prepare.prepare_videos` does. Complete
    shards are kept and their videos skipped, so an interrupted run resumes; a video that cannot be
    converted is logged and listed in ``dst/failed.txt``, and its entries count as missing.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"source folder {src} does not exist")
    if short_side < 2 or not 1 <= quality <= 100 or frame_step < 1 or shard_size < 1:
        raise ValueError(f"short_side must be >= 2, quality 1-100, frame_step >= 1 and shard_size >= 1, got "
                         f"{short_side}, {quality}, {frame_step}, {shard_size}")
    if dst.resolve().is_relative_to(src.resolve()):
        raise ValueError(f"destination {dst} is inside the source folder {src}")
    started = time.perf_counter()
    lists, plans = annotation_lists(dataset, src, Path(annotations) if annotations is not None else None)
    dst.mkdir(parents=True, exist_ok=True)
    meta = {"dataset": dataset, "short_side": short_side, "quality": quality, "frame_step": frame_step}
    index_path = dst / INDEX_NAME
    if index_path.is_file():
        previous = decode_index(index_path.read_bytes(), str(index_path)).meta
        if {key: previous.get(key) for key in ("short_side", "quality", "frame_step")} != {
                key: meta[key] for key in ("short_side", "quality", "frame_step")}:
            raise ValueError(f"{dst} holds shards written with {previous}; asked for {meta}: use another folder")
    for other in src.rglob("*"):
        if other.is_file() and other.suffix.lower() not in VIDEO_EXTENSIONS and not (dst / other.relative_to(src)).exists():
            (dst / other.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(other, dst / other.relative_to(src))
    writer = ShardWriter(dst / SHARD_FOLDER, shard_size)
    done = writer.done()
    videos = [relative.as_posix() for relative in find_videos(src)]
    todo = [relative for relative in videos if relative not in done]
    summary = PrepareSummary(skipped=len(videos) - len(todo))
    if workers is None:
        workers = os.cpu_count() or 1
    jobs = [(src / relative, short_side, quality, frame_step) for relative in todo]
    bar = tqdm(total=len(jobs), desc="prepare shards", unit="video", disable=not progress, dynamic_ncols=True)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=worker_context()) if workers > 0 else None
    try:
        for job, result in _ordered(pool, jobs, 4 * max(workers, 1)):
            relative = job[0].relative_to(src).as_posix()
            if isinstance(result, str):
                logger.warning("cannot convert %s: %s", job[0], result)
                summary.failed.append((str(job[0]), result))
            else:
                writer.add(relative, result)
                summary.converted += 1
            bar.update(1)
        writer.close()
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    failed_list = dst / FAILED_LIST
    if summary.failed:
        failed_list.write_text("".join(f"{path}\t{error}\n" for path, error in summary.failed), encoding="utf-8")
    else:
        failed_list.unlink(missing_ok=True)
    index = build_index(writer.records, lists, plans, meta)
    with atomic_writer(index_path) as out:
        out.write(encode_index(index))
    stored = set(index.paths.tolist())
    summary.source_bytes = sum((src / relative).stat().st_size for relative in videos
                               if relative.encode("utf-8", "surrogateescape") in stored)
    summary.output_bytes = sum(index.shard_sizes) + index_path.stat().st_size
    summary.seconds = time.perf_counter() - started
    return summary
