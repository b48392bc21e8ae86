"""SoftPool as a drop-in: torchvision's networks with their own pools vs with every pool replaced by
:func:`softpool3d.replace_pooling`, forward + backward time and peak memory on the CPU, side by side.
Prints a markdown table.

    python tools/bench_dropin.py --repeats 3 --threads 2
    python tools/bench_dropin.py --only s3d resnet18

The two variants of a network share weights and input. After one warm-up step each they are timed
in interleaved rounds (original, soft, original, ...), so a change in machine load hits both alike.
Peak memory of a step is the growth of this process's peak resident size (``VmHWM``) over its
resident size just before the step, freed heap memory first returned to the system
(``malloc_trim``), so it counts the step's activations, gradients and workspace.
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torchvision
from torch import nn

from softpool3d import replace_pooling
from softpool3d.benchmarks.index import reset_peak, status_mb

VARIANTS = ("original", "soft")

CASES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "r3d_18": (lambda: torchvision.models.video.r3d_18(), (1, 3, 8, 112, 112)),
    "mc3_18": (lambda: torchvision.models.video.mc3_18(), (1, 3, 8, 112, 112)),
    "r2plus1d_18": (lambda: torchvision.models.video.r2plus1d_18(), (1, 3, 8, 112, 112)),
    "s3d": (lambda: torchvision.models.video.s3d(), (1, 3, 16, 224, 224)),
    "mvit_v1_b": (lambda: torchvision.models.video.mvit_v1_b(), (1, 3, 16, 224, 224)),
    "mvit_v2_s": (lambda: torchvision.models.video.mvit_v2_s(), (1, 3, 16, 224, 224)),
    "swin3d_t": (lambda: torchvision.models.video.swin3d_t(), (1, 3, 8, 112, 112)),
    "swin3d_s": (lambda: torchvision.models.video.swin3d_s(), (1, 3, 8, 112, 112)),
    "swin3d_b": (lambda: torchvision.models.video.swin3d_b(), (1, 3, 8, 112, 112)),
    "resnet18": (lambda: torchvision.models.resnet18(), (2, 3, 224, 224)),
    "googlenet": (lambda: torchvision.models.googlenet(aux_logits=False, init_weights=False), (2, 3, 224, 224)),
    "vgg11": (lambda: torchvision.models.vgg11(), (2, 3, 224, 224)),
}
"""Network and input per case: the video networks at the smallest clip torchvision's weights accept
where that is 16x224x224 (S3D, MViT), at 8x112x112 otherwise; the 2D networks at 224x224. The command line
lists their names in :data:`softpool3d.benchmarks.cli.DROPIN_CASES`."""


@dataclass
class DropInResult:
    """One network, original vs soft: pools ``replaced`` and ``left``, and per variant the step
    time (s) and peak memory growth (MB) of each timed round."""

    name: str
    input_shape: tuple[int, ...]
    replaced: int
    left: int
    seconds: dict[str, list[float]]
    peak_mb: dict[str, list[float]]

    def ratio(self, figure: str) -> float:
        """Median over rounds of soft's ``figure`` (``"seconds"`` or ``"peak_mb"``) / the original's."""
        rounds = getattr(self, figure)
        return statistics.median(soft / original for soft, original in zip(rounds["soft"], rounds["original"]))


def _release_freed_memory() -> None:
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def train_step(model: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """``(seconds, peak memory growth in MB)`` of one ``model(x).sum().backward()``."""
    model.zero_grad(set_to_none=True)
    _release_freed_memory()
    before = status_mb("VmRSS")
    reset_peak()
    start = time.perf_counter()
    model(x).sum().backward()
    seconds = time.perf_counter() - start
    return seconds, status_mb("VmHWM") - before


def compare(name: str, repeats: int = 3) -> DropInResult:
    """Time and measure case ``name`` of :data:`CASES`, original vs soft, in interleaved rounds."""
    build, shape = CASES[name]
    torch.manual_seed(0)
    models = {"original": build().train()}
    models["soft"] = copy.deepcopy(models["original"])
    report = replace_pooling(models["soft"])
    x = torch.randn(shape)
    for model in models.values():
        train_step(model, x)
    seconds: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    peak: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for _ in range(repeats):
        for variant in VARIANTS:
            step_seconds, step_peak = train_step(models[variant], x)
            seconds[variant].append(step_seconds)
            peak[variant].append(step_peak)
    return DropInResult(name, tuple(shape), len(report.replaced), len(report.left), seconds, peak)


def table_row(result: DropInResult) -> str:
    s, m = result.seconds, result.peak_mb
    return (f"| {result.name} | {'x'.join(map(str, result.input_shape))} | {result.replaced} | {result.left} "
            f"| {statistics.median(s['original']):.2f} | {statistics.median(s['soft']):.2f} | {result.ratio('seconds'):.2f} "
            f"| {statistics.median(m['original']):.0f} | {statistics.median(m['soft']):.0f} | {result.ratio('peak_mb'):.2f} |")


TABLE_HEAD = ("| network | input (N x C x [T x] H x W) | pools replaced | left | original (s/step) | soft (s/step) "
              "| soft / original | original peak (MB) | soft peak (MB) | soft / original |\n"
              "|---|---|---|---|---|---|---|---|---|---|")


def run(args: argparse.Namespace) -> int:
    """The benchmark of the command line :func:`softpool3d.benchmarks.cli.dropin_main` parsed."""
    if args.threads:
        torch.set_num_threads(args.threads)
    print(TABLE_HEAD, flush=True)
    for name in args.only or CASES:
        print(table_row(compare(name, args.repeats)), flush=True)
    return 0
