"""The SoftPool cases that ``compute-sanitizer`` (memcheck, initcheck) runs in the GPU check.

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck python -m softpool3d.benchmarks.sanitizer_cases
    python -m softpool3d.benchmarks.sanitizer_cases --device cpu      # the same cases, unsanitized

Small shapes, since sanitized kernels run 10-100x slower: overlapping windows (gather backward),
disjoint windows (the other backward form), ``ceil_mode`` edges with partial last windows, padding,
channels_last_3d, bf16; the split path (long windows) on X3D-S's 16x56x56 squeeze window, and
walking padded, ``ceil_mode`` and overlapping long windows; adaptive windows of uneven sizes, short
and long; and each kernel once more on the 64-bit index path (``force_int64``). Each case runs
forward and backward (the backward of long windows from the log-sum-exp the forward saved) and
prints the kernel's plan for it. Without the compiled extension it refuses to run (exit 1): a
sanitizer passing the pure-PyTorch path would prove nothing about the kernels.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

import torch

from softpool3d import extension


@dataclasses.dataclass(frozen=True)
class Case:
    """One forward + backward: pooling (kernel, stride, padding, ceil_mode) or adaptive (output_size)."""

    name: str
    shape: tuple[int, ...]
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = (0, 0, 0)
    ceil_mode: bool = False
    output_size: tuple[int, ...] = ()
    channels_last: bool = False
    dtype: torch.dtype = torch.float32


POOLING = [
    Case("overlapping k3 s1 p1", (2, 8, 6, 10, 10), (3, 3, 3), (1, 1, 1), (1, 1, 1)),
    Case("overlapping k3 s1 p1 channels_last", (2, 8, 6, 10, 10), (3, 3, 3), (1, 1, 1), (1, 1, 1), channels_last=True),
    Case("disjoint k2 s2", (2, 8, 8, 12, 12), (2, 2, 2), (2, 2, 2)),
    Case("disjoint k2 s2 channels_last bf16", (2, 16, 8, 12, 12), (2, 2, 2), (2, 2, 2), channels_last=True,
         dtype=torch.bfloat16),
    Case("ceil_mode k2 s2, odd sizes", (2, 4, 5, 7, 9), (2, 2, 2), (2, 2, 2), ceil_mode=True),
    Case("ceil_mode k3 s2 p1 overlapping", (1, 3, 7, 9, 11), (3, 3, 3), (2, 2, 2), (1, 1, 1), True),
    Case("split: X3D-S squeeze window 16x56x56", (1, 24, 16, 56, 56), (16, 56, 56), (16, 56, 56)),
    Case("split, channels_last bf16", (1, 24, 16, 56, 56), (16, 56, 56), (16, 56, 56), channels_last=True,
         dtype=torch.bfloat16),
    Case("split, padded ceil_mode partial windows", (1, 4, 9, 37, 41), (4, 20, 20), (4, 18, 18), (1, 5, 5), True),
    Case("split, overlapping padded ceil_mode", (1, 3, 7, 30, 33), (3, 16, 16), (2, 7, 9), (1, 8, 8), True),
    Case("split in groups of chunks", (1, 3, 4, 41, 43), (4, 41, 43), (4, 41, 43)),
]
ADAPTIVE = [
    Case("adaptive, uneven short windows", (2, 8, 7, 23, 19), output_size=(3, 5, 7)),
    Case("adaptive, uneven long windows", (1, 6, 5, 47, 45), output_size=(2, 2, 1), channels_last=True),
    Case("adaptive, global", (2, 4, 13, 20, 20), output_size=(1, 1, 1), dtype=torch.bfloat16),
]


def _input(case: Case, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(case.shape, generator=generator).to(device, case.dtype)
    return x.contiguous(memory_format=torch.channels_last_3d) if case.channels_last else x


def run_case(module, case: Case, device: torch.device, force_int64: bool) -> str:  # noqa: ANN001
    """Forward (with the log-sum-exp) and backward through the extension's entry points; the plan."""
    x = _input(case, device)
    per_element = device.type == "cpu"  # the CUDA kernels' bodies, on the CPU
    if case.output_size:
        size = list(case.output_size)
        y, lse = module.adaptive_forward_lse(x, size, case.channels_last, per_element, force_int64)
        grad = torch.randn_like(y)
        dx = module.adaptive_backward(grad, x, y, size, case.channels_last, per_element, force_int64, lse=lse)
        plan = module.adaptive_plan(x, size, y=y, grad=grad, force_int64=force_int64)
    else:
        args = (list(case.kernel), list(case.stride), list(case.padding), case.ceil_mode)
        y, lse = module.forward_lse(x, *args, case.channels_last, per_element, force_int64)
        grad = torch.randn_like(y)
        dx = module.backward(grad, x, y, *args, case.channels_last, per_element, force_int64, lse=lse)
        plan = module.plan(x, *args, y=y, grad=grad, force_int64=force_int64)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if not (torch.isfinite(y).all() and torch.isfinite(dx).all()):
        raise RuntimeError(f"case {case.name}: non-finite output or gradient")
    return f"{tuple(case.shape)} -> {tuple(y.shape)}, plan {plan}"


def run_cases(device: torch.device) -> int:
    """Run every case forward + backward on ``device``, with 32- and 64-bit indices; returns how many ran."""
    module = extension.for_device(device)
    if module is None:
        raise SystemExit("NOT OK: no compiled extension: the cases would run the pure-PyTorch path")
    count = 0
    for case in POOLING + ADAPTIVE:
        for force_int64 in (False, True):
            print(f"case {case.name}{' (64-bit indices)' if force_int64 else ''}: "
                  f"{run_case(module, case, device, force_int64)}", flush=True)
            count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    count = run_cases(torch.device(args.device))
    print(f"{count} cases ran on {args.device}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
