"""Training clips decoded on the training device: DataLoader workers read a clip's JPEG bytes and draw
its frame positions; the batch's JPEGs go to the device and are decoded there in one call
(``torchvision.io.decode_jpeg(list, device="cuda")``, nvJPEG), then scaled, cropped and flipped there
(and RandAugment'ed where it is on) by the dataset's own train transform.

Every random choice stays the worker's: a :class:`JpegClip` carries the state of each repeat's
generator after the worker's draws, and the transform on the device continues from it, so a clip
is cut where the CPU path cuts it (the pixels differ only by the decoders' rounding).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch.utils.data._utils.collate import default_collate_fn_map
from torchvision.io import ImageReadMode, decode_jpeg


@dataclass
class JpegClip:
    """One training item before decoding: ``jpegs`` (uint8 byte tensors, one a frame, in clip order),
    one generator state per repeat (``repeat_aug``), each taken after the worker's draws, and the
    dataset's train transform (uint8 frames ``(T, H, W, 3)`` and a generator -> uint8 ``(C, T, crop, crop)``)."""

    jpegs: list[torch.Tensor]
    states: list[torch.Tensor]
    transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass
class JpegBatch:
    """A DataLoader batch of :class:`JpegClip` (what the collation of such items gives)."""

    clips: list[JpegClip]

    def pin_memory(self) -> JpegBatch:
        return JpegBatch([JpegClip([j.pin_memory() for j in c.jpegs], c.states, c.transform) for c in self.clips])

    def decode(self, device: torch.device) -> torch.Tensor:
        """uint8 clips ``(N, C, T, crop, crop)`` (``(N, k, C, T, crop, crop)`` with ``repeat_aug`` k > 1)
        on ``device``: every JPEG of the batch decoded in one call there, then each clip's transform."""
        flat = [jpeg for clip in self.clips for jpeg in clip.jpegs]
        if device.type == "cuda":
            frames = decode_jpeg(flat, mode=ImageReadMode.RGB, device=device)
        else:
            frames = decode_jpeg(flat, mode=ImageReadMode.RGB)
        out, start = [], 0
        for clip in self.clips:
            video = torch.stack([frame.permute(1, 2, 0) for frame in frames[start : start + len(clip.jpegs)]])
            start += len(clip.jpegs)
            views = [clip.transform(video, _generator(state)) for state in clip.states]
            out.append(views[0] if len(views) == 1 else torch.stack(views))
        return torch.stack(out)


def _generator(state: torch.Tensor) -> torch.Generator:
    generator = torch.Generator()
    generator.set_state(state)
    return generator


def collate_jpeg_clips(batch: Sequence[JpegClip], *, collate_fn_map: dict | None = None) -> JpegBatch:
    """DataLoader collation of :class:`JpegClip` items into a :class:`JpegBatch` (frames differ in size)."""
    return JpegBatch(list(batch))


def on_device(clips: torch.Tensor | JpegBatch, device: torch.device) -> torch.Tensor:
    """A loader batch on ``device``: a tensor copied there (``non_blocking``), a :class:`JpegBatch` decoded there."""
    if isinstance(clips, JpegBatch):
        return clips.decode(device)
    return clips.to(device, non_blocking=True)


# DataLoader's default collation (torch.utils.data.default_collate) looks types up in this map.
default_collate_fn_map[JpegClip] = collate_jpeg_clips
