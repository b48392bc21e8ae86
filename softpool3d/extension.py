"""Just-in-time build and load of the fused SoftPool extension (``softpool3d/csrc``).

The CPU kernel is built with ``torch.utils.cpp_extension.load`` into torch's extensions
cache on first use; the CUDA kernel is added when ``torch.cuda.is_available()``. The
build holds an OS-level file lock in its build directory, so DDP ranks, DataLoader workers
and pytest processes that import it at once build it once and then load it. When building
fails (no compiler, no nvcc), one warning says why and the op uses the pure-PyTorch path.
"""
from __future__ import annotations

import functools
import logging
import os
import sys
import warnings
from pathlib import Path
from types import ModuleType

import torch

logger = logging.getLogger(__name__)

CSRC = Path(__file__).resolve().parent / "csrc"
CPU_SOURCES = ("softpool_binding.cpp", "softpool_cpu.cpp")
CUDA_SOURCES = ("softpool_cuda.cu",)
# at::parallel_for is OpenMP code compiled into the extension: without -fopenmp it runs on
# one thread. Linux links the same libgomp.so.1 that torch loads.
OPENMP = ("-fopenmp",) if sys.platform.startswith("linux") else ()
CFLAGS = ("-O3", "-fno-trapping-math", *OPENMP)
CUDA_CFLAGS = ("-O3", "-DSOFTPOOL_WITH_CUDA")


def build(with_cuda: bool, verbose: bool = False) -> ModuleType:
    """Compile (or load from cache) the extension; raises when compilation fails.

    ``with_cuda`` adds the ``.cu`` kernel; the module is named ``softpool3d_cuda`` or
    ``softpool3d_cpu`` so that both builds can live side by side in the cache.
    """
    from torch.utils import cpp_extension

    sources = [str(CSRC / name) for name in CPU_SOURCES + (CUDA_SOURCES if with_cuda else ())]
    cflags = list(CFLAGS) + (["-DSOFTPOOL_WITH_CUDA"] if with_cuda else [])
    return cpp_extension.load(
        name="softpool3d_cuda" if with_cuda else "softpool3d_cpu",
        sources=sources,
        extra_cflags=cflags,
        extra_cuda_cflags=list(CUDA_CFLAGS) if with_cuda else None,
        extra_include_paths=[str(CSRC)],
        extra_ldflags=list(OPENMP),
        with_cuda=with_cuda,
        verbose=verbose,
    )


@functools.lru_cache(maxsize=None)
def load(with_cuda: bool) -> ModuleType | None:
    """The built extension, or ``None`` (after one warning) when it cannot be built."""
    if os.environ.get("SOFTPOOL3D_DISABLE_EXTENSION") == "1":
        logger.info("SOFTPOOL3D_DISABLE_EXTENSION=1: using the pure-PyTorch SoftPool")
        return None
    try:
        return build(with_cuda)
    except Exception as error:  # a missing compiler surfaces as OSError, RuntimeError or CalledProcessError
        kind = "CUDA" if with_cuda else "CPU"
        warnings.warn(
            f"softpool3d: could not build the fused {kind} SoftPool kernel ({type(error).__name__}: "
            f"{str(error).strip().splitlines()[-1] if str(error).strip() else 'no message'}); "
            "falling back to the slower pure-PyTorch SoftPool. Run tools/build_extension.py to see the full build log.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


def for_device(device: torch.device) -> ModuleType | None:
    """The extension able to run on ``device`` (CPU or CUDA), or ``None``."""
    if device.type == "cuda":
        return load(True)
    if device.type == "cpu":
        # the CUDA build holds the CPU kernel too; without nvcc the CPU-only build still works
        return (load(True) if torch.cuda.is_available() else None) or load(False)
    return None
