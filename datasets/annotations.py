"""Annotation parsers for Kinetics-700, UCF-101, HMDB-51 and custom datasets.

Each parser returns an :class:`Annotations`: the video files of one split with integer labels,
and the dataset's class names (index = label). A malformed line raises ``ValueError`` naming
the file and line.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpeg", ".mpg")


@dataclass
class Annotations:
    """Videos of one split: ``videos[i]`` has label ``labels[i]``, named ``classes[labels[i]]``;
    ``num_missing`` annotated videos were left out because their files do not exist."""

    videos: list[Path]
    labels: list[int]
    classes: list[str]
    num_missing: int = 0


class AnnotationError(ValueError):
    """A malformed annotation file or line."""


def _bad_line(path: Path, line_number: int, line: str, expected: str) -> AnnotationError:
    return AnnotationError(f"{path}:{line_number}: expected {expected}, got {line.strip()!r}")


def _lines(path: Path) -> list[tuple[int, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    with open(path, encoding="utf-8") as handle:
        return [(number, line.strip()) for number, line in enumerate(handle, 1) if line.strip()]


def _split_file_name(split: str) -> str:
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    return "train" if split == "train" else "test"


def parse_ucf101(root: Path, annotations: Path, split: str, fold: int) -> Annotations:
    """UCF-101: ``classInd.txt`` (``1 ApplyEyeMakeup``), ``trainlist0{fold}.txt``
    (``Class/v_Class_g08_c01.avi 1``) and ``testlist0{fold}.txt`` (``Class/v_Class_g01_c01.avi``);
    videos under ``root``. ``val`` and ``test`` both read the test list."""
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
    list_file = annotations / f"{_split_file_name(split)}list0{fold}.txt"
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
        videos.append(root / parts[0])
        labels.append(label_of[class_name])
    return Annotations(videos, labels, classes)


def parse_hmdb51(root: Path, annotations: Path, split: str, fold: int) -> Annotations:
    """HMDB-51: ``<class>_test_split{fold}.txt`` files of ``<video> <0|1|2>`` lines
    (1 = train, 2 = test, 0 = unused); videos under ``root/<class>/``."""
    suffix = f"_test_split{fold}.txt"
    split_files = sorted(annotations.glob(f"*{suffix}"))
    if not split_files:
        raise FileNotFoundError(f"no '*{suffix}' files in {annotations}")
    wanted = "1" if split == "train" else "2"
    _split_file_name(split)
    classes = [path.name[: -len(suffix)] for path in split_files]
    videos, labels = [], []
    for label, (class_name, split_file) in enumerate(zip(classes, split_files)):
        for number, line in _lines(split_file):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise _bad_line(split_file, number, line, "'<video> <0|1|2>'")
            if parts[1] == wanted:
                videos.append(root / class_name / parts[0])
                labels.append(label)
    return Annotations(videos, labels, classes)


KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split")


def _kinetics_csv(path: Path) -> list[tuple[int, dict[str, str]]]:
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in KINETICS_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise AnnotationError(f"{path}:1: header lacks columns {missing}, got {reader.fieldnames}")
        rows = []
        for row in reader:
            if None in row or any(row[c] in (None, "") for c in KINETICS_COLUMNS):
                raise AnnotationError(f"{path}:{reader.line_num}: expected {len(KINETICS_COLUMNS)} fields, got {row}")
            try:
                int(row["time_start"]), int(row["time_end"])
            except ValueError:
                raise AnnotationError(f"{path}:{reader.line_num}: time_start/time_end must be integers, got {row}") from None
            rows.append((reader.line_num, row))
    return rows


def _index_videos(folder: Path) -> dict[str, Path]:
    """Map file stem -> path for every video under ``folder`` (recursively)."""
    found: dict[str, Path] = {}
    for directory, _, files in os.walk(folder):
        for name in files:
            if name.lower().endswith(VIDEO_EXTENSIONS):
                found.setdefault(os.path.splitext(name)[0], Path(directory) / name)
    return found


def parse_kinetics(root: Path, annotations: Path, split: str) -> Annotations:
    """Kinetics-700: official CSVs ``label,youtube_id,time_start,time_end,split`` named
    ``train.csv`` / ``validate.csv`` (``val.csv`` also accepted) in ``annotations``; videos named
    ``<youtube_id>_<start:06d>_<end:06d>.<ext>`` under ``root/<split>/<label>/`` or flat under
    ``root/<split>/``. Classes are the sorted labels of all CSVs present."""
    names = {"train": ["train"], "val": ["validate", "val"], "test": ["test", "validate", "val"]}[split]
    csv_files = {path.stem: path for path in annotations.glob("*.csv")}
    split_name = next((name for name in names if name in csv_files), None)
    if split_name is None:
        raise FileNotFoundError(f"no {' or '.join(n + '.csv' for n in names)} in {annotations}")
    tables = {stem: _kinetics_csv(path) for stem, path in csv_files.items()}
    classes = sorted({row["label"] for rows in tables.values() for _, row in rows})
    label_of = {name: i for i, name in enumerate(classes)}
    folder = root / split_name
    if not folder.is_dir() and split_name == "validate":
        folder = root / "val"
    on_disk = _index_videos(folder)
    videos, labels = [], []
    for _, row in tables[split_name]:
        stem = f"{row['youtube_id']}_{int(row['time_start']):06d}_{int(row['time_end']):06d}"
        videos.append(on_disk.get(stem, folder / row["label"] / f"{stem}.mp4"))
        labels.append(label_of[row["label"]])
    return Annotations(videos, labels, classes)


def _read_pairs(table: Path, root: Path) -> list[tuple[Path, str]]:
    delimiter = "\t" if table.suffix == ".tsv" else ","
    pairs = []
    for number, line in _lines(table):
        parts = [p.strip() for p in line.split(delimiter)]
        if len(parts) != 2 or not all(parts):
            raise _bad_line(table, number, line, f"'path{delimiter}label'")
        if number == 1 and parts == ["path", "label"]:
            continue
        pairs.append((root / parts[0], parts[1]))
    return pairs


def _class_folders(base: Path) -> list[Path]:
    return sorted(p for p in base.iterdir() if p.is_dir())


def parse_custom(root: Path, annotations: Path | None, split: str) -> Annotations:
    """Custom data, one of:

    - a CSV/TSV of ``path,label`` lines (paths relative to ``root``, optional header):
      ``annotations`` is the file, or a folder of ``<split>.csv``/``.tsv`` files;
    - a folder per class under ``root/<split>/`` (or under ``root/`` with no split folders).

    Class names are sorted; with split folders or tables they are the union over all splits,
    so every split numbers the classes alike.
    """
    _split_file_name(split)
    if annotations is not None:
        tables = [annotations]
        if annotations.is_dir():
            tables = sorted(p for p in annotations.iterdir() if p.suffix in (".csv", ".tsv"))
            wanted = [p for p in tables if p.stem == split]
            if not wanted:
                raise FileNotFoundError(f"no {split}.csv or {split}.tsv in {annotations}")
            table = wanted[0]
        else:
            table = annotations
        all_pairs = {path: _read_pairs(path, root) for path in tables}
        pairs = all_pairs[table]
        names = {label for rows in all_pairs.values() for _, label in rows}
    else:
        split_dirs = [root / s for s in ("train", "val", "test") if (root / s).is_dir()]
        base = root / split if split_dirs else root
        if not base.is_dir():
            raise FileNotFoundError(f"dataset folder not found: {base}")
        pairs = [
            (path, class_dir.name)
            for class_dir in _class_folders(base)
            for path in sorted(class_dir.iterdir())
            if path.suffix.lower() in VIDEO_EXTENSIONS
        ]
        names = {d.name for folder in (split_dirs or [root]) for d in _class_folders(folder)}
    classes = sorted(names)
    label_of = {name: i for i, name in enumerate(classes)}
    return Annotations([p for p, _ in pairs], [label_of[name] for _, name in pairs], classes)
