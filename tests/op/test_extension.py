"""Building the extension: the CUDA kernel compiles with nvcc (when there is one), and
processes that build it at once into the same cache all end up with a working kernel."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
from torch.utils import cpp_extension

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


CONCURRENT_BUILD = """
import sys, torch
from softpool3d import extension
module = extension.build(with_cuda=False)
x = torch.randn(1, 2, 4, 4, 4, dtype=torch.float64)
y = module.forward(x, [2, 2, 2], [2, 2, 2], [0, 0, 0], False, False, False)
expected = (x.unfold(2, 2, 2).unfold(3, 2, 2).unfold(4, 2, 2).flatten(-3).softmax(-1)
            * x.unfold(2, 2, 2).unfold(3, 2, 2).unfold(4, 2, 2).flatten(-3)).sum(-1)
sys.exit(0 if torch.allclose(y, expected) else 3)
"""


@pytest.mark.slow
def test_processes_building_at_once_share_one_build(tmp_path):
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path))
    processes = [
        subprocess.Popen([sys.executable, "-c", CONCURRENT_BUILD], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    for process in processes:
        log, _ = process.communicate(timeout=600)
        assert process.returncode == 0, log
    builds = list(tmp_path.glob("**/softpool3d_cpu*.so"))
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
