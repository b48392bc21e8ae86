"""Clip transforms on ``torchvision.transforms.v2`` video tensors.

Frames come in as uint8 ``(T, H, W, 3)`` and leave as uint8 ``(C, T, H, W)``: a quarter of a
float clip's bytes through the worker queue and the host-to-device copy. Conversion to float and
normalization happen on the training device (:mod:`softpool3d.engine.inputs`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.nn.functional import interpolate
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from softpool3d.datasets.rand_augment import VideoRandAugment
from softpool3d.datasets.sampling import NUM_CROPS, crop_offsets, randint


def _to_video(frames: torch.Tensor) -> tv_tensors.Video:
    """uint8 ``(T, H, W, 3)`` -> ``Video`` ``(T, 3, H, W)``."""
    return tv_tensors.Video(frames.permute(0, 3, 1, 2))


def _to_clip(video: torch.Tensor, flip: bool = False) -> torch.Tensor:
    """uint8 ``(T, C, H, W)`` -> plain contiguous ``(C, T, H, W)``, mirrored left-right when ``flip``.

    On the CPU this is one numpy copy: the frames are channels-last (``(T, H, W, C)`` in memory, as
    decoded and resized), and torch's copy into ``(C, T, H, W)`` moves their bytes one at a time, about
    4x slower at 13x160x160; the mirror costs nothing more inside that copy.
    """
    clip = video.as_subclass(torch.Tensor).permute(1, 0, 2, 3)
    if clip.device.type != "cpu":
        return (clip.flip(-1) if flip else clip).contiguous()
    array = clip.numpy()
    return torch.from_numpy(np.ascontiguousarray(array[..., ::-1] if flip else array))


def _resized(video: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``(T, C, h, w)`` -> ``(T, C, size, size)``, bilinear with antialiasing: ``TF.resize``'s result.

    On the CPU this is the call TF.resize makes for uint8 (``interpolate``, whose AVX2 kernel resizes
    channels-last uint8 as it is), made directly, without TF.resize's dispatch and checks
    on every clip. Elsewhere (CUDA has no uint8 kernel) TF.resize itself.
    """
    if tuple(video.shape[-2:]) == (size, size):
        return video
    if video.device.type == "cpu" and video.dtype == torch.uint8:
        return interpolate(video, size=[size, size], mode="bilinear", align_corners=False, antialias=True)
    return TF.resize(video, [size, size], antialias=True)


class TrainTransform:
    """Random short-side scale in ``scale``, random ``crop_size`` crop, optional flip, optional
    RandAugment (``rand_augment_n`` ops of magnitude ``rand_augment_m``, the same on every frame:
    :class:`~softpool3d.datasets.rand_augment.VideoRandAugment`).

    Every random choice is drawn from the ``generator`` given to the call, so a seeded generator
    gives the same clip in any process (torchvision's random transforms would use the global RNG).
    """

    def __init__(
        self, crop_size: int, scale: Sequence[int], hflip: bool = True, rand_augment_n: int = 0, rand_augment_m: int = 9,
    ) -> None:
        low, high = int(scale[0]), int(scale[1])
        if not crop_size <= low <= high:
            raise ValueError(f"train_scale must satisfy crop_size <= low <= high, got {tuple(scale)} and crop {crop_size}")
        self.crop_size, self.low, self.high, self.hflip = crop_size, low, high, hflip
        self.rand_augment = VideoRandAugment(rand_augment_n, rand_augment_m)

    def __call__(self, frames: torch.Tensor | Sequence[torch.Tensor], generator: torch.Generator | None = None
                 ) -> torch.Tensor:
        """uint8 ``(T, H, W, 3)`` frames, or a sequence of ``T`` uint8 frames ``(H, W, 3)`` of one size (as a
        JPEG decoder gives them, one buffer a frame), -> uint8 ``(C, T, crop, crop)``; draws from
        ``generator`` (global RNG if ``None``).

        The crop is chosen on the scaled frame, then cut from the source and resized alone: the same
        picture up to a source pixel of rounding, without scaling the pixels the crop throws away.
        Of a sequence only the cut of each frame is copied (never the whole frames into one tensor).
        """
        height, width = frames[0].shape[:2]
        factor = (self.low + randint(self.high - self.low + 1, generator)) / min(height, width)
        scaled_height, scaled_width = max(round(height * factor), self.crop_size), max(round(width * factor), self.crop_size)
        top = randint(scaled_height - self.crop_size + 1, generator)
        left = randint(scaled_width - self.crop_size + 1, generator)
        side_h, side_w = min(round(self.crop_size / factor), height), min(round(self.crop_size / factor), width)
        first_row, first_column = min(round(top / factor), height - side_h), min(round(left / factor), width - side_w)
        rows, columns = slice(first_row, first_row + side_h), slice(first_column, first_column + side_w)
        if isinstance(frames, torch.Tensor):
            cut = frames[:, rows, columns]
        else:
            cut = torch.stack([frame[rows, columns] for frame in frames])
        video = _resized(cut.permute(0, 3, 1, 2), self.crop_size)
        flip = bool(self.hflip and randint(2, generator))
        if self.rand_augment.num_ops:  # RandAugment's shears and translations see the mirrored frames
            video = tv_tensors.Video(video)
            video = self.rand_augment(TF.horizontal_flip(video) if flip else video, generator)
            flip = False
        return _to_clip(video, flip)


class TestTransform:
    """Short-side resize to ``scale``, then one of ``num_crops`` crops (1: centre, 3: along the long side)."""

    def __init__(self, crop_size: int, scale: int, num_crops: int = 1) -> None:
        if scale < crop_size:
            raise ValueError(f"test_scale {scale} is smaller than crop_size {crop_size}")
        if num_crops not in NUM_CROPS:
            raise ValueError(f"num_crops must be one of {', '.join(map(str, NUM_CROPS))}, got {num_crops}")
        self.crop_size = crop_size
        self.num_crops = num_crops
        self.resize = v2.Resize(scale, antialias=True)

    def __call__(self, frames: torch.Tensor, crop_index: int = 0) -> torch.Tensor:
        """uint8 ``(T, H, W, 3)`` -> uint8 ``(C, T, crop, crop)`` for crop ``crop_index``."""
        video = self.resize(_to_video(frames))
        top, left = crop_offsets(tuple(video.shape[-2:]), self.crop_size, self.num_crops)[crop_index]
        video = TF.crop(video, top, left, self.crop_size, self.crop_size)
        return _to_clip(video)
