"""The records of one split (each video's path and label) in one file that every process maps read-only.

A DataLoader worker started from the fork server receives its dataset pickled, so an index held in
numpy arrays is copied into every worker: about 14 MB a worker for 300,000 videos, 64 copies on a
node of 8 ranks x 8 workers. :func:`share_records` writes the records once into the index cache
folder (:func:`~softpool3d.datasets.index_cache.cache_dir`), and :class:`SharedRecords` maps that
file: the arrays of every process (ranks and their workers) are views of the same pages of the page
cache, and a dataset pickled to a worker carries the file's name, not its rows.

A file is named by a digest of its contents, so it never changes once written: processes that
write the same records at once (torchrun ranks) each write a temporary file and link it to the
final name, which only the first link creates; the others use that one. The layout::

    b"SP3DRECS"                 8 bytes
    header length               little-endian uint64
    header                      JSON: version, digest, count, name_width, folders, classes
    names                       count x name_width bytes (fixed-width UTF-8 file names)
    folder_ids, labels          count little-endian int32 each

Each array starts at a multiple of 64 bytes; the file ends with the labels.
"""
from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from softpool3d.datasets.index import LabelList, PathList

logger = logging.getLogger(__name__)

MAGIC = b"SP3DRECS"
FORMAT_VERSION = 1
_ALIGN = 64
_PREFIX = struct.Struct("<8sQ")


class RecordsError(RuntimeError):
    """A records file that is missing, damaged, or not the one a dataset was built with."""


def _aligned(offset: int) -> int:
    return -(-offset // _ALIGN) * _ALIGN


def _layout(count: int, name_width: int, header_size: int) -> dict[str, int]:
    """Byte offsets of the arrays and the file's size."""
    names = _aligned(_PREFIX.size + header_size)
    folder_ids = _aligned(names + count * name_width)
    labels = folder_ids + 4 * count
    return {"names": names, "folder_ids": folder_ids, "labels": labels, "size": labels + 4 * count}


def records_digest(videos: PathList, labels: LabelList, classes: Sequence[str]) -> str:
    """SHA-256 of what a records file holds: the folders, classes, and every row's name, folder and label."""
    digest = hashlib.sha256(json.dumps({"folders": videos.folders, "classes": list(classes),
                                        "name_width": videos.names.dtype.itemsize}).encode())
    for array in (videos.names, videos.folder_ids.astype("<i4", copy=False), labels.array.astype("<i4", copy=False)):
        digest.update(memoryview(np.ascontiguousarray(array)).cast("B"))
    return digest.hexdigest()


@dataclass(frozen=True)
class SharedRecords:
    """The records file at ``path`` holding ``count`` rows whose contents hash to ``digest``.

    Pickles as these three values; :meth:`open` maps the file in the process that calls it.
    """

    path: Path
    digest: str
    count: int

    def _fail(self, what: str) -> RecordsError:
        return RecordsError(f"dataset records file {self.path} {what}; it is a cache: delete it and start again "
                            f"(it is rewritten from the index)")

    def _header(self, data: Any) -> dict[str, Any]:
        if len(data) < _PREFIX.size:
            raise self._fail(f"is damaged: {len(data)} bytes, shorter than its {_PREFIX.size}-byte prefix")
        magic, header_size = _PREFIX.unpack_from(data)
        if magic != MAGIC:
            raise self._fail(f"is not a records file (it starts with {bytes(magic)!r})")
        try:
            header = json.loads(bytes(data[_PREFIX.size:_PREFIX.size + header_size]).decode())
        except (UnicodeDecodeError, ValueError) as error:
            raise self._fail(f"is damaged: its header does not read ({error})") from None
        if not isinstance(header, dict) or not isinstance(header.get("name_width"), int):
            raise self._fail("is damaged: its header lacks the name width")
        if header.get("version") != FORMAT_VERSION:
            raise self._fail(f"has format version {header.get('version')}, this reads {FORMAT_VERSION}")
        if header.get("digest") != self.digest or header.get("count") != self.count:
            raise self._fail(f"does not match this dataset: it holds {header.get('count')} rows of digest "
                             f"{str(header.get('digest'))[:12]}, the dataset was built with {self.count} rows of "
                             f"digest {self.digest[:12]}")
        layout = _layout(self.count, header["name_width"], header_size)
        if len(data) != layout["size"]:
            raise self._fail(f"is damaged: {len(data)} bytes, its header describes {layout['size']}")
        return {**header, **layout}

    def open(self, verify: bool = False) -> tuple[PathList, LabelList, list[str]]:
        """Map the file read-only: its paths, labels and classes, views of the page cache.

        Checks the header (format, row count, digest) and the file's size; ``verify`` also hashes
        every row against the digest. Raises :class:`RecordsError` naming the file otherwise."""
        try:
            with open(self.path, "rb") as handle:
                empty = os.fstat(handle.fileno()).st_size == 0  # mmap refuses an empty file
                data = b"" if empty else mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            raise self._fail("is missing") from None
        header = self._header(data)
        names = np.frombuffer(data, dtype=f"S{header['name_width']}", count=self.count, offset=header["names"])
        folder_ids = np.frombuffer(data, dtype="<i4", count=self.count, offset=header["folder_ids"])
        labels = LabelList(np.frombuffer(data, dtype="<i4", count=self.count, offset=header["labels"]))
        videos = PathList(header["folders"], folder_ids, names)
        if verify and records_digest(videos, labels, header["classes"]) != self.digest:
            raise self._fail("is damaged: its rows do not hash to the digest in its name")
        return videos, labels, list(header["classes"])


def write_records(path: Path, videos: PathList, labels: LabelList, classes: Sequence[str], digest: str) -> None:
    """Write the records file ``path`` for ``videos``, ``labels`` and ``classes`` (whose
    :func:`records_digest` is ``digest``): to a temporary file, then linked to ``path`` unless a
    file is there already (another process wrote the same records first)."""
    name_width = videos.names.dtype.itemsize
    header = {"version": FORMAT_VERSION, "digest": digest, "count": len(videos), "name_width": name_width,
              "folders": videos.folders, "classes": list(classes)}
    encoded = json.dumps(header).encode()
    layout = _layout(len(videos), name_width, len(encoded))
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(_PREFIX.pack(MAGIC, len(encoded)) + encoded)
            arrays = {"names": videos.names, "folder_ids": videos.folder_ids.astype("<i4", copy=False),
                      "labels": labels.array.astype("<i4", copy=False)}
            for name, array in arrays.items():
                out.seek(layout[name])
                out.write(memoryview(np.ascontiguousarray(array)).cast("B"))
            out.truncate(layout["size"])
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
    finally:
        os.unlink(temporary)


def share_records(videos: PathList, labels: LabelList, classes: Sequence[str], folder: Path) -> SharedRecords:
    """The :class:`SharedRecords` of ``videos``, ``labels`` and ``classes`` in ``folder``: written there
    unless a file with the same digest is (checked row by row; a damaged one is replaced)."""
    digest = records_digest(videos, labels, classes)
    records = SharedRecords(folder / f"records-{digest[:32]}.bin", digest, len(videos))
    if records.path.exists():
        try:
            records.open(verify=True)
            return records
        except RecordsError as error:
            logger.warning("%s; rewriting it", error)
            records.path.unlink(missing_ok=True)
    write_records(records.path, videos, labels, classes, digest)
    return records
