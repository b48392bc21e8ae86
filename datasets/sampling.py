"""Which frames make a clip: one random clip for training, uniformly spaced views for testing.

Training randomness is per sample: :func:`sample_generator` seeds a generator from
``(seed, epoch, index, repeat)`` only, so a sample's clip does not depend on the DataLoader
worker that loads it, the number of workers, the rank, or a restart.

A sampler is any function of the signature of :data:`TrainSampler` (:func:`random_clip`) or
:data:`TestSampler` (:func:`uniform_clips`); :class:`~softpool3d.datasets.ClipDataset` takes one
of each.
"""
from __future__ import annotations

import hashlib
import struct
from typing import Callable, Sequence

import torch

NUM_CROPS = (1, 3)
"""How many spatial crops a test view may take: 1 (the centre) or 3 (start, centre and end of the long side)."""

TrainSampler = Callable[[int, int, int, torch.Generator], Sequence[int]]
"""``(total, num_frames, sampling_rate, generator) -> frame indices`` of one training clip, every
random choice drawn from ``generator``; ``total`` is the video's frame count."""

TestSampler = Callable[[int, int, int, int], Sequence[Sequence[int]]]
"""``(total, num_frames, sampling_rate, num_clips) -> num_clips lists of frame indices``, deterministic."""


def clip_span(num_frames: int, sampling_rate: int) -> int:
    """Frames covered by a clip of ``num_frames`` frames taken every ``sampling_rate`` frames."""
    return (num_frames - 1) * sampling_rate + 1


def _clip_at(start: int, total: int, num_frames: int, sampling_rate: int) -> list[int]:
    """Indices from ``start``; a video shorter than the clip is looped."""
    return [(start + k * sampling_rate) % total for k in range(num_frames)]


def sample_generator(seed: int, epoch: int, index: int, repeat: int = 0) -> torch.Generator:
    """A CPU generator seeded from a hash of ``(seed, epoch, index, repeat)`` and nothing else.

    ``repeat`` numbers the clips drawn from one video in one epoch (``repeat_aug``); negative
    values are reserved for other draws of the same sample (the replacement of an unreadable video).
    """
    key = hashlib.sha256(struct.pack("<4q", seed, epoch, index, repeat)).digest()
    return torch.Generator().manual_seed(int.from_bytes(key[:8], "little") >> 1)


def randint(high: int, generator: torch.Generator | None = None) -> int:
    """A uniform integer in ``[0, high)`` from ``generator`` (torch's global generator when ``None``)."""
    return int(torch.randint(high, (), generator=generator))


def random_clip(total: int, num_frames: int, sampling_rate: int, generator: torch.Generator | None = None) -> list[int]:
    """One clip at a uniformly random start, for training."""
    room = max(total - clip_span(num_frames, sampling_rate), 0)
    return _clip_at(randint(room + 1, generator), total, num_frames, sampling_rate)


def uniform_clips(total: int, num_frames: int, sampling_rate: int, num_clips: int) -> list[list[int]]:
    """``num_clips`` clips with starts spread evenly over the video (one: the centre), for testing."""
    room = max(total - clip_span(num_frames, sampling_rate), 0)
    if num_clips == 1:
        starts = [room // 2]
    else:
        starts = [round(room * k / (num_clips - 1)) for k in range(num_clips)]
    return [_clip_at(start, total, num_frames, sampling_rate) for start in starts]


def crop_offsets(size: tuple[int, int], crop: int, num_crops: int) -> list[tuple[int, int]]:
    """Top-left corners of ``num_crops`` (1: centre, 3: start/centre/end of the long side) crops."""
    height, width = size
    centre = ((height - crop) // 2, (width - crop) // 2)
    if num_crops not in NUM_CROPS:
        raise ValueError(f"num_crops must be one of {', '.join(map(str, NUM_CROPS))}, got {num_crops}")
    if num_crops == 1:
        return [centre]
    if width >= height:
        return [(centre[0], 0), centre, (centre[0], width - crop)]
    return [(0, centre[1]), centre, (height - crop, centre[1])]

