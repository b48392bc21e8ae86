"""Where shard bytes come from: a local folder, an HTTP(S) server with Range requests, or any
fsspec URL (when fsspec is installed).

A source reads whole small files (the index) and byte ranges of shards. Ranges close together
are read in one request (a clip's frames lie near each other in a shard), so a clip costs one
or a few reads. Connections and open files belong to the process that made them: a DataLoader
worker opens its own on first use (keep-alive over its life), never one inherited by fork.
"""
from __future__ import annotations

import http.client
import os
import socket
import urllib.parse
from typing import Sequence

from softpool3d.datasets.video_io import VideoReadError


TIMEOUT_S = 30.0


class ShardSourceError(OSError):
    """A shard location that cannot be read (a URL that does not answer, a server without Range support)."""


class ShardReadError(VideoReadError):
    """Bytes of one video that cannot be read or decoded: counted like an unreadable video."""


def _merged(ranges: Sequence[tuple[int, int]], gap: int) -> list[tuple[int, int, list[int]]]:
    """``(offset, size)`` ranges -> ``(start, end, members)`` reads, ranges at most ``gap`` bytes apart joined."""
    order = sorted(range(len(ranges)), key=lambda i: ranges[i][0])
    reads: list[tuple[int, int, list[int]]] = []
    for i in order:
        start, end = ranges[i][0], ranges[i][0] + ranges[i][1]
        if reads and start - reads[-1][1] <= gap:
            reads[-1] = (reads[-1][0], max(reads[-1][1], end), reads[-1][2] + [i])
        else:
            reads.append((start, end, [i]))
    return reads


class ShardSource:
    """Bytes of the files under one location; subclasses implement :meth:`read_file`, :meth:`read_at` and :meth:`size`.

    ``merge_gap``: ranges at most this many bytes apart are read in one request (where reading the gap costs
    less than another request: a round trip over the network)."""

    merge_gap = 256 * 1024

    def __init__(self, location: str) -> None:
        self.location = location.rstrip("/")

    def where(self, name: str) -> str:
        """The full path or URL of ``name`` (for messages)."""
        return f"{self.location}/{name}"

    def read_file(self, name: str) -> bytes:
        raise NotImplementedError

    def read_at(self, name: str, start: int, end: int) -> bytes:
        """Bytes ``start .. end - 1`` of ``name``; fewer only where the file is shorter."""
        raise NotImplementedError

    def size(self, name: str) -> int:
        raise NotImplementedError

    def read_ranges(self, name: str, ranges: Sequence[tuple[int, int]]) -> list[bytearray | memoryview]:
        """The bytes of each ``(offset, size)`` range of ``name``, in the order given: writable buffers, which
        ``torch.frombuffer`` wraps without a copy (views of the merged read where :meth:`read_at` gives a
        ``bytearray``, copies where it gives ``bytes``)."""
        out: list[bytearray | memoryview] = [bytearray()] * len(ranges)
        for start, end, members in _merged(ranges, self.merge_gap):
            block = memoryview(self.read_at(name, start, end))
            if len(block) != end - start:
                raise self._truncated(name, start, end, len(block))
            for i in members:
                offset, size = ranges[i]
                member = block[offset - start : offset - start + size]
                out[i] = bytearray(member) if block.readonly else member
        return out

    def _truncated(self, name: str, start: int, end: int, got: int) -> ShardReadError:
        return ShardReadError(f"{self.where(name)} is truncated: bytes {start}-{end - 1} asked for, {got} read")


class LocalSource(ShardSource):
    """Files under a local folder, read with ``os.preadv`` on descriptors opened once per process. Each range
    is its own read, straight into its buffer: from the page cache a system call costs less than copying
    the frames between a clip's frames (a 13-frame X3D-S clip at k=1 spans 6x its own bytes)."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self._files: dict[str, int] = {}
        self._pid = os.getpid()

    def _descriptor(self, name: str) -> int:
        if self._pid != os.getpid():
            self._files, self._pid = {}, os.getpid()
        if name not in self._files:
            self._files[name] = os.open(self.where(name), os.O_RDONLY)
        return self._files[name]

    def read_file(self, name: str) -> bytes:
        with open(self.where(name), "rb") as handle:
            return handle.read()

    def read_at(self, name: str, start: int, end: int) -> bytes:
        return os.pread(self._descriptor(name), end - start, start)

    def read_ranges(self, name: str, ranges: Sequence[tuple[int, int]]) -> list[bytearray]:
        descriptor, out = self._descriptor(name), []
        for offset, size in ranges:
            buffer = bytearray(size)
            got = os.preadv(descriptor, [buffer], offset)
            if got != size:
                raise self._truncated(name, offset, offset + size, got)
            out.append(buffer)
        return out

    def size(self, name: str) -> int:
        return os.stat(self.where(name)).st_size

    def __getstate__(self) -> dict:
        return {"location": self.location}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["location"])


def _body(response: http.client.HTTPResponse) -> bytearray:
    """The body of ``response``, read straight into one buffer where the server gave its length (no
    chunks joined, no second copy); shorter than that length where the connection ended early."""
    if response.length is None:
        return bytearray(response.read())
    body = bytearray(response.length)
    view, got = memoryview(body), 0
    while got < len(body):
        read = response.readinto(view[got:])
        if not read:
            break
        got += read
    del view
    del body[got:]
    return body


class HTTPSource(ShardSource):
    """Files under an ``http://`` or ``https://`` URL, read with ``Range`` requests over one
    keep-alive connection per process (the standard library's ``http.client``). A clip's frames up
    to 4 MB apart are one request: a round trip costs more than the bytes between them on a loaded
    host or a network (prepare with ``frame_step`` = the recipe's ``sampling_rate`` to read no gap)."""

    merge_gap = 4 * 1024 * 1024

    def __init__(self, location: str) -> None:
        super().__init__(location)
        parts = urllib.parse.urlsplit(self.location)
        self._scheme, self._host, self._base = parts.scheme, parts.netloc, parts.path
        self._connection: http.client.HTTPConnection | None = None
        self._pid = os.getpid()

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None or self._pid != os.getpid():
            kind = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
            self._connection, self._pid = kind(self._host, timeout=TIMEOUT_S), os.getpid()
        return self._connection

    def _get(self, name: str, headers: dict[str, str], method: str = "GET") -> tuple[int, dict[str, str], bytearray]:
        path = urllib.parse.quote(f"{self._base}/{name}")
        for attempt in range(2):  # a keep-alive connection the server closed is reopened once
            connection = self._connect()
            try:
                connection.request(method, path, headers=headers)
                response = connection.getresponse()
                return response.status, {k.lower(): v for k, v in response.getheaders()}, _body(response)
            except (http.client.HTTPException, ConnectionError, socket.timeout, OSError) as error:
                connection.close()
                self._connection = None
                if attempt == 1:
                    raise ShardSourceError(f"{self.where(name)} does not answer: {type(error).__name__}: {error}") from None
        raise AssertionError("unreachable")

    def read_file(self, name: str) -> bytearray:
        status, _, body = self._get(name, {})
        if status == 404:
            raise FileNotFoundError(f"{self.where(name)}: HTTP 404 Not Found")
        if status != 200:
            raise ShardSourceError(f"{self.where(name)}: HTTP {status}")
        return body  # the response's own buffer: a large index is not copied

    def read_at(self, name: str, start: int, end: int) -> bytearray:
        status, headers, body = self._get(name, {"Range": f"bytes={start}-{end - 1}"})
        if status == 206:
            return body
        if status == 416:
            return b""
        if status == 200:
            raise ShardSourceError(f"{self.where(name)}: the server ignores Range requests (HTTP 200 to a Range request)")
        raise ShardSourceError(f"{self.where(name)}: HTTP {status} to a Range request")

    def size(self, name: str) -> int:
        status, headers, _ = self._get(name, {}, method="HEAD")
        if status == 404:
            raise FileNotFoundError(f"{self.where(name)}: HTTP 404 Not Found")
        if status != 200 or "content-length" not in headers:
            raise ShardSourceError(f"{self.where(name)}: HTTP {status} to HEAD, no Content-Length")
        return int(headers["content-length"])

    def __getstate__(self) -> dict:
        return {"location": self.location}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["location"])


class FsspecSource(ShardSource):
    """Files under any URL fsspec knows (``s3://``, ``gs://``, ...), read with its ``cat_file``."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        try:
            import fsspec
        except ImportError:
            raise ShardSourceError(f"{location}: reading this URL needs fsspec (pip install fsspec)") from None
        self._fs, self._root = fsspec.core.url_to_fs(self.location)

    def _path(self, name: str) -> str:
        return f"{self._root}/{name}"

    def read_file(self, name: str) -> bytes:
        return self._fs.cat_file(self._path(name))

    def read_at(self, name: str, start: int, end: int) -> bytes:
        return self._fs.cat_file(self._path(name), start=start, end=end)

    def size(self, name: str) -> int:
        return int(self._fs.size(self._path(name)))

    def __getstate__(self) -> dict:
        return {"location": self.location}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["location"])


def is_url(location: str) -> bool:
    """Whether ``location`` is a URL (``scheme://...``) rather than a local path."""
    return "://" in str(location)


def open_source(location: str | os.PathLike) -> ShardSource:
    """The :class:`ShardSource` of a local folder, an ``http(s)://`` URL or another fsspec URL."""
    location = os.fspath(location)
    scheme = urllib.parse.urlsplit(location).scheme if is_url(location) else ""
    if scheme in ("http", "https"):
        return HTTPSource(location)
    if scheme and scheme != "file":
        return FsspecSource(location)
    return LocalSource(location[len("file://"):] if scheme == "file" else location)
