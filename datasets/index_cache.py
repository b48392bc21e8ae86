"""A cache of :class:`VideoIndex` files, so a second start on the same dataset does not parse
the annotations and list the video folders again (minutes on network storage at Kinetics scale).

An entry is one ``.npz`` file (numpy arrays and a JSON header, no pickle) named by a digest of
what was asked (dataset, root, annotation path, fold, list). It records the size and
modification time of every annotation file read and the modification time of every folder
listed; it is used only while all of them are unchanged, so editing an annotation file or
adding or removing a video (which changes its folder's modification time) rebuilds the index.

Entries live in ``$SOFTPOOL3D_CACHE_DIR``, else ``$XDG_CACHE_HOME/softpool3d/index``, else
``~/.cache/softpool3d/index``: never inside the dataset, which is often read-only or shared, and
whose folder times the cache must not change. Writes are atomic (a temporary file renamed into
place), so processes building the same index at once (torchrun ranks) do not corrupt it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from softpool3d.datasets.atomic import atomic_writer
from softpool3d.datasets.index import PathList, VideoIndex

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


def cache_dir() -> Path:
    """Where index files go (see the module docstring)."""
    if os.environ.get("SOFTPOOL3D_CACHE_DIR"):
        return Path(os.environ["SOFTPOOL3D_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "softpool3d" / "index"


def cache_file(key: dict[str, Any]) -> Path:
    """The cache file for ``key`` (a JSON-serializable description of what was indexed)."""
    digest = hashlib.sha256(json.dumps({"version": FORMAT_VERSION, **key}, sort_keys=True).encode()).hexdigest()
    return cache_dir() / f"{digest[:32]}.npz"


def _file_state(path: str) -> list[int]:
    try:
        info = os.stat(path)
    except OSError:
        return [-1, -1]
    return [info.st_size, info.st_mtime_ns]


def _folder_state(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return -1


def _json_array(value: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(value).encode(), dtype=np.uint8)


def save_index(path: Path, index: VideoIndex) -> None:
    """Write ``index`` to ``path`` atomically, with the state of its files and folders."""
    header = {
        "version": FORMAT_VERSION,
        "classes": index.classes,
        "folders": index.videos.folders,
        "files": {f: _file_state(f) for f in index.files},
        "watched": {f: _folder_state(f) for f in index.folders},
    }
    with atomic_writer(path) as out:
        np.savez(
            out, header=_json_array(header), names=index.videos.names, folder_ids=index.videos.folder_ids,
            labels=index.labels, present=index.present,
        )


def load_index(path: Path) -> VideoIndex | None:
    """The index stored at ``path``, or ``None`` if there is none, it cannot be read, or any of
    its annotation files or folders changed since it was written."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            header = json.loads(stored["header"].tobytes())
            if header.get("version") != FORMAT_VERSION:
                return None
            changed = [f for f, state in header["files"].items() if _file_state(f) != state]
            changed += [f for f, state in header["watched"].items() if _folder_state(f) != state]
            if changed:
                logger.info("index cache %s is out of date (%s changed); rebuilding", path, changed[0])
                return None
            videos = PathList(header["folders"], stored["folder_ids"], stored["names"])
            return VideoIndex(videos, stored["labels"], stored["present"], header["classes"],
                              list(header["files"]), list(header["watched"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        logger.warning("ignoring unreadable index cache %s: %s", path, error)
        return None
