"""A Kinetics folder in the published layout, with empty placeholder videos, for the index benchmark
and the index tests at full scale (no video is ever opened by the index).

``root/annotations/{train,validate,test}.csv`` as published (``test.csv`` without a ``label``
column) and ``root/{train,val}/<label>/<youtube_id>_<start:06d>_<end:06d>.mp4``, or flat under
``root/{train,val}/``, with a seeded fraction of the training videos left out.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Union

import numpy as np

_ID_CHARS = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", dtype=np.uint8)


def _youtube_ids(count: int, rng: np.random.Generator) -> list[str]:
    codes = _ID_CHARS[rng.integers(0, len(_ID_CHARS), (count, 11))]
    return [row.decode() for row in codes.view("S11").reshape(-1).tolist()]


def kinetics_class_names(num_classes: int) -> list[str]:
    """Label names with spaces and parentheses, like Kinetics' (``"abseiling 007 (indoor)"``)."""
    return [f"action {i:03d}" + (" (indoor)" if i % 7 == 0 else "") for i in range(num_classes)]


def write_kinetics_layout(
    root: Union[str, Path],
    *,
    num_train: int,
    num_val: int,
    num_test: int = 0,
    num_classes: int = 700,
    missing_fraction: float = 0.0,
    nested: bool = True,
    seed: int = 0,
) -> dict[str, int]:
    """Write the layout under ``root``; returns the counts written (``train_rows``,
    ``train_files``, ``val_rows``, ``val_files``, ``test_rows``)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    classes = kinetics_class_names(num_classes)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, folder, rows in (("train", "train", num_train), ("validate", "val", num_val), ("test", "test", num_test)):
        labels = np.sort(rng.integers(0, num_classes, rows)) if split != "test" else None
        if labels is not None:
            labels[:num_classes] = np.arange(min(rows, num_classes))
        starts = rng.integers(0, 300, rows)
        ids = _youtube_ids(rows, rng)
        drop = rng.random(rows) < (missing_fraction if split == "train" else 0.0)
        with open(root / "annotations" / f"{split}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            if labels is None:
                writer.writerow(["youtube_id", "time_start", "time_end", "split"])
                writer.writerows((yid, int(s), int(s) + 10, split) for yid, s in zip(ids, starts))
                counts["test_rows"] = rows
                continue
            writer.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
            writer.writerows((classes[c], yid, int(s), int(s) + 10, split) for c, yid, s in zip(labels, ids, starts))
        made = set()
        written = 0
        for c, yid, s, dropped in zip(labels.tolist(), ids, starts.tolist(), drop.tolist()):
            if dropped:
                continue
            directory = root / folder / classes[c] if nested else root / folder
            if directory not in made:
                directory.mkdir(parents=True, exist_ok=True)
                made.add(directory)
            os.close(os.open(os.path.join(directory, f"{yid}_{s:06d}_{s + 10:06d}.mp4"), os.O_CREAT | os.O_WRONLY, 0o644))
            written += 1
        key = "train" if split == "train" else "val"
        counts[f"{key}_rows"], counts[f"{key}_files"] = rows, written
    return counts
