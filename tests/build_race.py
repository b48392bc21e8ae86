"""Two processes building the CPU extension at once into one cache, each then checking its kernel
against the formula: what ``tests/op/test_extension.py`` asserts on.

On a machine whose extension cache lacks the build (a fresh machine, as in CI), ``tests/conftest.py``
starts this race when the session starts, in the session's own cache, so that the build every
kernel test needs is the raced one and is made once; the test then reads the racers' results.
Otherwise the test starts the race itself in a new folder.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS_ENV = "SOFTPOOL3D_TEST_BUILD_RACE"
"""The folder of the session's race (its racers' logs and exit codes), when the session started one."""

RACERS = 2

RACER = """
import sys, torch
from softpool3d import extension
module = extension.build(with_cuda=False)
x = torch.randn(1, 2, 4, 4, 4, dtype=torch.float64)
y = module.forward(x, [2, 2, 2], [2, 2, 2], [0, 0, 0], False, False, False)
windows = x.unfold(2, 2, 2).unfold(3, 2, 2).unfold(4, 2, 2).flatten(-3)
sys.exit(0 if torch.allclose(y, (windows.softmax(-1) * windows).sum(-1)) else 3)
"""
"""Builds (or waits for and loads) the extension, then exits 0 when its forward equals the formula."""


def start(cache: Path, results: Path) -> None:
    """Starts the racers, building into ``cache``; each writes ``racer<i>.log`` and, when it ends,
    ``racer<i>.rc`` (its exit code) into ``results``. Returns at once."""
    results.mkdir(parents=True, exist_ok=True)
    (results / "cache").write_text(str(cache))
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(cache))
    for i in range(RACERS):
        subprocess.Popen(
            ["bash", "-c", '"$0" -c "$1" > "$2" 2>&1; echo $? > "$3.tmp" && mv "$3.tmp" "$3"',
             sys.executable, RACER, str(results / f"racer{i}.log"), str(results / f"racer{i}.rc")],
            env=env, stdin=subprocess.DEVNULL, start_new_session=True,
        )


def outcomes(results: Path, timeout: float = 600.0) -> tuple[Path, list[tuple[int, str]]]:
    """Waits for every racer started by :func:`start` to end: the cache they built in, and each
    racer's (exit code, log)."""
    deadline = time.monotonic() + timeout
    codes = [results / f"racer{i}.rc" for i in range(RACERS)]
    while not all(code.exists() for code in codes):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the build race in {results} did not end in {timeout:.0f} s")
        time.sleep(0.5)
    return Path((results / "cache").read_text()), [
        (int(code.read_text()), (results / f"racer{i}.log").read_text()) for i, code in enumerate(codes)
    ]
