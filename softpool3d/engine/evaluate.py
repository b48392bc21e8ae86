"""Multi-view evaluation: softmax averaged over each video's ``num_clips x num_crops`` views.

Items are sharded ``r::world`` over ranks (no sampler padding) and the per-video sums are
all-reduced, so every view, hence every video, is counted exactly once under torchrun. A view
whose label is ``UNREADABLE`` (its video cannot be decoded) leaves its video out of the metrics;
the result says how many videos it covers.
"""
from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from softpool3d.engine import builders
from softpool3d.engine.checkpoint import load_checkpoint, load_model_state
from softpool3d.engine.config import ConfigError, check_runnable, from_container
from softpool3d.datasets.clip_dataset import UNREADABLE
from softpool3d.engine.distributed import DistInfo, all_reduce_sum, cleanup, init_distributed
from softpool3d.engine.inputs import ClipNormalizer, model_inputs
from softpool3d.engine.loaders import run_loader
from softpool3d.engine.metrics import confusion_matrix, per_class_accuracy, per_class_rows, topk_correct, worst_classes
from softpool3d.engine.sampler import ShardSampler

logger = logging.getLogger(__name__)


class UnreadableVideosError(RuntimeError):
    """More than ``data.max_bad_fraction`` of the videos of an evaluation cannot be decoded."""


@dataclass
class EvalResult:
    """Video-level results over the videos that could be decoded: ``probabilities (V, K)`` (mean
    softmax over views), ``labels (V,)``, ``views (V,)``, and ``video_indices (V,)`` / ``videos`` (paths)
    of those videos in the dataset; ``total_videos`` counts the dataset's videos and ``left_out``
    names those that could not be decoded."""

    probabilities: torch.Tensor
    labels: torch.Tensor
    views: torch.Tensor
    classes: list[str]
    video_indices: torch.Tensor
    videos: list[str]
    total_videos: int
    left_out: list[str] = field(default_factory=list)

    @property
    def num_videos(self) -> int:
        return int(self.labels.numel())

    @property
    def coverage(self) -> str:
        """E.g. ``"62 of 64 videos"``."""
        return f"{self.num_videos} of {self.total_videos} videos"

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


def forward_views(model: nn.Module, clips: torch.Tensor, device: torch.device, amp: str,
                  normalizer: ClipNormalizer) -> torch.Tensor:
    """Logits ``(N, K)`` of a loader batch of clips (uint8 ``(N, C, T, H, W)``): copied to ``device``,
    normalized there (:func:`~softpool3d.engine.inputs.model_inputs`, as in training), then the
    model under ``amp``'s autocast. The one way evaluation, the test and inference run the model."""
    inputs = model_inputs(clips, device, normalizer)
    with builders.autocast(device, amp):
        return model(inputs)


def _video_name(dataset: Dataset, index: int) -> str:
    videos = getattr(dataset, "videos", None)
    return str(videos[index]) if videos is not None else f"video {index}"


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    dist_info: DistInfo,
    batch_size: int = 8,
    num_workers: int = 0,
    amp: str = "none",
    progress: bool = False,
    max_bad_fraction: float = 0.05,
    loader: Optional[DataLoader] = None,
    *,
    normalizer: ClipNormalizer,
) -> EvalResult:
    """Evaluate ``model`` on every view of ``dataset`` (items ``(clip (C, T, H, W), label, video_index)``),
    each batch through :func:`forward_views` with ``normalizer``.

    ``dataset`` provides ``num_videos``, ``num_views`` and ``classes`` (and ``videos``, the paths,
    if it has them). A video with a view labelled ``UNREADABLE`` is left out of the result; if
    more than ``max_bad_fraction`` of the videos are, :class:`UnreadableVideosError` names them.
    ``loader``: one of :func:`evaluation_loader`'s for ``dataset``, kept by a caller that evaluates
    again (its workers persist); by default a new one. The per-video sums stay on the device until
    one all-reduce at the end. Returns the same :class:`EvalResult` on every rank.
    """
    num_videos, num_classes, device = dataset.num_videos, len(dataset.classes), dist_info.device
    sums = torch.zeros(num_videos, num_classes, dtype=torch.float64, device=device)
    views = torch.zeros(num_videos, dtype=torch.float64, device=device)
    labels = torch.zeros(num_videos, dtype=torch.float64, device=device)
    unreadable = torch.zeros(num_videos, dtype=torch.float64, device=device)
    if loader is None:
        loader = evaluation_loader(dataset, dist_info, batch_size, num_workers)
    was_training = model.training
    model.eval()
    for clips, targets, video_index in tqdm(loader, desc="eval", disable=not (progress and dist_info.is_main),
                                            leave=False, dynamic_ncols=True):
        readable = targets != UNREADABLE  # on the CPU, as the loader gives them: no device sync
        if not bool(readable.all()):
            unreadable[video_index[~readable].to(device)] = 1.0
            clips, targets, video_index = clips[readable], targets[readable], video_index[readable]
            if not len(targets):
                continue
        video_index = video_index.to(device, non_blocking=True)
        logits = forward_views(model, clips, device, amp, normalizer)
        sums.index_add_(0, video_index, logits.float().softmax(dim=1).double())
        views.index_add_(0, video_index, torch.ones(len(video_index), dtype=torch.float64, device=device))
        labels.index_add_(0, video_index, targets.to(device, torch.float64, non_blocking=True))
    model.train(was_training)
    packed = torch.cat([sums, views[:, None], labels[:, None], unreadable[:, None]], dim=1)
    packed = all_reduce_sum(packed).cpu()
    sums, views, labels = packed[:, :num_classes], packed[:, num_classes], packed[:, num_classes + 1]
    bad = packed[:, num_classes + 2] > 0
    left_out = [_video_name(dataset, i) for i in bad.nonzero().flatten().tolist()]
    if len(left_out) > max_bad_fraction * num_videos:
        listed = ", ".join(left_out[:20]) + (f" and {len(left_out) - 20} more" if len(left_out) > 20 else "")
        raise UnreadableVideosError(
            f"{len(left_out)} of {num_videos} videos cannot be decoded, more than data.max_bad_fraction="
            f"{max_bad_fraction:g} of them: {listed}"
        )
    kept = (~bad).nonzero().flatten()
    if bool((views[kept] < 1).any()):
        missing = kept[views[kept] < 1].tolist()
        raise RuntimeError(f"videos {[_video_name(dataset, i) for i in missing[:10]]} received no view during evaluation")
    return EvalResult(
        probabilities=sums[kept] / views[kept, None],
        labels=(labels[kept] / views[kept]).round().long(),
        views=views[kept].long(),
        classes=list(dataset.classes),
        video_indices=kept,
        videos=[_video_name(dataset, i) for i in kept.tolist()],
        total_videos=num_videos,
        left_out=left_out,
    )


def evaluation_loader(dataset: Dataset, dist_info: DistInfo, batch_size: int, num_workers: int) -> DataLoader:
    """The loader :func:`evaluate` reads ``dataset`` with: this rank's shard of the items (no padding),
    persistent workers, memory pinned on a GPU (:func:`~softpool3d.engine.loaders.run_loader`)."""
    return run_loader(dataset, ShardSampler(len(dataset), dist_info.rank, dist_info.world_size), batch_size,
                      num_workers, dist_info.device)


def report_left_out(result: EvalResult, what: str, already_reported: Optional[set[str]] = None) -> None:
    """Log (once per path when ``already_reported`` is kept across calls) the videos ``result`` left out."""
    new = [path for path in result.left_out if already_reported is None or path not in already_reported]
    if new:
        logger.warning("%s: %d of %d videos cannot be decoded and are left out of the metrics: %s", what,
                       len(result.left_out), result.total_videos, ", ".join(new))
    if already_reported is not None:
        already_reported.update(new)


def write_predictions(result: EvalResult, directory: Path) -> tuple[Path, Path]:
    """Write ``predictions.csv`` (one row per video, with its path), ``predictions.json`` (metrics,
    the videos covered and left out, per-class accuracy and the rows) and ``per_class.csv`` (accuracy,
    count and most-confused-with per class, :func:`~softpool3d.engine.metrics.per_class_rows`) into
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


def test_model(model: nn.Module, dataset: Dataset, cfg: DictConfig, dist_info: DistInfo, amp: str, directory: Path,
               label: str, already_reported: Optional[set[str]] = None) -> EvalResult:
    """The test of a model, at the end of training and in ``tools/test.py``: :func:`evaluate` every view
    of ``dataset`` (``data.test_batch_size``, ``data.num_workers``, ``data.max_bad_fraction``); rank 0
    then reports the videos left out, writes :func:`write_predictions` into ``directory`` and logs the
    metrics under ``label`` (e.g. ``"test (split 'test')"``)."""
    result = evaluate(model, dataset, dist_info, cfg.data.test_batch_size, cfg.data.num_workers, amp,
                      progress=True, max_bad_fraction=cfg.data.max_bad_fraction,
                      normalizer=ClipNormalizer.from_config(cfg))
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


def test_output_dir(checkpoint: str | Path, out: Optional[str | Path] = None) -> Path:
    """Where ``tools/test.py`` writes: ``out`` if given, else ``<run>/test-<checkpoint stem>/`` for a
    checkpoint in ``<run>/checkpoints/`` (beside the run's own ``test/``, never over it). A checkpoint
    elsewhere needs ``out`` (:class:`ConfigError`)."""
    if out is not None:
        return Path(out)
    path = Path(checkpoint).resolve()
    if path.parent.name != "checkpoints":
        raise ConfigError(f"checkpoint {checkpoint} is not in a run's checkpoints/ folder, so there is no run "
                          f"directory to write to; choose one with --out DIR")
    return path.parent.parent / f"test-{path.stem}"


def evaluation_config(stored: dict, overrides: Sequence[str] = (), checkpoint: str | Path = "checkpoint") -> DictConfig:
    """The config ``softpool3d-test`` evaluates with: the one ``stored`` in ``checkpoint`` with
    ``overrides`` applied, except ``train.device``, which is ``auto`` (the GPU when there is one)
    unless an override names it: the device a model was trained on says nothing of the machine
    that tests it."""
    stored = {**stored, "train": {**(stored.get("train") or {}), "device": "auto"}}
    return from_container(stored, overrides, source=f"config stored in {checkpoint}")


def run_test(checkpoint: str, overrides: Sequence[str] = (), out: Optional[str | Path] = None) -> EvalResult:
    """``tools/test.py``: evaluate ``checkpoint`` on ``data.test_split`` with ``data.num_clips x data.num_crops``
    views; the checkpoint's config with ``overrides`` applied (:func:`evaluation_config`: on the GPU when
    there is one, whatever device trained it). Rank 0 writes the predictions into
    :func:`test_output_dir` and logs the metrics (:func:`test_model`)."""
    directory = test_output_dir(checkpoint, out)
    state = load_checkpoint(checkpoint)
    cfg = evaluation_config(state["config"], overrides, checkpoint)
    check_runnable(cfg, training=False)
    dist_info = init_distributed(cfg.train.device)
    builders.set_threads(cfg)
    try:
        if dist_info.is_main:
            directory.mkdir(parents=True, exist_ok=True)
        dataset = builders.build_dataset(cfg, cfg.data.test_split, train=False,
                                         num_clips=cfg.data.num_clips, num_crops=cfg.data.num_crops)
        if list(dataset.classes) != list(state["classes"]):
            raise ConfigError(f"the classes of {cfg.data.dataset} at {cfg.data.root} ({len(dataset.classes)}: "
                              f"{', '.join(dataset.classes[:5])}, ...) differ from those checkpoint {checkpoint} was "
                              f"trained on ({len(state['classes'])}: {', '.join(state['classes'][:5])}, ...)")
        model = builders.build_architecture(cfg, len(state["classes"]))  # the checkpoint holds the weights
        load_model_state(model, state, checkpoint)
        model.to(dist_info.device)
        amp, reason = builders.resolve_amp(cfg.train.amp, dist_info.device)
        warning = builders.slow_bf16_warning(cfg.train.amp, dist_info.device)
        if dist_info.is_main:
            logger.info("%s: %d videos x %d views on %s, precision %s (%s)", checkpoint, dataset.num_videos,
                        dataset.num_views, dist_info.device, builders.precision_name(amp), reason)
            if warning is not None:
                logger.warning("%s", warning)
        return test_model(model, dataset, cfg, dist_info, amp, directory, f"test (split '{cfg.data.test_split}')")
    finally:
        cleanup()
