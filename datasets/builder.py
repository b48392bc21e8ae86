"""``build_dataset``: one entry point from a dataset name and root to a :class:`ClipDataset`."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Union

from softpool3d.datasets.annotations import Annotations, parse_custom, parse_hmdb51, parse_kinetics, parse_ucf101
from softpool3d.datasets.clip_dataset import ClipDataset

logger = logging.getLogger(__name__)

DATASET_NAMES = ("kinetics700", "ucf101", "hmdb51", "custom")

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


def load_annotations(name: str, root: PathLike, split: str, annotations: PathLike | None = None, fold: int = 1) -> Annotations:
    """Parse the annotations of ``split`` and drop entries whose video file does not exist.

    Missing videos are reported once, with their count and the first few paths.
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASET_NAMES}")
    if fold not in (1, 2, 3) and name in ("ucf101", "hmdb51"):
        raise ValueError(f"fold must be 1, 2 or 3 for {name}, got {fold}")
    root = Path(root)
    folder = Path(annotations) if annotations is not None else _default_annotations(name, root)
    if name == "ucf101":
        parsed = parse_ucf101(root, folder, split, fold)
    elif name == "hmdb51":
        parsed = parse_hmdb51(root, folder, split, fold)
    elif name == "kinetics700":
        parsed = parse_kinetics(root, folder, split)
    else:
        parsed = parse_custom(root, folder, split)
    present = [path.is_file() for path in parsed.videos]
    missing = [str(path) for path, ok in zip(parsed.videos, present) if not ok]
    if missing:
        logger.warning(
            "%s %s: %d of %d annotated videos are missing and left out, e.g. %s",
            name, split, len(missing), len(parsed.videos), ", ".join(missing[:5]),
        )
    kept = [i for i, ok in enumerate(present) if ok]
    if not kept:
        raise FileNotFoundError(f"{name} {split}: none of the {len(parsed.videos)} annotated videos exist under {root}")
    return Annotations([parsed.videos[i] for i in kept], [parsed.labels[i] for i in kept], parsed.classes, len(missing))


def build_dataset(
    name: str,
    root: PathLike,
    split: str,
    *,
    train: bool,
    annotations: PathLike | None = None,
    fold: int = 1,
    **clip_options: Any,
) -> ClipDataset:
    """A :class:`ClipDataset` of ``split`` (``train``/``val``/``test``) of dataset ``name``.

    ``name`` is one of ``kinetics700``, ``ucf101``, ``hmdb51``, ``custom``; ``annotations``
    overrides where the annotation files are (default: the usual place under ``root``);
    ``fold`` picks the UCF-101/HMDB-51 split 1-3. ``clip_options`` go to :class:`ClipDataset`
    (``num_frames``, ``sampling_rate``, ``num_clips``, ``num_crops``, ``crop_size``,
    ``train_scale``, ``test_scale``, ``mean``, ``std``, ``hflip``, ``max_retries``).
    """
    return ClipDataset(load_annotations(name, root, split, annotations, fold), train=train, **clip_options)
