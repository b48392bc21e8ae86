"""The SoftPool cases that ``compute-sanitizer`` (memcheck, racecheck) runs in the GPU check.

    compute-sanitizer --tool memcheck python -m softpool3d.benchmarks.sanitizer_cases
    python -m softpool3d.benchmarks.sanitizer_cases --device cpu      # the same cases, unsanitized

Small shapes, since sanitized kernels run 10-100x slower: overlapping windows (gather backward),
disjoint windows (the other backward form), ``ceil_mode`` edges with partial last windows, padding,
channels_last_3d, bf16, and the split path on X3D-S's 16x56x56 = 50,176-element squeeze window.
Each case runs forward and backward through the public op, and prints the kernel's plan for it.
"""
from __future__ import annotations

import argparse
import sys

import torch

from softpool3d import extension, soft_pool3d

# (name, input shape (N, C, T, H, W), kernel, stride, padding, ceil_mode, channels_last, dtype)
CASES = [
    ("overlapping k3 s1 p1", (2, 8, 6, 10, 10), (3, 3, 3), (1, 1, 1), (1, 1, 1), False, False, torch.float32),
    ("overlapping k3 s1 p1 channels_last", (2, 8, 6, 10, 10), (3, 3, 3), (1, 1, 1), (1, 1, 1), False, True,
     torch.float32),
    ("disjoint k2 s2", (2, 8, 8, 12, 12), (2, 2, 2), (2, 2, 2), (0, 0, 0), False, False, torch.float32),
    ("disjoint k2 s2 channels_last bf16", (2, 16, 8, 12, 12), (2, 2, 2), (2, 2, 2), (0, 0, 0), False, True,
     torch.bfloat16),
    ("ceil_mode k2 s2, odd sizes", (2, 4, 5, 7, 9), (2, 2, 2), (2, 2, 2), (0, 0, 0), True, False, torch.float32),
    ("ceil_mode k3 s2 p1 overlapping", (1, 3, 7, 9, 11), (3, 3, 3), (2, 2, 2), (1, 1, 1), True, False, torch.float32),
    ("split: X3D-S squeeze window 16x56x56", (1, 24, 16, 56, 56), (16, 56, 56), (16, 56, 56), (0, 0, 0), False,
     False, torch.float32),
    ("split, channels_last", (1, 24, 16, 56, 56), (16, 56, 56), (16, 56, 56), (0, 0, 0), False, True, torch.float32),
]


def _plan(x: torch.Tensor, kernel, stride, padding, ceil_mode) -> str:
    module = extension.for_device(x.device)
    try:
        return str(module.plan(x, list(kernel), list(stride), list(padding), ceil_mode))
    except (AttributeError, TypeError, RuntimeError) as error:  # a build without plan(), or another signature
        return f"plan unavailable ({type(error).__name__})"


def run_cases(device: torch.device) -> int:
    """Run every case forward + backward on ``device``; returns how many ran."""
    for name, shape, kernel, stride, padding, ceil_mode, channels_last, dtype in CASES:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=generator).to(device, dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        x.requires_grad_()
        y = soft_pool3d(x, kernel, stride, padding, ceil_mode)
        y.backward(torch.ones_like(y))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        finite = bool(torch.isfinite(x.grad).all())
        print(f"case {name}: {tuple(shape)} -> {tuple(y.shape)}, plan {_plan(x.detach(), kernel, stride, padding, ceil_mode)}, "
              f"grad finite {finite}", flush=True)
        if not finite:
            raise RuntimeError(f"case {name}: non-finite gradient")
    return len(CASES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    count = run_cases(torch.device(args.device))
    print(f"{count} cases ran on {args.device}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
