"""Custom data: ``path,label`` tables (one per split, or a single one) or a folder per class;
``val`` is carved out of the training list (by video, per class) when there is no val list."""
from __future__ import annotations

import os
from pathlib import Path

from softpool3d.datasets.annotations import VIDEO_EXTENSIONS, AnnotationError, bad_line, make_index, read_lines
from softpool3d.datasets.index import VideoIndex, list_folder
from softpool3d.datasets.registry import SPLITS, DatasetFormat, register_dataset

def _read_pairs(table: Path, root: Path) -> list[tuple[str, str]]:
    delimiter = "\t" if table.suffix == ".tsv" else ","
    pairs = []
    for number, line in read_lines(table):
        parts = [p.strip() for p in line.split(delimiter)]
        if len(parts) != 2 or not all(parts):
            raise bad_line(table, number, line, f"'path{delimiter}label'")
        if number == 1 and parts == ["path", "label"]:
            continue
        pairs.append((os.path.join(root, parts[0]), parts[1]))
    return pairs


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


@register_dataset("custom")
class Custom(DatasetFormat):
    """Tables in ``annotations`` (a file, or a folder of ``<split>.csv``/``.tsv``), else class folders under ``root``."""

    def plan(self, root: Path, annotations: Path | None, split: str) -> tuple[str, bool]:
        """A split's own list when there is one; ``val`` carved out of ``train`` (or of the single
        list) otherwise; no ``test`` without a test list."""
        sources = custom_sources(root, annotations)
        if split in sources:
            return split, split == "train" and "val" not in sources
        if split == "test":
            where = annotations if annotations is not None else root
            raise AnnotationError(
                f"custom data in {where} has no test list ({', '.join(sources)} only); add a test.csv (or a test/ folder), "
                f"or set data.test_split=val to test on the val split"
            )
        return ("train" if "train" in sources else "all"), True

    def parse(self, root: Path, annotations: Path | None, source: str, fold: int) -> VideoIndex:
        """One of:

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
        index = make_index([p for p, _ in pairs], [label_of[name] for _, name in pairs], classes, files)
        index.folders = sorted(set(index.folders) | set(folders))
        return index
