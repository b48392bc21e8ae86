"""tools/gpu_check.py, proven on the CPU: whatever ends a step ends every process it started; the
kernel steps refuse to report without the compiled extension; ``pytest -m cuda`` selecting nothing,
or failing, is NOT OK with the failed names kept; an authors'-kernel run without its folder is
skipped, never ok; the dry run passes its steps and writes its reports; the deployment scripts
(tools/gpu_deploy) check the carried wheels and place a PyAV placeholder that refuses every use."""
import dataclasses
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from softpool3d import extension
from softpool3d.benchmarks.device_decode import DecodeVsStep
from softpool3d.benchmarks.gpu_check import kernel_steps, orchestrate, processes, report, training_steps
from softpool3d.benchmarks.gpu_check.context import Context, NotOk, Skipped
from softpool3d.benchmarks.loader import write_videos
from softpool3d.benchmarks.shard_loader import GEOMETRIES
from softpool3d.datasets import ShardSet

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "tools" / "gpu_deploy"


def _deploy_module(name: str):
    spec = importlib.util.spec_from_file_location(f"gpu_deploy_{name}", DEPLOY / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wheel(folder: Path, name: str, requires: list[str]) -> Path:
    path = folder / f"{name}-1.0-py3-none-any.whl"
    metadata = "\n".join(["Metadata-Version: 2.1", f"Name: {name}", "Version: 1.0",
                          *(f"Requires-Dist: {item}" for item in requires)]) + "\n"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}-1.0.dist-info/METADATA", metadata)
        archive.writestr(f"{name}-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{name}-1.0.dist-info/RECORD", "")
    return path


def test_wheel_check_names_a_requirement_neither_carried_nor_in_the_image(tmp_path):
    wheels = _deploy_module("wheels")
    _wheel(tmp_path, "carried", ["numpy>=1", "yacs", "windows-only; sys_platform == 'win32'", "doc; extra == 'docs'"])
    with pytest.raises(RuntimeError, match=r"neither carried nor in the GPU image: \{'carried': \['yacs'\]\}"):
        wheels.check_wheels(tmp_path, None, allow_offline=True)
    _wheel(tmp_path, "yacs", [])
    with pytest.raises(RuntimeError, match="no Python 3.12"):  # the requirements close; the 3.12 check is next
        wheels.check_wheels(tmp_path, None, allow_offline=True)


def test_av_placeholder_imports_and_refuses_every_use(tmp_path):
    site = _deploy_module("site")
    (tmp_path / "wheels").mkdir()
    site.prepare_site(tmp_path / "wheels", tmp_path / "site", dry_run=True)
    assert (tmp_path / "site" / "softpool3d" / "models").resolve() == REPO / "models"  # laid out as installed
    code = ("import av\nassert issubclass(av.error.FFmpegError, Exception)\n"
            "try:\n    av.open('x.mp4')\nexcept ImportError as e:\n    print(e)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path / "site", capture_output=True, text=True,
                          check=True)
    assert "PyAV is not carried" in done.stdout


def test_a_step_gets_its_cap_plus_the_time_earlier_steps_left_unused():
    steps = [orchestrate.Step(name, name, cap, lambda context: {}) for name, cap in (("a", 100), ("b", 50), ("c", 30))]
    assert orchestrate.step_cap(steps[0], steps[1:], 180) == 100  # on schedule
    assert orchestrate.step_cap(steps[1], steps[2:], 130) == 100  # "a" took 50 s: "b" gets them, "c" keeps 30
    assert orchestrate.step_cap(steps[1], steps[2:], 40) == 40  # late: never past the budget
    assert sum(step.cap_s for step in orchestrate.STEPS) <= orchestrate.TOTAL_BUDGET_S
    assert orchestrate.STEP_NAMES[:2] == ["environment", "bench_op"]  # the headline table right after the build


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _gone(pids: list[int], patience_s: float = 5.0) -> bool:
    deadline = time.monotonic() + patience_s
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not any(_alive(pid) for pid in pids)


# a step that starts a child in its own group and a grandchild that leaves for a session of its own
# (as pytest, torchrun and compute-sanitizer children may), then hangs
ESCAPING_STEP = """
import subprocess, sys, time
child = subprocess.Popen(["sleep", "300"])
grandchild = subprocess.Popen([sys.executable, "-c",
    "import subprocess, time; p = subprocess.Popen(['sleep', '300'], start_new_session=True); "
    "print(p.pid, flush=True); time.sleep(300)"], stdout=subprocess.PIPE, text=True, start_new_session=True)
with open(sys.argv[1], "w") as pids:
    print("pids", child.pid, grandchild.pid, grandchild.stdout.readline().strip(), file=pids, flush=True)
time.sleep(300)
"""


def _escaping_step(folder: Path) -> tuple[list[str], Path]:
    """The command of :data:`ESCAPING_STEP` and the file it writes its children's pids to."""
    (folder / "step.py").write_text(ESCAPING_STEP)
    return [sys.executable, str(folder / "step.py"), str(folder / "pids")], folder / "pids"


def _started_pids(path: Path) -> list[int]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if "pids" in text:
            return [int(value) for value in text.split("pids")[1].split()[:3]]
        time.sleep(0.05)
    raise AssertionError(f"the step never started its children: {text!r}")


def test_a_step_killed_at_its_cap_leaves_no_process_behind(tmp_path):
    command, log = _escaping_step(tmp_path)
    code, tail = processes.run_group(["bash", "-c", " ".join(command)], 3, tmp_path, capture=True)
    assert code is None and "killed after 3 s" in tail
    pids = _started_pids(log)
    assert _gone(pids), [pid for pid in pids if _alive(pid)]  # the child, the grandchild and its escaped child


def test_sigterm_kills_the_running_step_and_every_process_it_started(tmp_path):
    command, log = _escaping_step(tmp_path)
    threading.Thread(target=lambda: (_started_pids(log), os.kill(os.getpid(), signal.SIGTERM)), daemon=True).start()
    with processes.interrupt_on_signals():
        with pytest.raises(processes.Interrupted, match="SIGTERM"):
            processes.run_group(command, 60, tmp_path)
    pids = _started_pids(log)
    assert _gone(pids), [pid for pid in pids if _alive(pid)]


def test_a_killed_check_takes_its_step_along(tmp_path):
    """SIGKILL of the check (the device's kill at its command limit, which no handler sees): the
    step's process dies with it (PR_SET_PDEATHSIG)."""
    script = (f"from softpool3d.benchmarks.gpu_check import processes\n"
              f"processes.run_group(['bash', '-c', 'echo $$ > {tmp_path / 'pid'}; sleep 300'], 300, '.')\n")
    check = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    while not (tmp_path / "pid").exists() or not (tmp_path / "pid").read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    step = int((tmp_path / "pid").read_text())
    check.kill()
    check.wait()
    assert _gone([step])


def _context(tmp_path: Path, dry_run: bool = True, authors_kernel=None) -> Context:
    return Context(dry_run, tmp_path, tmp_path, tmp_path, authors_kernel, {}, time.time() + 120)


@pytest.fixture
def no_extension(monkeypatch):
    monkeypatch.setenv("SOFTPOOL3D_DISABLE_EXTENSION", "1")
    extension.load.cache_clear()
    yield
    extension.load.cache_clear()


@pytest.mark.parametrize("step", [kernel_steps.step_bench_op, kernel_steps.step_pytest_cuda,
                                  kernel_steps.step_sanitizer, training_steps.step_train_steps,
                                  training_steps.step_ddp, training_steps.step_shard_decode,
                                  kernel_steps.step_environment])
def test_kernel_steps_refuse_to_report_without_the_compiled_extension(tmp_path, no_extension, step):
    with pytest.raises(NotOk, match="no compiled extension"):
        step(_context(tmp_path))


def test_a_failed_build_is_no_compiled_extension_not_a_fallback_figure(tmp_path, monkeypatch):
    """The build fails (no compiler): the op would fall back with a warning; the steps refuse."""
    def failing_build(with_cuda, verbose=False):
        raise OSError("no compiler")

    monkeypatch.setattr(extension, "build", failing_build)
    extension.load.cache_clear()
    try:
        with pytest.raises(NotOk, match="no compiled extension .*no compiler"):
            kernel_steps.step_bench_op(_context(tmp_path))
    finally:
        extension.load.cache_clear()


def test_shard_decode_records_both_rates_their_ratio_and_its_report_row():
    measured = DecodeVsStep(decode_clips_per_s=400.0, step_clips_per_s=100.0, batch=16)
    earlier = {"train_steps": {"rows": [{"model": "x3d_s", "pool": "soft", "clips_per_s": 160.0},
                                        {"model": "x3d_s", "pool": "soft", "clips_per_s": 200.0},  # compiled
                                        {"model": "x3d_s", "pool": "max", "clips_per_s": 900.0},
                                        {"model": "r3d_18", "pool": "soft", "clips_per_s": 800.0}]}}
    result = training_steps.decode_result(measured, GEOMETRIES["x3d_s"], earlier)
    assert result == {"model": "x3d_s", "batch": 16, "clip": "13 frames every 6, 160 crop, short side [182, 228]",
                      "decode_clips_per_s": 400.0, "step_clips_per_s": 100.0, "ratio": 4.0,
                      "train_steps_x3d_s_soft_clips_per_s": 200.0, "ratio_to_train_steps": 2.0}
    alone = training_steps.decode_result(measured, GEOMETRIES["x3d_s"], {"train_steps": None})  # that step failed
    assert alone["ratio"] == 4.0 and alone["ratio_to_train_steps"] is None
    results = {"dry_run": False, "command": "c", "steps": {"shard_decode": {"status": "ok", "seconds": 20.0,
                                                                             "result": result}}}
    assert "| x3d_s | 13 frames every 6, 160 crop, short side [182, 228] | 16 | 400.0 | 100.0 | 4.00 | 2.00 |" in (
        report.markdown_report(results, orchestrate.STEPS))


@pytest.mark.parametrize("decode, step", [(400.0, 0.0), (float("nan"), 100.0), (float("inf"), 100.0)])
def test_shard_decode_without_a_measured_rate_is_not_ok_never_a_figure(decode, step):
    with pytest.raises(NotOk, match="no clips/s measured"):
        training_steps.decode_result(DecodeVsStep(decode, step, 16), GEOMETRIES["x3d_s"], {})


def test_shard_decode_without_the_carried_shards_is_not_ok_naming_the_folder(tmp_path):
    with pytest.raises(NotOk, match=f"no frame shards at {tmp_path} .*gpu_wheels.sh"):
        training_steps.step_shard_decode(dataclasses.replace(_context(tmp_path), shards=tmp_path))


def test_the_carried_shards_hold_x3d_s_clips_and_a_bad_video_stops_their_preparation(tmp_path):
    """tools/gpu_wheels.sh's --make-shards: x3d_s's short side and every 6th frame (its sampling rate),
    so the step's 13-frame clips come from them; a video that does not convert is an error, not a gap."""
    write_videos(tmp_path / "videos" / "train", 1, frames=80, height=96, width=128, gop=32)
    orchestrate.make_shards(tmp_path / "videos", tmp_path / "shards")
    shards = ShardSet(tmp_path / "shards")
    assert shards.index.meta["short_side"] == 182 and shards.index.meta["frame_step"] == 6
    assert shards.index.count.tolist() == [14]  # frames 0, 6, ..., 78 of 80
    (tmp_path / "videos" / "train" / "class0" / "damaged.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(RuntimeError, match="damaged.mp4"):
        orchestrate.make_shards(tmp_path / "videos", tmp_path / "shards")


def test_the_authors_kernel_without_its_folder_is_skipped_not_ok(tmp_path):
    with pytest.raises(Skipped, match="names no folder"):
        kernel_steps.step_authors_kernel(_context(tmp_path))


@pytest.mark.parametrize("code, outcome, dry_run, problem", [
    (5, {"tests": 0}, True, "selected no test"),
    (0, {"tests": 0}, True, "selected no test"),
    (None, {"tests": None}, False, "killed at the step's cap"),
    (1, {"tests": 3, "failures": 1, "errors": 0, "skipped": 0, "failed_tests": ["t::a"]}, False, r"1 failed.*t::a"),
    (0, {"tests": 3, "failures": 0, "errors": 0, "skipped": 3, "skipped_tests": []}, False, "skipped all 3"),
])
def test_pytest_cuda_is_not_ok_unless_a_selection_ran_clean(code, outcome, dry_run, problem):
    with pytest.raises(NotOk, match=problem):
        kernel_steps.judge_pytest(code, outcome, dry_run)
    kernel_steps.judge_pytest(0, {"tests": 3, "failures": 0, "errors": 0, "skipped": 3}, True)  # the CPU: all skip


@pytest.mark.slow
def test_pytest_cuda_keeps_the_failed_test_names_and_refuses_an_empty_selection(tmp_path, monkeypatch):
    tests = tmp_path / "test_gpu.py"
    tests.write_text("import pytest\n\n@pytest.mark.cuda\ndef test_right():\n    pass\n\n"
                     "@pytest.mark.cuda\ndef test_wrong():\n    assert False\n\ndef test_cpu_only():\n    pass\n")
    monkeypatch.setattr(kernel_steps, "CUDA_TESTS", [tests])
    with pytest.raises(NotOk, match=r"1 failed, 0 errors .*test_wrong"):
        kernel_steps.step_pytest_cuda(_context(tmp_path))
    assert json.loads((tmp_path / "pytest_cuda.partial.json").read_text())["failed_tests"] == ["test_wrong"]
    tests.write_text("def test_cpu_only():\n    pass\n")
    with pytest.raises(NotOk, match="selected no test"):
        kernel_steps.step_pytest_cuda(_context(tmp_path))


def _dry_run(tmp_path: Path, steps: str, env: dict) -> tuple[subprocess.CompletedProcess, dict, Path]:
    out = tmp_path / "out"
    command = [sys.executable, str(REPO / "tools" / "gpu_check.py"), "--dry-run", "--out", str(out), "--videos",
               str(tmp_path), "--skip-wheel-check", "--wheels", str(tmp_path), "--steps", steps]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env={**os.environ, **env})
    return done, json.loads((out / "gpu_check.json").read_text()), out


@pytest.mark.slow
def test_dry_run_passes_its_steps_and_writes_its_reports(tmp_path):
    steps = ["environment", "bench_op", "sanitizer", "authors_kernel"]
    done, results, out = _dry_run(tmp_path, ",".join(steps), {})
    assert done.returncode == 0, done.stdout[-4000:]
    statuses = {name: entry["status"] for name, entry in results["steps"].items()}
    assert statuses.pop("authors_kernel").startswith("skipped: ")
    assert statuses == {name: "ok" for name in steps[:-1]}
    preflight = results["steps"]["environment"]["result"]["preflight"]
    assert preflight["python_h"] and preflight["ninja"] and preflight["blocking"] == []
    rows = results["steps"]["bench_op"]["result"]["rows"]
    assert {(row["layout"], row["method"]) for row in rows} >= {(layout, "softpool3d")
                                                                for layout in ("contiguous", "channels_last_3d")}
    assert results["steps"]["sanitizer"]["result"]["cases_on_cpu"] == ["28 cases ran on cpu"]
    report = (out / "gpu_check.md").read_text()
    assert "(`bench_op`): ok" in report and "| softpool3d |" in report
    assert "every step ok (skipped: authors_kernel)" in (out / "gpu_check.log").read_text()


@pytest.mark.slow
def test_dry_run_without_the_extension_says_not_ok_for_every_kernel_step(tmp_path):
    """The whole command refuses, end to end (each kernel step's refusal is tested directly above)."""
    steps = ["environment", "bench_op"]
    done, results, out = _dry_run(tmp_path, ",".join(steps), {"SOFTPOOL3D_DISABLE_EXTENSION": "1"})
    assert done.returncode == 1
    assert {name: entry["status"].split(" (")[0] for name, entry in results["steps"].items()} == {
        name: "NOT OK: no compiled extension" for name in steps}
    assert f"NOT OK: {', '.join(steps)}" in (out / "gpu_check.log").read_text()


def test_sigterm_to_the_check_keeps_the_running_steps_partial_results(tmp_path, monkeypatch):
    """The check's orchestration under SIGTERM: the running step's processes die, what it wrote
    so far lands in gpu_check.json with its status, and the check exits 128 + 15."""
    command, log = _escaping_step(tmp_path)
    measured = {"rows": [{"method": "softpool3d", "markdown": "| (1, 4, 4, 8, 8) | float32 | softpool3d |"}]}
    (tmp_path / "bench_op.partial.json").write_text(json.dumps(measured))
    monkeypatch.setattr(orchestrate, "_prepare_site", lambda args, work, results: dict(os.environ))
    monkeypatch.setattr(orchestrate, "_step_command", lambda step, args, work, deadline: command)
    args = orchestrate.argparse.Namespace(out=str(tmp_path / "out"), wheels=None, videos=str(tmp_path),
                                          shards=None, authors_kernel=None, work=str(tmp_path), dry_run=True,
                                          steps="bench_op", budget_s=100)
    (tmp_path / "out").mkdir()
    threading.Thread(target=lambda: (_started_pids(log), os.kill(os.getpid(), signal.SIGTERM)), daemon=True).start()
    assert orchestrate.orchestrate(args) == 128 + signal.SIGTERM
    assert _gone(_started_pids(log))
    entry = json.loads((tmp_path / "out" / "gpu_check.json").read_text())["steps"]["bench_op"]
    assert entry["status"] == "NOT OK: killed by SIGTERM"
    assert entry["result"] == {**measured, "partial": True}
    assert "| (1, 4, 4, 8, 8) | float32 | softpool3d |" in (tmp_path / "out" / "gpu_check.md").read_text()
