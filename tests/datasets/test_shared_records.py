"""The records file a split's paths and labels are mapped from: the same rows as the annotation list,
a worker's copy of the dataset that does not grow with them, and errors naming a damaged file."""
from __future__ import annotations

import csv
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import DataLoader, Dataset

from softpool3d.benchmarks.synthetic_layout import write_kinetics_layout
from softpool3d.datasets import Annotations, ClipDataset, RecordsError, load_annotations, worker_context
from softpool3d.datasets.builder import shared
from softpool3d.datasets.shared_records import write_records


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("SOFTPOOL3D_CACHE_DIR", str(folder))
    return folder


class Rows(Dataset):
    """Row ``i`` of ``dataset`` as the process that reads it sees it: ``(path, label)``."""

    def __init__(self, dataset: ClipDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return self.dataset.num_videos

    def __getitem__(self, index: int) -> tuple[str, int]:
        return str(self.dataset.videos[index]), self.dataset.labels[index]


def _rows_in_a_worker(dataset: ClipDataset) -> list[tuple[str, int]]:
    loader = DataLoader(Rows(dataset), batch_size=None, num_workers=1, multiprocessing_context=worker_context())
    return [(path, int(label)) for path, label in loader]


def _expected_rows(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """The train split read straight from ``train.csv`` and the disk: the classes (sorted labels of
    train and validate), and each row whose video exists, in the file's order."""
    tables = {name: list(csv.DictReader(open(root / "annotations" / f"{name}.csv", newline="")))
              for name in ("train", "validate")}
    classes = sorted({row["label"] for rows in tables.values() for row in rows})
    rows = []
    for row in tables["train"]:
        stem = f"{row['youtube_id']}_{int(row['time_start']):06d}_{int(row['time_end']):06d}"
        path = root / "train" / row["label"] / f"{stem}.mp4"
        if path.exists():
            rows.append((str(path), classes.index(row["label"])))
    return classes, rows


def test_mapped_records_give_the_rows_of_the_annotation_list(tmp_path, cache):
    counts = write_kinetics_layout(tmp_path / "k", num_train=300, num_val=20, num_classes=12, missing_fraction=0.1)
    classes, expected = _expected_rows(tmp_path / "k")
    assert counts["train_files"] == len(expected) < 300

    annotations = load_annotations("kinetics700", tmp_path / "k", "train")
    assert annotations.records is not None and annotations.records.path.parent == cache
    assert not annotations.labels.array.flags.writeable and not annotations.videos.names.flags.owndata  # file views
    assert annotations.classes == classes
    assert [(str(path), label) for path, label in zip(annotations.videos, annotations.labels)] == expected
    assert annotations.missing == 300 - len(expected)

    dataset = ClipDataset(annotations, train=True)
    assert _rows_in_a_worker(dataset) == expected
    again = load_annotations("kinetics700", tmp_path / "k", "train")
    assert again.records == annotations.records and len(list(cache.glob("records-*.bin"))) == 1


def _dataset(rows: int, cache_folder: Path | None) -> ClipDataset:
    paths = [f"/data/train/class {i % 7}/{i:011d}_000000_000010.mp4" for i in range(rows)]
    annotations = Annotations(paths, np.arange(rows) % 7, [f"class {c}" for c in range(7)])
    return ClipDataset(shared(annotations) if cache_folder else annotations, train=True)


def test_a_workers_copy_of_the_dataset_does_not_grow_with_its_rows(cache):
    small, large = (len(pickle.dumps(_dataset(rows, cache))) for rows in (100, 10_000))
    in_memory = len(pickle.dumps(_dataset(10_000, None)))
    assert abs(large - small) < 16, (small, large)
    assert in_memory - large > 10_000 * 30  # the rows themselves: about 35 bytes each
    copy = pickle.loads(pickle.dumps(_dataset(10_000, cache)))
    assert "videos" not in copy.__dict__ and str(copy.videos[9_999]).endswith("00000009999_000000_000010.mp4")
    assert copy.labels[9_999] == 9_999 % 7


def test_a_damaged_or_mismatched_records_file_is_an_error_naming_it(tmp_path, cache, caplog):
    dataset = _dataset(1_000, cache)
    path = dataset.records.path
    original = path.read_bytes()

    def worker_copy_fails(match: str) -> None:
        copy = pickle.loads(pickle.dumps(dataset))
        with pytest.raises(RecordsError, match=match) as error:
            copy.labels
        assert str(path) in str(error.value)

    path.write_bytes(original[:-10])
    worker_copy_fails("is damaged")
    with pytest.raises(RecordsError, match="is damaged"):
        _rows_in_a_worker(dataset)  # raised in the worker, re-raised here with the file's name

    path.write_bytes(b"PK\x03\x04" + original[4:])
    worker_copy_fails("is not a records file")

    os.unlink(path)
    os.link(_dataset(1_001, cache).records.path, path)
    worker_copy_fails("does not match this dataset")

    path.unlink()
    worker_copy_fails("is missing")

    damaged = bytearray(original)
    damaged[-5] ^= 0xFF  # one label changed: the header still reads
    path.write_bytes(bytes(damaged))
    with caplog.at_level(logging.WARNING):
        rebuilt = _dataset(1_000, cache)
    assert f"{path} is damaged: its rows do not hash" in caplog.text
    assert rebuilt.records == dataset.records and path.read_bytes() == original


def test_a_second_writer_of_the_same_records_keeps_the_first_file(cache):
    """Ranks that build one split at once write the same records; the file first linked stays (a rank's
    mapping of it stays the file every later worker opens), and no temporary file is left."""
    dataset = _dataset(500, cache)
    path, inode = dataset.records.path, dataset.records.path.stat().st_ino
    write_records(path, dataset.videos, dataset.labels, dataset.classes, dataset.records.digest)
    assert path.stat().st_ino == inode and sorted(p.name for p in cache.iterdir()) == [path.name]
