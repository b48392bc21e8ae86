"""``ClipDataset``: videos of one split -> uint8 clips ``(C, T, H, W)`` with labels."""
from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset

from softpool3d.datasets.annotations import Annotations
from softpool3d.datasets.sampling import TestSampler, TrainSampler, randint, random_clip, sample_generator, uniform_clips
from softpool3d.datasets.transforms import TestTransform, TrainTransform
from softpool3d.datasets.video_io import OpenVideo, VideoReadError

logger = logging.getLogger(__name__)

UNREADABLE = -1
"""The label of a test view whose video cannot be decoded."""


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


def stored_rate(sampling_rate: int, frame_step: int, where: object) -> int:
    """The sampling rate in stored frames: ``sampling_rate / frame_step``, which must be whole."""
    if sampling_rate % frame_step:
        raise ValueError(f"{where} keeps every {frame_step}-th frame, which does not divide sampling_rate={sampling_rate}; "
                         f"prepare shards with a frame step that divides it")
    return sampling_rate // frame_step


def _checked(indices: Sequence[int], num_frames: int, sampler: str) -> Sequence[int]:
    """``indices`` when there are ``num_frames`` of them, else an error naming the sampler."""
    if len(indices) != num_frames:
        raise ValueError(f"{sampler} gave {len(indices)} frame indices, expected num_frames={num_frames}")
    return indices


class ClipDataset(Dataset):
    """Clips of the videos in ``annotations``.

    Training (``train=True``): item ``i`` is one random clip of video ``i``, randomly scaled,
    cropped and flipped; with ``repeat_aug=k`` it is ``k`` clips of video ``i`` made from one
    decode: the same frames, each repeat independently scaled, cropped and flipped (repeated
    augmentation; independent frame positions per repeat would decode about ``k`` times the
    frames, which is the cost repeat_aug exists to save). Every random draw of item ``i``'s
    repeat ``r`` comes from :func:`sample_generator` ``(seed, epoch, i, r)`` (the frame positions
    from repeat 0's), with ``epoch`` set by :meth:`set_epoch`, so an item is the same in any
    worker, process or run.
    Testing: item ``i`` is view ``i % num_views`` of video ``i // num_views``, where the views
    are ``num_clips`` uniformly spaced clips times ``num_crops`` crops, all deterministic.

    Which frames and which pixels are pluggable; the defaults are the behaviour above:

    - ``train_sampler(total, num_frames, sampling_rate, generator)`` gives the ``num_frames``
      frame indices of a training clip (default :func:`~softpool3d.datasets.sampling.random_clip`);
      it is called with repeat 0's generator, and must draw from it alone.
    - ``test_sampler(total, num_frames, sampling_rate, num_clips)`` gives the ``num_clips`` index
      lists of the test views (default :func:`~softpool3d.datasets.sampling.uniform_clips`).
    - ``transform`` turns uint8 frames ``(T, H, W, 3)`` into a uint8 clip
      ``(C, T, crop_size, crop_size)``; when training it is called ``transform(frames, generator)``
      once per repeat, with that repeat's generator (after the sampler's draws for repeat 0), and
      must draw every random choice from it; when testing ``transform(frames, crop_index)`` with
      ``crop_index`` in ``range(num_crops)``. ``None`` builds
      :class:`~softpool3d.datasets.transforms.TrainTransform` (``crop_size``, ``train_scale``,
      ``hflip``, ``rand_augment_n``, ``rand_augment_m``) or
      :class:`~softpool3d.datasets.transforms.TestTransform` (``crop_size``, ``test_scale``,
      ``num_crops``); a given transform ignores those arguments except ``crop_size`` (the size of
      the zero views below).

    Items are ``(clip, label, video_index)`` with ``clip`` uint8 ``(C, T, crop_size, crop_size)``,
    or ``(repeat_aug, C, T, crop_size, crop_size)`` when training with ``repeat_aug > 1``. The
    engine converts and normalizes clips on its device (:mod:`softpool3d.engine.inputs`).

    When training, a video that cannot be decoded is replaced by a random other one (drawn from
    the item's own generator), at most ``max_retries`` times in a row; it is logged once and
    listed by :meth:`skipped_files`. When testing, a view that cannot be decoded is the item
    ``(zeros, UNREADABLE, video_index)`` (so batches still collate) and
    :func:`softpool3d.engine.evaluation.evaluate.evaluate` leaves the video out.

    ``videos`` (:class:`PathList`) and ``labels`` (:class:`LabelList`) index like lists but
    are a few numpy arrays; ``num_missing``, ``source`` and ``records`` repeat :class:`Annotations`'
    (left-out videos, provenance, the file the arrays are mapped from). With ``records``, a pickled
    copy (what a DataLoader worker receives) holds the file's name instead of the rows and maps the
    file when it first reads them, so every worker of every rank reads the same pages.
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
        hflip: bool = True,
        max_retries: int = 10,
        seed: int = 0,
        repeat_aug: int = 1,
        rand_augment_n: int = 0,
        rand_augment_m: int = 9,
        train_sampler: TrainSampler = random_clip,
        test_sampler: TestSampler = uniform_clips,
        transform: Callable[..., torch.Tensor] | None = None,
    ) -> None:
        if num_frames < 1 or sampling_rate < 1 or num_clips < 1:
            raise ValueError(
                f"num_frames, sampling_rate and num_clips must be positive, got {num_frames}, {sampling_rate}, {num_clips}"
            )
        if repeat_aug < 1 or (repeat_aug > 1 and not train):
            raise ValueError(f"repeat_aug must be >= 1, and 1 unless training, got {repeat_aug} (train={train})")
        if not annotations.videos:
            raise ValueError("the dataset has no videos")
        self.videos = annotations.videos
        self.labels = annotations.labels
        self.classes = list(annotations.classes)
        self.num_missing = annotations.missing
        self.source = annotations.source
        self.records = annotations.records
        self.train = train
        self.num_frames = num_frames
        self.sampling_rate = sampling_rate
        self.crop_size = crop_size
        self.num_clips = 1 if train else num_clips
        self.num_crops = 1 if train else num_crops
        self.max_retries = max_retries
        self.seed = seed
        self.repeat_aug = repeat_aug
        self.epoch = 0
        self.train_sampler = train_sampler
        self.test_sampler = test_sampler
        if transform is not None:
            self.transform = transform
        elif train:
            self.transform = TrainTransform(crop_size, train_scale, hflip, rand_augment_n, rand_augment_m)
        else:
            self.transform = TestTransform(crop_size, test_scale, num_crops)
        self._skipped = SkippedFiles()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        if self.records is not None:
            del state["videos"], state["labels"]
        return state

    def __getattr__(self, name: str) -> object:
        """``videos`` and ``labels`` of a copy unpickled without them: mapped from ``records`` on first
        use (:class:`~softpool3d.datasets.shared_records.RecordsError` names a missing or damaged file)."""
        records = self.__dict__.get("records")
        if name not in ("videos", "labels") or records is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        self.videos, self.labels, _ = records.open()
        return self.__dict__[name]

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

    def unreadable_view(self) -> torch.Tensor:
        """The zero clip uint8 ``(C, T, crop, crop)`` that stands in for a view that cannot be decoded."""
        return torch.zeros(3, self.num_frames, self.crop_size, self.crop_size, dtype=torch.uint8)

    def set_epoch(self, epoch: int) -> None:
        """Draw training clips for ``epoch`` (call before creating the epoch's DataLoader iterator)."""
        self.epoch = epoch

    def train_draw(self, video: OpenVideo, index: int) -> tuple[list[torch.Generator], Sequence[int]]:
        """Item ``index``'s generators (one per repeat) and the frame indices of its clip in ``video``,
        drawn from repeat 0's generator; the transforms then draw from each repeat's generator."""
        generators = [sample_generator(self.seed, self.epoch, index, r) for r in range(self.repeat_aug)]
        rate = stored_rate(self.sampling_rate, video.info.frame_step, video.path)
        indices = self.train_sampler(video.info.num_frames, self.num_frames, rate, generators[0])
        return generators, _checked(indices, self.num_frames, "train_sampler")

    def train_frames(self, video: OpenVideo, indices: Sequence[int]) -> torch.Tensor:
        """The frames a training clip's transform is given: uint8 ``(T, H, W, 3)`` at ``indices``."""
        return video.frames(indices)

    def _train_clips(self, video: OpenVideo, index: int) -> torch.Tensor:
        """``repeat_aug`` clips of ``video`` for item ``index``: ``(C, T, H, W)``, or ``(k, C, T, H, W)`` for k > 1.

        The frames are drawn and decoded once, with repeat 0's generator; each repeat ``r`` then
        draws its own scale, crop and flip from generator ``r``.
        """
        generators, indices = self.train_draw(video, index)
        frames = self.train_frames(video, indices)
        views = [self.transform(frames, generator) for generator in generators]
        return views[0] if self.repeat_aug == 1 else torch.stack(views)

    def test_view(self, video: OpenVideo, view: int, span: tuple[int, int] | None = None) -> torch.Tensor:
        """Test view ``view`` of ``video`` (clip ``view // num_crops``, crop ``view % num_crops``):
        ``(C, T, crop_size, crop_size)``. ``span=(first, end)`` spreads the clips over frames
        ``first .. end - 1`` only (a window of a long video); default the whole video."""
        first, end = span if span is not None else (0, video.info.num_frames)
        clip_index, crop_index = divmod(view, self.num_crops)
        rate = stored_rate(self.sampling_rate, video.info.frame_step, video.path)
        clips = self.test_sampler(end - first, self.num_frames, rate, self.num_clips)
        if len(clips) != self.num_clips:
            raise ValueError(f"test_sampler gave {len(clips)} clips, expected num_clips={self.num_clips}")
        indices = [first + i for i in _checked(clips[clip_index], self.num_frames, "test_sampler")]
        return self.transform(video.frames(indices), crop_index)

    def open_video(self, video_index: int) -> OpenVideo:
        """The frame source of video ``video_index``: its ``info`` and ``frames(indices)`` (uint8 ``(T, H, W, 3)``);
        raises :class:`VideoReadError` when it cannot be read. Here the video file, decoded by decord or PyAV."""
        return OpenVideo(self.videos[video_index])

    def _load(self, video_index: int, view: int, index: int) -> torch.Tensor:
        video = self.open_video(video_index)
        if self.train:
            return self._train_clips(video, index)
        return self.test_view(video, view)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        video_index, view = divmod(index, self.num_views)
        for attempt in range(self.max_retries + 1):
            try:
                return self._load(video_index, view, index), self.labels[video_index], video_index
            except VideoReadError as error:
                if not self.train:
                    logger.debug("view %d of %s is left out: %s", view, self.videos[video_index], error)
                    return self.unreadable_view(), UNREADABLE, video_index
                self._skipped.add(self.videos[video_index], str(error))
                video_index = randint(self.num_videos, sample_generator(self.seed, self.epoch, index, -1 - attempt))
        raise RuntimeError(
            f"{self.max_retries + 1} videos in a row could not be decoded, last {self.videos[video_index]}; "
            f"skipped so far: {len(self.skipped_files())}"
        )
