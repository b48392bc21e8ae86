"""The GPU check's steps about the op itself: ``environment`` (preflight, versions, the builds),
``bench_op``, ``pytest_cuda``, ``sanitizer`` and ``authors_kernel``. Every step that reports the
kernel's behaviour or figures requires the compiled extension (:func:`require_extension`)."""
from __future__ import annotations

import datetime
import glob
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any, Optional

from softpool3d.benchmarks.gpu_check.context import REPO, Context, NotOk, Skipped, require_extension
from softpool3d.benchmarks.gpu_check.processes import _own_group_dying_with_parent, run_group, say

CUDA_TESTS = [REPO / "tests" / "op", REPO / "tests" / "engine" / "test_cuda_paths.py"]
"""What ``pytest -m cuda`` collects: the op's CUDA matrix and the engine's CUDA paths."""
MARGIN_S = 8
"""Seconds a step keeps, before its cap, to judge and write what a command it runs produced."""


def find_sanitizer() -> Optional[str]:
    """compute-sanitizer: on the PATH, else under the CUDA toolkit (``CUDA_HOME``, torch's guess,
    ``/usr/local/cuda*``) or an Nsight install under ``/opt/nvidia``."""
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), _torch_cuda_home()]
    patterns = [f"{home}/bin/compute-sanitizer" for home in homes if home]
    patterns += [f"{home}/compute-sanitizer/compute-sanitizer" for home in homes if home]
    patterns += ["/usr/local/cuda*/bin/compute-sanitizer", "/usr/local/cuda*/compute-sanitizer/compute-sanitizer",
                 "/opt/nvidia/*/compute-sanitizer*", "/opt/nvidia/**/compute-sanitizer"]
    for pattern in patterns:
        for path in sorted(glob.glob(pattern, recursive=True)):
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path
    return None


def _torch_cuda_home() -> Optional[str]:
    try:
        from softpool3d.extension import _cpp_extension

        return _cpp_extension().CUDA_HOME
    except ImportError:
        return None


def _version(command: list[str]) -> Optional[str]:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[-1].strip() if done.returncode == 0 and lines else None


def preflight(with_cuda: bool) -> dict:
    """What the build needs, checked and recorded before it starts: Python.h, ninja, and for a CUDA
    build ``CUDA_HOME``, nvcc and the pinned ``TORCH_CUDA_ARCH_LIST``; compute-sanitizer for the
    sanitizer step. ``blocking`` names what makes the build impossible."""
    python_h = Path(sysconfig.get_paths()["include"]) / "Python.h"
    cuda_home = os.environ.get("CUDA_HOME") or _torch_cuda_home()
    nvcc = str(Path(cuda_home) / "bin" / "nvcc") if cuda_home and (Path(cuda_home) / "bin" / "nvcc").exists() \
        else shutil.which("nvcc")
    ninja = shutil.which("ninja") or (str(Path(sys.executable).parent / "ninja")
                                      if (Path(sys.executable).parent / "ninja").exists() else None)
    found: dict[str, Any] = {
        "python_h": str(python_h) if python_h.is_file() else None,
        "ninja": ninja and f"{ninja} ({_version([ninja, '--version'])})",
        "cuda_home": cuda_home, "nvcc": nvcc and f"{nvcc} ({_version([nvcc, '--version'])})",
        "compute_sanitizer": find_sanitizer(), "torch_cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST"),
    }
    needed = ["python_h", "ninja"] + (["cuda_home", "nvcc"] if with_cuda else [])
    found["blocking"] = [name for name in needed if not found[name]]
    return found


def step_environment(context: Context) -> dict:
    import torch

    from softpool3d import extension
    from softpool3d.benchmarks.op import copy_bandwidth

    cores = os.cpu_count() or 1
    with_cuda = not context.dry_run
    result: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None, "cpu_cores": cores,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "preflight": preflight(with_cuda),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        result.update(gpu=props.name, capability=f"{props.major}.{props.minor}", memory_gib=props.total_memory / 2**30,
                      multiprocessors=props.multi_processor_count)
        result["driver"] = _version(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    elif with_cuda:
        raise NotOk("torch sees no CUDA device")
    say(f"environment: {result}")
    context.partial("environment", result)
    if os.environ.get("SOFTPOOL3D_DISABLE_EXTENSION") == "1":
        raise NotOk("no compiled extension (SOFTPOOL3D_DISABLE_EXTENSION=1)")
    if result["preflight"]["blocking"]:
        raise NotOk(f"no compiled extension: the build lacks {result['preflight']['blocking']}")
    os.environ["MAX_JOBS"] = str(cores)  # ninja builds the extension's sources in parallel
    started = time.perf_counter()
    # the CPU build (which the CPU tests in pytest_cuda load) beside the CUDA one, never in a later cap
    cpu_build = subprocess.Popen([sys.executable, "-c", "from softpool3d import extension; extension.build(False)"],
                                 preexec_fn=_own_group_dying_with_parent) if with_cuda else None
    try:
        module = extension.build(with_cuda, verbose=False)
    except Exception as error:
        raise NotOk(f"no compiled extension: the build failed ({type(error).__name__}: "
                    f"{str(error).strip().splitlines()[-1:]})") from error
    result["extension_build_s"] = time.perf_counter() - started
    if cpu_build is not None and cpu_build.wait() != 0:
        raise NotOk(f"no compiled CPU extension: its build exited with {cpu_build.returncode}")
    result["builds_s"] = time.perf_counter() - started
    result["extension"] = f"{Path(module.__file__).name} ({'CPU + CUDA' if with_cuda else 'CPU'}, MAX_JOBS={cores})"
    say(f"extension built or loaded in {result['extension_build_s']:.1f} s: {result['extension']}")
    result["copy_bandwidth_gbs"] = copy_bandwidth(context.device, 16 if context.dry_run else 1024)
    say(f"device-to-device copy: {result['copy_bandwidth_gbs']:.0f} GB/s")
    return result


def step_bench_op(context: Context) -> dict:
    from softpool3d.benchmarks import op

    require_extension(context)
    bandwidth = context.earlier.get("environment", {}).get("copy_bandwidth_gbs")
    plan = op.DRY_RUN_PLAN if context.dry_run else op.GPU_PLAN
    rows: list[dict] = []
    say(op.markdown_header())

    def on_group(results: list) -> None:
        table = op.markdown_rows(results, bandwidth)
        print(table, flush=True)
        rows.extend({**r.row(), "markdown": line} for r, line in zip(results, table.splitlines()))
        context.partial("bench_op", {"bandwidth_gbs": bandwidth, "rows": rows})

    op.benchmark_plan(context.device, plan, on_group, calls=3 if context.dry_run else 50,
                      repeats=1 if context.dry_run else 3)
    return {"bandwidth_gbs": bandwidth, "rows": rows}


def junit_outcome(report: Path) -> dict:
    """Counts and the failed and skipped test names of a pytest ``--junitxml`` report."""
    if not report.is_file():
        return {"tests": None}
    root = ElementTree.parse(report).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    assert suite is not None
    cases = suite.findall("testcase")
    named = {kind: ["::".join(filter(None, (case.get("classname"), case.get("name")))) for case in cases
                    if case.find(kind) is not None] for kind in ("failure", "error", "skipped")}
    return {"tests": len(cases), "failures": len(named["failure"]), "errors": len(named["error"]),
            "skipped": len(named["skipped"]), "failed_tests": named["failure"] + named["error"],
            "skipped_tests": named["skipped"][:50]}


def judge_pytest(code: Optional[int], outcome: dict, dry_run: bool) -> None:
    """Raises :class:`NotOk` unless ``pytest -m cuda`` ran a non-empty selection without failures
    (on a GPU: at least one test ran rather than skipped; on the CPU every CUDA test skips)."""
    if code is None:
        raise NotOk(f"pytest -m cuda was killed at the step's cap (failed so far: {outcome.get('failed_tests')})")
    if code == 5 or not outcome.get("tests"):
        raise NotOk("pytest -m cuda selected no test")
    if code != 0 or outcome["failures"] or outcome["errors"]:
        raise NotOk(f"pytest -m cuda: {outcome['failures']} failed, {outcome['errors']} errors (exit {code}): "
                    f"{outcome['failed_tests']}")
    if not dry_run and outcome["skipped"] == outcome["tests"]:
        raise NotOk(f"pytest -m cuda skipped all {outcome['tests']} tests on the GPU: {outcome['skipped_tests'][:5]}")


def step_pytest_cuda(context: Context) -> dict:
    require_extension(context)
    report = context.work / "pytest_cuda.xml"
    report.unlink(missing_ok=True)
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
               f"--rootdir={REPO}", f"--junitxml={report}", *map(str, CUDA_TESTS)]
    code, tail = run_group(command, max(5.0, context.seconds_left() - MARGIN_S), context.work, capture=True)
    outcome = junit_outcome(report)
    result = {"exit_code": code, **outcome, "summary": tail.strip().splitlines()[-1] if tail.strip() else ""}
    context.partial("pytest_cuda", result)
    judge_pytest(code, outcome, context.dry_run)
    return result


SANITIZER_TOOLS = {
    "memcheck": ["--leak-check", "no"],  # out-of-bounds and misaligned global accesses
    "initcheck": [],  # reads of global memory no kernel wrote (outputs from at::empty)
}
"""compute-sanitizer's tools worth running on these kernels, under PYTORCH_NO_CUDA_MEMORY_CACHING=1
so that each tensor is its own allocation (the caching allocator hides an out-of-bounds access
inside a cached block). racecheck is left out: it checks shared memory only, which no SoftPool
kernel uses (each thread owns its outputs; the split's partials go through global memory)."""


def step_sanitizer(context: Context) -> dict:
    require_extension(context)
    cases = [sys.executable, "-m", "softpool3d.benchmarks.sanitizer_cases", "--device", context.device.type]
    sanitizer = find_sanitizer()
    result: dict[str, Any] = {"compute_sanitizer": sanitizer}
    env = {**os.environ, "PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}
    if context.dry_run:
        code, tail = run_group(cases, max(5.0, context.seconds_left() - MARGIN_S), context.work, env, capture=True)
        result["cases_on_cpu"] = re.findall(r"\d+ cases ran on \w+", tail) or f"failed ({code})"
        if code != 0:
            raise NotOk(f"the sanitizer cases fail on the CPU:\n{tail[-1500:]}")
        say(f"compute-sanitizer {'found at ' + sanitizer if sanitizer else 'not found here (the GPU image has it)'}")
        return result
    if sanitizer is None:
        raise NotOk("compute-sanitizer not found on the PATH or under the CUDA toolkit")
    for tool, options in SANITIZER_TOOLS.items():
        left = context.seconds_left() - MARGIN_S
        code, tail = run_group([sanitizer, "--tool", tool, *options, "--error-exitcode", "3", *cases],
                               max(5.0, left), context.work, env, capture=True)
        summary = re.findall(r"ERROR SUMMARY: .*", tail)
        result[tool] = {"exit_code": code, "summary": summary[-1] if summary else tail.strip().splitlines()[-1:]}
        context.partial("sanitizer", result)
        if code != 0:
            raise NotOk(f"compute-sanitizer --tool {tool} " + ("was killed at the step's cap" if code is None else
                                                              f"found errors (exit {code}): {result[tool]['summary']}"))
    return result


def step_authors_kernel(context: Context) -> dict:
    if context.authors_kernel is None or not (context.authors_kernel / "CUDA" / "softpool_cuda.cpp").is_file():
        raise Skipped("--authors-kernel names no folder with CUDA/softpool_cuda.cpp")
    require_extension(context)
    if context.dry_run:
        raise Skipped(f"the authors' kernel found at {context.authors_kernel} builds and runs on a GPU only")
    import torch
    from torch.utils import cpp_extension

    from softpool3d.benchmarks import op

    folder = context.authors_kernel
    started = time.perf_counter()
    build = context.work / "authors_kernel"
    build.mkdir(exist_ok=True)
    sys.modules["softpool_cuda"] = cpp_extension.load(  # the name their SoftPool package imports
        name="softpool_cuda", sources=[str(folder / "CUDA" / "softpool_cuda.cpp"),
                                       str(folder / "CUDA" / "softpool_cuda_kernel.cu")],
        build_directory=str(build), verbose=False)
    build_s = time.perf_counter() - started
    sys.path.insert(0, str(folder))
    from SoftPool import soft_pool3d as authors_soft_pool3d  # their package, built above; for speed only

    def authors(x, kernel_size, stride=None, padding=0, ceil_mode=False):  # noqa: ANN001, ANN202
        return authors_soft_pool3d(x, kernel_size, stride)

    methods = {"softpool3d": op.METHODS["softpool3d"], "authors' kernel": authors, "avg_pool3d": op.METHODS["avg_pool3d"]}
    rows = []
    for shape, args in [(shape, args) for shape, args in op.SHAPES if not args.get("padding")]:  # they take no padding
        x = torch.randn(shape, device="cuda", requires_grad=True)
        grad = torch.ones_like(torch.nn.functional.avg_pool3d(x.detach(), **args))
        for name, pool in methods.items():
            forward = op.time_per_call(lambda: op.run_pool(pool, x.detach(), None, args), context.device, 30)
            train = op.time_per_call(lambda: op.run_pool(pool, x, grad, args), context.device, 30)
            rows.append({"shape": list(shape), "args": args, "method": name, "forward_ms": forward * 1e3,
                         "train_ms": train * 1e3})
            context.partial("authors_kernel", {"build_s": build_s, "rows": rows})
            say(f"{shape} {args} {name}: fwd {rows[-1]['forward_ms']:.3f} ms, fwd+bwd {rows[-1]['train_ms']:.3f} ms")
    return {"build_s": build_s, "rows": rows}
