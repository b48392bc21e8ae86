"""The compact video index: list-like access, scale, and what forked DataLoader workers copy."""
from __future__ import annotations

import ctypes
import gc
import logging
import time
from pathlib import Path

import numpy as np
import pytest

from softpool3d.benchmarks.index import worker_private_mb
from softpool3d.benchmarks.synthetic_layout import write_kinetics_layout
from softpool3d.datasets import Annotations, ClipDataset, LabelList, PathList, load_annotations
from softpool3d.datasets.heap import is_glibc


def _live_rss_mb() -> float:
    """This process's resident size after a full collection and glibc's ``malloc_trim``: the memory its
    live objects hold, whatever free memory the allocator kept from earlier work (thresholds that
    another test raised with ``mallopt``, freed temporaries in the middle of the heap)."""
    gc.collect()
    ctypes.CDLL(None).malloc_trim(0)
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS")) / 1024


def test_path_list_indexes_like_a_list_of_paths(tmp_path):
    paths = [tmp_path / "a" / "x.mp4", tmp_path / "b" / "ünï code.avi", tmp_path / "a" / "y.mp4", Path("rel/z.mkv")]
    packed = PathList.from_paths(paths)
    assert list(packed) == paths and len(packed) == 4 and packed[-1] == paths[-1]
    assert packed.folders == [str(tmp_path / "a"), str(tmp_path / "b"), "rel"]
    assert list(packed[1:3]) == paths[1:3] and list(packed[[3, 0]]) == [paths[3], paths[0]]
    assert list(packed[np.array([True, False, False, True])]) == [paths[0], paths[3]]
    assert set(packed) == set(paths)


def test_label_list_gives_python_ints_and_compares_to_lists():
    labels = LabelList([3, 0, 2])
    assert labels[0] == 3 and type(labels[0]) is int and type(labels[np.int64(1)]) is int
    assert labels == [3, 0, 2] and labels != [3, 0] and list(labels[1:]) == [0, 2]
    assert np.array_equal(np.asarray(labels), [3, 0, 2])


def test_clip_dataset_keeps_the_compact_storage(tmp_path):
    annotations = Annotations([tmp_path / "a.mp4", tmp_path / "b.mp4"], [1, 0], ["x", "y"])
    dataset = ClipDataset(annotations, train=False)
    assert isinstance(dataset.videos, PathList) and isinstance(dataset.labels, LabelList)
    assert dataset.videos[1] == tmp_path / "b.mp4" and dataset.labels[1] == 0 and len(dataset.videos) == 2


@pytest.mark.slow
@pytest.mark.skipif(not is_glibc(), reason="reads live memory with glibc's malloc_trim")
def test_index_of_three_hundred_thousand_rows(tmp_path, caplog):
    """Kinetics layout with 300,000 training rows, of which the videos of 2% are on disk (creating
    files is slow here; the rest are reported missing). Time is printed, not asserted. Memory is
    asserted: the index keeps less than 25 MB live (about 1 MB measured), where one ``Path`` per
    row, as the index once held, is about 100 MB (BENCHMARKS.md)."""
    rows = 300_000
    on_disk = write_kinetics_layout(tmp_path, num_train=rows, num_val=0, missing_fraction=0.98)["train_files"]
    before = _live_rss_mb()
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING):
        train = load_annotations("kinetics700", tmp_path, "train", missing_list=tmp_path / "missing.txt")
    cold = time.perf_counter() - start
    growth = _live_rss_mb() - before
    start = time.perf_counter()
    again = load_annotations("kinetics700", tmp_path, "train")
    warm = time.perf_counter() - start
    print(f"\n{rows} rows, {on_disk} videos on disk: index {cold:.2f} s, cached {warm:.2f} s, "
          f"live memory held {growth:.1f} MB, index arrays {(train.videos.nbytes + train.labels.array.nbytes) / 1e6:.1f} MB")
    assert len(train.videos) == on_disk and train.missing == rows - on_disk and len(train.classes) == 700
    assert sum(1 for _ in open(tmp_path / "missing.txt")) == rows - on_disk
    assert list(again.videos[:100]) == list(train.videos[:100]) and again.labels == train.labels
    assert growth < 25


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux's smaps_rollup")
def test_a_worker_holds_the_index_compactly(tmp_path):
    """One DataLoader worker started as the engine starts them (``worker_context``'s fork server, the
    dataset pickled into it, ``freeze_inherited_objects``): its Private_Dirty after gc.collect(). The
    compact index of 300,000 rows adds about 12 MB; a list of Paths, what the index used to hold,
    about 210 MB."""
    count = 300_000
    paths = [f"{tmp_path}/train/class {i % 700:03d}/{i:011d}_000000_000010.mp4" for i in range(count)]
    compact = ClipDataset(Annotations(PathList.from_paths(paths), np.arange(count) % 700, [str(i) for i in range(700)]),
                          train=True)
    gc.collect()
    empty = worker_private_mb(None, freeze=True, start_method="forkserver")
    with_compact = worker_private_mb(compact, freeze=True, start_method="forkserver")
    with_paths = worker_private_mb([Path(p) for p in paths], freeze=True, start_method="forkserver")
    print(f"\nworker private dirty after gc.collect(): no data {empty:.1f} MB, compact index {with_compact:.1f} MB, "
          f"list of Paths {with_paths:.1f} MB")
    assert with_compact - empty < 25 < with_paths - empty
    assert with_compact < 40
