"""What every dataset format shares: :class:`Annotations` (the videos of one split), the
:class:`AnnotationError` of a malformed list, and the helpers a parser is written with.

A parser (:meth:`softpool3d.datasets.registry.DatasetFormat.parse`) reads one annotation list
(a *source*: ``train``, ``val``, ``test``, or ``all`` for a set with one list) and returns a
:class:`~softpool3d.datasets.index.VideoIndex` made by :func:`make_index`: every listed video
with its label, whether its file exists, and the dataset's class names (index = label). Files
are found by listing folders, never by opening videos. A malformed line raises
:class:`AnnotationError` naming the file and line (:func:`bad_line`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from softpool3d.datasets.index import LabelList, PathList, VideoIndex, locate
from softpool3d.datasets.shared_records import SharedRecords

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpeg", ".mpg")


@dataclass
class Annotations:
    """Videos of one split: ``videos[i]`` has label ``labels[i]``, named ``classes[labels[i]]``.

    ``videos`` and ``labels`` are stored compactly (:class:`PathList`, :class:`LabelList`;
    plain lists are converted). ``missing`` counts the annotated videos left out because their
    file does not exist; ``source`` says where the split comes from (e.g. that it was carved
    out of the training list). ``records`` is the file that ``videos`` and ``labels`` are mapped
    from when they are (:func:`~softpool3d.datasets.shared_records.share_records`): a dataset then
    sends its workers the file's name instead of its rows.
    """

    videos: PathList
    labels: LabelList
    classes: list[str]
    missing: int = 0
    source: str = ""
    records: Optional[SharedRecords] = None

    def __post_init__(self) -> None:
        if not isinstance(self.videos, PathList):
            self.videos = PathList.from_paths(self.videos)
        if not isinstance(self.labels, LabelList):
            self.labels = LabelList(self.labels)
        self.classes = list(self.classes)
        if len(self.videos) != len(self.labels):
            raise ValueError(f"{len(self.videos)} videos but {len(self.labels)} labels")


class AnnotationError(ValueError):
    """A malformed annotation file or line."""


def bad_line(path: Path, line_number: int, line: str, expected: str) -> AnnotationError:
    """The error for line ``line_number`` of ``path``, which should have been ``expected``."""
    return AnnotationError(f"{path}:{line_number}: expected {expected}, got {line.strip()!r}")


def read_lines(path: Path) -> list[tuple[int, str]]:
    """The non-blank lines of ``path``, stripped, with their 1-based line numbers."""
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    with open(path, encoding="utf-8") as handle:
        return [(number, line.strip()) for number, line in enumerate(handle, 1) if line.strip()]


def check_source(source: str, allowed: Sequence[str]) -> None:
    """Refuse an annotation list name that a format does not have."""
    if source not in allowed:
        raise ValueError(f"annotation list must be one of {', '.join(allowed)}, got {source!r}")


def make_index(paths: Iterable[str], labels: Sequence[int], classes: list[str], files: Sequence[Path]) -> VideoIndex:
    """The :class:`VideoIndex` of ``paths`` with ``labels`` (indices into ``classes``), read from the
    annotation ``files``; which paths exist is found by listing each folder once."""
    videos = PathList.from_paths(paths)
    present, folders = locate(videos)
    return VideoIndex(videos, np.asarray(labels, dtype=np.int32), present, classes, [str(f) for f in files], folders)
