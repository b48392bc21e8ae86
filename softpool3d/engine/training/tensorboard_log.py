"""TensorBoard curves of a run, written by rank 0 only."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from torch.utils.tensorboard import SummaryWriter

from softpool3d.engine.evaluation.evaluate import EvalResult
from softpool3d.engine.processes.distributed import DistInfo
from softpool3d.engine.training.confusion_figure import confusion_figure


class TensorBoardLog:
    """A ``SummaryWriter`` into ``directory`` on the main process; on every other rank each call does
    nothing, so callers need not ask which rank they are."""

    def __init__(self, directory: Path, dist_info: DistInfo) -> None:
        self.writer = SummaryWriter(str(directory)) if dist_info.is_main else None

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """One point per tag, e.g. ``{"train/loss": 0.7}``."""
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)

    def evaluation(self, prefix: str, result: EvalResult, step: int) -> None:
        """``<prefix>/top1``, ``<prefix>/top5`` and ``<prefix>/confusion_matrix`` of ``result``."""
        self.scalars({f"{prefix}/top1": result.top1, f"{prefix}/top5": result.top5}, step)
        if self.writer is not None:
            self.writer.add_image(f"{prefix}/confusion_matrix", confusion_figure(result.confusion, result.classes), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
