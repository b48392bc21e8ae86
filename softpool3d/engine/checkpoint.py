"""Training checkpoints: one dict format, written atomically with a SHA-256 digest, with every RNG
state for exact resume and what is needed to reproduce the run.

The format is defined here once: :func:`training_checkpoint` assembles it, :func:`restore_training`
and :func:`load_model_state` read it back. A checkpoint holds ``model`` (state dict, no ``module.``
prefix), ``optimizer``, ``scheduler``, ``scaler`` (or None), ``epoch`` (the epoch in progress), ``step`` (optimizer steps done),
``step_in_epoch``, ``config`` (plain dict), ``classes``, ``rng`` (one entry per rank: python,
numpy, torch and the rank's own CUDA device's states), ``best_top1``, ``sampler_epoch``, ``skipped_steps`` and
``consecutive_skips`` (non-finite steps skipped), ``ema`` (the EMA of the weights and buffers, a
state dict like ``model``'s, when ``train.ema_decay > 0``; else None) with ``ema_updates``, and
``meta`` (:func:`provenance`: package version, git commit, python, torch and CUDA versions).

Which weights a checkpoint's model is: :func:`model_weights`. With ``weights="auto"`` (the test,
export, ``model.pretrained``) that is ``ema`` when the run kept one, else ``model``; resuming
training restores both.

The file is the zip archive ``torch.save`` writes, whose zip comment is
``softpool3d-sha256:<hex>``: the SHA-256 of every byte of the file before the comment's length
field, hashed while ``torch.save`` streams the archive out. :func:`load_checkpoint` checks it
before unpickling anything, so a damaged file is refused, never used. Plain ``torch.load(path, weights_only=True)`` still reads the file (zip readers accept
a comment), without the check.
"""
from __future__ import annotations

import hashlib
import logging
import os
import platform
import random
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Mapping, Optional, Union

import numpy as np
import torch
from torch import nn

import softpool3d

if TYPE_CHECKING:
    from softpool3d.engine.ema import ModelEma

logger = logging.getLogger(__name__)
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


def rng_state() -> dict[str, Any]:
    """This process's python, numpy, torch (and, with CUDA, its current device's) RNG states, as
    types that ``torch.load(weights_only=True)`` accepts (numpy's key array becomes a tensor).

    ``cuda`` is a list holding the one state of the device this rank computes on, not one per
    visible device: a job resumed with another GPU visibility (8 per process becoming 1 per
    process) restores it all the same.
    """
    name, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [torch.cuda.get_rng_state(torch.cuda.current_device())]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states saved by :func:`rng_state`. The CUDA state goes to this process's current
    device; a checkpoint of an older format, holding one state per device its rank could see,
    gives the current device the entry of the same index (the first when there are fewer)."""
    random.setstate(state["python"])
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        device = torch.cuda.current_device()
        torch.cuda.set_rng_state(cuda[device if len(cuda) > 1 and device < len(cuda) else 0], device)


@dataclass
class Progress:
    """Where a training run stands, as its checkpoint records it."""

    epoch: int = 0  # the epoch in progress
    step: int = 0  # optimizer steps done
    step_in_epoch: int = 0
    best_top1: float = -1.0
    skipped_steps: int = 0  # non-finite steps skipped (train.nonfinite=skip), and how many in a row
    consecutive_skips: int = 0


def training_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any,
                        progress: Progress, sampler_epoch: int, config: dict, classes: list[str],
                        rng: list[dict[str, Any]], ema: Optional[ModelEma] = None) -> dict[str, Any]:
    """The checkpoint of a training run (see the module docstring), ready for :func:`save_checkpoint`;
    ``rng`` holds one :func:`rng_state` per rank, ``config`` is the plain-dict config, ``ema`` the
    run's EMA (None when off)."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": progress.epoch,
        "step": progress.step,
        "step_in_epoch": progress.step_in_epoch,
        "sampler_epoch": sampler_epoch,
        "best_top1": progress.best_top1,
        "config": config,
        "classes": classes,
        "rng": rng,
        "skipped_steps": progress.skipped_steps,
        "consecutive_skips": progress.consecutive_skips,
        "ema": ema.state_dict() if ema is not None else None,
        "ema_updates": ema.updates if ema is not None else 0,
    }


def restore_training(checkpoint: Mapping[str, Any], path: Union[str, os.PathLike], model: nn.Module,
                     optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any, rank: int = 0,
                     world_size: int = 1, ema: Optional[ModelEma] = None) -> Progress:
    """Load a :func:`training_checkpoint` (read from ``path``) into the training objects, ``ema``
    (if the run keeps one) and this process's RNGs (rank ``rank``'s states, when the checkpoint has
    one per process of a ``world_size``-process run; otherwise a warning); returns its :class:`Progress`."""
    load_model_state(model, checkpoint, path, weights="model")
    if ema is not None and checkpoint.get("ema") is not None:
        ema.load_state_dict(checkpoint["ema"], checkpoint["ema_updates"])
    elif ema is not None:
        logger.warning("checkpoint %s holds no EMA (its run had train.ema_decay=0): the EMA starts from the "
                       "weights at the next step", path)
    states = checkpoint.get("rng") or []
    if len(states) == world_size:
        set_rng_state(states[rank])
    else:
        logger.warning("checkpoint %s has RNG states of %d processes, this run has %d: RNG not restored",
                       path, len(states), world_size)
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    if scaler is not None and checkpoint.get("scaler") is not None:
        scaler.load_state_dict(checkpoint["scaler"])
    return Progress(checkpoint["epoch"], checkpoint["step"], checkpoint.get("step_in_epoch", 0),
                    checkpoint.get("best_top1", -1.0), checkpoint.get("skipped_steps", 0),
                    checkpoint.get("consecutive_skips", 0))


WEIGHTS = ("auto", "model", "ema")
"""Which weights of a checkpoint :func:`model_weights` gives: ``auto`` (``ema`` if the run kept an EMA,
else ``model``), ``model`` (the raw weights) or ``ema``."""


def model_weights(checkpoint: Mapping[str, Any], weights: str = "auto",
                  path: Union[str, os.PathLike] = "checkpoint") -> Mapping[str, torch.Tensor]:
    """The state dict of ``checkpoint`` that ``weights`` (one of :data:`WEIGHTS`) names; asking for
    ``ema`` of a run without one raises :class:`CheckpointError` naming ``path``."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights={weights!r} is not one of {', '.join(WEIGHTS)}")
    ema = checkpoint.get("ema")
    if weights == "ema" and ema is None:
        raise CheckpointError(f"checkpoint {path} holds no EMA weights (its run had train.ema_decay=0)")
    return ema if weights == "ema" or (weights == "auto" and ema is not None) else checkpoint["model"]


def load_model_state(model: nn.Module, checkpoint: Mapping[str, Any], path: Union[str, os.PathLike],
                     weights: str = "auto") -> None:
    """Load :func:`model_weights` ``(checkpoint, weights)`` into ``model``; a checkpoint of another
    model or width raises :class:`CheckpointError` naming the file and the model its stored config
    describes."""
    try:
        model.load_state_dict(model_weights(checkpoint, weights, path))
    except RuntimeError as error:
        stored = (checkpoint.get("config") or {}).get("model") or {}
        held = f"model.name={stored.get('name')} model.width={stored.get('width')} model.pool={stored.get('pool')}"
        first = next((line.strip() for line in str(error).splitlines()[1:] if line.strip()), str(error))
        raise CheckpointError(f"checkpoint {path} holds {held}, which does not fit this run's model "
                              f"({first}); drop the model.* overrides or pass the checkpoint's values") from None


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
