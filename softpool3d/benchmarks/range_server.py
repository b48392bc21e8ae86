"""A static file server with HTTP/1.1 keep-alive and single ``Range: bytes=a-b`` requests (the standard
library's ``SimpleHTTPRequestHandler`` answers every request with the whole file), for shard sets
served on 127.0.0.1 in benchmarks and tests.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO, Iterator

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class RangeRequestHandler(SimpleHTTPRequestHandler):
    """``SimpleHTTPRequestHandler`` plus ``206 Partial Content`` for one byte range (sent with ``sendfile``),
    keep-alive, no logging."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else a body sent after its headers waits for the client's delayed ACK (40 ms)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        match = _RANGE.match(self.headers.get("Range", ""))
        path = self.translate_path(self.path)
        if match is None or not os.path.isfile(path):
            return super().do_GET()
        size = os.path.getsize(path)
        start = int(match.group(1))
        end = min(int(match.group(2)) if match.group(2) else size - 1, size - 1)
        if start >= size or end < start:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        with open(path, "rb") as handle:
            self.send_range(handle, start, end - start + 1)

    def send_range(self, handle: BinaryIO, start: int, count: int) -> None:
        """Send ``count`` bytes of the open file from byte ``start`` (``sendfile``: no copy through Python)."""
        self.connection.sendfile(handle, start, count)


@contextmanager
def serve_folder(folder: str | Path, handler: type[SimpleHTTPRequestHandler] = RangeRequestHandler) -> Iterator[str]:
    """Serve ``folder`` on 127.0.0.1 (a free port) in a background thread; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(folder)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _away_from_this_process(pid: int) -> None:
    """Pin process ``pid`` to the cores this process may not run on, if there are any (Linux)."""
    if not hasattr(os, "sched_getaffinity"):
        return
    others = set(range(os.cpu_count() or 1)) - os.sched_getaffinity(0)
    if others:
        try:
            os.sched_setaffinity(pid, others)
        except OSError:  # cores outside this container's set
            pass


@contextmanager
def serve_folder_in_process(folder: str | Path) -> Iterator[str]:
    """:func:`serve_folder` in a child process (a server apart from the client, as on a network); yields its URL.
    Where this process is pinned to some of the machine's cores (``taskset``), the server runs on the others,
    as a server on another host would: what the client is measured on is not shared with the server."""
    child = subprocess.Popen([sys.executable, "-m", "softpool3d.benchmarks.range_server", str(folder)],
                             stdout=subprocess.PIPE, text=True)
    _away_from_this_process(child.pid)
    try:
        yield child.stdout.readline().strip()
    finally:
        child.terminate()
        child.wait()


if __name__ == "__main__":
    with serve_folder(sys.argv[1]) as url:
        print(url, flush=True)
        threading.Event().wait()
