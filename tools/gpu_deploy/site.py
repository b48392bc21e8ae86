"""The GPU check's site folder: the carried wheels installed with ``pip --no-index --no-deps
--target``, a placeholder for PyAV where it is absent, and ``softpool3d`` laid out as setup.cfg
installs it (links into the checkout), so that the GPU machine, which reaches no registry and runs
no build backend, imports the checkout with nothing installed into its Python.

    python tools/gpu_deploy/site.py --wheels .whl --site DIR [--dry-run]

Run by ``tools/gpu_check.py``, which puts DIR first on its steps' ``PYTHONPATH``.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]
AV_PLACEHOLDER = Path(__file__).resolve().parent / "av"


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
        done = subprocess.run(command, cwd=site, capture_output=True, text=True, timeout=300)
        if done.returncode:
            raise RuntimeError(f"installing the carried wheels failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    elif not dry_run:
        print(f"WARNING: no wheels in {wheels}; relying on what this machine has")
    has_av = subprocess.run([sys.executable, "-c", "import av"], capture_output=True).returncode == 0
    if dry_run or not has_av:
        shutil.rmtree(site / "av", ignore_errors=True)
        shutil.copytree(AV_PLACEHOLDER, site / "av", ignore=shutil.ignore_patterns("__pycache__"))
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


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheels", required=True)
    parser.add_argument("--site", required=True)
    parser.add_argument("--dry-run", action="store_true", help="here: only the pure-Python wheels, and the placeholder")
    args = parser.parse_args(argv)
    prepare_site(Path(args.wheels), Path(args.site), args.dry_run)
    print(f"site folder ready: {args.site}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
