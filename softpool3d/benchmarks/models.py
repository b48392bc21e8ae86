"""Model benchmarks: ``complexity`` (params and GMACs, with the published figures) or ``speed``
(forward + backward time per clip at pool=soft vs max vs avg). Prints markdown tables.

    python tools/bench_models.py complexity
    python tools/bench_models.py speed --device cpu --batch 2
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from softpool3d.models import list_models, model_info
from softpool3d.models.complexity import count_complexity
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


def same_weight_models(name: str, pools: Sequence[str] = POOL_KINDS, num_classes: int = 10,
                       **kw: Any) -> dict[str, torch.nn.Module]:
    """``name`` built once per pool kind, every copy holding the weights of the first (one seeded
    init), so that the kinds differ in their pooling layers only."""
    torch.manual_seed(0)
    models = {pool: build_model(name, num_classes, pool=pool, **kw) for pool in pools}
    state = models[pools[0]].state_dict()
    for model in models.values():
        model.load_state_dict(state)
    return models


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

    Every kind gets the same weights (:func:`same_weight_models`) and the same input. After one warm-up
    step each, the kinds are timed in interleaved rounds (soft, max, avg, soft, ...), so a
    change in machine load hits all of them alike; the median step time is divided by ``batch``.
    """
    memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    clip = torch.randn(batch, 3, *clip_size, device=device).contiguous(memory_format=memory_format)
    models = same_weight_models(name, pools, **kw)
    for model in models.values():
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


SPEED_CASES = {
    "cpu": [
        ("r3d_18", (8, 112, 112), {}),
        ("r3d_18", (8, 112, 112), {"stem_pool": True}),
        ("r2plus1d_18", (8, 112, 112), {}),
        ("x3d_xs", (4, 160, 160), {}),
        ("srtg_r3d_34", (8, 112, 112), {}),
    ],
    "cuda": [
        ("r3d_18", (16, 112, 112), {}),
        ("r3d_18", (16, 112, 112), {"stem_pool": True}),
        ("r2plus1d_18", (16, 112, 112), {}),
        ("x3d_s", (13, 160, 160), {}),
        ("x3d_m", (16, 224, 224), {}),
        ("srtg_r3d_34", (16, 112, 112), {}),
        ("srtg_r3d_50", (16, 112, 112), {}),
    ],
}


def complexity_table() -> str:
    rows = ["| model | clip (T x H x W) | params (M) | GMACs | published params (M) | published GMACs | source |",
            "|---|---|---|---|---|---|---|"]
    for name in list_models():
        result = count_complexity(name)
        info = model_info(name)
        source = "-" if info.params_m is None and info.gmacs is None else (
            f"params: {info.params_source}; GMACs: {info.gmacs_source}")
        rows.append(
            f"| {name} | {'x'.join(map(str, result.clip_size))} | {result.params / 1e6:.2f} | {result.macs / 1e9:.2f} "
            f"| {'-' if info.params_m is None else info.params_m} | {'-' if info.gmacs is None else info.gmacs} "
            f"| {source} |"
        )
    return "\n".join(rows)


def speed_table(device: str, batch: int, repeats: int, channels_last: bool) -> str:
    rows = ["| model | options | clip (T x H x W) | batch | soft (ms/clip) | max (ms/clip) | avg (ms/clip) | soft / max | soft / avg |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, clip, kw in SPEED_CASES["cuda" if device.startswith("cuda") else "cpu"]:
        timing = time_train_step(name, clip, batch, device=device, repeats=repeats, channels_last=channels_last, **kw)
        s = timing.seconds
        rows.append(
            f"| {name} | {', '.join(f'{k}={v}' for k, v in kw.items()) or '-'} | {'x'.join(map(str, clip))} | {batch} | {s['soft'] * 1e3:.1f} | {s['max'] * 1e3:.1f} "
            f"| {s['avg'] * 1e3:.1f} | {timing.ratio('soft', 'max'):.2f} | {timing.ratio('soft', 'avg'):.2f} |"
        )
    return "\n".join(rows)


def run(args: argparse.Namespace) -> int:
    """The benchmark of the command line :func:`softpool3d.benchmarks.cli.models_main` parsed."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.what == "complexity":
        print(complexity_table())
    else:
        print(speed_table(args.device, args.batch, args.repeats, args.channels_last))
    return 0
