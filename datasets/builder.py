"""``build_dataset``: one entry point from a dataset name and root to a :class:`ClipDataset`."""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Union

import numpy as np

from softpool3d.datasets.annotations import (
    Annotations,
    AnnotationError,
    custom_sources,
    parse_custom,
    parse_hmdb51,
    parse_kinetics,
    parse_ucf101,
)
from softpool3d.datasets.clip_dataset import ClipDataset
from softpool3d.datasets.index import VideoIndex
from softpool3d.datasets.index_cache import cache_file, load_index, save_index
from softpool3d.datasets.val_split import carve_val, describe

logger = logging.getLogger(__name__)

DATASET_NAMES = ("kinetics700", "ucf101", "hmdb51", "custom")
SPLITS = ("train", "val", "test")

PathLike = Union[str, Path]


def _default_annotations(name: str, root: Path) -> Path | None:
    candidates = {
        "ucf101": [root, root / "ucfTrainTestlist"],
        "hmdb51": [root / "testTrainMulti_7030_splits", root],
        "kinetics700": [root / "annotations", root],
    }.get(name)
    if candidates is None:
        return None
    markers = {"ucf101": "classInd.txt", "hmdb51": "*_test_split1.txt", "kinetics700": "*.csv"}[name]
    found = next((c for c in candidates if any(c.glob(markers))), None)
    if found is None:
        raise FileNotFoundError(f"{name}: no {markers} in {' or '.join(str(c) for c in candidates)}")
    return found


def _plan(name: str, root: Path, folder: Path | None, split: str) -> tuple[str, bool]:
    """Which annotation list serves ``split``, and whether ``train``/``val`` are carved from it."""
    if name == "kinetics700":
        return split, False
    if name in ("ucf101", "hmdb51"):
        return ("test", False) if split == "test" else ("train", True)
    sources = custom_sources(root, folder)
    if split in sources:
        return split, split == "train" and "val" not in sources
    if split == "test":
        where = folder if folder is not None else root
        raise AnnotationError(
            f"custom data in {where} has no test list ({', '.join(sources)} only); add a test.csv (or a test/ folder), "
            f"or set data.test_split=val to test on the val split"
        )
    return ("train" if "train" in sources else "all"), True


def _parse(name: str, root: Path, folder: Path | None, source: str, fold: int) -> VideoIndex:
    if name == "ucf101":
        return parse_ucf101(root, folder, source, fold)
    if name == "hmdb51":
        return parse_hmdb51(root, folder, source, fold)
    if name == "kinetics700":
        return parse_kinetics(root, folder, source)
    return parse_custom(root, folder, source)


def read_index(name: str, root: Path, folder: Path | None, source: str, fold: int, cache: bool = True) -> VideoIndex:
    """The :class:`VideoIndex` of one annotation list, from the cache when it is up to date."""
    key = {"dataset": name, "root": str(root.resolve()), "annotations": str(folder.resolve()) if folder else None,
           "fold": fold, "list": source}
    path = cache_file(key) if cache else None
    index = load_index(path) if path is not None else None
    if index is not None:
        logger.debug("%s %s list: index read from %s", name, source, path)
        return index
    index = _parse(name, root, folder, source, fold)
    if path is not None:
        try:
            save_index(path, index)
        except OSError as error:
            logger.warning("cannot write the index cache %s (%s); the next start lists the videos again", path, error)
    return index


def _write_lines(path: Path, lines: list[bytes]) -> None:
    """Write ``lines`` (one path each) to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    with os.fdopen(handle, "wb") as out:
        out.write(b"".join(line + b"\n" for line in lines))
    os.replace(temporary, path)


def load_annotations(
    name: str,
    root: PathLike,
    split: str,
    annotations: PathLike | None = None,
    fold: int = 1,
    *,
    val_fraction: float = 0.1,
    val_seed: int = 0,
    missing_list: PathLike | None = None,
    cache: bool = True,
) -> Annotations:
    """The videos of ``split`` (``train``, ``val`` or ``test``) whose files exist.

    UCF-101, HMDB-51 and custom data without a val list get ``val`` carved out of the training
    list (``val_fraction`` of its groups, drawn with ``val_seed``; see
    :mod:`softpool3d.datasets.val_split`), and ``train`` is then the rest. Kinetics keeps its
    official ``validate.csv``. A custom single list (``annotations=FILE``, or class folders
    with no split folders) serves ``train`` and ``val`` that way and has no ``test``.

    Annotated videos whose file is missing are left out and reported up front (count and
    first paths); with ``missing_list`` all their paths are written there, one a line (and a
    stale list is removed when none is missing). ``cache`` reuses the stored index of the
    annotation list while its files and video folders are unchanged
    (:mod:`softpool3d.datasets.index_cache`).
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASET_NAMES}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if fold not in (1, 2, 3) and name in ("ucf101", "hmdb51"):
        raise ValueError(f"fold must be 1, 2 or 3 for {name}, got {fold}")
    root = Path(root)
    folder = Path(annotations) if annotations is not None else _default_annotations(name, root)
    source, carve = _plan(name, root, folder, split)
    index = read_index(name, root, folder, source, fold, cache)
    wanted = np.ones(len(index.labels), dtype=bool)
    listing = f"the {source} list" if source != "all" else f"the single list {folder or root}"
    origin = listing
    if carve:
        if val_fraction <= 0.0 and split == "val":
            raise ValueError(f"{name} has no val list and val_fraction={val_fraction} carves none from {listing}")
        if val_fraction > 0.0:
            carved = carve_val(name, index, val_fraction, val_seed)
            wanted = carved if split == "val" else ~carved
            how = describe(name, val_fraction, val_seed)
            origin = f"val carved out of {listing} ({how})" if split == "val" else f"{listing} minus the carved val ({how})"
    kept = wanted & index.present
    missing = np.flatnonzero(wanted & ~index.present)
    if len(missing):
        missing_paths = index.videos[missing].joined()
        where = ""
        if missing_list is not None:
            _write_lines(Path(missing_list), missing_paths.tolist())
            where = f"; all listed in {missing_list}"
        logger.warning(
            "%s %s: %d of %d annotated videos are missing and left out, e.g. %s%s", name, split, len(missing),
            int(wanted.sum()), ", ".join(os.fsdecode(p) for p in missing_paths[:5].tolist()), where,
        )
    elif missing_list is not None and Path(missing_list).is_file():
        Path(missing_list).unlink()
    if not kept.any():
        raise FileNotFoundError(f"{name} {split}: none of the {int(wanted.sum())} annotated videos exist under {root}")
    logger.info("%s %s: %d videos, %d classes; %s", name, split, int(kept.sum()), len(index.classes), origin)
    return Annotations(index.videos[kept], index.labels[kept], index.classes, missing=len(missing), source=origin)


def build_dataset(
    name: str,
    root: PathLike,
    split: str,
    *,
    train: bool,
    annotations: PathLike | None = None,
    fold: int = 1,
    val_fraction: float = 0.1,
    val_seed: int = 0,
    missing_list: PathLike | None = None,
    **clip_options: Any,
) -> ClipDataset:
    """A :class:`ClipDataset` of ``split`` (``train``/``val``/``test``) of dataset ``name``.

    ``name`` is one of ``kinetics700``, ``ucf101``, ``hmdb51``, ``custom``; ``annotations``
    overrides where the annotation files are (default: the usual place under ``root``);
    ``fold`` picks the UCF-101/HMDB-51 split 1-3; ``val_fraction``, ``val_seed`` and
    ``missing_list`` are those of :func:`load_annotations`. ``clip_options`` go to
    :class:`ClipDataset` (``num_frames``, ``sampling_rate``, ``num_clips``, ``num_crops``,
    ``crop_size``, ``train_scale``, ``test_scale``, ``mean``, ``std``, ``hflip``, ``max_retries``).
    """
    parsed = load_annotations(name, root, split, annotations, fold, val_fraction=val_fraction, val_seed=val_seed,
                              missing_list=missing_list)
    return ClipDataset(parsed, train=train, **clip_options)
