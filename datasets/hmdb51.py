"""HMDB-51 as published: ``testTrainMulti_7030_splits/<class>_test_split{1,2,3}.txt``; ``val`` is
carved out of the training list by source video, per class."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from softpool3d.datasets.annotations import bad_line, check_source, make_index, read_lines
from softpool3d.datasets.index import VideoIndex
from softpool3d.datasets.registry import DatasetFormat, register_dataset
from softpool3d.datasets.val_split import group_ids

HMDB51_CLIP = re.compile(r"_\d+$")


@register_dataset("hmdb51")
class HMDB51(DatasetFormat):
    """Split files in ``root/testTrainMulti_7030_splits/`` or ``root/``; videos ``root/<class>/<video>``."""

    folds = (1, 2, 3)
    val_unit = "of the source videos of each class"

    def default_annotations(self, root: Path) -> Path:
        return self.locate_annotations("*_test_split1.txt", root / "testTrainMulti_7030_splits", root)

    def plan(self, root: Path, annotations: Path | None, split: str) -> tuple[str, bool]:
        return ("test", False) if split == "test" else ("train", True)

    def parse(self, root: Path, annotations: Path, source: str, fold: int) -> VideoIndex:
        """``<class>_test_split{fold}.txt`` files of ``<video> <0|1|2>`` lines (1 = train,
        2 = test, 0 = unused); videos under ``root/<class>/``. ``source`` is ``train`` or ``test``."""
        check_source(source, ("train", "test"))
        suffix = f"_test_split{fold}.txt"
        split_files = sorted(annotations.glob(f"*{suffix}"))
        if not split_files:
            raise FileNotFoundError(f"no '*{suffix}' files in {annotations}")
        wanted = "1" if source == "train" else "2"
        classes = [path.name[: -len(suffix)] for path in split_files]
        videos, labels = [], []
        for label, (class_name, split_file) in enumerate(zip(classes, split_files)):
            for number, line in read_lines(split_file):
                parts = line.split()
                if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                    raise bad_line(split_file, number, line, "'<video> <0|1|2>'")
                if parts[1] == wanted:
                    videos.append(os.path.join(root, class_name, parts[0]))
                    labels.append(label)
        return make_index(videos, labels, classes, split_files)

    def val_groups(self, index: VideoIndex) -> tuple[np.ndarray, np.ndarray]:
        """The source video (``<name>_<n>.avi`` without ``_<n>``), per class."""
        names = [os.path.splitext(name.decode("utf-8", "surrogateescape"))[0] for name in index.videos.names.tolist()]
        return group_ids([HMDB51_CLIP.sub("", name) for name in names]), index.labels
