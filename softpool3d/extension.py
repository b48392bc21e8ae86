"""Just-in-time build and load of the fused SoftPool extension (``softpool3d/csrc``).

The CPU kernel is built with ``torch.utils.cpp_extension.load`` into torch's extensions
cache on first use; a CUDA tensor loads a second build that adds the CUDA kernel (CPU tensors
never need nvcc, even on a GPU host). Each build lives in a folder named by a digest of its
sources, flags, torch version and, for a CUDA build, the CUDA architectures it compiles for, and compiles
copies of the sources kept in that folder: checkouts with identical sources share one build,
and different sources (another branch, an edited kernel) get their own folder instead of
rebuilding each other's. Every build or load holds an OS-level lock (``flock``) on
``softpool3d.lock`` in its folder, which the kernel releases when its holder dies, so DDP ranks,
DataLoader workers and pytest processes that import it at once build it once and then load it.
Older torch releases (2.11 among them) lock the folder with a plain file, ``lock``, whose mere
existence blocks every later load: a build killed inside it leaves it behind, and every load then
waits forever. Holding the flock, a builder knows no other softpool3d builder is inside torch's
lock, so it removes a ``lock`` file it finds (:func:`_clear_stale_lock`).
When building fails (no compiler, no nvcc), one warning says why and the op uses the
pure-PyTorch path.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import logging
import os
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Iterator

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


def _cpp_extension() -> ModuleType:
    """``torch.utils.cpp_extension``, imported without its "No CUDA runtime is found" warning,
    which only confuses on a machine without a GPU (a CPU build does not use CUDA_HOME)."""
    cpp_logger = logging.getLogger("torch.utils.cpp_extension")
    level = cpp_logger.level
    cpp_logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        cpp_logger.setLevel(level)
    return cpp_extension


def cuda_architectures() -> str:
    """The CUDA architectures a CUDA build compiles for, as ``torch.utils.cpp_extension`` picks
    them: ``TORCH_CUDA_ARCH_LIST``, else the compute capabilities of the visible GPUs."""
    listed = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if listed:
        return " ".join(listed.replace(";", " ").split())
    if not torch.cuda.is_available():
        return ""
    capabilities = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
    return " ".join(f"{major}.{minor}" for major, minor in sorted(capabilities))


def build_name(with_cuda: bool) -> str:
    """``softpool3d_{cpu,cuda}_<digest>``: the digest covers every file in ``csrc``, the flags,
    torch's version and, for a CUDA build, :func:`cuda_architectures`, so a build is reused exactly
    when it would come out the same (a cache shared by A100 and H100 nodes keeps one build each)."""
    digest = hashlib.sha256()
    for path in sorted(CSRC.iterdir()):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    architectures = cuda_architectures() if with_cuda else ""
    digest.update(repr((with_cuda, CFLAGS, CUDA_CFLAGS, OPENMP, torch.__version__, architectures)).encode())
    return f"softpool3d_{'cuda' if with_cuda else 'cpu'}_{digest.hexdigest()[:16]}"


def _stage_sources(directory: Path) -> Path:
    """Copy ``csrc`` into ``directory/src`` (once; the folder's name already fixes its content)."""
    staged = directory / "src"
    staged.mkdir(parents=True, exist_ok=True)
    for path in CSRC.iterdir():
        target = staged / path.name
        if not target.exists():
            temporary = staged / f".{path.name}.{os.getpid()}.tmp"
            temporary.write_bytes(path.read_bytes())
            os.replace(temporary, target)
    return staged


@contextlib.contextmanager
def _build_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``directory/softpool3d.lock`` (released by the kernel if the
    holder dies, however it dies)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "softpool3d.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _clear_stale_lock(directory: Path) -> None:
    """Remove torch's ``lock`` file from ``directory``. Called under :func:`_build_lock`, when no
    softpool3d builder is inside torch's lock: under torch's ``FileBaton`` (torch 2.11) a ``lock``
    file there was left by a build that was killed and would stall every load; under later torch's
    OS-level ``FileLock`` it is an inert file that the next lock creates again."""
    stale = directory / "lock"
    try:
        stale.unlink()
    except FileNotFoundError:
        return
    logger.debug("removed %s: torch's build lock, held by no softpool3d build", stale)


def build(with_cuda: bool, verbose: bool = False) -> ModuleType:
    """Compile (or load from cache) the extension; raises when compilation fails.

    ``with_cuda`` adds the ``.cu`` kernel; see :func:`build_name` for where the build lives.
    A build that has to compile says so first, since it takes about a minute.
    """
    cpp_extension = _cpp_extension()
    name = build_name(with_cuda)
    directory = Path(cpp_extension._get_build_directory(name, verbose))
    staged = _stage_sources(directory)
    if not (directory / f"{name}.so").exists():
        logger.info("building the SoftPool %s extension once (about a minute) in %s",
                    "CPU + CUDA" if with_cuda else "CPU", directory)
    sources = [str(staged / source) for source in CPU_SOURCES + (CUDA_SOURCES if with_cuda else ())]
    cflags = list(CFLAGS) + (["-DSOFTPOOL_WITH_CUDA"] if with_cuda else [])
    with _build_lock(directory):
        _clear_stale_lock(directory)
        return cpp_extension.load(
            name=name,
            sources=sources,
            extra_cflags=cflags,
            extra_cuda_cflags=list(CUDA_CFLAGS) if with_cuda else None,
            extra_include_paths=[str(staged)],
            extra_ldflags=list(OPENMP),
            build_directory=str(directory),
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
        return load(False)
    return None


def cuda_available() -> bool:
    """Whether torch sees a CUDA device, so that a build includes the CUDA kernel by default."""
    return torch.cuda.is_available()
