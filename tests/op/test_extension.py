"""Building the extension: the CUDA kernel compiles with nvcc (when there is one), and
processes that build it at once into the same cache all end up with a working kernel."""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import build_race
import pytest
import torch
from torch.utils import cpp_extension
from torch.utils.file_baton import FileBaton

from softpool3d import extension


def find_nvcc() -> Path | None:
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").exists():
            return Path(home) / "bin" / "nvcc"
    found = shutil.which("nvcc")
    return Path(found) if found else None


NVCC = find_nvcc()


@pytest.mark.slow
@pytest.mark.skipif(NVCC is None or torch.version.cuda is None, reason="needs nvcc and a CUDA build of torch")
def test_cuda_sources_compile_with_nvcc(tmp_path):
    cuda_home = NVCC.resolve().parent.parent
    includes = [f"-I{extension.CSRC}", f"-I{cuda_home / 'include'}", f"-I{sysconfig.get_paths()['include']}"]
    includes += [f"-I{path}" for path in cpp_extension.include_paths()]
    result = subprocess.run(
        [str(NVCC), "-std=c++20", *extension.CUDA_CFLAGS, "-gencode", "arch=compute_90,code=sm_90",
         "--compiler-options", "-fPIC", *includes, "-c", str(extension.CSRC / "softpool_cuda.cu"),
         "-o", str(tmp_path / "softpool_cuda.o")],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, f"softpool_cuda.cu failed to compile:\n{result.stdout}{result.stderr}"
    assert (tmp_path / "softpool_cuda.o").stat().st_size > 0


@pytest.mark.slow
def test_processes_building_at_once_share_one_build(tmp_path):
    """Two processes build the CPU extension at once into a cache without it, and both end with a
    kernel equal to the formula from one build. On a fresh machine that race is the session's own first
    build, started by tests/conftest.py; otherwise it runs here in a new folder (build_race)."""
    name = extension.build_name(with_cuda=False)
    results = os.environ.get(build_race.RESULTS_ENV)
    if results is None:
        results = tmp_path / "race"
        build_race.start(tmp_path / "cache", results)
    cache, racers = build_race.outcomes(Path(results))
    for code, log in racers:
        assert code == 0, log
    builds = list((cache / name).glob("**/softpool3d_cpu*.so"))
    assert len(builds) == 1, builds


def test_build_name_follows_the_sources_not_their_place(tmp_path, monkeypatch):
    """Two checkouts with identical sources share one build; an edited source gets its own."""
    copy = tmp_path / "csrc"
    shutil.copytree(extension.CSRC, copy)
    original = extension.build_name(with_cuda=False)
    monkeypatch.setattr(extension, "CSRC", copy)
    assert extension.build_name(with_cuda=False) == original
    assert extension.build_name(with_cuda=True) != original
    kernel = copy / "softpool_kernel.h"
    kernel.write_text(kernel.read_text() + "\n// edited\n")
    assert extension.build_name(with_cuda=False) != original


def test_cuda_build_name_follows_the_cuda_architectures(monkeypatch):
    """A CUDA build is named by the architectures it compiles for (TORCH_CUDA_ARCH_LIST, else the
    visible GPUs' capabilities), so A100 and H100 nodes sharing a cache keep one build each; the
    CPU build's name does not depend on them."""
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    capability = {"value": (8, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: capability["value"])
    a100 = extension.build_name(with_cuda=True), extension.build_name(with_cuda=False)
    assert extension.cuda_architectures() == "8.0"
    capability["value"] = (9, 0)
    h100 = extension.build_name(with_cuda=True), extension.build_name(with_cuda=False)
    assert a100[0] != h100[0] and a100[1] == h100[1]
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    listed = extension.build_name(with_cuda=True)
    assert extension.cuda_architectures() == "8.0 9.0" and listed not in (a100[0], h100[0])
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0 9.0")
    assert extension.build_name(with_cuda=True) == listed


def test_cpu_tensors_on_a_gpu_host_load_the_cpu_build(monkeypatch):
    """A CPU tensor never asks for the CUDA build (and so never for nvcc), GPU or not."""
    built = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(extension, "build", lambda with_cuda, verbose=False: built.append(with_cuda) or f"build{with_cuda}")
    extension.load.cache_clear()
    try:
        assert extension.for_device(torch.device("cpu")) == "buildFalse"
        assert built == [False]
        assert extension.for_device(torch.device("cuda")) == "buildTrue"
        assert built == [False, True]
    finally:
        extension.load.cache_clear()


class _PlainFileLock:
    """torch 2.11's lock around ``cpp_extension.load``: a plain file whose mere existence blocks
    (``FileBaton``), waiting at most ``patience`` seconds here instead of forever."""

    patience = 3.0

    def __init__(self, path: str) -> None:
        self.baton = FileBaton(path)
        self.held = False

    def __enter__(self) -> "_PlainFileLock":
        self.held = self.baton.try_acquire()
        deadline = time.monotonic() + self.patience
        while not self.held and os.path.exists(self.baton.lock_file_path):
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {self.patience} s on {self.baton.lock_file_path}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.held:
            self.baton.release()


def test_a_lock_file_left_by_a_killed_build_does_not_stall_the_next_load(monkeypatch):
    """A build killed inside torch's plain-file lock leaves ``lock`` behind; the next load, under
    softpool3d's own OS lock, removes it and loads instead of waiting forever."""
    extension.for_device(torch.device("cpu"))  # built once (the cache): only the lock is at stake
    monkeypatch.setattr(cpp_extension, "FileLock", _PlainFileLock)
    name = extension.build_name(with_cuda=False)
    lock = Path(cpp_extension._get_build_directory(name, False)) / "lock"
    lock.write_text("")  # what a killed build leaves
    module = extension.build(with_cuda=False)
    assert module.forward is not None and not lock.exists()


def test_softpool3d_builds_of_one_folder_take_turns(tmp_path):
    """The OS lock serializes builders of one folder, and its holder's death releases it."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from softpool3d import extension\n"
        f"with extension._build_lock(Path({str(tmp_path)!r})):\n    print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    handle = open(tmp_path / "softpool3d.lock")
    with pytest.raises(BlockingIOError):
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    holder.kill()
    holder.wait()
    with extension._build_lock(tmp_path):  # released by the kernel when its holder was killed
        pass
