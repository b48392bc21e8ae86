"""The files of a run directory (``<output_dir>/<name>/``), named here once.

``config.yaml`` (the resolved config), ``checkpoints/`` (``last.pt``, ``best.pt``), ``tensorboard/``,
``test/`` (the test at the end of training), ``test-<checkpoint>/`` (``softpool3d-test`` of a
checkpoint of the run), ``metrics.json``, ``missing_<split>.txt`` and the job's ``.lock``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union


@dataclass(frozen=True)
class RunLayout:
    """Where each file of the run in ``root`` goes."""

    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, name: str) -> Path:
        """``checkpoints/<name>.pt``: ``last`` (the latest) or ``best`` (the best validation)."""
        return self.checkpoints / f"{name}.pt"

    @property
    def last(self) -> Path:
        return self.checkpoint("last")

    @property
    def best(self) -> Path:
        return self.checkpoint("best")

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def test(self) -> Path:
        return self.root / "test"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    def missing_list(self, split: str) -> Path:
        """The paths of the videos of ``split`` that are not on disk."""
        return self.root / f"missing_{split}.txt"

    def test_of(self, checkpoint: Union[str, os.PathLike]) -> Path:
        """Where ``softpool3d-test`` of ``checkpoint`` writes: ``test-<checkpoint stem>/``, beside ``test/``."""
        return self.root / f"test-{Path(checkpoint).stem}"

    @classmethod
    def of_checkpoint(cls, checkpoint: Union[str, os.PathLike]) -> Optional[RunLayout]:
        """The run whose ``checkpoints/`` holds ``checkpoint``, or None when it is elsewhere."""
        path = Path(checkpoint).resolve()
        layout = cls(path.parent.parent)
        return layout if path.parent == layout.checkpoints else None
