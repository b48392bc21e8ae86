"""tools/gpu_check.py, proven on the CPU: the dry run passes every step on videos it writes itself
(with the carried wheels checked offline when tools/gpu_wheels.sh has run here), the wheel check
refuses a wheel set that lacks a requirement, and the PyAV placeholder imports but refuses every use."""
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from softpool3d.benchmarks import gpu_check

REPO = Path(__file__).resolve().parents[2]


def _wheel(folder: Path, name: str, requires: list[str]) -> Path:
    path = folder / f"{name}-1.0-py3-none-any.whl"
    metadata = "\n".join([f"Metadata-Version: 2.1", f"Name: {name}", "Version: 1.0",
                          *(f"Requires-Dist: {item}" for item in requires)]) + "\n"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}-1.0.dist-info/METADATA", metadata)
        archive.writestr(f"{name}-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{name}-1.0.dist-info/RECORD", "")
    return path


def test_wheel_check_names_a_requirement_neither_carried_nor_in_the_image(tmp_path):
    _wheel(tmp_path, "carried", ["numpy>=1", "yacs", "windows-only; sys_platform == 'win32'", "doc; extra == 'docs'"])
    with pytest.raises(RuntimeError, match=r"neither carried nor in the GPU image: \{'carried': \['yacs'\]\}"):
        gpu_check.check_wheels(tmp_path, None, allow_offline=True)
    _wheel(tmp_path, "yacs", [])
    with pytest.raises(RuntimeError, match="no Python 3.12"):  # the requirements close; the 3.12 check is next
        gpu_check.check_wheels(tmp_path, None, allow_offline=True)


def test_a_step_gets_its_cap_plus_the_time_earlier_steps_left_unused():
    steps = [gpu_check.Step(name, name, cap, lambda context: {}) for name, cap in (("a", 100), ("b", 50), ("c", 30))]
    assert gpu_check.step_cap(steps[0], steps[1:], 180) == 100  # on schedule
    assert gpu_check.step_cap(steps[1], steps[2:], 130) == 100  # "a" took 50 s: "b" gets them, "c" keeps 30
    assert gpu_check.step_cap(steps[1], steps[2:], 40) == 40  # late: never past the budget
    assert sum(step.cap_s for step in gpu_check.STEPS) <= gpu_check.TOTAL_BUDGET_S


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_a_silent_command_is_killed_at_its_timeout_with_its_children(tmp_path):
    code, tail = gpu_check._run_logged(["bash", "-c", "sleep 30 & echo child $!; wait"], 1, tmp_path)
    assert code == -9 and "killed after 1 s" in tail  # killed, not ended by itself after 30 s
    child = int(tail.split("child ")[1].split()[0])
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child)  # the whole process group went, not only bash


def test_av_placeholder_imports_and_refuses_every_use(tmp_path):
    (tmp_path / "av").mkdir()
    (tmp_path / "av" / "__init__.py").write_text(gpu_check.AV_PLACEHOLDER)
    code = ("import av\nassert issubclass(av.error.FFmpegError, Exception)\n"
            "try:\n    av.open('x.mp4')\nexcept ImportError as e:\n    print(e)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert "PyAV is not carried" in done.stdout


@pytest.mark.slow
def test_dry_run_passes_every_step_and_writes_its_reports(tmp_path):
    videos = tmp_path / "videos"
    gpu_check.make_videos(videos, frames=80, height=120, width=160)
    out = tmp_path / "out"
    wheels = REPO / ".whl"
    command = [sys.executable, str(REPO / "tools" / "gpu_check.py"), "--dry-run", "--out", str(out), "--videos",
               str(videos), "--allow-offline", "--wheels", str(wheels)]
    if not any(wheels.glob("*.whl")):  # tools/gpu_wheels.sh not run here: nothing to check
        command.append("--skip-wheel-check")
    # the 3.12 resolution against the registry is left to the script's own runs: here pip finds no index
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "PIP_NO_INDEX": "1"})
    assert done.returncode == 0, done.stdout[-4000:]
    results = json.loads((out / gpu_check.RESULTS).read_text())
    assert {name: entry["status"] for name, entry in results["steps"].items()} == {
        name: "ok" for name in gpu_check.STEP_NAMES}
    rows = results["steps"]["train_steps"]["result"]["rows"]
    assert {(row["model"], row["pool"], row["mode"]) for row in rows} >= {("r3d_18", pool, "eager")
                                                                           for pool in ("soft", "max", "avg")}
    assert results["steps"]["ddp"]["result"]["ranks_2"]["world_size"] == 2
    report = (out / gpu_check.REPORT).read_text()
    assert all(f"(`{name}`): ok" in report for name in gpu_check.STEP_NAMES)
    assert "every step ok" in (out / gpu_check.LOG).read_text()
