"""Annotation parsers for Kinetics-400/600/700, UCF-101, HMDB-51 and custom datasets.

Each parser reads one annotation list (a *source*: ``train``, ``val``, ``test``, or ``all`` for
a custom set with one list) and returns a :class:`~softpool3d.datasets.index.VideoIndex`: every
listed video with its label, whether its file exists, and the dataset's class names
(index = label). Files are found by listing folders, never by opening videos. A malformed line
raises :class:`AnnotationError` naming the file and line.
"""
from __future__ import annotations

import csv
import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from softpool3d.datasets.index import LabelList, PathList, VideoIndex, list_folder, locate

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpeg", ".mpg")
_VIDEO_SUFFIXES = VIDEO_EXTENSIONS + tuple(e.upper() for e in VIDEO_EXTENSIONS)


@dataclass
class Annotations:
    """Videos of one split: ``videos[i]`` has label ``labels[i]``, named ``classes[labels[i]]``.

    ``videos`` and ``labels`` are stored compactly (:class:`PathList`, :class:`LabelList`;
    plain lists are converted). ``missing`` counts the annotated videos left out because their
    file does not exist; ``source`` says where the split comes from (e.g. that it was carved
    out of the training list).
    """

    videos: PathList
    labels: LabelList
    classes: list[str]
    missing: int = 0
    source: str = ""

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


def _bad_line(path: Path, line_number: int, line: str, expected: str) -> AnnotationError:
    return AnnotationError(f"{path}:{line_number}: expected {expected}, got {line.strip()!r}")


def _lines(path: Path) -> list[tuple[int, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    with open(path, encoding="utf-8") as handle:
        return [(number, line.strip()) for number, line in enumerate(handle, 1) if line.strip()]


def _check_source(source: str, allowed: Sequence[str]) -> None:
    if source not in allowed:
        raise ValueError(f"annotation list must be one of {', '.join(allowed)}, got {source!r}")


def _index(paths: Iterable[str], labels: Sequence[int], classes: list[str], files: Sequence[Path]) -> VideoIndex:
    videos = PathList.from_paths(paths)
    present, folders = locate(videos)
    return VideoIndex(videos, np.asarray(labels, dtype=np.int32), present, classes, [str(f) for f in files], folders)


def parse_ucf101(root: Path, annotations: Path, source: str, fold: int) -> VideoIndex:
    """UCF-101: ``classInd.txt`` (``1 ApplyEyeMakeup``), ``trainlist0{fold}.txt``
    (``Class/v_Class_g08_c01.avi 1``) and ``testlist0{fold}.txt`` (``Class/v_Class_g01_c01.avi``);
    videos under ``root``. ``source`` is ``train`` or ``test``."""
    _check_source(source, ("train", "test"))
    classes_by_index: dict[int, str] = {}
    class_file = annotations / "classInd.txt"
    for number, line in _lines(class_file):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise _bad_line(class_file, number, line, "'<index> <ClassName>'")
        classes_by_index[int(parts[0])] = parts[1]
    if sorted(classes_by_index) != list(range(1, len(classes_by_index) + 1)):
        raise AnnotationError(f"{class_file}: class indices must run 1..{len(classes_by_index)}")
    classes = [classes_by_index[i] for i in range(1, len(classes_by_index) + 1)]
    label_of = {name: i for i, name in enumerate(classes)}
    list_file = annotations / f"{source}list0{fold}.txt"
    videos, labels = [], []
    for number, line in _lines(list_file):
        parts = line.split()
        if len(parts) not in (1, 2) or "/" not in parts[0]:
            raise _bad_line(list_file, number, line, "'<Class>/<video> [<index>]'")
        class_name = parts[0].split("/")[0]
        if class_name not in label_of:
            raise _bad_line(list_file, number, line, f"a class listed in {class_file}")
        if len(parts) == 2 and (not parts[1].isdigit() or int(parts[1]) != label_of[class_name] + 1):
            raise _bad_line(list_file, number, line, f"class index {label_of[class_name] + 1} for {class_name}")
        videos.append(os.path.join(root, parts[0]))
        labels.append(label_of[class_name])
    return _index(videos, labels, classes, [class_file, list_file])


def parse_hmdb51(root: Path, annotations: Path, source: str, fold: int) -> VideoIndex:
    """HMDB-51: ``<class>_test_split{fold}.txt`` files of ``<video> <0|1|2>`` lines
    (1 = train, 2 = test, 0 = unused); videos under ``root/<class>/``. ``source`` is ``train``
    or ``test``."""
    _check_source(source, ("train", "test"))
    suffix = f"_test_split{fold}.txt"
    split_files = sorted(annotations.glob(f"*{suffix}"))
    if not split_files:
        raise FileNotFoundError(f"no '*{suffix}' files in {annotations}")
    wanted = "1" if source == "train" else "2"
    classes = [path.name[: -len(suffix)] for path in split_files]
    videos, labels = [], []
    for label, (class_name, split_file) in enumerate(zip(classes, split_files)):
        for number, line in _lines(split_file):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise _bad_line(split_file, number, line, "'<video> <0|1|2>'")
            if parts[1] == wanted:
                videos.append(os.path.join(root, class_name, parts[0]))
                labels.append(label)
    return _index(videos, labels, classes, split_files)


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


def parse_kinetics(root: Path, annotations: Path, split: str) -> VideoIndex:
    """Kinetics-400/600/700 as published: ``train.csv``, ``validate.csv`` (``val.csv`` also
    accepted) and ``test.csv`` in ``annotations``, with columns ``label,youtube_id,time_start,
    time_end[,split]``; videos named ``<youtube_id>_<start:06d>_<end:06d>.<ext>`` under
    ``root/<split>/<label>/`` or flat under ``root/<split>/`` (``<split>``: ``train``, ``val``
    or ``validate``, ``test``).

    Classes are the sorted labels of ``train.csv`` and ``validate.csv``. The published
    ``test.csv`` has no ``label`` column; asking for ``test`` then raises an error saying so.
    Videos are found by listing their folders once (no file is opened or stat'ed).
    """
    _check_source(split, ("train", "val", "test"))
    path = _kinetics_file(annotations, split)
    if path is None:
        raise FileNotFoundError(f"no {' or '.join(n + '.csv' for n in KINETICS_FILES[split])} in {annotations}")
    folder = next((root / n for n in KINETICS_FOLDERS[split] if (root / n).is_dir()), root / KINETICS_FOLDERS[split][0])
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

    label_names, row_labels, folder_ids, names = _kinetics_rows(path, split, locate_stem)
    del where, by_stem
    files = [path]
    all_labels = set(label_names)
    for other in ("train", "val"):
        other_path = _kinetics_file(annotations, other)
        if other != split and other_path is not None:
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


def _read_pairs(table: Path, root: Path) -> list[tuple[str, str]]:
    delimiter = "\t" if table.suffix == ".tsv" else ","
    pairs = []
    for number, line in _lines(table):
        parts = [p.strip() for p in line.split(delimiter)]
        if len(parts) != 2 or not all(parts):
            raise _bad_line(table, number, line, f"'path{delimiter}label'")
        if number == 1 and parts == ["path", "label"]:
            continue
        pairs.append((os.path.join(root, parts[0]), parts[1]))
    return pairs


SPLITS = ("train", "val", "test")


def _tables(annotations: Path) -> dict[str, Path]:
    tables = sorted(p for p in annotations.iterdir() if p.suffix in (".csv", ".tsv"))
    return {p.stem: p for p in reversed(tables) if p.stem in SPLITS}


def custom_sources(root: Path, annotations: Path | None) -> list[str]:
    """The lists a custom dataset has: some of ``train``, ``val``, ``test`` (per-split tables
    or folders), or ``["all"]`` for a single table or a folder per class with no split folders."""
    if annotations is not None:
        if annotations.is_dir():
            found = [s for s in SPLITS if s in _tables(annotations)]
            if not found:
                raise FileNotFoundError(f"no train/val/test .csv or .tsv in {annotations}")
            return found
        if not annotations.is_file():
            raise FileNotFoundError(f"annotation file not found: {annotations}")
        return ["all"]
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    return [s for s in SPLITS if (root / s).is_dir()] or ["all"]


def _class_folders(base: Path) -> list[Path]:
    return sorted(p for p in base.iterdir() if p.is_dir())


def parse_custom(root: Path, annotations: Path | None, source: str) -> VideoIndex:
    """Custom data, one of:

    - a CSV/TSV of ``path,label`` lines (paths relative to ``root``, optional header):
      ``annotations`` is the file (source ``all``), or a folder of ``<split>.csv``/``.tsv`` files;
    - a folder per class under ``root/<split>/``, or under ``root/`` with no split folders
      (source ``all``).

    Class names are sorted; they are the union over all lists, so every split numbers the
    classes alike.
    """
    sources = custom_sources(root, annotations)
    if source not in sources:
        raise FileNotFoundError(f"custom data under {annotations or root} has no {source!r} list; it has {sources}")
    folders: list[str] = []
    if annotations is not None:
        tables = {"all": annotations} if sources == ["all"] else _tables(annotations)
        all_pairs = {name: _read_pairs(path, root) for name, path in tables.items()}
        files = list(tables.values())
    else:
        bases = {"all": root} if sources == ["all"] else {s: root / s for s in sources}
        all_pairs = {}
        for name, base in bases.items():
            class_dirs = _class_folders(base)
            folders += [str(base)] + [str(d) for d in class_dirs]
            all_pairs[name] = [
                (os.path.join(d, file), d.name)
                for d in class_dirs
                for file in sorted(list_folder(d))
                if os.path.splitext(file)[1].lower() in VIDEO_EXTENSIONS
            ]
        folders.append(str(root))
        files = []
    classes = sorted({label for pairs in all_pairs.values() for _, label in pairs})
    label_of = {name: i for i, name in enumerate(classes)}
    pairs = all_pairs[source]
    index = _index([p for p, _ in pairs], [label_of[name] for _, name in pairs], classes, files)
    index.folders = sorted(set(index.folders) | set(folders))
    return index
