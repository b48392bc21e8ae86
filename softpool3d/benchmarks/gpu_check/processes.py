"""Process control of the GPU check: a step, and every command a step runs, lives in a process
group of its own, and whatever ends it (its cap, SIGTERM or SIGINT to the check, the death of its
parent) ends every process it started, however deep and whichever session it moved to.

Three mechanisms together: the group is killed whole (:func:`run_group`); the process that starts
the group is a child subreaper (Linux ``PR_SET_CHILD_SUBREAPER``), so that orphans of the group (a
grandchild that called ``setsid``) are re-parented to it and found by :func:`kill_descendants`; and
every child gets ``PR_SET_PDEATHSIG``, so that a SIGKILL of its parent (the device's kill at its
command limit, which no handler sees) kills it too. SIGTERM and SIGINT raise :class:`Interrupted`
in the main thread (:func:`interrupt_on_signals`), so that the caller kills the running group and
writes what it has before it exits.
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
PR_SET_CHILD_SUBREAPER = 36
SPARED: set[int] = set()
"""Descendants that :func:`kill_descendants` leaves alone: the log's ``tee`` (:class:`Tee`)."""


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


def become_subreaper() -> None:
    """Orphaned descendants of this process are re-parented to it rather than to init."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1)


def _own_group_dying_with_parent() -> None:  # preexec_fn: runs in the child before exec
    os.setpgid(0, 0)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _alive_children() -> dict[int, list[int]]:
    """Parent pid -> pids of its children that are not zombies, from /proc."""
    table: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            table.setdefault(int(fields[1]), []).append(int(entry))
    return table


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid``."""
    table, found, stack = _alive_children(), [], [pid]
    while stack:
        children = table.get(stack.pop(), [])
        found += children
        stack += children
    return found


def kill_descendants(keep: frozenset[int] = frozenset(), patience_s: float = 5.0) -> None:
    """SIGKILL every descendant of this process but ``keep`` and :data:`SPARED`, until none is left:
    with this process a subreaper, the orphans of each killed one come back here."""
    deadline = time.monotonic() + patience_s
    while time.monotonic() < deadline:
        left = [pid for pid in descendants(os.getpid()) if pid not in keep and pid not in SPARED]
        if not left:
            return
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in left:  # reap the adopted ones; a Popen's own child is reaped by its wait()
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)


def run_group(command: list[str], timeout: float, cwd: Path, env: Optional[dict] = None, capture: bool = False,
              keep: frozenset[int] = frozenset()) -> tuple[Optional[int], str]:
    """Run ``command`` in a process group of its own, streaming its output (and keeping the last
    4000 characters when ``capture``); returns its exit code (``None`` when killed at ``timeout``)
    and that tail. On its timeout, or when :class:`Interrupted` (or anything else) stops the wait,
    the group and every other descendant of this process but ``keep`` are killed first."""
    become_subreaper()
    say("$ " + " ".join(command))
    lines: list[str] = []
    process = subprocess.Popen(command, stdout=subprocess.PIPE if capture else None,
                               stderr=subprocess.STDOUT if capture else None, text=True, cwd=cwd,
                               env=env or os.environ.copy(), preexec_fn=_own_group_dying_with_parent)
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
        kill_descendants(keep)
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
        SPARED.add(self.copier.pid)
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
        SPARED.discard(self.copier.pid)
