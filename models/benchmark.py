"""Forward + backward time per clip of a model at each pool kind, measured side by side."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch.utils import benchmark

from softpool3d.models.pooling import POOL_KINDS
from softpool3d.models.registry import build_model


@dataclass
class PoolTiming:
    """Median seconds per clip of one forward + backward pass of ``name`` per pool kind."""

    name: str
    clip_size: tuple[int, int, int]
    batch: int
    seconds: dict[str, float]


def time_train_step(
    name: str,
    clip_size: tuple[int, int, int],
    batch: int = 2,
    pools: Sequence[str] = POOL_KINDS,
    device: str = "cpu",
    repeats: int = 3,
    channels_last: bool = False,
    **kw: Any,
) -> PoolTiming:
    """Time ``loss.backward()`` through ``name`` on a random ``(batch, 3, T, H, W)`` clip per pool kind.

    Every kind gets the same weights (one seeded init) and the same input; one warm-up step
    runs before ``repeats`` timed steps; the median is divided by ``batch``.
    """
    memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    clip = torch.randn(batch, 3, *clip_size, device=device).contiguous(memory_format=memory_format)
    seconds = {}
    state = None
    for pool in pools:
        model = build_model(name, 10, pool=pool, **kw)
        if state is None:
            state = model.state_dict()
        model.load_state_dict(state)
        model.to(device=device, memory_format=memory_format).train()

        def step() -> None:
            model.zero_grad(set_to_none=True)
            model(clip).sum().backward()

        step()
        timer = benchmark.Timer(stmt="step()", globals={"step": step})
        seconds[pool] = timer.timeit(repeats).median / batch
    return PoolTiming(name, tuple(clip_size), batch, seconds)
