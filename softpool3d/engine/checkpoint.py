"""The checkpoint file: a dict written atomically with a SHA-256 digest and ``meta``
(:func:`provenance`: package version, git commit, python, torch and CUDA versions), read back only
when intact. What the dict holds is :mod:`softpool3d.engine.training_state`'s.

The file is the zip archive ``torch.save`` writes, whose zip comment is
``softpool3d-sha256:<hex>``: the SHA-256 of every byte of the file before the comment's length
field, hashed while ``torch.save`` streams the archive out. :func:`load_checkpoint` checks it
before unpickling anything, so a damaged file is refused, never used. Plain ``torch.load(path, weights_only=True)`` still reads the file (zip readers accept
a comment), without the check.
"""
from __future__ import annotations

import hashlib
import os
import platform
import secrets
import struct
from pathlib import Path
from typing import Any, BinaryIO, Optional, Union

import torch

import softpool3d

REQUIRED_KEYS = ("model", "optimizer", "scheduler", "epoch", "step", "config", "classes")

_DIGEST_PREFIX = b"softpool3d-sha256:"
_COMMENT_LENGTH = len(_DIGEST_PREFIX) + 64  # the prefix and 64 hex digits
_END_OF_CENTRAL_DIRECTORY = b"PK\x05\x06"  # the signature of a zip archive's last record
_END_RECORD_LENGTH = 22  # that record's length; its last 2 bytes give the comment's length
_SOURCE_TREE = Path(softpool3d.__file__).resolve().parent.parent


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read, is damaged, or lacks what a run needs."""


def git_commit(tree: Union[str, os.PathLike] = _SOURCE_TREE) -> Optional[str]:
    """The commit checked out in ``tree`` (the package's source tree by default), read from its
    ``.git`` (a directory, or a worktree's ``gitdir:`` file); None when there is none."""
    dot_git = Path(tree) / ".git"
    try:
        if dot_git.is_file():
            git_dir = Path(dot_git.read_text().strip().removeprefix("gitdir:").strip())
            git_dir = git_dir if git_dir.is_absolute() else (dot_git.parent / git_dir)
        else:
            git_dir = dot_git
        head = (git_dir / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head or None
        ref = head.removeprefix("ref:").strip()
        common = git_dir / (git_dir / "commondir").read_text().strip() if (git_dir / "commondir").is_file() else git_dir
        for directory in (git_dir, common):
            if (directory / ref).is_file():
                return (directory / ref).read_text().strip()
        packed = common / "packed-refs"
        for line in packed.read_text().splitlines() if packed.is_file() else ():
            if line.endswith(f" {ref}"):
                return line.split()[0]
    except OSError:
        return None
    return None


def provenance() -> dict[str, Optional[str]]:
    """What produced a checkpoint: package version, git commit (or None), python, torch, CUDA (or None)."""
    return {
        "softpool3d": softpool3d.__version__,
        "git_commit": git_commit(_SOURCE_TREE),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "cuda": torch.version.cuda,
    }


class _SigningWriter:
    """What ``torch.save`` writes into: passes the archive on to ``file`` and hashes it; :meth:`sign`
    then turns the archive's empty zip comment into the digest."""

    def __init__(self, file: BinaryIO) -> None:
        self.file, self.sha256, self.tail = file, hashlib.sha256(), b""

    def write(self, data: bytes) -> int:
        view = memoryview(data).cast("B")
        self.file.write(view)
        if len(view) >= _END_RECORD_LENGTH:  # hash all but the last record seen so far
            self.sha256.update(self.tail)
            self.sha256.update(view[:-_END_RECORD_LENGTH])
            self.tail = bytes(view[-_END_RECORD_LENGTH:])
        else:
            joined = self.tail + bytes(view)
            self.sha256.update(joined[:-_END_RECORD_LENGTH])
            self.tail = joined[-_END_RECORD_LENGTH:]
        return len(view)

    def flush(self) -> None:
        self.file.flush()

    def sign(self) -> None:
        if not self.tail.startswith(_END_OF_CENTRAL_DIRECTORY) or not self.tail.endswith(b"\0\0"):
            raise RuntimeError("torch.save did not end its archive with an empty zip comment; cannot sign it")
        self.sha256.update(self.tail[:-2])
        self.file.seek(-2, os.SEEK_END)
        self.file.write(struct.pack("<H", _COMMENT_LENGTH) + _DIGEST_PREFIX + self.sha256.hexdigest().encode())


def _verify(file: BinaryIO, path: Path) -> None:
    """Check the digest of the open checkpoint ``file``; raise :class:`CheckpointError` saying what failed."""
    unreadable = f"checkpoint {path} is unreadable"
    size = file.seek(0, os.SEEK_END)
    if size == 0:
        raise CheckpointError(f"{unreadable}: the file is empty")
    body = max(size - _COMMENT_LENGTH - 2, 0)
    file.seek(body)
    end = file.read()
    if end[:2] != struct.pack("<H", _COMMENT_LENGTH) or end[2 : 2 + len(_DIGEST_PREFIX)] != _DIGEST_PREFIX:
        raise CheckpointError(f"{unreadable}: it does not end with a softpool3d digest (truncated, damaged at its "
                              f"end, or not a checkpoint written by softpool3d)")
    expected = end[2 + len(_DIGEST_PREFIX) :].decode("ascii", errors="replace")
    file.seek(0)
    sha256, chunk, left = hashlib.sha256(), bytearray(1 << 20), body
    while left > 0:
        read = file.readinto(memoryview(chunk)[: min(len(chunk), left)])
        if not read:
            break
        sha256.update(memoryview(chunk)[:read])
        left -= read
    if sha256.hexdigest() != expected:
        raise CheckpointError(f"{unreadable}: its contents are damaged (SHA-256 {sha256.hexdigest()} of its first "
                              f"{body} bytes, the digest stored in it is {expected})")


def has_digest(path: Union[str, os.PathLike]) -> bool:
    """Whether ``path`` is a file that ends with a softpool3d digest (a checkpoint of ours, intact
    or not), as opposed to someone else's weights file."""
    try:
        with open(path, "rb") as file:
            file.seek(0, os.SEEK_END)
            if file.tell() < _COMMENT_LENGTH + 2:
                return False
            file.seek(-_COMMENT_LENGTH, os.SEEK_END)
            return file.read(len(_DIGEST_PREFIX)) == _DIGEST_PREFIX
    except OSError:
        return False


def save_checkpoint(state: dict[str, Any], path: Union[str, os.PathLike]) -> Path:
    """Write ``state`` plus ``meta`` (:func:`provenance`) to ``path`` with its digest, atomically: a
    temporary ``.<name>.<random>.tmp`` in the same directory, fsync, then ``os.replace``. The file
    gets the mode a plain ``open`` would give it (0666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        temporary = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(handle, "wb") as file:
            writer = _SigningWriter(file)
            torch.save({**state, "meta": provenance()}, writer)
            writer.sign()
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def remove_stale_temporaries(directory: Union[str, os.PathLike]) -> list[Path]:
    """Delete the temporary files that killed :func:`save_checkpoint` calls left in ``directory``
    (``.<name>.pt.<random>.tmp``); returns them. Only call it while no other job writes there."""
    stale = sorted(Path(directory).glob(".*.pt.*.tmp"))
    for file in stale:
        file.unlink(missing_ok=True)
    return stale


def load_checkpoint(path: Union[str, os.PathLike]) -> dict[str, Any]:
    """Read a checkpoint on the CPU after checking its digest.

    Raises :class:`CheckpointError` naming the file and what failed if it is missing, unreadable,
    damaged, not written by :func:`save_checkpoint`, or lacks a key of ``REQUIRED_KEYS``.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        # One open file for the check and the load: save_checkpoint replaces files, never rewrites them.
        with open(path, "rb") as file:
            _verify(file, path)
            file.seek(0)
            try:
                state = torch.load(file, map_location="cpu", weights_only=True)
            except Exception as error:  # an intact file torch cannot unpickle: another torch version, a foreign type
                reason = " ".join(str(error).split())[:300]
                raise CheckpointError(f"checkpoint {path} is unreadable: torch.load failed on its intact contents "
                                      f"({type(error).__name__}: {reason})") from error
    except OSError as error:
        raise CheckpointError(f"checkpoint {path} is unreadable: {error.strerror or error}") from error
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a checkpoint dict")
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks keys {missing}")
    return state


def stored_digest(path: Union[str, os.PathLike]) -> str:
    """The SHA-256 (hex) a checkpoint of ours carries at its end, read without hashing the file
    (a key for what was derived from it, e.g. a cached ONNX export); ``CheckpointError`` when it has none."""
    with open(path, "rb") as file:
        file.seek(0, os.SEEK_END)
        if file.tell() < _COMMENT_LENGTH + 2:
            raise CheckpointError(f"checkpoint {path} does not end with a softpool3d digest")
        file.seek(-_COMMENT_LENGTH, os.SEEK_END)
        end = file.read()
    if not end.startswith(_DIGEST_PREFIX):
        raise CheckpointError(f"checkpoint {path} does not end with a softpool3d digest")
    return end[len(_DIGEST_PREFIX):].decode("ascii", errors="replace")
