"""The index of a frame-shard set: which tar shard holds each video's JPEG frames, where each frame's
bytes are, and the dataset's annotation lists as parsed when the shards were written.

A shard set is a folder (local, or served over HTTP(S) or any fsspec URL) holding::

    index.npz                 this index (numpy arrays and a JSON header, no pickle)
    shards/shard-000000.tar   tar shards of about ``shard_size`` bytes each
    ...                       the source folder's other files (annotation lists), copied

In a shard, video ``key`` is the members ``key.json`` (its relative path, fps, source frame
count, frame step) then ``key.000000.jpg``, ``key.000006.jpg``, ... (the source frame number),
so webdataset reads each video as one sample and ``tar`` lists and extracts the frames.

Frames are every ``frame_step``-th of the source (``frame_step`` = k); a video of ``num_frames``
source frames has ``ceil(num_frames / k)`` stored frames. Clip samplers index stored frames at
``sampling_rate / k``, so k must divide the recipes' ``sampling_rate``.

The annotation lists are stored parsed (a :class:`~softpool3d.datasets.index.VideoIndex` per list
and fold, paths relative to the source folder, with the plan of each split), so a shard set
served from a URL needs no folder tree, and val carving, folds and missing-video reports work as
they do on videos (:func:`softpool3d.datasets.builder.select_split`).
"""
from __future__ import annotations

import io
import json
import struct
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from softpool3d.datasets.index import PathList, VideoIndex

# torchvision 0.29 warns at every JPEG call that its image codecs will move to TorchCodec; encode_jpeg
# and decode_jpeg write and read shards (and nvJPEG batches on the GPU), so the warning would fill every log.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision are deprecated",
                        category=DeprecationWarning)

INDEX_NAME = "index.npz"
SHARD_FOLDER = "shards"
FORMAT_VERSION = 1


class ShardIndexError(RuntimeError):
    """A shard set whose index is missing, unreadable, or does not match its shards."""


@dataclass
class ShardIndex:
    """Every video of a shard set (sorted by relative path) and every stored frame.

    Video ``v`` is ``paths[v]`` (relative to the source folder, POSIX bytes) in shard
    ``shards[shard[v]]``; its stored frames are entries ``first[v] .. first[v] + count[v] - 1`` of
    ``offset``/``size`` (byte offset of the member's data in the shard, and its length); ``num_frames[v]``
    source frames at ``fps[v]``, stored every ``step[v]``-th, ``height[v] x width[v]`` pixels.
    ``shard_sizes`` are the shards' byte sizes when written (checked when a shard is first read).
    ``lists`` maps ``"<source>@<fold>"`` to that annotation list's :class:`VideoIndex` (relative paths),
    ``plans`` maps ``"<split>@<fold>"`` to ``[source, carve]`` or to the error text the format gave.
    """

    paths: np.ndarray
    shard: np.ndarray
    num_frames: np.ndarray
    fps: np.ndarray
    step: np.ndarray
    height: np.ndarray
    width: np.ndarray
    first: np.ndarray
    count: np.ndarray
    offset: np.ndarray
    size: np.ndarray
    shards: list[str]
    shard_sizes: list[int]
    meta: dict[str, Any] = field(default_factory=dict)
    lists: dict[str, VideoIndex] = field(default_factory=dict)
    plans: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    def find(self, relative: np.ndarray) -> np.ndarray:
        """Video ids of the relative paths ``relative`` (bytes array); -1 where a path is not stored."""
        relative = np.asarray(relative, dtype="S")
        where = np.searchsorted(self.paths, relative)
        where = np.minimum(where, max(len(self.paths) - 1, 0))
        found = (self.paths[where] == relative) if len(self.paths) else np.zeros(len(relative), dtype=bool)
        return np.where(found, where, -1)


_VIDEO_ARRAYS = ("paths", "shard", "num_frames", "fps", "step", "height", "width", "first", "count")
FRAME_ARRAYS = ("offset", "size")
"""The arrays with one entry a stored frame: all but a few bytes of a large index."""


def encode_index(index: ShardIndex) -> bytes:
    """``index`` as the bytes of an ``.npz`` file."""
    header = {"version": FORMAT_VERSION, "shards": index.shards, "shard_sizes": index.shard_sizes, "meta": index.meta,
              "plans": index.plans, "lists": {}}
    arrays = {name: getattr(index, name) for name in _VIDEO_ARRAYS + FRAME_ARRAYS}
    for number, (key, listing) in enumerate(sorted(index.lists.items())):
        header["lists"][key] = {"number": number, "classes": listing.classes, "files": listing.files}
        arrays[f"list{number}_paths"] = listing.videos.joined()
        arrays[f"list{number}_labels"] = listing.labels
        arrays[f"list{number}_present"] = listing.present
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def decode_index(data: bytes, where: str) -> ShardIndex:
    """The :class:`ShardIndex` stored in ``data`` (the bytes of ``where``, named in errors)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
        header = json.loads(arrays.pop("header").tobytes().decode())
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise ShardIndexError(f"{where} is not a shard index: {type(error).__name__}: {error}") from None
    if header.get("version") != FORMAT_VERSION:
        raise ShardIndexError(f"{where} is a shard index of version {header.get('version')}, this reads {FORMAT_VERSION}")
    lists = {}
    for key, entry in header["lists"].items():
        number = entry["number"]
        lists[key] = VideoIndex(PathList.from_paths(p.decode("utf-8", "surrogateescape") for p in arrays[f"list{number}_paths"]),
                                arrays[f"list{number}_labels"], arrays[f"list{number}_present"], entry["classes"],
                                entry["files"])
    missing = [name for name in _VIDEO_ARRAYS + FRAME_ARRAYS if name not in arrays]
    if missing:
        raise ShardIndexError(f"{where} lacks the arrays {missing}")
    return ShardIndex(**{name: arrays[name] for name in _VIDEO_ARRAYS + FRAME_ARRAYS}, shards=header["shards"],
                      shard_sizes=header["shard_sizes"], meta=header["meta"], lists=lists, plans=header["plans"])


def map_arrays(path: str | Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Arrays ``names`` of the index file at ``path``, memory-mapped read-only instead of read: ``np.savez``
    stores each array uncompressed, an ``.npy`` file inside the zip, so its data lies at a fixed offset of
    the file. Processes that map the same file share its pages (the page cache) instead of each holding
    a copy."""
    mapped = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as handle:
        for name in names:
            member = archive.getinfo(f"{name}.npy")
            if member.compress_type != zipfile.ZIP_STORED:
                raise ShardIndexError(f"{path}: {name} is compressed, it cannot be mapped")
            handle.seek(member.header_offset + 26)  # the local header: 30 bytes, the member's name, its extra field
            name_length, extra_length = struct.unpack("<HH", handle.read(4))
            handle.seek(member.header_offset + 30 + name_length + extra_length)
            version = np.lib.format.read_magic(handle)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran_order, dtype = read_header(handle)
            mapped[name] = np.memmap(handle.name, dtype=dtype, mode="r", offset=handle.tell(), shape=shape,
                                     order="F" if fortran_order else "C")
    return mapped


def relative_key(relative: str | Path) -> str:
    """The webdataset key of a video: its relative path without the extension, dots made ``_``
    (webdataset splits a member name at the first dot of its base name)."""
    path = Path(relative)
    stem = str(path.with_suffix("")) if path.suffix else str(path)
    return stem.replace(".", "_")
