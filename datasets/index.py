"""Compact storage of a split's video list: a few numpy arrays instead of a Python object per video.

At Kinetics scale (half a million videos) a ``list[Path]`` costs hundreds of MB and about a
million garbage-collected objects, which every forked DataLoader worker copies page by page
as soon as its garbage collector walks them (PyTorch issue 13246). :class:`PathList` keeps the
file names in one fixed-width byte array and the folders in a short list; :class:`LabelList`
keeps labels in an ``int32`` array. Both index like the lists they replace.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence, Union, overload

import numpy as np

PathLike = Union[str, Path]


def _take_index(length: int, key: slice | Sequence[int] | np.ndarray) -> np.ndarray:
    if isinstance(key, slice):
        return np.arange(length)[key]
    key = np.asarray(key)
    if key.dtype == bool:
        if key.shape != (length,):
            raise IndexError(f"boolean mask of shape {key.shape} for {length} entries")
        return np.flatnonzero(key)
    return key.astype(np.int64, copy=False)


class PathList(Sequence[Path]):
    """Paths ``folders[folder_ids[i]] / names[i]``; ``names`` is a fixed-width UTF-8 byte array.

    ``paths[i]`` is a :class:`~pathlib.Path`; a slice, index array or boolean mask gives a
    :class:`PathList` of those entries.
    """

    def __init__(self, folders: Sequence[str], folder_ids: np.ndarray, names: np.ndarray) -> None:
        if folder_ids.shape != names.shape or folder_ids.ndim != 1:
            raise ValueError(f"folder_ids {folder_ids.shape} and names {names.shape} must be 1-D of equal length")
        self.folders = list(folders)
        self.folder_ids = folder_ids.astype(np.int32, copy=False)
        self.names = names if names.dtype.kind == "S" else names.astype("S")
        self._folder_paths = [Path(folder) for folder in self.folders]

    @classmethod
    def from_paths(cls, paths: Iterable[PathLike]) -> "PathList":
        """Pack ``paths`` (grouped by their parent folder)."""
        folder_of: dict[str, int] = {}
        folder_ids, names = [], []
        for path in paths:
            folder, name = os.path.split(os.fspath(path))
            folder_ids.append(folder_of.setdefault(folder, len(folder_of)))
            names.append(name.encode("utf-8", "surrogateescape"))
        return cls(list(folder_of), np.array(folder_ids, dtype=np.int32), np.array(names, dtype="S"))

    def __len__(self) -> int:
        return len(self.names)

    @overload
    def __getitem__(self, key: int) -> Path: ...

    @overload
    def __getitem__(self, key: slice | Sequence[int] | np.ndarray) -> "PathList": ...

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            name = self.names[key].decode("utf-8", "surrogateescape")
            return self._folder_paths[self.folder_ids[key]] / name
        index = _take_index(len(self), key)
        return PathList(self.folders, self.folder_ids[index], self.names[index])

    def __iter__(self) -> Iterator[Path]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return f"PathList({len(self)} paths in {len(self.folders)} folders)"

    def joined(self) -> np.ndarray:
        """Every full path as bytes (``os.fsencode``), in one vectorized array: far cheaper than
        making a :class:`~pathlib.Path` per entry when writing many paths out."""
        prefixes = np.array([os.fsencode(os.path.join(folder, "")) for folder in self.folders] or [b""], dtype="S")
        return np.char.add(prefixes[self.folder_ids], self.names)

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays (the folder list aside)."""
        return self.folder_ids.nbytes + self.names.nbytes


class LabelList(Sequence[int]):
    """Integer labels in an ``int32`` array; ``labels[i]`` is a Python ``int``, so a DataLoader
    collates them to an ``int64`` tensor. Compares equal to a sequence with the same values."""

    def __init__(self, values: Iterable[int] | np.ndarray) -> None:
        self.array = np.asarray(values if isinstance(values, np.ndarray) else list(values), dtype=np.int32).reshape(-1)

    def __len__(self) -> int:
        return len(self.array)

    @overload
    def __getitem__(self, key: int) -> int: ...

    @overload
    def __getitem__(self, key: slice | Sequence[int] | np.ndarray) -> "LabelList": ...

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return int(self.array[key])
        return LabelList(self.array[_take_index(len(self), key)])

    def __iter__(self) -> Iterator[int]:
        return iter(self.array.tolist())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, LabelList):
            other = other.array
        if not isinstance(other, (Sequence, np.ndarray)) or isinstance(other, (str, bytes)):
            return NotImplemented
        return len(self) == len(other) and bool(np.array_equal(self.array, np.asarray(other)))

    __hash__ = None  # mutable-array semantics, like list

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self.array if dtype is None else self.array.astype(dtype)

    def __repr__(self) -> str:
        return f"LabelList({self.array.tolist() if len(self) <= 8 else f'{len(self)} labels'})"


@dataclass
class VideoIndex:
    """Every entry of one annotation list, before missing videos are dropped.

    ``videos[i]`` is the file of entry ``i`` (where it was expected, if ``present[i]`` is
    false), ``labels[i]`` its class. ``files`` are the annotation files read and ``folders``
    the folders listed to find the videos: the index cache is valid while none of them
    changes.
    """

    videos: PathList
    labels: np.ndarray
    present: np.ndarray
    classes: list[str]
    files: list[str] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int32)
        self.present = np.asarray(self.present, dtype=bool)
        if not len(self.videos) == len(self.labels) == len(self.present):
            raise ValueError(
                f"videos, labels and present differ in length: {len(self.videos)}, {len(self.labels)}, {len(self.present)}"
            )


def list_folder(folder: PathLike) -> set[str]:
    """Names in ``folder`` (empty if it does not exist): one directory read, no per-file stat."""
    try:
        return set(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return set()


def locate(paths: PathList) -> tuple[np.ndarray, list[str]]:
    """Which of ``paths`` exist as directory entries, listing each folder once (no per-file stat).

    Returns the boolean mask and the folders listed."""
    present = np.zeros(len(paths), dtype=bool)
    order = np.argsort(paths.folder_ids, kind="stable")
    bounds = np.searchsorted(paths.folder_ids[order], np.arange(len(paths.folders) + 1))
    for folder_id, folder in enumerate(paths.folders):
        members = order[bounds[folder_id] : bounds[folder_id + 1]]
        if len(members):
            listing = {name.encode("utf-8", "surrogateescape") for name in list_folder(folder)}
            present[members] = [name in listing for name in paths.names[members].tolist()]
    return present, list(paths.folders)
