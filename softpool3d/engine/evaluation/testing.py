"""The test of a model, at the end of training and in ``softpool3d-test``: every view of the test
split evaluated, the videos left out reported, the prediction files written and the metrics logged."""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Optional

from torch import nn
from torch.utils.data import Dataset

from softpool3d.engine.evaluation.evaluate import EvalResult, evaluate, report_left_out
from softpool3d.engine.evaluation.metrics import per_class_rows, worst_classes
from softpool3d.engine.inputs import ClipNormalizer
from softpool3d.engine.processes.distributed import DistInfo

logger = logging.getLogger(__name__)


def write_predictions(result: EvalResult, directory: Path) -> tuple[Path, Path]:
    """Write ``predictions.csv`` (one row per video, with its path), ``predictions.json`` (metrics,
    the videos covered and left out, per-class accuracy and the rows) and ``per_class.csv`` (accuracy,
    count and most-confused-with per class, :func:`~softpool3d.engine.evaluation.metrics.per_class_rows`) into
    ``directory``; return the first two paths."""
    directory.mkdir(parents=True, exist_ok=True)
    top = result.probabilities.topk(min(5, len(result.classes)), dim=1)
    rows = []
    for row in range(result.num_videos):
        label, predicted = int(result.labels[row]), int(top.indices[row, 0])
        rows.append({
            "video_index": int(result.video_indices[row]),
            "video": result.videos[row],
            "label": result.classes[label],
            "prediction": result.classes[predicted],
            "score": round(float(top.values[row, 0]), 6),
            "correct": label == predicted,
            "top5": [result.classes[int(i)] for i in top.indices[row]],
            "views": int(result.views[row]),
        })
    csv_path, json_path = directory / "predictions.csv", directory / "predictions.json"
    with csv_path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]) if rows else ["video_index", "video"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "top5": " ".join(row["top5"])})
    per_class = {name: (None if acc != acc else acc) for name, acc in zip(result.classes, result.per_class.tolist())}
    summary = {"num_videos": result.num_videos, "total_videos": result.total_videos, "left_out": result.left_out,
               "top1": result.top1, "top5": result.top5, "per_class_top1": per_class, "predictions": rows}
    json_path.write_text(json.dumps(summary, indent=2))
    with (directory / "per_class.csv").open("w", newline="") as file:
        classes = per_class_rows(result.confusion, result.classes)
        writer = csv.DictWriter(file, fieldnames=list(classes[0]))
        writer.writeheader()
        writer.writerows(classes)
    return csv_path, json_path


def test_model(model: nn.Module, dataset: Dataset, dist_info: DistInfo, amp: str, normalizer: ClipNormalizer,
               directory: Path, label: str, *, batch_size: int, num_workers: int, max_bad_fraction: float,
               already_reported: Optional[set[str]] = None) -> EvalResult:
    """The test of a model, at the end of training and in ``tools/test.py``: :func:`evaluate` every view
    of ``dataset`` (``data.test_batch_size``, ``data.num_workers``, ``data.max_bad_fraction``); rank 0
    then reports the videos left out, writes :func:`write_predictions` into ``directory`` and logs the
    metrics under ``label`` (e.g. ``"test (split 'test')"``)."""
    result = evaluate(model, dataset, dist_info, batch_size, num_workers, amp, progress=True,
                      max_bad_fraction=max_bad_fraction, normalizer=normalizer)
    if dist_info.is_main:
        report_left_out(result, label, already_reported)
        csv_path, json_path = write_predictions(result, directory)
        logger.info("%s: %s x %d views, video top-1 %.2f%%, top-5 %.2f%%; predictions in %s and %s", label,
                    result.coverage, dataset.num_views, 100 * result.top1, 100 * result.top5, csv_path, json_path)
        worst = worst_classes(per_class_rows(result.confusion, result.classes))
        logger.info("%s: the worst classes: %s (per class: %s)", label, "; ".join(
            f"{row['class']} {100 * row['accuracy']:.1f}% of {row['count']}"
            + (f", most often taken for {row['most_confused_with']}" if row["most_confused_with"] else "")
            for row in worst), directory / "per_class.csv")
    return result
