"""RandAugment for video: ``n`` operations with their magnitude drawn once per clip from the clip's
generator and applied to every frame of it alike.

The operations and their magnitude scales are torchvision's ``RandAugment``'s (``v2.RandAugment``,
31 magnitude bins): identity, shear, translation, rotation, brightness, colour, contrast,
sharpness, posterize, solarize, autocontrast and equalize. ``v2.RandAugment`` applied to a
``tv_tensors.Video`` already treats all frames alike, but it draws from the global RNG; here every
draw comes from the ``torch.Generator`` given to the call, so a clip is the same in any worker,
process or run (see :func:`softpool3d.datasets.sampling.sample_generator`).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

NUM_MAGNITUDE_BINS = 31
"""Magnitudes run over ``0 .. NUM_MAGNITUDE_BINS - 1``, torchvision's scale (``data.rand_augment_m``)."""


class _Op(NamedTuple):
    magnitudes: Callable[[int, int], torch.Tensor]  # (height, width) -> one magnitude per bin
    signed: bool
    apply: Callable[[torch.Tensor, float], torch.Tensor]  # (uint8 video (T, C, H, W), magnitude) -> video


def _bins(high: float) -> Callable[[int, int], torch.Tensor]:
    return lambda height, width: torch.linspace(0.0, high, NUM_MAGNITUDE_BINS)


def _shear(video: torch.Tensor, magnitude: float, axis: int) -> torch.Tensor:
    shear = [0.0, 0.0]
    shear[axis] = math.degrees(math.atan(magnitude))
    return TF.affine(video, angle=0.0, translate=[0, 0], scale=1.0, shear=shear,
                     interpolation=InterpolationMode.NEAREST, center=[0, 0])


def _translate(video: torch.Tensor, magnitude: float, axis: int) -> torch.Tensor:
    translate = [0, 0]
    translate[axis] = int(magnitude)
    return TF.affine(video, angle=0.0, translate=translate, scale=1.0, shear=[0.0, 0.0],
                     interpolation=InterpolationMode.NEAREST)


OPERATIONS: dict[str, _Op] = {
    "Identity": _Op(_bins(0.0), False, lambda video, m: video),
    "ShearX": _Op(_bins(0.3), True, lambda video, m: _shear(video, m, 0)),
    "ShearY": _Op(_bins(0.3), True, lambda video, m: _shear(video, m, 1)),
    "TranslateX": _Op(lambda h, w: torch.linspace(0.0, 150.0 / 331.0 * w, NUM_MAGNITUDE_BINS), True,
                      lambda video, m: _translate(video, m, 0)),
    "TranslateY": _Op(lambda h, w: torch.linspace(0.0, 150.0 / 331.0 * h, NUM_MAGNITUDE_BINS), True,
                      lambda video, m: _translate(video, m, 1)),
    "Rotate": _Op(_bins(30.0), True, lambda video, m: TF.rotate(video, m, interpolation=InterpolationMode.NEAREST)),
    "Brightness": _Op(_bins(0.9), True, lambda video, m: TF.adjust_brightness(video, 1.0 + m)),
    "Color": _Op(_bins(0.9), True, lambda video, m: TF.adjust_saturation(video, 1.0 + m)),
    "Contrast": _Op(_bins(0.9), True, lambda video, m: TF.adjust_contrast(video, 1.0 + m)),
    "Sharpness": _Op(_bins(0.9), True, lambda video, m: TF.adjust_sharpness(video, 1.0 + m)),
    "Posterize": _Op(lambda h, w: 8 - (torch.arange(NUM_MAGNITUDE_BINS) / ((NUM_MAGNITUDE_BINS - 1) / 4)).round(),
                     False, lambda video, m: TF.posterize(video, int(m))),
    "Solarize": _Op(lambda h, w: torch.linspace(1.0, 0.0, NUM_MAGNITUDE_BINS), False,
                    lambda video, m: TF.solarize(video, 255.0 * m)),
    "AutoContrast": _Op(_bins(0.0), False, lambda video, m: TF.autocontrast(video)),
    "Equalize": _Op(_bins(0.0), False, lambda video, m: TF.equalize(video)),
}
"""torchvision's RandAugment operations on uint8 video ``(T, C, H, W)``, in its order."""


class VideoRandAugment:
    """``num_ops`` operations of :data:`OPERATIONS`, each drawn uniformly (with repetition) with
    magnitude bin ``magnitude`` (its sign drawn too, for the signed ones), applied to every frame.

    ``num_ops=0`` draws nothing and returns the video unchanged.
    """

    def __init__(self, num_ops: int, magnitude: int) -> None:
        if num_ops < 0 or not 0 <= magnitude < NUM_MAGNITUDE_BINS:
            raise ValueError(f"RandAugment needs num_ops >= 0 and magnitude in [0, {NUM_MAGNITUDE_BINS - 1}], "
                             f"got {num_ops} and {magnitude}")
        self.num_ops, self.magnitude = num_ops, magnitude
        self.names = list(OPERATIONS)

    def draw(self, height: int, width: int, generator: torch.Generator | None) -> list[tuple[str, float]]:
        """The ``(operation, signed magnitude)`` pairs of one clip, drawn from ``generator``."""
        chosen = []
        for _ in range(self.num_ops):
            name = self.names[int(torch.randint(len(self.names), (), generator=generator))]
            op = OPERATIONS[name]
            magnitude = float(op.magnitudes(height, width)[self.magnitude])
            if op.signed and float(torch.rand((), generator=generator)) <= 0.5:
                magnitude = -magnitude
            chosen.append((name, magnitude))
        return chosen

    def __call__(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 video ``(T, C, H, W)`` (a ``tv_tensors.Video``) -> the same shape and type."""
        for name, magnitude in self.draw(video.shape[-2], video.shape[-1], generator):
            video = OPERATIONS[name].apply(video, magnitude)
        return video
