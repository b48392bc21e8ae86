"""What the training loop does when a step goes non-finite (NaN or inf).

Each step's loss, gradient norm and BatchNorm running statistics are checked on every rank, and
:class:`NonFiniteGuard` applies ``train.nonfinite``: ``stop`` raises :class:`NonFiniteLossError`
naming the step, the loss and the last good checkpoint; ``skip`` drops the update and counts it,
until ``train.max_consecutive_skips`` non-finite steps in a row stop the run too. Before a
checkpoint is written, :func:`nonfinite_tensors` checks everything it would hold.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """A loss, gradient norm or BatchNorm statistic became NaN/inf and the run stops
    (``train.nonfinite=stop``, or too many consecutive skips), or a checkpoint would hold NaN/inf."""


def count_nonfinite(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """How many elements of ``tensors`` are NaN or inf, as a 0-dim tensor on their device (no host
    sync); meant for many small tensors (BatchNorm statistics), checked as one concatenation."""
    if not tensors:
        return torch.zeros((), dtype=torch.int64)
    return (~torch.isfinite(torch.cat([tensor.reshape(-1) for tensor in tensors]))).sum()


def nonfinite_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the floating-point tensors among ``named`` that hold a NaN or an inf."""
    return [name for name, tensor in named if tensor.is_floating_point() and not torch.isfinite(tensor).all()]


def nonfinite_training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Names of the model's and the optimizer state's tensors that hold a NaN or an inf."""
    return (nonfinite_tensors([(f"model {key}", value) for key, value in model.state_dict().items()])
            + nonfinite_tensors([(f"optimizer state {index} {key}", value)
                                 for index, entry in optimizer.state_dict()["state"].items()
                                 for key, value in entry.items() if isinstance(value, torch.Tensor)]))


@dataclass
class NonFiniteGuard:
    """Applies ``policy`` (``stop`` | ``skip``) to each step; counts skipped steps.

    ``skipped``: non-finite steps skipped in the whole run; ``consecutive``: how many of them
    directly precede the current step; ``last_checkpoint``: the last checkpoint written or resumed
    from, and its step, to name in the error.
    """

    policy: str
    max_consecutive_skips: int
    skipped: int = 0
    consecutive: int = 0
    last_checkpoint: Optional[tuple[Path, int]] = None

    def last_good(self) -> str:
        if self.last_checkpoint is None:
            return "no checkpoint written yet"
        path, step = self.last_checkpoint
        return f"last good checkpoint: {path} (step {step})"

    @property
    def last_step_ok(self) -> bool:
        """Whether the last step recorded was taken (not skipped)."""
        return self.consecutive == 0

    def step_ok(self, problems: list[str], where: str) -> bool:
        """Record one step whose non-finite quantities are ``problems`` (e.g. ``["loss"]``; empty:
        a good step). Returns False when the step's update must be skipped; raises
        :class:`NonFiniteLossError` when the run must stop."""
        if not problems:
            self.consecutive = 0
            return True
        listed = problems[0] if len(problems) == 1 else f"{', '.join(problems[:-1])} and {problems[-1]}"
        what = f"non-finite {listed} at {where}"
        if self.policy == "stop":
            raise NonFiniteLossError(f"{what}; stopping (train.nonfinite=stop); {self.last_good()}")
        self.skipped += 1
        self.consecutive += 1
        if self.consecutive >= self.max_consecutive_skips:
            raise NonFiniteLossError(
                f"{what}; stopping after {self.consecutive} non-finite steps in a row "
                f"(train.max_consecutive_skips={self.max_consecutive_skips}, {self.skipped} skipped in all); "
                f"{self.last_good()}"
            )
        logger.warning("%s: update skipped (train.nonfinite=skip; %d skipped so far, %d in a row)", what,
                       self.skipped, self.consecutive)
        return False
