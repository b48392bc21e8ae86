"""The dry run's check of the carried wheels (``.whl/``, tools/gpu_wheels.sh) for the GPU machine:
Python 3.12, the GPU image's packages (:data:`GPU_IMAGE_PACKAGES`), no registry.

    python tools/gpu_deploy/wheels.py --wheels .whl --json /tmp/wheels.json [--python312 PY] [--allow-offline]

Writes its findings as JSON (``"status": "failed"`` and the error when the machine would lack
something) and exits 1 then. Run by ``tools/gpu_check.py --dry-run``.
"""
from __future__ import annotations

import argparse
import email.parser
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Optional

GPU_IMAGE_PACKAGES = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
zipp
""".split())
"""The Python packages of the GPU machines' image ('cuda'), as /work/.library/device/KINDS.md lists them (2026-11-17)."""

NOT_CARRIED = {"av": "one decoder travels (decord2); PyAV is replaced by a placeholder that refuses every use"}
"""Runtime dependencies deliberately left out of ``.whl/``, and why."""

REQUIREMENTS = ("decord2", "pytorchvideo", "fvcore", "iopath", "omegaconf", "tqdm", "tensorboard")
"""What the GPU checks import beyond the image's torch, torchvision and numpy (checked against
Python 3.12's resolver in the dry run)."""

def _wheel_metadata(path: Path) -> tuple[str, list[str]]:
    """A wheel's distribution name (normalized) and its unconditional or Python-3.12 Linux requirements."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name, parse_wheel_filename

    name = canonicalize_name(parse_wheel_filename(path.name)[0])
    with zipfile.ZipFile(path) as archive:
        meta_name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(archive.read(meta_name).decode())
    environment = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
                   "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
                   "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
    needs = []
    for line in metadata.get_all("Requires-Dist") or []:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(environment):
            needs.append(canonicalize_name(requirement.name))
    return name, needs


def check_wheels(wheels: Path, python312: Optional[str], allow_offline: bool) -> dict:
    """The dry run's check of ``wheels`` for a Python 3.12 machine with the GPU image: every wheel
    installs there (pip's own tag check, offline), every requirement of a wheel is carried, in the
    image or :data:`NOT_CARRIED`, and (with the registry) so is every package pip would install for
    :data:`REQUIREMENTS`. Raises on what the GPU machine would lack."""
    from packaging.utils import canonicalize_name

    files = sorted(wheels.glob("*.whl"))
    if not files:
        raise FileNotFoundError(f"no wheels in {wheels}: run tools/gpu_wheels.sh")
    carried = dict(_wheel_metadata(path) for path in files)
    names = [name for name in carried]
    if len(set(names)) != len(names):
        raise RuntimeError(f"{wheels} holds two versions of one package: {sorted(names)}")
    provided = set(carried) | GPU_IMAGE_PACKAGES | set(NOT_CARRIED)
    missing = {name: sorted(set(needs) - provided) for name, needs in carried.items() if set(needs) - provided}
    size = sum(path.stat().st_size for path in files)
    result: dict[str, Any] = {"wheels": sorted(path.name for path in files), "mib": size / 2**20}
    if missing:
        raise RuntimeError(f"wheels need packages neither carried nor in the GPU image: {missing}")
    if size > 50 * 2**20:
        raise RuntimeError(f"the wheels take {size / 2**20:.1f} MiB, over the 50 MiB that leave room for the tree")
    if python312 is None:
        raise RuntimeError("no Python 3.12 found to check the wheels with (set --python312)")
    with tempfile.TemporaryDirectory() as target:
        done = subprocess.run([python312, "-m", "pip", "install", "--dry-run", "--no-index", "--no-deps", "--target",
                               target, *map(str, files)], capture_output=True, text=True, timeout=300)
    if done.returncode:
        raise RuntimeError(f"Python 3.12's pip refuses the wheels:\n{done.stderr[-2000:]}")
    result["offline_install"] = "ok"
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        done = subprocess.run([python312, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                               "--report", str(report), "--target", scratch, *REQUIREMENTS],
                              capture_output=True, text=True, timeout=600)
        if done.returncode or not report.is_file():
            if allow_offline:
                result["registry_resolution"] = "skipped: the registry is out of reach"
                print("WARNING: Python 3.12's pip could not resolve the requirements (registry out of reach?): "
                    + (done.stderr.strip().splitlines() or ["no message"])[-1])
                return result
            raise RuntimeError(f"Python 3.12's pip could not resolve {REQUIREMENTS}:\n{done.stderr[-2000:]}")
        resolved = {canonicalize_name(item["metadata"]["name"]) for item in json.loads(report.read_text())["install"]}
    lacking = sorted(resolved - provided)
    result["registry_resolution"] = {"resolved": sorted(resolved), "lacking": lacking}
    if lacking:
        raise RuntimeError(f"Python 3.12 would install {lacking} for {REQUIREMENTS}: neither carried nor in the image")
    return result


def find_python312() -> Optional[str]:
    """A Python 3.12 that runs: pyenv's, else ``python3.12`` on the PATH (not a pyenv shim without it)."""
    candidates = [*sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python"))), shutil.which("python3.12")]
    for candidate in filter(None, candidates):
        if subprocess.run([candidate, "-c", "import sys; assert sys.version_info[:2] == (3, 12)"],
                          capture_output=True).returncode == 0:
            return candidate
    return None


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheels", required=True)
    parser.add_argument("--json", required=True, help="where to write the findings")
    parser.add_argument("--python312")
    parser.add_argument("--allow-offline", action="store_true")
    args = parser.parse_args(argv)
    try:
        result = check_wheels(Path(args.wheels), args.python312 or find_python312(), args.allow_offline)
    except Exception as error:  # reported, and the GPU check fails on it after its steps
        result = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"wheel check: {result}", flush=True)
    return 1 if result.get("status") == "failed" else 0


if __name__ == "__main__":
    sys.exit(main())
