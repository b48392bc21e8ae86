"""A non-editable ``pip install .`` ships everything a run needs: in a fresh venv, ``softpool3d-train``
in an empty folder outside the repository runs the demo (its videos generated under ``data/``, the run
under ``runs/``, the extension built from the installed ``csrc``), and ``softpool3d-test`` evaluates
its checkpoint. The venv borrows this interpreter's dependencies through a ``.pth`` file and installs
offline (no build isolation, no index)."""
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import setuptools
from packaging.requirements import Requirement
from setuptools.config.setupcfg import read_configuration

REPO = Path(__file__).resolve().parents[2]
PACKAGE_SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "softpool3d", "models", "datasets", "configs")
"""What setup.cfg builds the package from."""

TINY = ["train.epochs=1", "train.limit_steps_per_epoch=2", "train.val_every=1", "data.num_frames=4",
        "data.crop_size=32", "data.train_scale=[32,40]", "data.test_scale=32", "data.num_workers=0",
        "data.num_clips=1", "data.num_crops=1", "model.width=4"]


def _can_build_a_wheel_offline() -> bool:
    major, minor = (int(part) for part in setuptools.__version__.split(".")[:2])
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


def _run(command: list, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
@pytest.mark.skipif(not _can_build_a_wheel_offline(),
                    reason=f"setuptools {setuptools.__version__} without the wheel package cannot build offline")
def test_installed_console_scripts_run_the_demo_in_an_empty_folder(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in PACKAGE_SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        else:
            shutil.copy2(REPO / name, source / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                        tmp_path, os.environ.copy()).stdout.strip())
    borrowed = [entry for entry in sys.path if Path(entry).name in ("site-packages", "dist-packages")]
    borrowed.append(sysconfig.get_path("purelib"))
    (purelib / "borrowed_dependencies.pth").write_text("\n".join(dict.fromkeys(borrowed)) + "\n")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    _run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
          str(source)], tmp_path, env)

    work = tmp_path / "empty"
    work.mkdir()
    where = _run([str(python), "-c", "import softpool3d, softpool3d.engine.config as c; print(softpool3d.__file__); "
                  "print(c.DEFAULT_CONFIG)"], work, env).stdout.split()
    installed = purelib / "softpool3d"
    assert where == [str(installed / "__init__.py"), str(installed / "configs" / "demo.yaml")]
    assert (installed / "configs" / "_base_" / "models" / "x3d_s.yaml").is_file()
    assert {path.name for path in (REPO / "softpool3d" / "csrc").iterdir()} <= \
        {path.name for path in (installed / "csrc").iterdir()} | {"__pycache__"}

    _run([str(venv / "bin" / "softpool3d-train"), *TINY], work, env)
    assert (work / "data" / "demo").is_dir()
    checkpoint = work / "runs" / "demo" / "checkpoints" / "last.pt"
    assert checkpoint.is_file() and (work / "runs" / "demo" / "test" / "predictions.csv").is_file()
    _run([str(venv / "bin" / "softpool3d-test"), str(checkpoint), "--out", "again"], work, env)
    assert (work / "again" / "predictions.csv").is_file()


def test_decord2_is_required_and_decord_is_not():
    """decord2 installs the same ``decord`` module as decord: requiring both would let the last one
    installed win. (The full resolution, dependencies' requirements included, is checked once with the
    network in BENCHMARKS.md: ``pip install --dry-run --report`` in a fresh venv.)"""
    requires = read_configuration(REPO / "setup.cfg")["options"]["install_requires"]
    names = [Requirement(line).name.lower() for line in requires]
    assert "decord2" in names and "decord" not in names, requires
