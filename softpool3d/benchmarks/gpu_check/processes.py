"""Process control of the GPU check: a step, and every command a step runs, lives in a process
group of its own, and whatever ends it (its cap, SIGTERM or SIGINT to the check, the death of its
parent) ends every process it started, however deep and whichever session it moved to.

Three mechanisms together: the group is killed whole (:func:`run_group`); every process the group
starts inherits a mark in its environment (:data:`MARK`, one token per :func:`run_group`, nested
ones appended), so that :func:`kill_marked` finds the processes that left the group (a grandchild
that called ``setsid``, one re-parented to init) and kills them too, and nothing else; and every
child gets ``PR_SET_PDEATHSIG``, so that a SIGKILL of its parent (the device's kill at its command
limit, which no handler sees) kills it too. SIGTERM and SIGINT raise :class:`Interrupted` in the
main thread (:func:`interrupt_on_signals`), so that the caller kills the running group and writes
what it has before it exits.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, Optional

PR_SET_PDEATHSIG = 1
MARK = "SOFTPOOL3D_GPU_CHECK_GROUPS"
"""The environment variable that marks every process a :func:`run_group` started: its tokens,
separated by ``:``."""


class Interrupted(Exception):
    """SIGTERM or SIGINT reached the process (:func:`interrupt_on_signals`)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"killed by {signal.Signals(signum).name}")
        self.signum = signum


def say(message: str) -> None:
    """A progress line, flushed at once (a run cut off by its limit keeps what it printed)."""
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _prctl(option: int, value: int) -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


def _own_group_dying_with_parent() -> None:  # preexec_fn: runs in the child before exec
    os.setpgid(0, 0)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def marked(token: str) -> list[int]:
    """The live processes (but this one) whose environment holds ``token`` in :data:`MARK`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        for variable in environ.split(b"\0"):
            if variable.startswith(MARK.encode() + b"=") and token.encode() in variable.split(b"=", 1)[1].split(b":"):
                if state != "Z":
                    found.append(int(entry))
                break
    return found


def kill_marked(token: str, patience_s: float = 5.0) -> None:
    """SIGKILL every process marked with ``token``, until none is left."""
    deadline = time.monotonic() + patience_s
    while time.monotonic() < deadline:
        left = marked(token)
        if not left:
            return
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def run_group(command: list[str], timeout: float, cwd: Path, env: Optional[dict] = None,
              capture: bool = False) -> tuple[Optional[int], str]:
    """Run ``command`` in a process group of its own, streaming its output (and keeping the last
    4000 characters when ``capture``); returns its exit code (``None`` when killed at ``timeout``)
    and that tail. On its timeout, or when :class:`Interrupted` (or anything else) stops the wait,
    the group and every process it started (:func:`kill_marked`) are killed first; after a normal
    exit, so are the processes it left behind."""
    say("$ " + " ".join(command))
    lines: list[str] = []
    token = f"{os.getpid()}.{time.monotonic_ns()}"
    env = dict(env or os.environ)
    env[MARK] = ":".join(filter(None, [env.get(MARK), token]))
    process = subprocess.Popen(command, stdout=subprocess.PIPE if capture else None,
                               stderr=subprocess.STDOUT if capture else None, text=True, cwd=cwd, env=env,
                               preexec_fn=_own_group_dying_with_parent)
    reader = None
    if capture:
        def pump() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                print(line, end="", flush=True)
                lines.append(line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
    code: Optional[int] = None
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        lines.append(f"killed after {timeout:.0f} s\n")
    finally:
        if code is None:  # timed out, or interrupted: the group, then whatever left it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        kill_marked(token)
    if reader is not None:
        reader.join(timeout=10)
    return code, "".join(lines)[-4000:]


@contextlib.contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """Within it, SIGTERM and SIGINT raise :class:`Interrupted` in the main thread."""

    def handler(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    saved = {signum: signal.signal(signum, handler) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, previous in saved.items():
            signal.signal(signum, previous)


class Tee:
    """Copies this process's and its children's output into a log file as well as the terminal."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> "Tee":
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
