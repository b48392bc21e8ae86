"""Kinetics-400/600/700 as published: ``train.csv``, ``validate.csv`` and a label-less ``test.csv``;
``val`` is the official ``validate.csv``. Registered as ``kinetics700`` and its aliases
``kinetics600`` and ``kinetics400`` (the same CSV columns and video names)."""
from __future__ import annotations

import csv
import itertools
import os
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from softpool3d.datasets.annotations import VIDEO_EXTENSIONS, AnnotationError, check_source
from softpool3d.datasets.index import PathList, VideoIndex
from softpool3d.datasets.registry import SPLITS, DatasetFormat, register_dataset

_VIDEO_SUFFIXES = VIDEO_EXTENSIONS + tuple(e.upper() for e in VIDEO_EXTENSIONS)

KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end")
KINETICS_FILES = {"train": ("train",), "val": ("validate", "val"), "test": ("test",)}
KINETICS_FOLDERS = {"train": ("train",), "val": ("val", "validate"), "test": ("test",)}


def _kinetics_file(annotations: Path, split: str) -> Path | None:
    return next((annotations / f"{n}.csv" for n in KINETICS_FILES[split] if (annotations / f"{n}.csv").is_file()), None)


def _kinetics_header(path: Path, reader: Iterable[list[str]], split: str) -> dict[str, int]:
    header = next(iter(reader), [])
    columns = {name.strip(): i for i, name in enumerate(header)}
    missing = [c for c in KINETICS_COLUMNS if c not in columns]
    if missing == ["label"] and split == "test":
        raise AnnotationError(
            f"{path} has no 'label' column: the Kinetics test labels were never published, so the test split "
            f"cannot be evaluated; use split 'val' (validate.csv), as the configs/kinetics700 recipes do"
        )
    if missing:
        raise AnnotationError(f"{path}:1: header lacks columns {missing}, got {header}")
    return columns


def _kinetics_labels(path: Path, split: str) -> set[str]:
    """The label column of a Kinetics CSV."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        column = _kinetics_header(path, reader, split)["label"]
        return {row[column] for row in reader if len(row) > column}


def _padded(value: str) -> str:
    """``f"{int(value):06d}"``, with a fast path for plain digit strings."""
    return value.zfill(6) if value.isdigit() and len(value) <= 6 else f"{int(value):06d}"


_CHUNK = 1 << 16


def _kinetics_rows(
    path: Path, split: str, locate_stem: Callable[[list[str]], tuple[np.ndarray, np.ndarray]]
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Read a Kinetics CSV. Returns the labels in order of first appearance, each row's index
    into them, and per row the folder id and file name that ``locate_stem`` gives for its stem
    ``<youtube_id>_<start:06d>_<end:06d>`` (called on chunks of rows, so no per-row Python
    objects outlive a chunk)."""
    label_ids: dict[str, int] = {}
    row_labels: list[int] = []
    stems: list[str] = []
    folder_chunks: list[np.ndarray] = []
    name_chunks: list[np.ndarray] = []

    def flush() -> None:
        folder_ids, names = locate_stem(stems)
        folder_chunks.append(folder_ids)
        name_chunks.append(names)
        stems.clear()

    add_label, add_stem, label_id = row_labels.append, stems.append, label_ids.setdefault
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        columns = _kinetics_header(path, reader, split)
        li, yi, si, ei = (columns[c] for c in KINETICS_COLUMNS)
        for row in reader:
            if not row:
                continue
            try:
                label, youtube_id, start, end = row[li], row[yi], _padded(row[si]), _padded(row[ei])
            except (IndexError, ValueError):
                raise AnnotationError(
                    f"{path}:{reader.line_num}: expected {','.join(KINETICS_COLUMNS)} with integer times, got {row}"
                ) from None
            if not label or not youtube_id:
                raise AnnotationError(f"{path}:{reader.line_num}: empty label or youtube_id in {row}")
            add_label(label_id(label, len(label_ids)))
            add_stem("_".join((youtube_id, start, end)))
            if len(stems) == _CHUNK:
                flush()
    flush()
    return list(label_ids), np.array(row_labels, dtype=np.int32), np.concatenate(folder_chunks), np.concatenate(name_chunks)


def _scan_videos(folder: Path) -> tuple[list[str], dict[str, int]]:
    """Every video file under ``folder`` (recursively): the folders listed (sorted, depth
    first) and a map from file name to folder id (the first folder wins for a name found in
    several). Names with a video extension are taken as files without a stat."""
    folders: list[str] = []
    listings: list[list[str]] = []
    stack = [str(folder)] if folder.is_dir() else []
    while stack:
        directory = stack.pop()
        names = os.listdir(directory)
        videos = [n for n in names if n.endswith(_VIDEO_SUFFIXES)]
        if len(videos) < len(names):
            known = set(videos)
            subfolders = [os.path.join(directory, n) for n in names if n not in known]
            stack.extend(sorted((p for p in subfolders if os.path.isdir(p)), reverse=True))
        folders.append(directory)
        listings.append(videos)
    where: dict[str, int] = {}
    for folder_id in reversed(range(len(folders))):
        where.update(zip(listings[folder_id], itertools.repeat(folder_id)))
    return folders, where


@register_dataset("kinetics700", "kinetics600", "kinetics400")
class Kinetics(DatasetFormat):
    """CSVs in ``root/annotations/`` or ``root/``; every split has its own list (``fold`` is ignored)."""

    def default_annotations(self, root: Path) -> Path:
        return self.locate_annotations("*.csv", root / "annotations", root)

    def parse(self, root: Path, annotations: Path, source: str, fold: int) -> VideoIndex:
        """``train.csv``, ``validate.csv`` (``val.csv`` also accepted) and ``test.csv`` in
        ``annotations``, with columns ``label,youtube_id,time_start,time_end[,split]``; videos named
        ``<youtube_id>_<start:06d>_<end:06d>.<ext>`` under ``root/<split>/<label>/`` or flat under
        ``root/<split>/`` (``<split>``: ``train``, ``val`` or ``validate``, ``test``).

        Classes are the sorted labels of ``train.csv`` and ``validate.csv``. The published
        ``test.csv`` has no ``label`` column; asking for ``test`` then raises an error saying so.
        Videos are found by listing their folders once (no file is opened or stat'ed).
        """
        check_source(source, SPLITS)
        path = _kinetics_file(annotations, source)
        if path is None:
            raise FileNotFoundError(f"no {' or '.join(n + '.csv' for n in KINETICS_FILES[source])} in {annotations}")
        folder = next((root / n for n in KINETICS_FOLDERS[source] if (root / n).is_dir()), root / KINETICS_FOLDERS[source][0])
        folders, where = _scan_videos(folder)
        by_stem = {os.path.splitext(name)[0]: name for name in where if not name.endswith(".mp4")}
        missing_folder = len(folders)

        def locate_stem(stems: list[str]) -> tuple[np.ndarray, np.ndarray]:
            names = [stem + ".mp4" for stem in stems]
            folder_ids = [where.get(name, missing_folder) for name in names]
            if by_stem:
                for i, stem in enumerate(stems):
                    if folder_ids[i] == missing_folder and stem in by_stem:
                        names[i] = by_stem[stem]
                        folder_ids[i] = where[names[i]]
            encoded = [name.encode("utf-8", "surrogateescape") for name in names]
            return np.array(folder_ids, dtype=np.int32), np.array(encoded, dtype="S")

        label_names, row_labels, folder_ids, names = _kinetics_rows(path, source, locate_stem)
        del where, by_stem
        files = [path]
        all_labels = set(label_names)
        for other in ("train", "val"):
            other_path = _kinetics_file(annotations, other)
            if other != source and other_path is not None:
                all_labels |= _kinetics_labels(other_path, other)
                files.append(other_path)
        classes = sorted(all_labels)
        class_of = {name: i for i, name in enumerate(classes)}
        labels = np.array([class_of[name] for name in label_names], dtype=np.int32)[row_labels] if len(row_labels) else row_labels

        present = folder_ids != missing_folder
        nested = len(folders) > 1
        folder_of = {f: i for i, f in enumerate(folders)}
        expected = [folder_of.setdefault(str(folder / name) if nested else str(folder), len(folder_of)) for name in classes]
        folder_ids = np.where(present, folder_ids, np.array(expected, dtype=np.int32)[labels] if len(labels) else folder_ids)
        videos = PathList(list(folder_of), folder_ids, names)
        return VideoIndex(videos, labels, present, classes, [str(f) for f in files], folders or [str(folder)])
