"""Datasets in the layouts they are published in: Kinetics CSVs (label-less test.csv), UCF-101 and
HMDB-51 split files; val carved out of train without leaks; missing-video lists; the index cache."""
from __future__ import annotations

import csv
import logging
import os
import re
from pathlib import Path

import pytest

from softpool3d.datasets import AnnotationError, load_annotations
from softpool3d.datasets.kinetics import Kinetics


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows([header, *rows])


KINETICS_HEADER = ["label", "youtube_id", "time_start", "time_end", "split"]


def _kinetics(root: Path, nested: bool = True) -> dict[str, list[list]]:
    """Published Kinetics-700-2020 layout: labelled train/validate CSVs, a test.csv without labels."""
    train = [["abseiling", f"tr{i:09d}", i, i + 10, "train"] for i in range(6)]
    train += [["passing American football (in game)", f"tq{i:09d}", 100 + i, 110 + i, "train"] for i in range(4)]
    val = [["abseiling", "va000000001", 3, 13, "validate"], ["zumba", "va000000002", 0, 10, "validate"]]
    _write_csv(root / "annotations" / "train.csv", KINETICS_HEADER, train)
    _write_csv(root / "annotations" / "validate.csv", KINETICS_HEADER, val)
    _write_csv(root / "annotations" / "test.csv", ["youtube_id", "time_start", "time_end", "split"],
               [["te000000001", 5, 15, "test"]])
    for folder, rows in (("train", train[:-1]), ("val", val)):
        for label, youtube_id, start, end, _ in rows:
            name = f"{youtube_id}_{start:06d}_{end:06d}.mp4"
            _touch(root / folder / label / name if nested else root / folder / name)
    return {"train": train, "val": val}


@pytest.mark.parametrize("nested", [True, False])
def test_published_kinetics_folder_loads_train_and_val(tmp_path, caplog, nested):
    rows = _kinetics(tmp_path, nested)
    missing_list = tmp_path / "run" / "missing_train.txt"
    with caplog.at_level(logging.WARNING):
        train = load_annotations("kinetics700", tmp_path, "train", missing_list=missing_list)
    val = load_annotations("kinetics700", tmp_path, "val")
    classes = ["abseiling", "passing American football (in game)", "zumba"]
    assert train.classes == val.classes == classes
    assert len(train.videos) == 9 and train.missing == 1
    last = rows["train"][-1]
    expected_missing = f"{last[1]}_{last[2]:06d}_{last[3]:06d}.mp4"
    assert "1 of 10 annotated videos are missing" in caplog.text and expected_missing in caplog.text
    assert [Path(p).name for p in missing_list.read_text().split("\n") if p] == [expected_missing]
    assert list(train.labels) == [0] * 6 + [1] * 3
    first = rows["train"][0]
    folder = tmp_path / "train" / first[0] if nested else tmp_path / "train"
    assert train.videos[0] == folder / f"{first[1]}_{first[2]:06d}_{first[3]:06d}.mp4"
    assert [p.name for p in val.videos] == ["va000000001_000003_000013.mp4", "va000000002_000000_000010.mp4"]
    assert list(val.labels) == [0, 2]
    for alias in ("kinetics600", "kinetics400"):  # the same published format under its other names
        same = load_annotations(alias, tmp_path, "val")
        assert list(same.videos) == list(val.videos) and same.labels == val.labels and same.classes == classes


def test_kinetics_test_split_without_labels_says_they_were_never_published(tmp_path):
    _kinetics(tmp_path)
    with pytest.raises(AnnotationError, match="test labels were never published"):
        load_annotations("kinetics700", tmp_path, "test")


def test_kinetics_videos_with_other_extensions_and_a_malformed_row(tmp_path):
    _kinetics(tmp_path)
    moved = tmp_path / "train" / "abseiling" / "tr000000000_000000_000010.mp4"
    moved.rename(moved.with_suffix(".MKV"))
    train = load_annotations("kinetics700", tmp_path, "train")
    assert train.videos[0].name == "tr000000000_000000_000010.MKV" and len(train.videos) == 9
    _write_csv(tmp_path / "annotations" / "train.csv", KINETICS_HEADER, [["zumba", "x", "zero", "10", "train"]])
    with pytest.raises(AnnotationError, match=r"train.csv:2"):
        load_annotations("kinetics700", tmp_path, "train")


def _ucf101(root: Path) -> None:
    """UCF-101 as published: videos under UCF-101/<Class>/, lists under ucfTrainTestlist/."""
    classes = ["ApplyEyeMakeup", "Archery", "YoYo"]
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(classes, 1)))
    train, test = [], []
    for label, name in enumerate(classes, 1):
        for group in range(1, 26):
            for clip in range(1, 4):
                relative = f"{name}/v_{name}_g{group:02d}_c{clip:02d}.avi"
                _touch(root / "UCF-101" / relative)
                if group <= 7:
                    test.append(relative)
                else:
                    train.append(f"{relative} {label}")
    for fold in (1, 2, 3):
        (lists / f"trainlist0{fold}.txt").write_text("\n".join(train) + "\n")
        (lists / f"testlist0{fold}.txt").write_text("\n".join(test) + "\n")


def _group(path: Path) -> str:
    return re.search(r"_g(\d+)_c", path.name).group(1)


def test_ucf101_val_is_carved_from_train_by_group(tmp_path):
    _ucf101(tmp_path)
    root, lists = tmp_path / "UCF-101", tmp_path / "ucfTrainTestlist"
    splits = {s: load_annotations("ucf101", root, s, annotations=lists) for s in ("train", "val", "test")}
    train, val, test = (set(splits[s].videos) for s in ("train", "val", "test"))
    assert not train & val and not val & test and not train & test
    listed = {root / line.split()[0] for line in (lists / "trainlist01.txt").read_text().split("\n") if line}
    assert train | val == listed
    assert not {_group(p) for p in train} & {_group(p) for p in val}
    assert len({_group(p) for p in val}) == 2  # 10% of the 18 training groups, rounded
    assert all(splits[s].classes == ["ApplyEyeMakeup", "Archery", "YoYo"] for s in splits)
    assert splits["val"].source.startswith("val carved out of the train list") and "minus the carved val" in splits["train"].source
    again = load_annotations("ucf101", root, "val", annotations=lists, val_fraction=0.1, val_seed=0)
    assert list(again.videos) == list(splits["val"].videos)
    other = load_annotations("ucf101", root, "val", annotations=lists, val_seed=1)
    assert {_group(p) for p in other.videos} != {_group(p) for p in val}


def _hmdb51(root: Path) -> None:
    """HMDB-51 as published: testTrainMulti_7030_splits/<class>_test_split<k>.txt, clips <source>_<n>.avi."""
    splits = root / "testTrainMulti_7030_splits"
    splits.mkdir(parents=True)
    for name in ("brush_hair", "cartwheel"):
        lines = []
        for source in range(10):
            for clip in range(3):
                video = f"{name}_movie{source}_u_nm_np1_fr_goo_{clip}.avi"
                _touch(root / name / video)
                lines.append(f"{video} {2 if source < 3 else 1 if source < 9 else 0} ")
        for fold in (1, 2, 3):
            (splits / f"{name}_test_split{fold}.txt").write_text("\n".join(lines) + "\n")


def test_hmdb51_val_is_carved_by_source_video_and_disjoint_from_test(tmp_path):
    _hmdb51(tmp_path)
    train, val, test = (load_annotations("hmdb51", tmp_path, s) for s in ("train", "val", "test"))
    assert len(train.videos) + len(val.videos) == 2 * 6 * 3 and len(test.videos) == 2 * 3 * 3
    assert not set(train.videos) & set(val.videos) and not set(val.videos) & set(test.videos)

    def sources(annotations):
        return {re.sub(r"_\d+\.avi$", "", p.name) for p in annotations.videos}

    assert not sources(train) & sources(val)
    assert sorted(val.labels) == [0] * 3 + [1] * 3  # one source video (3 clips) of each class


def test_custom_single_file_carves_val_and_has_no_test(tmp_path):
    table = tmp_path / "all.csv"
    lines = ["path,label"] + [f"v/{c}{i}.mp4,{c}" for c in ("cat", "dog") for i in range(10)]
    table.write_text("\n".join(lines) + "\n")
    for line in lines[1:]:
        _touch(tmp_path / line.split(",")[0])
    train = load_annotations("custom", tmp_path, "train", annotations=table)
    val = load_annotations("custom", tmp_path, "val", annotations=table)
    assert not set(train.videos) & set(val.videos) and len(train.videos) + len(val.videos) == 20
    assert sorted(val.labels) == [0, 1]
    with pytest.raises(AnnotationError, match="no test list"):
        load_annotations("custom", tmp_path, "test", annotations=table)


def test_custom_folders_use_their_own_val_and_carve_one_when_absent(tmp_path):
    for split, count in (("train", 6), ("test", 2)):
        for c in ("cat", "dog"):
            for i in range(count):
                _touch(tmp_path / split / c / f"{split}{i}.mp4")
    train, val, test = (load_annotations("custom", tmp_path, s) for s in ("train", "val", "test"))
    assert len(val.videos) == 2 and len(train.videos) == 10 and len(test.videos) == 4
    assert not set(train.videos) & set(val.videos) and all(p.parent.parent.name == "train" for p in val.videos)
    _touch(tmp_path / "val" / "cat" / "v.mp4")
    assert [p.name for p in load_annotations("custom", tmp_path, "val").videos] == ["v.mp4"]
    assert len(load_annotations("custom", tmp_path, "train").videos) == 12


def test_missing_list_is_rewritten_and_removed_when_all_videos_are_back(tmp_path):
    _kinetics(tmp_path)
    missing_list = tmp_path / "run" / "missing_train.txt"
    load_annotations("kinetics700", tmp_path, "train", missing_list=missing_list)
    lost = Path(missing_list.read_text().strip())
    _touch(lost)
    assert len(load_annotations("kinetics700", tmp_path, "train", missing_list=missing_list).videos) == 10
    assert not missing_list.exists()


def test_second_start_reads_the_cache_until_annotations_or_videos_change(tmp_path, monkeypatch):
    _kinetics(tmp_path)
    first = load_annotations("kinetics700", tmp_path, "train")
    calls = []
    original = Kinetics.parse

    def counted(*args):
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(Kinetics, "parse", counted)
    second = load_annotations("kinetics700", tmp_path, "train")
    assert calls == [] and list(second.videos) == list(first.videos) and second.labels == first.labels
    assert second.classes == first.classes and second.missing == first.missing == 1

    stamp = os.stat(tmp_path / "annotations" / "train.csv").st_mtime_ns
    with open(tmp_path / "annotations" / "train.csv", "a") as handle:
        handle.write("zumba,zz000000001,1,11,train\n")
    os.utime(tmp_path / "annotations" / "train.csv", ns=(stamp, stamp))  # same time, other size
    assert len(load_annotations("kinetics700", tmp_path, "train").labels) == 9 and len(calls) == 1

    _touch(tmp_path / "train" / "zumba" / "zz000000001_000001_000011.mp4")
    assert len(load_annotations("kinetics700", tmp_path, "train").videos) == 10 and len(calls) == 2
    load_annotations("kinetics700", tmp_path, "train")
    assert len(calls) == 2
    assert len(load_annotations("kinetics700", tmp_path, "train", cache=False).videos) == 10 and len(calls) == 3
