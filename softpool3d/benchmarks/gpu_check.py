"""The GPU validation as one prepared command: every GPU check in order, each in its own process
under its own time cap, with progress and partial results streamed as it goes.

    bash tools/gpu_wheels.sh                                   # here, once: .whl/ and .gpu_data/
    python tools/gpu_check.py --dry-run --out /tmp/gpu_dry     # here: the same steps on the CPU
    PYTHONPATH=. python3 tools/gpu_check.py --out $OUT         # there (README, "GPU validation")

Steps: ``environment`` (GPU, driver, torch and CUDA versions, copy bandwidth, the JIT build of the
extension with every core), ``pytest_cuda`` (``pytest -m cuda``: the op's CUDA matrix and the
engine's CUDA tests), ``sanitizer`` (compute-sanitizer memcheck and racecheck over
:mod:`softpool3d.benchmarks.sanitizer_cases`), ``bench_op`` (:mod:`softpool3d.benchmarks.op` with
achieved GB/s), ``train_steps`` (x3d_s and r3d_18 at their recipe clips, bf16, channels_last_3d,
eager and ``torch.compile``, pool soft/max/avg: clips/s and peak memory), ``loader`` (the real
loader with 14 workers on the carried videos against the model's clips/s), ``ddp`` (``softpool3d``
training under torchrun over NCCL, 1 rank, then 2 ranks sharing the GPU) and ``authors_kernel``
(the SoftPool authors' CUDA kernel for speed, when ``--authors-kernel`` names its ``pytorch/``
folder). Results go to ``--out``: ``gpu_check.json`` (rewritten after every step),
``gpu_check.md`` (tables ready for BENCHMARKS.md) and ``gpu_check.log``.

The GPU machine reaches no registry: the wheels of what its image lacks travel in ``.whl/``
(``tools/gpu_wheels.sh``) and are installed with ``pip --no-index --target`` into a folder put on
``PYTHONPATH``, beside the checkout's package composed of links (:func:`compose_package`; nothing is
installed into the machine's Python). Its one decoder is decord2; PyAV is not carried (:data:`NOT_CARRIED`), so a
placeholder ``av`` module that refuses every use is put there instead (the package imports PyAV,
which only writes videos and reads what decord cannot). ``--dry-run`` runs every step on the CPU
with tiny shapes and checks the wheel set against Python 3.12's ``pip install --dry-run``; any
step that fails there would fail on the GPU machine for a reason that is not the GPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import email.parser
import glob
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parents[2]
DEFAULT_WHEELS = REPO / ".whl"
DEFAULT_VIDEOS = REPO / ".gpu_data" / "videos"
RESULTS = "gpu_check.json"
REPORT = "gpu_check.md"
LOG = "gpu_check.log"
TOTAL_BUDGET_S = 480

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

AV_PLACEHOLDER = '''"""Placeholder for PyAV on the GPU check's machine (softpool3d.benchmarks.gpu_check): the one
decoder carried there is decord2. Importing works; any use raises ImportError."""


class error:  # noqa: N801  (PyAV's av.error namespace)
    class FFmpegError(Exception):
        pass


def __getattr__(name):
    raise ImportError(f"av.{name}: PyAV is not carried to the GPU machine (tools/gpu_wheels.sh carries decord2)")
'''


@dataclasses.dataclass(frozen=True)
class Step:
    """One check: ``run(context) -> results`` in its own process, capped at ``cap_s`` seconds."""

    name: str
    title: str
    cap_s: int
    run: Callable[["Context"], dict]


@dataclasses.dataclass
class Context:
    """What a step sees: ``dry_run`` (CPU, tiny shapes), the output and work folders, the carried
    videos, the authors' kernel folder (or None) and the results of the steps before it."""

    dry_run: bool
    out: Path
    work: Path
    videos: Path
    authors_kernel: Optional[Path]
    earlier: dict

    @property
    def device(self) -> "torch.device":  # noqa: F821
        import torch

        return torch.device("cpu" if self.dry_run else "cuda")


def say(message: str) -> None:
    """A progress line, flushed at once (a run cut off by its limit keeps what it printed)."""
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _run_logged(command: list[str], timeout: float, cwd: Path, env: Optional[dict] = None) -> tuple[int, str]:
    """Run ``command`` in ``cwd`` (never the checkout's root, whose ``softpool3d/`` lacks models and
    datasets: :func:`compose_package`), streaming its output; returns its exit code and the
    output's last 4000 characters."""
    say("$ " + " ".join(command))
    lines: list[str] = []
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd,
                               env=env or os.environ.copy(), start_new_session=True)

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            print(line, end="", flush=True)
            lines.append(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:  # silent or not, with every process it started
        os.killpg(process.pid, signal.SIGKILL)
        code = process.wait()
        lines.append(f"killed after {timeout:.0f} s\n")
    reader.join(timeout=10)
    return code, "".join(lines)[-4000:]


# ---------------------------------------------------------------- steps


def step_environment(context: Context) -> dict:
    import torch

    from softpool3d import extension
    from softpool3d.benchmarks.op import copy_bandwidth

    cores = os.cpu_count() or 1
    result: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None, "cpu_cores": cores,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        result.update(gpu=props.name, capability=f"{props.major}.{props.minor}", memory_gib=props.total_memory / 2**30,
                      multiprocessors=props.multi_processor_count)
        smi = shutil.which("nvidia-smi")
        if smi:
            done = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                                  text=True, timeout=30)
            result["driver"] = done.stdout.strip() or None
    elif not context.dry_run:
        raise RuntimeError("torch sees no CUDA device")
    say(f"environment: {result}")
    os.environ["MAX_JOBS"] = str(cores)  # ninja builds the extension's sources in parallel
    with_cuda = torch.cuda.is_available()
    started = time.perf_counter()
    module = extension.build(with_cuda, verbose=False)
    result["extension_build_s"] = time.perf_counter() - started
    result["extension"] = f"{Path(module.__file__).name} ({'CPU + CUDA' if with_cuda else 'CPU'}, MAX_JOBS={cores})"
    say(f"extension built or loaded in {result['extension_build_s']:.1f} s: {result['extension']}")
    result["copy_bandwidth_gbs"] = copy_bandwidth(context.device, 16 if context.dry_run else 1024)
    say(f"device-to-device copy: {result['copy_bandwidth_gbs']:.0f} GB/s")
    return result


def step_pytest_cuda(context: Context) -> dict:
    report = context.work / "pytest_cuda.xml"
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
               f"--rootdir={REPO}", f"--junitxml={report}", str(REPO / "tests" / "op"),
               str(REPO / "tests" / "engine" / "test_cuda_paths.py")]
    code, tail = _run_logged(command, 3600, context.work)
    counts = {}
    if report.is_file():
        head = report.read_text()[:2000]
        for key in ("tests", "failures", "errors", "skipped"):
            found = re.search(rf'{key}="(\d+)"', head)
            counts[key] = int(found.group(1)) if found else None
    result = {"exit_code": code, **counts, "summary": tail.strip().splitlines()[-1] if tail.strip() else ""}
    if code not in (0, 5) or (not context.dry_run and not counts.get("tests")):
        raise RuntimeError(f"pytest -m cuda failed: {result['summary']}")
    return result


def find_sanitizer() -> Optional[str]:
    """compute-sanitizer: on the PATH, else under the CUDA toolkit (``CUDA_HOME``, torch's guess,
    ``/usr/local/cuda*``) or an Nsight install under ``/opt/nvidia``."""
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    try:
        from torch.utils.cpp_extension import CUDA_HOME

        homes.append(CUDA_HOME)
    except ImportError:
        pass
    patterns = [f"{home}/bin/compute-sanitizer" for home in homes if home]
    patterns += [f"{home}/compute-sanitizer/compute-sanitizer" for home in homes if home]
    patterns += ["/usr/local/cuda*/bin/compute-sanitizer", "/usr/local/cuda*/compute-sanitizer/compute-sanitizer",
                 "/opt/nvidia/*/compute-sanitizer*", "/opt/nvidia/**/compute-sanitizer"]
    for pattern in patterns:
        for path in sorted(glob.glob(pattern, recursive=True)):
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path
    return None


def step_sanitizer(context: Context) -> dict:
    cases = [sys.executable, "-m", "softpool3d.benchmarks.sanitizer_cases", "--device", context.device.type]
    sanitizer = find_sanitizer()
    result: dict[str, Any] = {"compute_sanitizer": sanitizer}
    if context.dry_run:
        code, tail = _run_logged(cases, 600, context.work)
        result["cases_on_cpu"] = "ran" if code == 0 else f"failed ({code})"
        if code:
            raise RuntimeError(f"the sanitizer cases fail on the CPU:\n{tail}")
        say(f"compute-sanitizer {'found at ' + sanitizer if sanitizer else 'not found here (the GPU image has it)'}")
        return result
    if sanitizer is None:
        raise RuntimeError("compute-sanitizer not found on the PATH or under the CUDA toolkit")
    for tool in ("memcheck", "racecheck"):
        code, tail = _run_logged([sanitizer, "--tool", tool, "--error-exitcode", "3", *cases], 3600, context.work)
        summary = re.findall(r"ERROR SUMMARY: .*|RACECHECK SUMMARY: .*", tail)
        result[tool] = {"exit_code": code, "summary": summary[-1] if summary else tail.strip().splitlines()[-1:]}
        if code:
            raise RuntimeError(f"compute-sanitizer --tool {tool} found errors (exit {code}): {result[tool]['summary']}")
    return result


def step_bench_op(context: Context) -> dict:
    from softpool3d.benchmarks import op

    bandwidth = context.earlier.get("environment", {}).get("copy_bandwidth_gbs")
    shapes = [((1, 4, 4, 8, 8), {"kernel_size": 2, "stride": 2}),
              ((1, 4, 4, 8, 8), {"kernel_size": (4, 8, 8)})] if context.dry_run else op.SHAPES
    results = op.benchmark(context.device, repeats=1 if context.dry_run else 5, shapes=shapes)
    table = op.markdown(results, bandwidth)
    print(table, flush=True)
    rows = [{**dataclasses.asdict(r), "forward_gbs": r.forward_gbs, "train_gbs": r.train_gbs} for r in results]
    return {"bandwidth_gbs": bandwidth, "rows": rows, "markdown": table}


TRAIN_CASES = {  # model -> (clip (T, H, W), batch per GPU), the recipes' clips and batch
    "x3d_s": ((13, 160, 160), 16),
    "r3d_18": ((16, 112, 112), 16),
}


def _train_step_timing(name: str, pool: str, compiled: bool, context: Context) -> dict:
    import torch

    from softpool3d.models import build_model

    device, dry = context.device, context.dry_run
    clip, batch = ((4, 32, 32), 2) if dry else TRAIN_CASES[name]
    steps = 1 if dry else 10
    torch.manual_seed(0)
    model = build_model(name, 400, pool=pool, **({"width": 4} if dry and name == "r3d_18" else {}))
    model = model.to(device, memory_format=torch.channels_last_3d).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    # inductor's CPU code generation takes minutes on a small CPU; the dry run traces (dynamo, AOT
    # autograd, the op's fake kernels) without it
    forward = torch.compile(model, backend="aot_eager" if dry else "inductor") if compiled else model
    clips = torch.randn(batch, 3, *clip, device=device).contiguous(memory_format=torch.channels_last_3d)
    labels = torch.randint(0, 400, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(forward(clips).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    started = time.perf_counter()
    step()  # warm-up: cuDNN autotuning, compilation
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    warmup = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {"model": name, "pool": pool, "mode": "compile" if compiled else "eager", "clip": list(clip),
            "batch": batch, "clips_per_s": batch * steps / seconds, "peak_gib": peak, "warmup_s": warmup}


def step_train_steps(context: Context) -> dict:
    import torch

    torch.backends.cudnn.benchmark = True
    rows = []
    partial = context.work / "train_steps.partial.json"
    plan = [(name, pool, False) for name in TRAIN_CASES for pool in ("soft", "max", "avg")]
    # compiling takes tens of seconds a case: the soft/max comparison first, should the cap cut the rest
    plan += [(name, pool, True) for pools in (("soft", "max"), ("avg",)) for name in TRAIN_CASES for pool in pools]
    if context.dry_run:  # every model and pool once, and one compiled case (the code paths, not the figures)
        plan = [("x3d_s", "soft", False), *((("r3d_18", pool, False) for pool in ("soft", "max", "avg"))),
                ("r3d_18", "soft", True)]
    for name, pool, compiled in plan:
        row = _train_step_timing(name, pool, compiled, context)
        rows.append(row)
        partial.write_text(json.dumps({"rows": rows}))
        say(f"train step {name} pool={pool} {row['mode']}: {row['clips_per_s']:.1f} clips/s, peak "
            f"{row['peak_gib'] if row['peak_gib'] is None else round(row['peak_gib'], 2)} GiB "
            f"(warm-up {row['warmup_s']:.1f} s)")
        if context.device.type == "cuda":
            torch.cuda.empty_cache()
    return {"rows": rows}


def step_loader(context: Context) -> dict:
    import torch

    from softpool3d.datasets import Annotations, ClipDataset, OpenVideo
    from softpool3d.engine.sampler import ResumableDistributedSampler
    from softpool3d.engine.loaders import EpochIndexed, run_loader

    videos = sorted(context.videos.rglob("*.mp4"))
    if not videos:
        raise FileNotFoundError(f"no videos in {context.videos}: run tools/gpu_wheels.sh here, and carry .gpu_data")
    opened = [OpenVideo(path) for path in videos]
    decord_read = sum(video._reader is not None for video in opened)
    workers, batch, batches = (2, 2, 3) if context.dry_run else (14, 16, 30)
    clip, rate, crop, scale = (13, 6, 160, (182, 228))  # x3d_s's recipe clip
    annotations = Annotations([str(path) for path in videos] * 64, [0] * len(videos) * 64, ["clip"])
    dataset = ClipDataset(annotations, train=True, num_frames=clip, sampling_rate=rate, crop_size=crop,
                          train_scale=scale)
    sampler = ResumableDistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=0, drop_last=True)
    loader = run_loader(EpochIndexed(dataset), sampler, batch, workers, context.device, drop_last=True)
    iterator = iter(loader)
    next(iterator)  # workers started, first batch decoded
    started = time.perf_counter()
    for _ in range(batches):
        clips, _, _ = next(iterator)
        clips = clips.to(context.device, non_blocking=True)
    seconds = time.perf_counter() - started
    loader_rate = batches * batch / seconds
    model_rows = context.earlier.get("train_steps", {}).get("rows", [])
    model_rate = max((row["clips_per_s"] for row in model_rows if row["model"] == "x3d_s" and row["pool"] == "soft"),
                     default=None)
    idle = None if model_rate is None else max(0.0, 1.0 - loader_rate / model_rate)
    result = {"videos": len(videos), "decord_opened": decord_read, "workers": workers, "batch": batch,
              "clip": f"{clip} frames every {rate}, {crop} crop, short side {list(scale)}",
              "loader_clips_per_s": loader_rate, "x3d_s_soft_clips_per_s": model_rate, "gpu_idle_fraction": idle}
    say(f"loader: {loader_rate:.1f} clips/s with {workers} workers against the model's "
        f"{model_rate if model_rate is None else round(model_rate, 1)}: GPU idle fraction {idle}")
    if decord_read < len(videos):
        raise RuntimeError(f"decord opened {decord_read} of {len(videos)} videos: the others need PyAV, not carried")
    return result


def _ddp_command(context: Context, processes: int, run_dir: Path) -> list[str]:
    dry = context.dry_run
    overrides = [
        f"output_dir={run_dir}", "name=ddp", "data.dataset=custom", f"data.root={context.videos}",
        "data.make_demo=false", "data.val_fraction=0.25", "data.num_frames=8", "data.sampling_rate=2",
        "data.crop_size=64" if dry else "data.crop_size=112", "data.train_scale=[64,80]" if dry else "data.train_scale=[128,160]",
        "data.test_scale=64" if dry else "data.test_scale=128", "data.batch_size=2", "data.test_batch_size=2",
        "data.num_workers=2", "model.name=r3d_18", "model.width=8", "train.epochs=1", "train.limit_steps_per_epoch=2",
        "train.val_every=1", "train.test_after_train=false", "train.channels_last=true",
        # CPU bf16 autocast sends this small model's gradients to inf on these clips; a non-finite
        # step on the GPU is counted (skipped_steps in the result), not fatal
        "train.amp=none" if dry else "train.amp=auto", "train.nonfinite=skip", "train.max_consecutive_skips=5",
        f"train.device={'cpu' if dry else 'cuda'}", "train.num_threads=1" if dry else "train.num_threads=0",
    ]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
            str(REPO / "tools" / "train.py"), "demo", *overrides]


def step_ddp(context: Context) -> dict:
    result = {}
    for processes in (1, 2):
        run_dir = context.work / f"ddp_{processes}"
        shutil.rmtree(run_dir, ignore_errors=True)
        timeout = 3600 if processes == 1 or context.dry_run else 40  # 2 ranks on one GPU may hang in NCCL
        code, tail = _run_logged(_ddp_command(context, processes, run_dir), timeout, context.work)
        metrics = run_dir / "ddp" / "metrics.json"
        entry: dict[str, Any] = {"exit_code": code}
        if code == 0 and metrics.is_file():
            entry.update(json.loads(metrics.read_text()))
        elif processes == 1 or context.dry_run:
            raise RuntimeError(f"softpool3d-train under torchrun --nproc-per-node={processes} failed:\n{tail[-1500:]}")
        else:  # two ranks on one GPU: NCCL may refuse ("Duplicate GPU detected")
            reason = re.findall(r"Duplicate GPU detected[^\n]*|ncclInvalidUsage[^\n]*|Error[^\n]*", tail)
            entry["not_possible"] = reason[0][:300] if reason else tail.strip().splitlines()[-1][:300]
        result[f"ranks_{processes}"] = entry
        (context.work / "ddp.partial.json").write_text(json.dumps(result))
        say(f"DDP with {processes} rank(s): {entry}")
    return result


def step_authors_kernel(context: Context) -> dict:
    if context.authors_kernel is None or not (context.authors_kernel / "CUDA" / "softpool_cuda.cpp").is_file():
        say("authors' kernel: --authors-kernel names no folder with CUDA/softpool_cuda.cpp: skipped")
        return {"skipped": "no --authors-kernel folder"}
    if context.dry_run:
        say(f"authors' kernel found at {context.authors_kernel}: it builds and runs on a GPU only")
        return {"found": str(context.authors_kernel)}
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

    shapes = [(shape, args) for shape, args in op.SHAPES if not args.get("padding")]  # they take no padding
    methods = {"softpool3d": op.METHODS["softpool3d"], "authors' kernel": authors, "avg_pool3d": op.METHODS["avg_pool3d"]}
    rows = []
    for shape, args in shapes:
        x = torch.randn(shape, device="cuda", requires_grad=True)
        grad = torch.ones_like(torch.nn.functional.avg_pool3d(x.detach(), **args))
        for name, pool in methods.items():
            op._run(pool, x, grad, args)
            forward, train = [], []
            for _ in range(5):
                for inp, g, times in ((x.detach(), None, forward), (x, grad, train)):
                    torch.cuda.synchronize()
                    begun = time.perf_counter()
                    op._run(pool, inp, g, args)
                    torch.cuda.synchronize()
                    times.append(time.perf_counter() - begun)
            rows.append({"shape": list(shape), "args": args, "method": name, "forward_ms": min(forward) * 1e3,
                         "train_ms": min(train) * 1e3})
            say(f"{shape} {args} {name}: fwd {rows[-1]['forward_ms']:.3f} ms, fwd+bwd {rows[-1]['train_ms']:.3f} ms")
    return {"build_s": build_s, "rows": rows}


STEPS = [
    Step("environment", "Environment and extension build", 180, step_environment),
    Step("pytest_cuda", "pytest -m cuda", 55, step_pytest_cuda),
    Step("sanitizer", "compute-sanitizer memcheck + racecheck", 70, step_sanitizer),
    Step("bench_op", "SoftPool op vs avg/max pooling and the 5-op formula", 30, step_bench_op),
    Step("train_steps", "Training steps, bf16, channels_last_3d", 60, step_train_steps),
    Step("loader", "Loader starvation (14 workers)", 25, step_loader),
    Step("ddp", "DDP over NCCL under torchrun", 45, step_ddp),
    Step("authors_kernel", "The SoftPool authors' CUDA kernel (speed only)", 15, step_authors_kernel),
]
"""The steps in order, with their caps on a GPU (480 s together): a step that ends early leaves its
time to the next ones (:func:`step_cap`)."""
STEP_NAMES = [step.name for step in STEPS]
DRY_RUN_CAP_S = 600  # per step on a shared 2-core CPU


# ---------------------------------------------------------------- carried packages


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
                say("WARNING: Python 3.12's pip could not resolve the requirements (registry out of reach?): "
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


def prepare_site(wheels: Path, site: Path, dry_run: bool) -> None:
    """Install the carried wheels into ``site`` (``pip --no-index --no-deps --target``) and put the
    PyAV placeholder there when PyAV is absent (always in the dry run, which then sees the GPU
    machine's imports). Here, in the dry run, only the pure-Python wheels install (the machine's
    Python is not 3.12); the 3.12 check covers the others."""
    site.mkdir(parents=True, exist_ok=True)
    files = sorted(wheels.glob("*.whl"))
    if dry_run:
        files = [path for path in files if path.name.endswith("-none-any.whl")]
    if files:
        command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                   "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, files)]
        code, tail = _run_logged(command, 300, site)
        if code:
            raise RuntimeError(f"installing the carried wheels failed:\n{tail}")
    elif not dry_run:
        say(f"WARNING: no wheels in {wheels}; relying on what this machine has")
    has_av = subprocess.run([sys.executable, "-c", "import av"], capture_output=True).returncode == 0
    if dry_run or not has_av:
        (site / "av").mkdir(exist_ok=True)
        (site / "av" / "__init__.py").write_text(AV_PLACEHOLDER)
    compose_package(site)


def compose_package(site: Path) -> None:
    """``softpool3d`` laid out as setup.cfg's ``package_dir`` installs it (``models/``, ``datasets/``
    and ``configs/`` inside it), made of symbolic links into the checkout, in ``site``: the GPU
    machine imports the checkout with no install (no build backend runs there), and the dry run
    imports it the same way. Every module resolves its ``__file__`` into the checkout."""
    package = site / "softpool3d"
    shutil.rmtree(package, ignore_errors=True)
    package.mkdir(parents=True)
    for entry in (REPO / "softpool3d").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for name in ("models", "datasets", "configs"):
        (package / name).symlink_to(REPO / name)


# ---------------------------------------------------------------- orchestration


def _gib(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown_report(results: dict, command: str) -> str:
    """``gpu_check.md``: the environment, then each step's status and table."""
    lines = [f"# GPU check ({'dry run, CPU' if results.get('dry_run') else 'GPU'})", "", f"Command: `{command}`", ""]
    for step in STEPS:
        entry = results["steps"].get(step.name)
        if entry is None:
            continue
        lines += [f"## {step.title} (`{step.name}`): {entry['status']} in {entry['seconds']:.0f} s", ""]
        if entry.get("error"):
            lines += ["```", entry["error"][-1500:], "```", ""]
        data = entry.get("result") or {}
        if step.name == "bench_op" and data.get("markdown"):
            lines += [data["markdown"], ""]
        elif step.name == "train_steps" and data.get("rows"):
            lines += ["| model | pool | mode | clip | batch | clips/s | peak GiB |", "|---|---|---|---|---|---|---|"]
            lines += [f"| {r['model']} | {r['pool']} | {r['mode']} | {'x'.join(map(str, r['clip']))} | {r['batch']} | "
                      f"{r['clips_per_s']:.1f} | {_gib(r['peak_gib'])} |" for r in data["rows"]]
            lines.append("")
        elif data:
            lines += ["```json", json.dumps({k: v for k, v in data.items() if k != "markdown"}, indent=1,
                                            default=str)[:3000], "```", ""]
    return "\n".join(lines)


def step_cap(step: Step, later: list[Step], left: float) -> float:
    """Seconds for ``step`` with ``left`` of the budget: its own cap, plus what the steps before it
    left unused beyond the caps of the ``later`` ones; never more than ``left``."""
    return min(left, max(step.cap_s, left - sum(other.cap_s for other in later)))


def _write_results(out: Path, results: dict, command: str) -> None:
    for name, text in ((RESULTS, json.dumps(results, indent=1, default=str)), (REPORT, markdown_report(results, command))):
        temporary = out / f".{name}.tmp"
        temporary.write_text(text)
        os.replace(temporary, out / name)


def _run_step_process(step: Step, args: argparse.Namespace, work: Path, env: dict, cap: float) -> tuple[str, dict]:
    """Run ``step`` in a child process capped at ``cap`` seconds; returns its status and entry."""
    command = [sys.executable, "-m", "softpool3d.benchmarks.gpu_check", "--step", step.name, "--work", str(work),
               "--out", str(args.out), "--videos", str(args.videos)]
    command += ["--dry-run"] if args.dry_run else []
    command += ["--authors-kernel", str(args.authors_kernel)] if args.authors_kernel else []
    started = time.monotonic()
    process = subprocess.Popen(command, env=env, cwd=work, start_new_session=True)
    try:
        code: Optional[int] = process.wait(timeout=cap)
    except subprocess.TimeoutExpired:  # the whole process group: pytest, torchrun and their children too
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        code = None
    seconds = time.monotonic() - started
    produced = work / f"{step.name}.json"
    entry = json.loads(produced.read_text()) if produced.is_file() else {}
    entry["seconds"] = seconds
    if code is None:
        entry["status"] = f"timed out at its {cap:.0f} s cap"
        partial = work / f"{step.name}.partial.json"
        if partial.is_file():  # what the step measured before its cap
            entry["result"] = {**json.loads(partial.read_text()), "partial": True}
    elif code != 0 and "status" not in entry:
        entry["status"], entry["error"] = "failed", f"the step's process exited with {code}"
    return entry["status"], entry


def orchestrate(args: argparse.Namespace) -> int:
    for name in ("out", "wheels", "videos", "authors_kernel"):  # the steps run in the work folder
        if getattr(args, name):
            setattr(args, name, str(Path(getattr(args, name)).resolve()))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu_check_")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python tools/gpu_check.py", *sys.argv[1:]])
    results: dict[str, Any] = {"dry_run": args.dry_run, "command": command, "steps": {}}
    began = time.monotonic()
    say(f"{'dry run on the CPU' if args.dry_run else 'GPU run'}; results in {out}, work folder {work}")
    if args.dry_run and not args.skip_wheel_check:
        say("checking the carried wheels against Python 3.12")
        try:
            results["wheels"] = check_wheels(Path(args.wheels), args.python312 or find_python312(), args.allow_offline)
            say(f"wheels: {results['wheels']}")
        except Exception as error:  # reported and failed below, after the steps ran
            results["wheels"] = {"status": "failed", "error": str(error)}
            say(f"FAILED wheel check: {error}")
    site = work / "site"
    prepare_site(Path(args.wheels), site, args.dry_run)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1", "MAX_JOBS": str(os.cpu_count() or 1)}
    probe = "import softpool3d.models as m, softpool3d.engine.cli; print(m.__file__)"
    imported = subprocess.run([sys.executable, "-c", probe], env=env, cwd=work, capture_output=True, text=True)
    if imported.returncode:
        raise RuntimeError(f"the checkout does not import through {site}:\n{imported.stderr[-1500:]}")
    say(f"softpool3d.models from {imported.stdout.strip()}")
    chosen = args.steps.split(",") if args.steps else STEP_NAMES
    for index, step in enumerate(STEPS):
        if step.name not in chosen:
            continue
        later = [other for other in STEPS[index + 1 :] if other.name in chosen]
        left = args.budget_s - (time.monotonic() - began)
        cap = DRY_RUN_CAP_S if args.dry_run else step_cap(step, later, left)
        if cap < 5:
            results["steps"][step.name] = {"status": "skipped: the time budget is spent", "seconds": 0.0}
            say(f"== {step.name}: skipped, the {args.budget_s} s budget is spent")
            continue
        say(f"== {step.name}: {step.title} (cap {cap:.0f} s)")
        (work / "earlier.json").write_text(json.dumps({k: v.get("result") for k, v in results["steps"].items()},
                                                      default=str))
        status, entry = _run_step_process(step, args, work, env, cap)
        results["steps"][step.name] = entry
        _write_results(out, results, command)
        say(f"== {step.name}: {status} in {entry['seconds']:.1f} s")
    results["total_s"] = time.monotonic() - began
    _write_results(out, results, command)
    failed = [name for name, entry in results["steps"].items() if entry["status"] != "ok"]
    if isinstance(results.get("wheels"), dict) and results["wheels"].get("status") == "failed":
        failed.append("wheel check")
    say(f"done in {results['total_s']:.0f} s; {out / RESULTS}, {out / REPORT}; "
        + (f"NOT OK: {', '.join(failed)}" if failed else "every step ok"))
    return 1 if failed else 0


def run_one_step(args: argparse.Namespace) -> int:
    """The child side: run ``--step`` and write ``<work>/<step>.json``."""
    work = Path(args.work)
    earlier_file = work / "earlier.json"
    context = Context(args.dry_run, Path(args.out), work, Path(args.videos),
                      Path(args.authors_kernel).resolve() if args.authors_kernel else None,
                      json.loads(earlier_file.read_text()) if earlier_file.is_file() else {})
    step = next(step for step in STEPS if step.name == args.step)
    entry: dict[str, Any]
    try:
        entry = {"status": "ok", "result": step.run(context)}
    except Exception as error:  # recorded as the step's failure; the next step still runs
        import traceback

        traceback.print_exc()
        entry = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
    (work / f"{step.name}.json").write_text(json.dumps(entry, default=str))
    return 0 if entry["status"] == "ok" else 1


def make_videos(folder: Path, frames: int = 96, height: int = 240, width: int = 320) -> list[Path]:
    """The carried videos: 4 training and 2 validation H.264 videos per class of 2 classes, by
    default 96 frames of 320x240 at 25 fps with a keyframe every 32 (the recipes' prepared copies
    of UCF-101), in the custom-dataset layout ``<split>/<class>/*.mp4``. x3d_s's clip spans 78 frames."""
    from softpool3d.benchmarks.loader import write_videos

    shutil.rmtree(folder, ignore_errors=True)
    paths = []
    for split, count in (("train", 8), ("val", 4)):
        paths += write_videos(folder / split, count, frames=frames, height=height, width=width, gop=32)
    return paths


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="folder for gpu_check.json, gpu_check.md and gpu_check.log")
    parser.add_argument("--dry-run", action="store_true", help="every step on the CPU with tiny shapes, plus the "
                        "wheel check against Python 3.12")
    parser.add_argument("--steps", help=f"comma-separated subset, in the fixed order ({','.join(STEP_NAMES)})")
    parser.add_argument("--budget-s", type=float, default=TOTAL_BUDGET_S, help="total seconds for the GPU run")
    parser.add_argument("--wheels", default=str(DEFAULT_WHEELS), help="the carried wheels (tools/gpu_wheels.sh)")
    parser.add_argument("--videos", default=str(DEFAULT_VIDEOS), help="the carried videos (tools/gpu_wheels.sh)")
    parser.add_argument("--authors-kernel", help="the SoftPool authors' pytorch/ folder (never committed); "
                        "the step skips without it")
    parser.add_argument("--python312", help="the Python 3.12 of the dry run's wheel check (default: found)")
    parser.add_argument("--allow-offline", action="store_true",
                        help="dry run: only warn when the registry is out of reach for the 3.12 resolution")
    parser.add_argument("--skip-wheel-check", action="store_true", help="dry run: leave the wheel check out (no .whl here)")
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--step", choices=STEP_NAMES, help=argparse.SUPPRESS)
    parser.add_argument("--make-videos", metavar="DIR", help="write the carried videos into DIR and exit (needs PyAV)")
    args = parser.parse_args(argv)
    if args.make_videos:
        paths = make_videos(Path(args.make_videos))
        say(f"{len(paths)} videos in {args.make_videos}")
        return 0
    if args.step:
        return run_one_step(args)
    if not args.out:
        parser.error("--out DIR is required")
    unknown = set(args.steps.split(",")) - set(STEP_NAMES) if args.steps else set()
    if unknown:
        parser.error(f"--steps: unknown {sorted(unknown)}; the steps are {','.join(STEP_NAMES)}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with _Tee(Path(args.out) / LOG):
        return orchestrate(args)


class _Tee:
    """Copies this process's and its children's output into a log file as well as the terminal."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> "_Tee":
        self.reader, writer = os.pipe()
        self.saved = os.dup(1), os.dup(2)
        self.copier = subprocess.Popen(["tee", str(self.path)], stdin=self.reader, stdout=self.saved[0])
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(writer, 1)
        os.dup2(writer, 2)
        os.close(writer)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self.saved[0], 1)
        os.dup2(self.saved[1], 2)
        os.close(self.reader)
        self.copier.wait()


if __name__ == "__main__":
    sys.exit(main())
