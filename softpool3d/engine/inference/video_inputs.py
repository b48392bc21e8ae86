"""The videos a command is given: files, folders (searched recursively) and ``@list.txt`` files."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from softpool3d.datasets.annotations import VIDEO_EXTENSIONS


@dataclass(frozen=True)
class VideoInput:
    """A video to predict on: its ``path``, and ``relative``, where its outputs go under an output folder."""

    path: Path
    relative: Path


def collect_videos(inputs: Sequence[str | os.PathLike]) -> list[VideoInput]:
    """The videos named by ``inputs``: files (kept even if missing or not videos: they fail later,
    named), folders (every file with a video extension below them, sorted) and ``@list.txt`` (one
    input a line, relative to the list's folder). A folder without videos, or a missing list,
    raises ``FileNotFoundError`` naming it."""
    videos: list[VideoInput] = []
    for raw in inputs:
        text = os.fspath(raw)
        if text.startswith("@"):
            listing = Path(text[1:])
            if not listing.is_file():
                raise FileNotFoundError(f"list of videos {listing} (from {text}) does not exist")
            lines = [line.strip() for line in listing.read_text(encoding="utf-8").splitlines()]
            videos += collect_videos([listing.parent / line for line in lines if line and not line.startswith("#")])
            continue
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
            if not found:
                raise FileNotFoundError(f"folder {path} holds no video files (looked for {', '.join(VIDEO_EXTENSIONS)} "
                                        f"in it and its subfolders)")
            videos += [VideoInput(p, p.relative_to(path)) for p in found]
        else:
            videos.append(VideoInput(path, Path(path.name)))
    return videos
