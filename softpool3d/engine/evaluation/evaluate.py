"""Multi-view evaluation: softmax averaged over each video's ``num_clips x num_crops`` views.

Items are sharded ``r::world`` over ranks (no sampler padding) and the per-video sums are
all-reduced, so every view, hence every video, is counted exactly once under torchrun. A view
whose label is ``UNREADABLE`` (its video cannot be decoded) leaves its video out of the metrics;
the result says how many videos it covers.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from softpool3d.datasets.clip_dataset import UNREADABLE
from softpool3d.engine.evaluation.metrics import confusion_matrix, per_class_accuracy, topk_correct
from softpool3d.engine.inputs import ClipNormalizer, model_inputs
from softpool3d.engine.processes.amp import autocast
from softpool3d.engine.processes.distributed import DistInfo, all_reduce_sum
from softpool3d.engine.processes.loaders import run_loader
from softpool3d.engine.processes.sampler import ShardSampler

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
    with autocast(device, amp):
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
    persistent workers, memory pinned on a GPU (:func:`~softpool3d.engine.processes.loaders.run_loader`)."""
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
