"""Benchmark of SoftPool against the 5-op formula, ``avg_pool3d`` and ``max_pool3d``.

Forward and forward+backward time per call and peak memory allocated during the call, for each
input shape, dtype (float32, bf16) and layout (contiguous, channels_last_3d). A call on a GPU takes
5-100 us, less than Python's dispatch and a synchronisation: so each figure is the time of many
calls queued back to back after a warm-up, over CUDA events on a GPU (``perf_counter`` around the
same loop on the CPU), divided by their number; the best of ``repeats`` such runs, the methods
interleaved so that load from other processes hits them alike. Peak memory on CUDA is the
allocator's ``max_memory_allocated`` above the inputs; on the CPU it is the peak of the bytes held
by tensors that the call's ops create (scratch memory inside a kernel is not seen). Ratios are
given against ``avg_pool3d`` (time) and the 5-op formula (memory). Achieved GB/s counts the least
traffic a pooling op needs (read ``x``, write ``y``; backward also reads ``x``, ``y`` and the output
gradient and writes the input gradient), set against the device's bandwidth as a device-to-device
copy measures it (:func:`copy_bandwidth`).
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
import weakref
from dataclasses import asdict, dataclass
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from softpool3d import extension
from softpool3d.ops import soft_pool3d

Pool = Callable[..., torch.Tensor]

# (input shape (N, C, T, H, W), pooling arguments)
SHAPES: list[tuple[tuple[int, ...], dict]] = [
    ((8, 64, 16, 56, 56), {"kernel_size": 2, "stride": 2}),
    ((8, 192, 8, 28, 28), {"kernel_size": 3, "stride": 2, "padding": 1}),
    ((8, 432, 16, 7, 7), {"kernel_size": (16, 7, 7)}),
    ((8, 24, 16, 56, 56), {"kernel_size": (16, 56, 56)}),  # X3D-S's first squeeze-excitation pool
]


def five_op_soft_pool3d(x: torch.Tensor, kernel_size, stride=None, padding=0, ceil_mode=False) -> torch.Tensor:
    """The common Python SoftPool: ``avg_pool3d(exp(x) * x) / avg_pool3d(exp(x))``."""
    e = x.exp()
    return F.avg_pool3d(e * x, kernel_size, stride, padding, ceil_mode) / F.avg_pool3d(e, kernel_size, stride, padding, ceil_mode)


def _max_pool3d(x: torch.Tensor, kernel_size, stride=None, padding=0, ceil_mode=False) -> torch.Tensor:
    return F.max_pool3d(x, kernel_size, stride, padding, ceil_mode=ceil_mode)


METHODS: dict[str, Pool] = {
    "softpool3d": soft_pool3d,
    "5-op formula": five_op_soft_pool3d,
    "avg_pool3d": F.avg_pool3d,
    "max_pool3d": _max_pool3d,
}


class _TensorBytes(TorchDispatchMode):
    """Tracks the bytes held by tensors created by ops (views excluded) and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        if all(ret.alias_info is None for ret in func._schema.returns):
            for tensor in pytree.tree_leaves(out):
                if isinstance(tensor, torch.Tensor):
                    nbytes = tensor.untyped_storage().nbytes()
                    self.live += nbytes
                    weakref.finalize(tensor, self._free, nbytes)
            self.peak = max(self.peak, self.live)
        return out


def run_pool(pool: Pool, x: torch.Tensor, grad: torch.Tensor | None, args: dict) -> None:
    """One call of ``pool`` on ``x`` (and its backward from ``grad``, when given)."""
    y = pool(x, **args)
    if grad is not None:
        y.backward(grad)
        x.grad = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_per_call(call: Callable[[], None], device: torch.device, calls: int, warmup: int = 3) -> float:
    """Seconds per call of ``call``: ``calls`` calls back to back after ``warmup`` ones, timed by
    CUDA events around the loop on a GPU (the launches queue up, so Python's dispatch overlaps the
    kernels and no synchronisation is inside the loop), by ``perf_counter`` on the CPU."""
    for _ in range(warmup):
        call()
    _sync(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            call()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / calls
    start_s = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start_s) / calls


def peak_bytes(pool: Pool, x: torch.Tensor, grad: torch.Tensor | None, args: dict) -> int:
    """Peak memory allocated while running ``pool`` (and its backward when ``grad`` is given)."""
    if x.device.type == "cuda":
        _sync(x.device)
        base = torch.cuda.memory_allocated(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        run_pool(pool, x, grad, args)
        _sync(x.device)
        return torch.cuda.max_memory_allocated(x.device) - base
    tracker = _TensorBytes()
    with tracker:
        run_pool(pool, x, grad, args)
    return tracker.peak


@dataclass
class Result:
    shape: tuple[int, ...]
    args: dict
    method: str
    forward_ms: float
    train_ms: float
    train_peak: int
    forward_bytes: int = 0
    train_bytes: int = 0
    dtype: str = "float32"
    layout: str = "contiguous"

    @property
    def forward_gbs(self) -> float:
        return self.forward_bytes / self.forward_ms / 1e6

    @property
    def train_gbs(self) -> float:
        return self.train_bytes / self.train_ms / 1e6

    def row(self) -> dict:
        return {**asdict(self), "forward_gbs": self.forward_gbs, "train_gbs": self.train_gbs}


def traffic_bytes(x: torch.Tensor, y_numel: int) -> tuple[int, int]:
    """The least bytes a pooling of ``x`` into ``y_numel`` outputs moves: forward (read x, write y)
    and forward + backward (also read x, y and dy, write dx)."""
    size = x.element_size()
    forward = (x.numel() + y_numel) * size
    return forward, forward + (2 * x.numel() + 2 * y_numel) * size


def copy_bandwidth(device: torch.device, mebibytes: int = 256, repeats: int = 5) -> float:
    """GB/s of a device-to-device copy of ``mebibytes`` (bytes read plus written, best of ``repeats``)."""
    source = torch.empty(mebibytes * 2**20, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        target.copy_(source)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * source.numel() / best / 1e9


DTYPES = {"float32": torch.float32, "bf16": torch.bfloat16}
LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last_3d": torch.channels_last_3d}

# (input shape, pooling arguments, dtypes, layouts): what training runs first (X3D-S's squeeze-excitation
# pools at its recipe clip 13x160x160, batch 16, bf16 channels_last_3d), then the shapes above in both
# dtypes and layouts
GPU_PLAN: list[tuple[tuple[int, ...], dict, tuple[str, ...], tuple[str, ...]]] = [
    ((16, 54, 13, 40, 40), {"kernel_size": (13, 40, 40)}, ("bf16",), ("channels_last_3d",)),
    ((16, 108, 13, 20, 20), {"kernel_size": (13, 20, 20)}, ("bf16",), ("channels_last_3d",)),
    ((16, 216, 13, 10, 10), {"kernel_size": (13, 10, 10)}, ("bf16",), ("channels_last_3d",)),
    ((16, 432, 13, 5, 5), {"kernel_size": (13, 5, 5)}, ("bf16",), ("channels_last_3d",)),
    *((shape, args, ("bf16", "float32"), ("channels_last_3d", "contiguous")) for shape, args in SHAPES),
]
# the CPU's avg_pool3d has no bf16 kernel: the dry run times float32 in both layouts
DRY_RUN_PLAN = [
    ((2, 4, 4, 8, 8), {"kernel_size": (4, 8, 8)}, ("float32",), ("channels_last_3d",)),
    ((1, 4, 4, 8, 8), {"kernel_size": 2, "stride": 2}, ("float32",), ("contiguous", "channels_last_3d")),
]


def benchmark_plan(device: torch.device, plan: Iterable, on_group: Callable[[list[Result]], None], calls: int = 50,
                   repeats: int = 3, seed: int = 0) -> None:
    """Times every method on every (shape, dtype, layout) of ``plan`` and hands each group of
    :class:`Result` (one per method, in :data:`METHODS` order) to ``on_group`` as soon as it is measured."""
    torch.manual_seed(seed)
    for shape, args, dtypes, layouts in plan:
        for dtype in dtypes:
            for layout in layouts:
                x = torch.randn(shape, device=device, dtype=DTYPES[dtype]).contiguous(memory_format=LAYOUTS[layout])
                x.requires_grad_()
                grad = torch.ones_like(F.avg_pool3d(x.detach(), **args))
                moved = traffic_bytes(x, grad.numel())
                best = {(name, mode): float("inf") for name in METHODS for mode in ("forward", "train")}
                for _ in range(repeats):
                    for name, pool in METHODS.items():
                        for mode, inp, g in (("forward", x.detach(), None), ("train", x, grad)):
                            seconds = time_per_call(lambda: run_pool(pool, inp, g, args), device, calls)
                            best[name, mode] = min(best[name, mode], seconds)
                on_group([Result(shape, args, name, best[name, "forward"] * 1e3, best[name, "train"] * 1e3,
                                 peak_bytes(pool, x, grad, args), *moved, dtype, layout)
                          for name, pool in METHODS.items()])
                del x, grad


def benchmark(device: torch.device, repeats: int = 5, shapes=SHAPES, calls: int = 20) -> list[Result]:
    """:func:`benchmark_plan` over ``shapes`` in float32, contiguous; every :class:`Result`."""
    results: list[Result] = []
    benchmark_plan(device, [(shape, args, ("float32",), ("contiguous",)) for shape, args in shapes], results.extend,
                   calls, repeats)
    return results


def markdown_header() -> str:
    return ("| input, pooling | dtype, layout | method | fwd ms | fwd / avg | fwd+bwd ms | fwd+bwd / avg | "
            "fwd+bwd vs 5-op | peak MiB (fwd+bwd) | peak / 5-op | fwd GB/s | fwd+bwd GB/s |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|")


def markdown_rows(group: list[Result], bandwidth_gbs: float | None = None) -> str:
    """The rows of one (shape, dtype, layout): times and their ratio to avg_pool3d, peak memory and
    its ratio to the 5-op formula, achieved GB/s (and its share of ``bandwidth_gbs``, when given)."""
    share = (lambda gbs: f" ({100 * gbs / bandwidth_gbs:.0f}%)") if bandwidth_gbs else (lambda gbs: "")
    by_method = {r.method: r for r in group}
    avg, five = by_method["avg_pool3d"], by_method["5-op formula"]
    rows = []
    for r in group:
        label = f"{tuple(r.shape)} {', '.join(f'{k}={v}' for k, v in r.args.items())}"
        rows.append(
            f"| {label} | {r.dtype}, {r.layout} | {r.method} | {r.forward_ms:.3f} | {r.forward_ms / avg.forward_ms:.2f}x | "
            f"{r.train_ms:.3f} | {r.train_ms / avg.train_ms:.2f}x | {five.train_ms / r.train_ms:.2f}x faster | "
            f"{r.train_peak / 2**20:.1f} | {r.train_peak / max(five.train_peak, 1):.2f} | "
            f"{r.forward_gbs:.0f}{share(r.forward_gbs)} | {r.train_gbs:.0f}{share(r.train_gbs)} |"
        )
    return "\n".join(rows)


def markdown(results: list[Result], bandwidth_gbs: float | None = None) -> str:
    """The whole table of :func:`benchmark`'s results."""
    groups = [results[i : i + len(METHODS)] for i in range(0, len(results), len(METHODS))]
    return "\n".join([markdown_header(), *(markdown_rows(group, bandwidth_gbs) for group in groups)])


def run(args: argparse.Namespace) -> int:
    """The benchmark of the command line :func:`softpool3d.benchmarks.cli.op_main` parsed."""
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        devices.remove("cuda")
    for name in devices:
        device = torch.device(name)
        fused = extension.for_device(device) is not None
        where = torch.cuda.get_device_name(device) if name == "cuda" else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
        sys.stdout.write(f"\n### {name} ({where}; torch {torch.__version__}; kernel: {'fused' if fused else 'pure-PyTorch fallback'})\n\n")
        bandwidth = copy_bandwidth(device) if name == "cuda" else None
        if bandwidth:
            sys.stdout.write(f"device-to-device copy: {bandwidth:.0f} GB/s (the % columns are of it)\n\n")
        sys.stdout.write(markdown(benchmark(device, repeats=args.repeats), bandwidth) + "\n")
    return 0
