"""``ClipDataset``: videos of one split -> normalized clips ``(C, T, H, W)`` with labels."""
from __future__ import annotations

import hashlib
import logging
import random
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import Dataset

from softpool3d.datasets.annotations import Annotations
from softpool3d.datasets.sampling import random_clip, uniform_clips
from softpool3d.datasets.transforms import TestTransform, TrainTransform
from softpool3d.datasets.video_io import OpenVideo, VideoReadError

logger = logging.getLogger(__name__)


class SkippedFiles:
    """Files that failed to decode, recorded across DataLoader worker processes.

    Each failure is a marker file in a temporary folder that every process can see; the
    folder is removed when the owning object is garbage-collected in the main process.
    """

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="softpool3d-skipped-"))
        weakref.finalize(self, shutil.rmtree, str(self.folder), True)

    def add(self, path: Path, reason: str) -> None:
        marker = self.folder / hashlib.sha1(str(path).encode()).hexdigest()
        if not marker.exists():
            logger.warning("skipping unreadable video %s: %s", path, reason)
            marker.write_text(str(path), encoding="utf-8")

    def paths(self) -> list[str]:
        return sorted(marker.read_text(encoding="utf-8") for marker in self.folder.iterdir())

    def __getstate__(self) -> dict:
        return {"folder": self.folder}

    def __setstate__(self, state: dict) -> None:
        self.folder = state["folder"]


class ClipDataset(Dataset):
    """Clips of the videos in ``annotations``.

    Training (``train=True``): item ``i`` is one random clip of video ``i``, randomly scaled,
    cropped and flipped. Testing: item ``i`` is view ``i % num_views`` of video
    ``i // num_views``, where the views are ``num_clips`` uniformly spaced clips times
    ``num_crops`` crops, all deterministic. Items are ``(clip, label, video_index)`` with
    ``clip`` float ``(C, T, crop_size, crop_size)``.

    ``videos`` (:class:`PathList`) and ``labels`` (:class:`LabelList`) index like lists but
    are a few numpy arrays, so forked DataLoader workers share them instead of copying them;
    ``num_missing`` and ``source`` repeat :class:`Annotations`' (left-out videos, provenance).

    A video that cannot be decoded is replaced by another one (a random one when training,
    the next one when testing), at most ``max_retries`` times; it is logged once and listed
    by :meth:`skipped_files`.
    """

    def __init__(
        self,
        annotations: Annotations,
        *,
        train: bool,
        num_frames: int = 16,
        sampling_rate: int = 2,
        num_clips: int = 1,
        num_crops: int = 1,
        crop_size: int = 224,
        train_scale: Sequence[int] = (256, 320),
        test_scale: int = 256,
        mean: Sequence[float] = (0.45, 0.45, 0.45),
        std: Sequence[float] = (0.225, 0.225, 0.225),
        hflip: bool = True,
        max_retries: int = 10,
    ) -> None:
        if num_frames < 1 or sampling_rate < 1 or num_clips < 1:
            raise ValueError(
                f"num_frames, sampling_rate and num_clips must be positive, got {num_frames}, {sampling_rate}, {num_clips}"
            )
        if not annotations.videos:
            raise ValueError("the dataset has no videos")
        self.videos = annotations.videos
        self.labels = annotations.labels
        self.classes = list(annotations.classes)
        self.num_missing = annotations.missing
        self.source = annotations.source
        self.train = train
        self.num_frames = num_frames
        self.sampling_rate = sampling_rate
        self.num_clips = 1 if train else num_clips
        self.num_crops = 1 if train else num_crops
        self.max_retries = max_retries
        if train:
            self.transform = TrainTransform(crop_size, train_scale, mean, std, hflip)
        else:
            self.transform = TestTransform(crop_size, test_scale, mean, std, num_crops)
        self._skipped = SkippedFiles()

    @property
    def num_videos(self) -> int:
        return len(self.videos)

    @property
    def num_views(self) -> int:
        return self.num_clips * self.num_crops

    def __len__(self) -> int:
        return self.num_videos * self.num_views

    def skipped_files(self) -> list[str]:
        """Paths of the videos replaced so far, in this process and its DataLoader workers."""
        return self._skipped.paths()

    def _load(self, video_index: int, view: int) -> torch.Tensor:
        video = OpenVideo(self.videos[video_index])
        total = video.info.num_frames
        if self.train:
            return self.transform(video.frames(random_clip(total, self.num_frames, self.sampling_rate)))
        clip_index, crop_index = divmod(view, self.num_crops)
        indices = uniform_clips(total, self.num_frames, self.sampling_rate, self.num_clips)[clip_index]
        return self.transform(video.frames(indices), crop_index)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        video_index, view = divmod(index, self.num_views)
        for _ in range(self.max_retries + 1):
            try:
                return self._load(video_index, view), self.labels[video_index], video_index
            except VideoReadError as error:
                self._skipped.add(self.videos[video_index], str(error))
                if self.train:
                    video_index = random.randrange(self.num_videos)
                else:
                    video_index = (video_index + 1) % self.num_videos
        raise RuntimeError(
            f"{self.max_retries + 1} videos in a row could not be decoded, last {self.videos[video_index]}; "
            f"skipped so far: {len(self.skipped_files())}"
        )
