"""Forward + backward time per clip of a model at each pool kind, measured side by side."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from softpool3d.models.pooling import POOL_KINDS
from softpool3d.models.registry import build_model


@dataclass
class PoolTiming:
    """Seconds of one forward + backward pass of ``name`` per pool kind: ``rounds[pool][i]`` is
    the step time of round ``i``; ``seconds[pool]`` the median per clip."""

    name: str
    clip_size: tuple[int, int, int]
    batch: int
    seconds: dict[str, float]
    rounds: dict[str, list[float]]

    def ratio(self, pool: str, other: str) -> float:
        """Median over rounds of ``pool``'s step time / ``other``'s in the same round."""
        return statistics.median(a / b for a, b in zip(self.rounds[pool], self.rounds[other]))


def time_train_step(
    name: str,
    clip_size: tuple[int, int, int],
    batch: int = 2,
    pools: Sequence[str] = POOL_KINDS,
    device: str = "cpu",
    repeats: int = 5,
    channels_last: bool = False,
    **kw: Any,
) -> PoolTiming:
    """Time ``loss.backward()`` through ``name`` on a random ``(batch, 3, T, H, W)`` clip per pool kind.

    Every kind gets the same weights (one seeded init) and the same input. After one warm-up
    step each, the kinds are timed in interleaved rounds (soft, max, avg, soft, ...), so a
    change in machine load hits all of them alike; the median step time is divided by ``batch``.
    """
    memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    clip = torch.randn(batch, 3, *clip_size, device=device).contiguous(memory_format=memory_format)
    models = {pool: build_model(name, 10, pool=pool, **kw) for pool in pools}
    state = models[pools[0]].state_dict()
    for model in models.values():
        model.load_state_dict(state)
        model.to(device=device, memory_format=memory_format).train()

    def step(model: torch.nn.Module) -> float:
        model.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        model(clip).sum().backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    for model in models.values():
        step(model)
    times: dict[str, list[float]] = {pool: [] for pool in pools}
    for _ in range(repeats):
        for pool, model in models.items():
            times[pool].append(step(model))
    seconds = {pool: statistics.median(values) / batch for pool, values in times.items()}
    return PoolTiming(name, tuple(clip_size), batch, seconds, times)
