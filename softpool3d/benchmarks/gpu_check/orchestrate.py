"""The GPU check's order and its one command: the steps in order, each in a process group of its own
under its cap (:mod:`.processes`), their results written after every step, and the child side that
runs one step.

The checkout's ``tools/gpu_deploy/`` prepares what the GPU machine lacks (the carried wheels in a
site folder of their own, a PyAV placeholder, ``softpool3d`` laid out as setup.cfg installs it); it
is run by path, as the steps run ``tests/`` and ``tools/train.py``: the check runs from a checkout.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from softpool3d.benchmarks.gpu_check.context import REPO, Context, NotOk, Skipped, Step
from softpool3d.benchmarks.gpu_check.kernel_steps import (step_authors_kernel, step_bench_op, step_environment,
                                                          step_pytest_cuda, step_sanitizer)
from softpool3d.benchmarks.gpu_check.processes import Interrupted, Tee, interrupt_on_signals, run_group, say
from softpool3d.benchmarks.gpu_check.report import LOG, REPORT, RESULTS, write_results
from softpool3d.benchmarks.gpu_check.training_steps import (DECODE_MODEL, step_ddp, step_loader, step_shard_decode,
                                                            step_train_steps)

if TYPE_CHECKING:
    from softpool3d.datasets.prepare import PrepareSummary

DEPLOY = REPO / "tools" / "gpu_deploy"
DEFAULT_WHEELS = REPO / ".whl"
DEFAULT_VIDEOS = REPO / ".gpu_data" / "videos"
DEFAULT_SHARDS = REPO / ".gpu_data" / "shards"
TOTAL_BUDGET_S = 480
DRY_RUN_CAP_S = 600  # per step on a shared 2-core CPU

STEPS = [
    Step("environment", "Preflight, environment and the extension's builds", 125, step_environment),
    Step("bench_op", "SoftPool op vs avg/max pooling and the 5-op formula", 40, step_bench_op),
    Step("pytest_cuda", "pytest -m cuda", 60, step_pytest_cuda),
    Step("train_steps", "Training steps, bf16, channels_last_3d", 75, step_train_steps),
    Step("sanitizer", "compute-sanitizer memcheck + initcheck", 60, step_sanitizer),
    Step("loader", "Loader starvation (14 workers)", 20, step_loader),
    Step("shard_decode", "Frame shards decoded on the GPU vs x3d_s's training step", 30, step_shard_decode),
    Step("ddp", "DDP over NCCL under torchrun", 45, step_ddp),
    Step("authors_kernel", "The SoftPool authors' CUDA kernel (speed only)", 25, step_authors_kernel),
]
"""The steps in order (the headline figures right after the build), with their caps on a GPU
(480 s together): a step that ends early leaves its time to the next ones (:func:`step_cap`)."""
STEP_NAMES = [step.name for step in STEPS]


def step_cap(step: Step, later: list[Step], left: float) -> float:
    """Seconds for ``step`` with ``left`` of the budget: its own cap, plus what the steps before it
    left unused beyond the caps of the ``later`` ones; never more than ``left``."""
    return min(left, max(step.cap_s, left - sum(other.cap_s for other in later)))


def pin_cuda_architectures(env: dict) -> Optional[str]:
    """``TORCH_CUDA_ARCH_LIST`` for every step: as given, else the GPU's compute capability from
    ``nvidia-smi`` (no CUDA context here), so that every step builds and loads the one build."""
    if env.get("TORCH_CUDA_ARCH_LIST"):
        return env["TORCH_CUDA_ARCH_LIST"]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    done = subprocess.run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True, text=True,
                          timeout=30)
    capabilities = sorted(set(done.stdout.split())) if done.returncode == 0 else []
    if capabilities:
        env["TORCH_CUDA_ARCH_LIST"] = ";".join(capabilities)
    return env.get("TORCH_CUDA_ARCH_LIST")


def _step_command(step: Step, args: argparse.Namespace, work: Path, deadline: float) -> list[str]:
    command = [sys.executable, "-m", "softpool3d.benchmarks.gpu_check", "--step", step.name, "--work", str(work),
               "--out", str(args.out), "--videos", str(args.videos), "--shards", str(args.shards),
               "--deadline", f"{deadline:.3f}"]
    command += ["--dry-run"] if args.dry_run else []
    return command + (["--authors-kernel", str(args.authors_kernel)] if args.authors_kernel else [])


def _entry(step: Step, work: Path, code: Optional[int], seconds: float, cap: float) -> dict:
    """The step's results as its process wrote them, or what its cap left (its partial results)."""
    produced = work / f"{step.name}.json"
    entry = json.loads(produced.read_text()) if produced.is_file() else {}
    entry["seconds"] = seconds
    if code is None:
        entry["status"] = f"NOT OK: killed at its {cap:.0f} s cap"
    elif "status" not in entry:
        entry["status"], entry["error"] = "failed", f"the step's process exited with {code}"
    partial = work / f"{step.name}.partial.json"
    if "result" not in entry and partial.is_file():  # what the step measured before it ended
        entry["result"] = {**json.loads(partial.read_text()), "partial": True}
    return entry


def _prepare_site(args: argparse.Namespace, work: Path, results: dict) -> dict:
    """Runs ``tools/gpu_deploy`` (the wheel check in a dry run, then the site folder) and returns
    the steps' environment, whose ``PYTHONPATH`` starts with the site."""
    if args.dry_run and not args.skip_wheel_check:
        say("checking the carried wheels against Python 3.12")
        report = work / "wheels.json"
        command = [sys.executable, str(DEPLOY / "wheels.py"), "--wheels", str(args.wheels), "--json", str(report)]
        command += (["--python312", args.python312] if args.python312 else []) + (
            ["--allow-offline"] if args.allow_offline else [])
        code, tail = run_group(command, 900, work, capture=True)
        results["wheels"] = json.loads(report.read_text()) if report.is_file() else {
            "status": "failed", "error": tail[-1500:]}
        say(f"wheels: {results['wheels']}")
    site = work / "site"
    command = [sys.executable, str(DEPLOY / "site.py"), "--wheels", str(args.wheels), "--site", str(site)]
    code, tail = run_group(command + (["--dry-run"] if args.dry_run else []), 300, work, capture=True)
    if code != 0:
        raise RuntimeError(f"tools/gpu_deploy/site.py failed:\n{tail[-1500:]}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1", "MAX_JOBS": str(os.cpu_count() or 1)}
    probe = "import softpool3d.models as m, softpool3d.engine.cli; print(m.__file__)"
    imported = subprocess.run([sys.executable, "-c", probe], env=env, cwd=work, capture_output=True, text=True)
    if imported.returncode:
        raise RuntimeError(f"the checkout does not import through {site}:\n{imported.stderr[-1500:]}")
    say(f"softpool3d.models from {imported.stdout.strip()}")
    return env


def verdict(results: dict) -> tuple[list[str], list[str]]:
    """The steps (and the wheel check) that are not ok, and those skipped."""
    failed = [name for name, entry in results["steps"].items()
              if entry["status"] != "ok" and not entry["status"].startswith("skipped")]
    if isinstance(results.get("wheels"), dict) and results["wheels"].get("status") == "failed":
        failed.append("wheel check")
    return failed, [name for name, entry in results["steps"].items() if entry["status"].startswith("skipped")]


def orchestrate(args: argparse.Namespace) -> int:
    for name in ("out", "wheels", "videos", "shards", "authors_kernel"):  # the steps run in the work folder
        if getattr(args, name):
            setattr(args, name, str(Path(getattr(args, name)).resolve()))
    out = Path(args.out)
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu_check_")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python tools/gpu_check.py", *sys.argv[1:]])
    results: dict[str, Any] = {"dry_run": args.dry_run, "command": command, "steps": {}}
    began = time.monotonic()
    say(f"{'dry run on the CPU' if args.dry_run else 'GPU run'}; results in {out}, work folder {work}")
    chosen = args.steps.split(",") if args.steps else STEP_NAMES
    running: Optional[tuple[Step, float, float]] = None
    try:
        with interrupt_on_signals():
            env = _prepare_site(args, work, results)
            results["torch_cuda_arch_list"] = None if args.dry_run else pin_cuda_architectures(env)
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
                started = time.monotonic()
                running = (step, started, cap)
                code, _ = run_group(_step_command(step, args, work, time.time() + cap), cap, work, env)
                running = None
                entry = _entry(step, work, code, time.monotonic() - started, cap)
                results["steps"][step.name] = entry
                write_results(out, results, STEPS)
                say(f"== {step.name}: {entry['status']}")
    except Interrupted as interrupted:  # the step's group is dead (run_group); keep what it measured
        if running is not None:
            step, started, cap = running
            entry = _entry(step, work, 0, time.monotonic() - started, cap)
            entry["status"] = f"NOT OK: {interrupted}"
            results["steps"][step.name] = entry
        results["interrupted"] = str(interrupted)
        results["total_s"] = time.monotonic() - began
        write_results(out, results, STEPS)
        say(f"{interrupted}: partial results in {out / RESULTS}")
        return 128 + interrupted.signum
    results["total_s"] = time.monotonic() - began
    write_results(out, results, STEPS)
    failed, skipped = verdict(results)
    say(f"done in {results['total_s']:.0f} s; {out / RESULTS}, {out / REPORT}; "
        + (f"NOT OK: {', '.join(failed)}" if failed else "every step ok")
        + (f" (skipped: {', '.join(skipped)})" if skipped else ""))
    return 1 if failed else 0


def run_one_step(args: argparse.Namespace) -> int:
    """The child side: run ``--step`` and write ``<work>/<step>.json``."""
    work = Path(args.work)
    earlier_file = work / "earlier.json"
    context = Context(args.dry_run, Path(args.out), work, Path(args.videos),
                      Path(args.authors_kernel).resolve() if args.authors_kernel else None,
                      json.loads(earlier_file.read_text()) if earlier_file.is_file() else {}, args.deadline,
                      Path(args.shards))
    step = next(step for step in STEPS if step.name == args.step)
    entry: dict[str, Any]
    try:
        entry = {"status": "ok", "result": step.run(context)}
    except NotOk as error:
        entry = {"status": f"NOT OK: {error}"}
    except Skipped as error:
        entry = {"status": f"skipped: {error}"}
    except Exception as error:  # recorded as the step's failure; the next step still runs
        import traceback

        traceback.print_exc()
        entry = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
    say(f"{step.name}: {entry['status']}")
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


def make_shards(videos: Path, folder: Path) -> PrepareSummary:
    """The carried frame shards of the carried ``videos`` in ``folder``, prepared here: the shard tool
    decodes with PyAV, which the GPU machine lacks. At x3d_s's prepared short side (182), JPEG quality
    90 and every 6th frame only (x3d_s's sampling rate, so its clips stay exact): about 4 MB."""
    from softpool3d.benchmarks.shard_loader import GEOMETRIES
    from softpool3d.datasets.prepare_shards import prepare_shards

    clip = GEOMETRIES[DECODE_MODEL]
    shutil.rmtree(folder, ignore_errors=True)
    summary = prepare_shards(videos, folder, dataset="custom", short_side=clip.short_side,
                             frame_step=clip.sampling_rate, workers=0, progress=False)
    if summary.failed or not summary.converted:
        raise RuntimeError(f"preparing the shards of {videos} failed: {summary.failed or 'no videos'}")
    return summary


def main(argv: Optional[list[str]] = None) -> int:
    from softpool3d.benchmarks.gpu_check import __doc__ as usage

    parser = argparse.ArgumentParser(description=usage, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="folder for gpu_check.json, gpu_check.md and gpu_check.log")
    parser.add_argument("--dry-run", action="store_true", help="every step on the CPU with tiny shapes, plus the "
                        "wheel check against Python 3.12")
    parser.add_argument("--steps", help=f"comma-separated subset, in the fixed order ({','.join(STEP_NAMES)})")
    parser.add_argument("--budget-s", type=float, default=TOTAL_BUDGET_S, help="total seconds for the GPU run")
    parser.add_argument("--wheels", default=str(DEFAULT_WHEELS), help="the carried wheels (tools/gpu_wheels.sh)")
    parser.add_argument("--videos", default=str(DEFAULT_VIDEOS), help="the carried videos (tools/gpu_wheels.sh)")
    parser.add_argument("--shards", default=str(DEFAULT_SHARDS), help="the carried frame shards (tools/gpu_wheels.sh)")
    parser.add_argument("--authors-kernel", help="the SoftPool authors' pytorch/ folder (never committed); "
                        "the step is skipped without it")
    parser.add_argument("--python312", help="the Python 3.12 of the dry run's wheel check (default: found)")
    parser.add_argument("--allow-offline", action="store_true",
                        help="dry run: only warn when the registry is out of reach for the 3.12 resolution")
    parser.add_argument("--skip-wheel-check", action="store_true", help="dry run: leave the wheel check out (no .whl here)")
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--step", choices=STEP_NAMES, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=float("inf"), help=argparse.SUPPRESS)
    parser.add_argument("--make-videos", metavar="DIR", help="write the carried videos into DIR and exit (needs PyAV)")
    parser.add_argument("--make-shards", metavar="DIR", help="write the carried frame shards of --videos into DIR "
                        "and exit (needs PyAV)")
    args = parser.parse_args(argv)
    if args.make_videos:
        paths = make_videos(Path(args.make_videos))
        say(f"{len(paths)} videos in {args.make_videos}")
        return 0
    if args.make_shards:
        summary = make_shards(Path(args.videos), Path(args.make_shards))
        say(f"shards of {args.videos} in {args.make_shards}: {summary.describe()}")
        return 0
    if args.step:
        return run_one_step(args)
    if not args.out:
        parser.error("--out DIR is required")
    unknown = set(args.steps.split(",")) - set(STEP_NAMES) if args.steps else set()
    if unknown:
        parser.error(f"--steps: unknown {sorted(unknown)}; the steps are {','.join(STEP_NAMES)}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with Tee(Path(args.out) / LOG):
        return orchestrate(args)
