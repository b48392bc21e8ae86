"""UCF-101 as published: ``classInd.txt`` and the three train/test splits ``trainlist0{1,2,3}.txt``
and ``testlist0{1,2,3}.txt``; ``val`` is carved out of the training list by group ``gXX``."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from softpool3d.datasets.annotations import AnnotationError, bad_line, check_source, make_index, read_lines
from softpool3d.datasets.index import VideoIndex
from softpool3d.datasets.registry import DatasetFormat, register_dataset

UCF101_GROUP = re.compile(r"_g(\d+)_c\d+$")


@register_dataset("ucf101")
class UCF101(DatasetFormat):
    """Lists in ``root/`` or ``root/ucfTrainTestlist/``; videos ``root/<Class>/v_<Class>_gXX_cYY.avi``."""

    folds = (1, 2, 3)
    val_unit = "of the groups gXX"

    def default_annotations(self, root: Path) -> Path:
        return self.locate_annotations("classInd.txt", root, root / "ucfTrainTestlist")

    def plan(self, root: Path, annotations: Path | None, split: str) -> tuple[str, bool]:
        return ("test", False) if split == "test" else ("train", True)

    def parse(self, root: Path, annotations: Path, source: str, fold: int) -> VideoIndex:
        """``classInd.txt`` (``1 ApplyEyeMakeup``), ``trainlist0{fold}.txt``
        (``Class/v_Class_g08_c01.avi 1``) and ``testlist0{fold}.txt`` (``Class/v_Class_g01_c01.avi``);
        videos under ``root``. ``source`` is ``train`` or ``test``."""
        check_source(source, ("train", "test"))
        classes_by_index: dict[int, str] = {}
        class_file = annotations / "classInd.txt"
        for number, line in read_lines(class_file):
            parts = line.split()
            if len(parts) != 2 or not parts[0].isdigit():
                raise bad_line(class_file, number, line, "'<index> <ClassName>'")
            classes_by_index[int(parts[0])] = parts[1]
        if sorted(classes_by_index) != list(range(1, len(classes_by_index) + 1)):
            raise AnnotationError(f"{class_file}: class indices must run 1..{len(classes_by_index)}")
        classes = [classes_by_index[i] for i in range(1, len(classes_by_index) + 1)]
        label_of = {name: i for i, name in enumerate(classes)}
        list_file = annotations / f"{source}list0{fold}.txt"
        videos, labels = [], []
        for number, line in read_lines(list_file):
            parts = line.split()
            if len(parts) not in (1, 2) or "/" not in parts[0]:
                raise bad_line(list_file, number, line, "'<Class>/<video> [<index>]'")
            class_name = parts[0].split("/")[0]
            if class_name not in label_of:
                raise bad_line(list_file, number, line, f"a class listed in {class_file}")
            if len(parts) == 2 and (not parts[1].isdigit() or int(parts[1]) != label_of[class_name] + 1):
                raise bad_line(list_file, number, line, f"class index {label_of[class_name] + 1} for {class_name}")
            videos.append(os.path.join(root, parts[0]))
            labels.append(label_of[class_name])
        return make_index(videos, labels, classes, [class_file, list_file])

    def val_groups(self, index: VideoIndex) -> tuple[np.ndarray, np.ndarray]:
        """The group number ``XX`` of ``_gXX_cYY``, one stratum: whole groups across all classes."""
        groups = []
        for i, name in enumerate(index.videos.names.tolist()):
            match = UCF101_GROUP.search(os.path.splitext(name.decode("utf-8", "surrogateescape"))[0])
            if match is None:
                raise ValueError(f"cannot carve a UCF-101 val split by group: no '_gXX_cYY' in {index.videos[i]}")
            groups.append(int(match.group(1)))
        return np.array(groups, dtype=np.int64), np.zeros(len(groups), dtype=np.int64)
