"""What every step of the GPU check shares: :class:`Step`, the :class:`Context` a step sees, the
outcomes a step can end with besides "ok" (:class:`NotOk`, :class:`Skipped`) and
:func:`require_extension`, which every step that reports the kernel's figures calls first."""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from types import ModuleType
from typing import Callable, Optional

REPO = Path(__file__).resolve().parents[3]
"""The checkout: the GPU check runs its tests (``tests/``) and ``tools/train.py`` from it."""


class NotOk(Exception):
    """A step that ran and found the thing it checks wrong or missing: reported ``NOT OK: <why>``."""


class Skipped(Exception):
    """A step with nothing to run here (no ``--authors-kernel`` folder): reported ``skipped: <why>``,
    never "ok"."""


@dataclasses.dataclass(frozen=True)
class Step:
    """One check: ``run(context) -> results`` in its own process, capped at ``cap_s`` seconds."""

    name: str
    title: str
    cap_s: int
    run: Callable[["Context"], dict]


@dataclasses.dataclass
class Context:
    """What a step sees: ``dry_run`` (CPU, tiny shapes), the output and work folders, the carried
    videos, the authors' kernel folder (or None), the results of the steps before it, the
    wall-clock time (``time.time()``) at which its cap kills it and the carried frame shards (or None)."""

    dry_run: bool
    out: Path
    work: Path
    videos: Path
    authors_kernel: Optional[Path]
    earlier: dict
    deadline: float
    shards: Optional[Path] = None

    @property
    def device(self) -> "torch.device":  # noqa: F821
        import torch

        return torch.device("cpu" if self.dry_run else "cuda")

    def seconds_left(self) -> float:
        return self.deadline - time.time()

    def partial(self, step: str, result: dict) -> None:
        """What ``step`` measured so far: kept in the results if its cap or a signal kills it."""
        temporary = self.work / f".{step}.partial.json.tmp"
        temporary.write_text(json.dumps(result, default=str))
        temporary.replace(self.work / f"{step}.partial.json")


def require_extension(context: Context) -> ModuleType:
    """The compiled extension for the step's device; :class:`NotOk` when there is none (disabled by
    ``SOFTPOOL3D_DISABLE_EXTENSION=1``, or its build failed): a figure measured on the pure-PyTorch
    path must never be reported as the kernel's."""
    import warnings

    from softpool3d import extension

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = extension.for_device(context.device)
    if module is None:
        why = "; ".join(str(warning.message) for warning in caught) or "SOFTPOOL3D_DISABLE_EXTENSION=1 or no build"
        raise NotOk(f"no compiled extension ({why})")
    return module
