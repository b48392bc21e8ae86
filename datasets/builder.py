"""``build_dataset``: one entry point from a dataset name and root to a :class:`ClipDataset`.

The dataset's registered format (:mod:`softpool3d.datasets.registry`) parses its lists and says
which list serves each split; the index cache, the missing-video report and val carving are
done here, the same for every format.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Union

import numpy as np

from softpool3d.datasets.annotations import Annotations
from softpool3d.datasets.atomic import atomic_writer
from softpool3d.datasets.clip_dataset import ClipDataset
from softpool3d.datasets.index import VideoIndex
from softpool3d.datasets.index_cache import cache_dir, cache_file, load_index, save_index
from softpool3d.datasets.registry import SPLITS, DatasetFormat, dataset_format
from softpool3d.datasets.shared_records import share_records
from softpool3d.datasets.val_split import carve_groups

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]


def read_index(
    dataset: DatasetFormat, root: Path, folder: Path | None, source: str, fold: int, cache: bool = True
) -> VideoIndex:
    """The :class:`VideoIndex` of one annotation list of ``dataset``, from the cache when it is up to date."""
    key = {"dataset": dataset.name, "root": str(root.resolve()), "annotations": str(folder.resolve()) if folder else None,
           "fold": fold, "list": source}
    path = cache_file(key) if cache else None
    index = load_index(path) if path is not None else None
    if index is not None:
        logger.debug("%s %s list: index read from %s", dataset.name, source, path)
        return index
    index = dataset.parse(root, folder, source, fold)
    if path is not None:
        try:
            save_index(path, index)
        except OSError as error:
            logger.warning("cannot write the index cache %s (%s); the next start lists the videos again", path, error)
    return index


def shared(annotations: Annotations) -> Annotations:
    """``annotations`` with its videos and labels mapped from a records file in the cache folder
    (:mod:`softpool3d.datasets.shared_records`), which every process of the node shares; the same
    ``annotations`` when the folder cannot be written."""
    try:
        records = share_records(annotations.videos, annotations.labels, annotations.classes, cache_dir())
    except OSError as error:
        logger.warning("cannot write the dataset records to %s (%s); each DataLoader worker holds its own copy of "
                       "the %d rows", cache_dir(), error, len(annotations.videos))
        return annotations
    videos, labels, classes = records.open()
    return dataclasses.replace(annotations, videos=videos, labels=labels, classes=classes, records=records)


def _write_lines(path: Path, lines: list[bytes]) -> None:
    """Write ``lines`` (one path each) to ``path`` atomically."""
    with atomic_writer(path) as out:
        out.write(b"".join(line + b"\n" for line in lines))


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
    """The videos of ``split`` (``train``, ``val`` or ``test``) of the dataset registered as
    ``name`` whose files exist.

    UCF-101, HMDB-51 and custom data without a val list get ``val`` carved out of the training
    list (``val_fraction`` of its groups, drawn with ``val_seed``; see
    :mod:`softpool3d.datasets.val_split`), and ``train`` is then the rest. Kinetics keeps its
    official ``validate.csv``. A custom single list (``annotations=FILE``, or class folders
    with no split folders) serves ``train`` and ``val`` that way and has no ``test``.

    Annotated videos whose file is missing are left out and reported up front (count and
    first paths); with ``missing_list`` all their paths are written there, one a line (and a
    stale list is removed when none is missing). ``cache`` reuses the stored index of the
    annotation list while its files and video folders are unchanged
    (:mod:`softpool3d.datasets.index_cache`), and maps the split's videos and labels from a
    records file beside it (:func:`shared`), so that DataLoader workers share one copy of them;
    ``cache=False`` reads and writes nothing there.
    """
    dataset = dataset_format(name)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if dataset.folds is not None and fold not in dataset.folds:
        raise ValueError(f"fold must be one of {', '.join(map(str, dataset.folds))} for {name}, got {fold}")
    root = Path(root)
    folder = Path(annotations) if annotations is not None else dataset.default_annotations(root)
    source, carve = dataset.plan(root, folder, split)
    index = read_index(dataset, root, folder, source, fold, cache)
    listing = f"the {source} list" if source != "all" else f"the single list {folder or root}"
    selected = select_split(dataset, index, split, carve, listing, root, val_fraction=val_fraction,
                            val_seed=val_seed, missing_list=missing_list)
    return shared(selected) if cache else selected


def select_split(
    dataset: DatasetFormat,
    index: VideoIndex,
    split: str,
    carve: bool,
    listing: str,
    root: PathLike,
    *,
    val_fraction: float = 0.1,
    val_seed: int = 0,
    missing_list: PathLike | None = None,
) -> Annotations:
    """The videos of ``split`` in ``index`` (a parsed annotation list, described as ``listing`` in logs):
    val carved out when ``carve`` (see :func:`load_annotations`), missing videos reported and left out."""
    name = dataset.name
    wanted = np.ones(len(index.labels), dtype=bool)
    origin = listing
    if carve:
        if val_fraction <= 0.0 and split == "val":
            raise ValueError(f"{name} has no val list and val_fraction={val_fraction} carves none from {listing}")
        if val_fraction > 0.0:
            carved = carve_groups(*dataset.val_groups(index), val_fraction, val_seed)
            wanted = carved if split == "val" else ~carved
            how = f"{val_fraction:.0%} {dataset.val_unit}, seed {val_seed}"
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

    ``name`` is a registered dataset (:func:`~softpool3d.datasets.registry.list_datasets`:
    ``kinetics700`` and its aliases ``kinetics600``/``kinetics400``, ``ucf101``, ``hmdb51``,
    ``custom``, and any format registered since); ``annotations`` overrides where the annotation
    files are (default: the usual place under ``root``); ``fold`` picks the UCF-101/HMDB-51 split
    1-3; ``val_fraction``, ``val_seed`` and ``missing_list`` are those of :func:`load_annotations`.
    ``clip_options`` go to :class:`ClipDataset` (``num_frames``, ``sampling_rate``, ``num_clips``,
    ``num_crops``, ``crop_size``, ``train_scale``, ``test_scale``, ``hflip``,
    ``max_retries``, ``seed``, ``repeat_aug``, ``train_sampler``, ``test_sampler``, ``transform``).
    """
    parsed = load_annotations(name, root, split, annotations, fold, val_fraction=val_fraction, val_seed=val_seed,
                              missing_list=missing_list)
    return ClipDataset(parsed, train=train, **clip_options)
