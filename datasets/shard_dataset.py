"""``ShardDataset``: :class:`~softpool3d.datasets.ClipDataset` with frames read from JPEG frame shards
(:mod:`softpool3d.datasets.prepare_shards`) instead of decoded from video files.

Only the frame source differs: a video's clip is its members' bytes, read by offset from the
shard (local ``pread``, or one HTTP ``Range`` request for frames close together) and decoded by
``torchvision.io.decode_jpeg``. Clip sampling, test views, labels, splits, unreadable-item handling
and the per-sample random generators are ClipDataset's own, so a run on shards draws the same
clips as on videos (with frame step 1) and resumes bit for bit the same way.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch
from torch.utils.data import get_worker_info
from torchvision.io import ImageReadMode, decode_jpeg

from softpool3d.datasets.annotations import Annotations
from softpool3d.datasets.atomic import atomic_writer
from softpool3d.datasets.builder import select_split
from softpool3d.datasets.clip_dataset import ClipDataset
from softpool3d.datasets.device_decode import JpegClip
from softpool3d.datasets.heap import keep_freed_memory
from softpool3d.datasets.index_cache import cache_dir
from softpool3d.datasets.registry import dataset_format
from softpool3d.datasets.shard_index import FRAME_ARRAYS, INDEX_NAME, ShardIndex, ShardIndexError, decode_index, map_arrays
from softpool3d.datasets.shard_source import LocalSource, ShardReadError, ShardSource, open_source
from softpool3d.datasets.transforms import TrainTransform
from softpool3d.datasets.video_io import VideoInfo

PathLike = Union[str, Path]

_JPEG_START = b"\xff\xd8"

logger = logging.getLogger(__name__)


def _local_copy(data: bytes, where: str) -> str | None:
    """The path of a local copy of the index ``data`` read from ``where``, written into the index cache folder
    unless a copy with the same digest is there; None (and a warning) where the folder cannot be written."""
    path = cache_dir() / f"shard-index-{hashlib.sha256(data).hexdigest()[:32]}.npz"
    if path.is_file() and path.stat().st_size == len(data):
        return str(path)
    try:
        with atomic_writer(path) as out:
            out.write(data)
    except OSError as error:
        logger.warning("cannot keep a local copy of %s in %s (%s): each process holds the index's frame arrays "
                       "itself", where, path.parent, error)
        return None
    return str(path)


class ShardSet:
    """A shard set opened at ``location`` (a folder, or an ``http(s)://`` or fsspec URL): its
    :class:`ShardIndex` and the source its bytes are read from. Each shard's size is checked against
    the index the first time a process reads it.

    The index's frame arrays (a byte offset and a size a stored frame: about 1.8 GB for Kinetics-700
    at k=1) are memory-mapped from a local file, and a DataLoader worker is sent the rest of the index
    and maps them itself, so the processes of a node share one copy in the page cache. The local file
    is ``index.npz`` in a local folder; from a URL, a copy of the index written once into the index
    cache folder (:func:`~softpool3d.datasets.index_cache.cache_dir`, named by a digest of its bytes).
    Where that folder cannot be written, each process holds its own copy (a warning says so)."""

    def __init__(self, location: PathLike) -> None:
        self.location = os.fspath(location)
        self.source: ShardSource = open_source(self.location)
        where = self.source.where(INDEX_NAME)
        try:
            data = self.source.read_file(INDEX_NAME)
        except FileNotFoundError:
            raise ShardIndexError(f"no shard index {where}: write one with tools/prepare_videos.py SRC DST "
                                  f"--format shards --dataset NAME") from None
        self.index: ShardIndex = decode_index(data, where)
        self.frames_file = where if isinstance(self.source, LocalSource) else _local_copy(data, where)
        if self.frames_file is not None:
            self.index = dataclasses.replace(self.index, **self._mapped_frames(len(self.index.offset)))
        self._checked: set[int] = set()

    def _mapped_frames(self, frames: int) -> dict[str, np.ndarray]:
        """The frame arrays mapped from :attr:`frames_file`, which must still hold ``frames`` frames."""
        where = self.frames_file
        mapped = map_arrays(where, FRAME_ARRAYS)
        if any(len(array) != frames for array in mapped.values()):
            raise ShardIndexError(f"{where} was rewritten since the shard set was opened: "
                                  f"{len(mapped['offset'])} frames, it had {frames}")
        return mapped

    def check_shard(self, shard: int) -> None:
        """Raise :class:`ShardIndexError` unless shard ``shard`` has the size the index records."""
        if shard in self._checked:
            return
        name, expected = self.index.shards[shard], self.index.shard_sizes[shard]
        try:
            size = self.source.size(name)
        except FileNotFoundError:
            raise ShardIndexError(f"{self.source.where(name)} is missing (listed in {self.source.where(INDEX_NAME)})") from None
        if size < expected:
            raise ShardIndexError(f"{self.source.where(name)} is truncated: {size} bytes, "
                                  f"{self.source.where(INDEX_NAME)} records {expected}")
        if size != expected:
            raise ShardIndexError(f"{self.source.where(name)} does not match {self.source.where(INDEX_NAME)}: "
                                  f"{size} bytes, the index records {expected} (rewritten since the index?)")
        self._checked.add(shard)

    def __getstate__(self) -> dict:
        state = {"location": self.location, "source": self.source, "frames_file": self.frames_file}
        if self.frames_file is None:
            return {**state, "index": self.index, "frames": None}
        return {**state, "frames": len(self.index.offset),
                "index": dataclasses.replace(self.index, **dict.fromkeys(FRAME_ARRAYS, np.zeros(0, np.int64)))}

    def __setstate__(self, state: dict) -> None:
        frames = state.pop("frames")
        self.__dict__.update(state)
        self._checked = set()
        if frames is not None:
            self.index = dataclasses.replace(self.index, **self._mapped_frames(frames))


class ShardVideo:
    """The stored frames of video ``video`` of ``shards``: :class:`VideoInfo` and frames by index,
    as :class:`~softpool3d.datasets.OpenVideo` gives them (indices count stored frames)."""

    def __init__(self, shards: ShardSet, video: int) -> None:
        index = shards.index
        self.shards, self.video = shards, video
        self.shard = int(index.shard[video])
        self.path = f"{shards.source.where(index.shards[self.shard])}:{index.paths[video].decode('utf-8', 'surrogateescape')}"
        self.info = VideoInfo(int(index.count[video]), float(index.fps[video]), int(index.step[video]))

    def jpegs(self, indices: Sequence[int]) -> list[torch.Tensor]:
        """The JPEG bytes of the stored frames at ``indices``, each a uint8 tensor ``(bytes,)``."""
        indices = [int(i) for i in indices]
        if not indices or min(indices) < 0 or max(indices) >= self.info.num_frames:
            raise ValueError(f"frame indices {indices} out of range for {self.path} ({self.info.num_frames} frames)")
        index = self.shards.index
        self.shards.check_shard(self.shard)
        members = [int(index.first[self.video]) + i for i in indices]
        unique = sorted(set(members))
        blocks = self.shards.source.read_ranges(index.shards[self.shard],
                                                [(int(index.offset[m]), int(index.size[m])) for m in unique])
        by_member = dict(zip(unique, blocks))
        for member in unique:
            if by_member[member][:2] != _JPEG_START:
                raise ShardIndexError(f"{self.shards.source.where(index.shards[self.shard])} does not match its index: "
                                      f"no JPEG at byte {int(index.offset[member])} (frame of {self.path})")
        return [torch.frombuffer(by_member[m], dtype=torch.uint8) for m in members]

    def frame_list(self, indices: Sequence[int]) -> list[torch.Tensor]:
        """The uint8 ``(H, W, 3)`` RGB frames at ``indices`` (stored-frame numbers, repeats allowed), one
        tensor a frame: decode_jpeg's own buffers, uncopied. The first call in a DataLoader worker keeps the worker's
        freed memory from then on (:func:`~softpool3d.datasets.heap.keep_freed_memory`): a clip's buffers are the last
        clip's pages. A process that reads clips itself (``num_workers=0``, a notebook) keeps its allocator as it is."""
        if get_worker_info() is not None:
            keep_freed_memory()
        data = self.jpegs(indices)
        try:
            decoded = decode_jpeg(data, mode=ImageReadMode.RGB)
        except RuntimeError as error:
            raise ShardReadError(f"cannot decode the JPEG frames {list(indices)} of {self.path}: {error}") from None
        # decode_jpeg's (3, H, W) is a view of an (H, W, 3) buffer: stacking those buffers is one plain copy
        # (stacking the (3, H, W) views gathers every byte, 9x slower at 182x428)
        return [frame.permute(1, 2, 0) for frame in decoded]

    def frames(self, indices: Sequence[int]) -> torch.Tensor:
        """uint8 ``(T, H, W, 3)`` RGB frames at ``indices`` (stored-frame numbers, repeats allowed)."""
        return torch.stack(self.frame_list(indices))


class ShardDataset(ClipDataset):
    """:class:`~softpool3d.datasets.ClipDataset` over the videos of ``annotations`` (paths relative to the
    source folder the shards were written from) stored in ``shards``; every other argument is ClipDataset's.
    A frame that cannot be read or decoded makes its video unreadable, as a damaged video file does.

    ``decode_on_device=True`` (training only): an item's clip is a :class:`~softpool3d.datasets.device_decode.JpegClip`
    (the JPEG bytes of its frames and its generators' states after the frame draws), which the engine
    decodes and transforms on the training device (:meth:`JpegBatch.decode`); the same frames, crop and
    flip as decoding here. A JPEG that fails to decode there stops the run (it is not skipped)."""

    def __init__(self, annotations: Annotations, shards: ShardSet, decode_on_device: bool = False,
                 **clip_options: Any) -> None:
        super().__init__(annotations, **clip_options)
        if decode_on_device and not self.train:
            raise ValueError("decode_on_device is for training items (test views are decoded in the workers)")
        self.shards = shards
        self.decode_on_device = decode_on_device
        self.entries = shards.index.find(annotations.videos.joined()).astype(np.int64)
        if (self.entries < 0).any():
            absent = annotations.videos[np.flatnonzero(self.entries < 0)[:5]]
            raise ShardIndexError(f"{shards.location}: {int((self.entries < 0).sum())} videos are not in the shards, "
                                  f"e.g. {', '.join(str(p) for p in absent)}")

    def open_video(self, video_index: int) -> ShardVideo:
        return ShardVideo(self.shards, int(self.entries[video_index]))

    def train_frames(self, video: ShardVideo, indices: Sequence[int]) -> torch.Tensor | list[torch.Tensor]:
        """The decoded frames as a list when the transform is :class:`TrainTransform`, which cuts its crop out
        of each frame (the whole frames are never copied into one tensor); stacked ``(T, H, W, 3)`` for a
        transform given to the dataset, as :class:`ClipDataset` documents."""
        return video.frame_list(indices) if isinstance(self.transform, TrainTransform) else video.frames(indices)

    def _train_clips(self, video: ShardVideo, index: int) -> torch.Tensor | JpegClip:
        if not self.decode_on_device:
            return super()._train_clips(video, index)
        generators, indices = self.train_draw(video, index)
        return JpegClip(video.jpegs(indices), [generator.get_state() for generator in generators], self.transform)


def load_shard_annotations(
    shards: ShardSet, name: str, split: str, fold: int = 1, *, val_fraction: float = 0.1, val_seed: int = 0,
    missing_list: PathLike | None = None,
) -> Annotations:
    """The videos of ``split`` of the shard set, as :func:`~softpool3d.datasets.load_annotations` gives them
    for the source folder (the annotation lists stored at preparation, val carved the same way); a listed
    video that is not in the shards (it failed to convert) counts as missing."""
    index = shards.index
    stored = index.meta.get("dataset")
    if stored != name:
        raise ValueError(f"{shards.location} holds shards of dataset {stored!r}, the config asks for {name!r}")
    dataset = dataset_format(name)
    if dataset.folds is not None and fold not in dataset.folds:
        raise ValueError(f"fold must be one of {', '.join(map(str, dataset.folds))} for {name}, got {fold}")
    plan = index.plans.get(f"{split}@{fold if dataset.folds else 1}")
    if plan is None:
        raise ValueError(f"split must be one of train, val, test, got {split!r}")
    if isinstance(plan, str):
        raise FileNotFoundError(f"{shards.location}: {plan}")
    source, carve = plan
    listing = index.lists[f"{source}@{fold if dataset.folds else 1}"]
    present = listing.present & (index.find(listing.videos.joined()) >= 0)
    listed = type(listing)(listing.videos, listing.labels, present, listing.classes, listing.files)
    description = f"the {source} list of the shards in {shards.location}"
    return select_split(dataset, listed, split, carve, description, shards.location, val_fraction=val_fraction,
                        val_seed=val_seed, missing_list=missing_list)


def build_shard_dataset(
    name: str,
    location: PathLike,
    split: str,
    *,
    train: bool,
    fold: int = 1,
    val_fraction: float = 0.1,
    val_seed: int = 0,
    missing_list: PathLike | None = None,
    **clip_options: Any,
) -> ShardDataset:
    """A :class:`ShardDataset` of ``split`` of the shard set at ``location`` (a folder or URL) of dataset
    ``name``; the arguments are those of :func:`~softpool3d.datasets.build_dataset`."""
    shards = ShardSet(location)
    annotations = load_shard_annotations(shards, name, split, fold, val_fraction=val_fraction, val_seed=val_seed,
                                         missing_list=missing_list)
    return ShardDataset(annotations, shards, train=train, **clip_options)
