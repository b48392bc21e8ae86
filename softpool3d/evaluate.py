"""Multi-view evaluation: softmax averaged over each video's ``num_clips x num_crops`` views.

Items are sharded ``r::world`` over ranks (no sampler padding) and the per-video sums are
all-reduced, so every view, hence every video, is counted exactly once under torchrun.
"""
from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from softpool3d import builders
from softpool3d.checkpoint import load_checkpoint
from softpool3d.config import from_container
from softpool3d.datasets import freeze_inherited_objects
from softpool3d.distributed import DistInfo, ShardSampler, all_reduce_sum, cleanup, init_distributed
from softpool3d.metrics import confusion_matrix, per_class_accuracy, topk_correct

logger = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """Video-level results: ``probabilities (V, K)`` (mean softmax over views), ``labels (V,)``."""

    probabilities: torch.Tensor
    labels: torch.Tensor
    views: torch.Tensor
    classes: list[str]

    @property
    def num_videos(self) -> int:
        return int(self.labels.numel())

    @property
    def top1(self) -> float:
        return topk_correct(self.probabilities, self.labels, (1,))[0] / max(1, self.num_videos)

    @property
    def top5(self) -> float:
        return topk_correct(self.probabilities, self.labels, (5,))[0] / max(1, self.num_videos)

    @property
    def confusion(self) -> torch.Tensor:
        return confusion_matrix(self.probabilities.argmax(1), self.labels, len(self.classes))

    @property
    def per_class(self) -> torch.Tensor:
        return per_class_accuracy(self.confusion)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    dist_info: DistInfo,
    batch_size: int = 8,
    num_workers: int = 0,
    amp: str = "none",
    progress: bool = False,
) -> EvalResult:
    """Evaluate ``model`` on every view of ``dataset`` (items ``(clip (C, T, H, W), label, video_index)``).

    ``dataset`` provides ``num_videos``, ``num_views`` and ``classes``. Returns the same
    :class:`EvalResult` on every rank.
    """
    num_videos, num_classes = dataset.num_videos, len(dataset.classes)
    sums = torch.zeros(num_videos, num_classes, dtype=torch.float64)
    views = torch.zeros(num_videos, dtype=torch.float64)
    labels = torch.zeros(num_videos, dtype=torch.float64)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ShardSampler(len(dataset), dist_info.rank, dist_info.world_size),
        num_workers=num_workers,
        worker_init_fn=freeze_inherited_objects,
    )
    was_training = model.training
    model.eval()
    for clips, targets, video_index in tqdm(loader, desc="eval", disable=not (progress and dist_info.is_main),
                                            leave=False, dynamic_ncols=True):
        with builders.autocast(dist_info.device, amp):
            logits = model(clips.to(dist_info.device, non_blocking=True))
        probabilities = logits.float().softmax(dim=1).double().cpu()
        sums.index_add_(0, video_index, probabilities)
        views.index_add_(0, video_index, torch.ones(len(video_index), dtype=torch.float64))
        labels.index_add_(0, video_index, targets.double())
    model.train(was_training)
    packed = all_reduce_sum(torch.cat([sums, views[:, None], labels[:, None]], dim=1).to(dist_info.device)).cpu()
    sums, views, labels = packed[:, :num_classes], packed[:, num_classes], packed[:, num_classes + 1]
    if bool((views < 1).any()):
        missing = (views < 1).nonzero().flatten().tolist()
        raise RuntimeError(f"videos {missing[:10]} received no view during evaluation")
    return EvalResult(
        probabilities=sums / views[:, None],
        labels=(labels / views).round().long(),
        views=views.long(),
        classes=list(dataset.classes),
    )


def write_predictions(result: EvalResult, directory: Path) -> tuple[Path, Path]:
    """Write ``predictions.csv`` (one row per video) and ``predictions.json`` (metrics, per-class
    accuracy and the rows) into ``directory``; return both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    top = result.probabilities.topk(min(5, len(result.classes)), dim=1)
    rows = []
    for video in range(result.num_videos):
        label, predicted = int(result.labels[video]), int(top.indices[video, 0])
        rows.append({
            "video_index": video,
            "label": result.classes[label],
            "prediction": result.classes[predicted],
            "score": round(float(top.values[video, 0]), 6),
            "correct": label == predicted,
            "top5": [result.classes[int(i)] for i in top.indices[video]],
            "views": int(result.views[video]),
        })
    csv_path, json_path = directory / "predictions.csv", directory / "predictions.json"
    with csv_path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]) if rows else ["video_index"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "top5": " ".join(row["top5"])})
    per_class = {name: (None if acc != acc else acc) for name, acc in zip(result.classes, result.per_class.tolist())}
    summary = {"num_videos": result.num_videos, "top1": result.top1, "top5": result.top5,
               "per_class_top1": per_class, "predictions": rows}
    json_path.write_text(json.dumps(summary, indent=2))
    return csv_path, json_path


def run_test(checkpoint: str, overrides: Sequence[str] = ()) -> EvalResult:
    """``tools/test.py``: evaluate ``checkpoint`` on ``data.test_split`` with ``data.num_clips x data.num_crops``
    views; the checkpoint's config with ``overrides`` applied. Rank 0 writes the predictions next to
    the checkpoint's run (``<run_dir>/test``) and logs the metrics."""
    state = load_checkpoint(checkpoint)
    cfg = from_container(state["config"], overrides, source=f"config stored in {checkpoint}")
    dist_info = init_distributed(cfg.train.device)
    builders.set_threads(cfg)
    try:
        result = _test(cfg, state, dist_info)
        if dist_info.is_main:
            directory = Path(checkpoint).resolve().parent.parent / "test"
            csv_path, json_path = write_predictions(result, directory)
            logger.info("test %s: %d videos, video top-1 %.2f%%, top-5 %.2f%%", cfg.data.test_split,
                        result.num_videos, 100 * result.top1, 100 * result.top5)
            logger.info("predictions written to %s and %s", csv_path, json_path)
        return result
    finally:
        cleanup()


def _test(cfg: DictConfig, state: dict, dist_info: DistInfo) -> EvalResult:
    dataset = builders.build_dataset(cfg, cfg.data.test_split, train=False,
                                     num_clips=cfg.data.num_clips, num_crops=cfg.data.num_crops)
    if list(dataset.classes) != list(state["classes"]):
        raise ValueError(f"the test set's classes {dataset.classes[:5]}... differ from the checkpoint's "
                         f"{state['classes'][:5]}...")
    cfg.model.pretrained, cfg.model.freeze_stages = None, 0
    model = builders.build_model(cfg, len(state["classes"]))
    model.load_state_dict(state["model"])
    model.to(dist_info.device)
    return evaluate(model, dataset, dist_info, cfg.data.test_batch_size, cfg.data.num_workers, cfg.train.amp,
                    progress=True)
