"""What a loader batch becomes on the device before the model: the one place clips are normalized.

DataLoader workers deliver uint8 clips (decoded, scaled, cropped and flipped there). The step, the
evaluation and the test copy them to the device as they are (``non_blocking``: from pinned memory
the copy overlaps the host's work) and convert them there, so a clip crosses to the device in a
quarter of a float clip's bytes and no worker core spends time on float arithmetic. The
conversion is torchvision's ``ToDtype(float32, scale=True)`` then ``Normalize(mean, std)``, the
same operations in the same order, so a clip reaches the model bit for bit as it did when the
workers normalized it.
"""
from __future__ import annotations

from typing import Sequence

import torch


class ClipNormalizer:
    """uint8 clips ``(..., C, T, H, W)`` -> float32 ``(x / 255 - mean) / std`` per channel ``C``, on
    the clips' own device (``mean``/``std``: ``data.mean``/``data.std``, R, G, B).

    A floating clip (a custom ``transform`` that normalizes itself, or a test's synthetic input) is
    the model's input already and is returned unchanged.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        mean, std = [float(m) for m in mean], [float(s) for s in std]
        if len(mean) != 3 or len(std) != 3 or not all(s > 0 for s in std):
            raise ValueError(f"mean and std must be three values (R, G, B) with std > 0, got mean={mean}, std={std}")
        self.mean, self.std = tuple(mean), tuple(std)
        self._constants: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``mean`` and ``std`` as ``(3, 1, 1, 1)`` float32 tensors on ``device``, copied there once."""
        if device not in self._constants:
            self._constants[device] = tuple(
                torch.tensor(values, dtype=torch.float32).view(3, 1, 1, 1).to(device) for values in (self.mean, self.std))
        return self._constants[device]

    def __call__(self, clips: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, C, T, H, W)`` (or ``(C, T, H, W)``) -> normalized float32 of the same shape and device."""
        if clips.is_floating_point():
            return clips
        if clips.dtype != torch.uint8:
            raise TypeError(f"clips must be uint8 (or already floating), got {clips.dtype}")
        if clips.dim() < 4 or clips.shape[-4] != 3:
            raise ValueError(f"clips must be (N, 3, T, H, W) or (3, T, H, W), got {tuple(clips.shape)}")
        mean, std = self._on(clips.device)
        return clips.to(torch.float32).mul_(1.0 / 255).sub_(mean).div_(std)


def model_inputs(clips: torch.Tensor, device: torch.device, normalizer: ClipNormalizer) -> torch.Tensor:
    """A loader batch of clips (uint8 ``(N, C, T, H, W)``, pinned when the loader pins) -> the model's
    float32 input on ``device``: a ``non_blocking`` copy, then :class:`ClipNormalizer` there."""
    return normalizer(clips.to(device, non_blocking=True))
