"""The registry of dataset formats: one :class:`DatasetFormat` subclass per published layout.

A format knows three things about its dataset: where its annotation lists are by default, which
list serves each split (and whether ``val`` is carved out of the training list), and how to parse
one list into a :class:`~softpool3d.datasets.index.VideoIndex`. Everything else (the index cache,
missing-video reports, val carving, clips) is shared by :func:`softpool3d.datasets.build_dataset`,
so a new dataset is one file::

    @register_dataset("mylist")
    class MyList(DatasetFormat):
        def plan(self, root, annotations, split):
            return ("test", False) if split == "test" else ("train", True)

        def parse(self, root, annotations, source, fold):
            ...  # read annotations / f"{source}.txt", return make_index(paths, labels, classes, files)

The published formats (``kinetics700`` with its ``kinetics400``/``kinetics600`` aliases,
``ucf101``, ``hmdb51``, ``custom``) register themselves when :mod:`softpool3d.datasets` is imported.
"""
from __future__ import annotations

import abc
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

from softpool3d.datasets.index import VideoIndex
from softpool3d.datasets.val_split import group_ids

SPLITS = ("train", "val", "test")
"""The splits a run reads; each format's :meth:`DatasetFormat.plan` says which list serves each."""


class DatasetFormat(abc.ABC):
    """How one dataset lays out its annotation lists and videos; registered by name.

    ``folds`` are the official splits a ``fold`` picks (``None``: the format has one, and
    ``fold`` is ignored). ``val_unit`` says, for logs, what :meth:`val_groups` carves by.
    """

    folds: tuple[int, ...] | None = None
    val_unit: str = "of each class's videos"

    def __init__(self, name: str) -> None:
        self.name = name

    def default_annotations(self, root: Path) -> Path | None:
        """Where the annotation lists are when none is given (``None``: the videos under ``root`` are the annotations)."""
        return None

    def plan(self, root: Path, annotations: Path | None, split: str) -> tuple[str, bool]:
        """``(list, carve)``: which annotation list serves ``split`` (``train``, ``val`` or ``test``),
        and whether ``train``/``val`` are carved out of it. Default: every split has its own list."""
        return split, False

    @abc.abstractmethod
    def parse(self, root: Path, annotations: Path | None, source: str, fold: int) -> VideoIndex:
        """Every entry of the annotation list ``source`` (one that :meth:`plan` returns) with its
        label and whether its file exists (:func:`softpool3d.datasets.annotations.make_index`).
        Malformed lines raise :class:`~softpool3d.datasets.annotations.AnnotationError` naming
        the file and line."""

    def val_groups(self, index: VideoIndex) -> tuple[np.ndarray, np.ndarray]:
        """``(groups, strata)`` per entry of a training list: val carving takes whole groups, the
        same fraction of each stratum (:func:`softpool3d.datasets.val_split.carve_groups`).
        Default: each video its own group, per class."""
        return group_ids([str(path) for path in index.videos]), index.labels

    def locate_annotations(self, pattern: str, *candidates: Path) -> Path:
        """The first of ``candidates`` holding a file matching ``pattern``; an error naming all of them if none does."""
        found = next((c for c in candidates if any(c.glob(pattern))), None)
        if found is None:
            raise FileNotFoundError(f"{self.name}: no {pattern} in {' or '.join(str(c) for c in candidates)}")
        return found

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


_FORMATS: dict[str, DatasetFormat] = {}

DATASET_NAMES = _FORMATS.keys()
"""The registered dataset names, in registration order (a live view of the registry)."""

Format = TypeVar("Format", bound=type[DatasetFormat])


def register_dataset(*names: str) -> Callable[[Format], Format]:
    """Class decorator: register a :class:`DatasetFormat` subclass under each of ``names``
    (aliases share the parser; each gets its own instance, named for logs and errors)."""
    if not names:
        raise ValueError("register_dataset needs at least one name")

    def register(cls: Format) -> Format:
        if not (isinstance(cls, type) and issubclass(cls, DatasetFormat)):
            raise TypeError(f"register_dataset{names} decorates a DatasetFormat subclass, got {cls!r}")
        taken = [name for name in names if name in _FORMATS]
        if taken:
            raise ValueError(f"dataset {taken[0]!r} is already registered as {_FORMATS[taken[0]]!r}")
        for name in names:
            _FORMATS[name] = cls(name)
        return cls

    return register


def dataset_format(name: str) -> DatasetFormat:
    """The format registered as ``name``."""
    try:
        return _FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(_FORMATS)}") from None


def list_datasets() -> list[str]:
    """The registered dataset names, in registration order."""
    return list(_FORMATS)
