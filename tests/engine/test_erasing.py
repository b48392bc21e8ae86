"""Random erasing on the device: one rectangle per erased clip, zero through every channel and frame,
of an area in torchvision's range; probability 0 erases nothing."""
import numpy as np
import torch

from softpool3d.engine.training.switches.erasing import random_erase


def test_each_erased_clip_has_one_zero_box_through_all_frames_and_channels():
    clips = torch.rand(16, 3, 4, 24, 32) + 1  # no zeros before erasing
    erased = random_erase(clips, 1.0, np.random.default_rng(0))
    for clip in erased:
        zero = clip == 0
        box = zero[0, 0]
        assert torch.equal(zero, box.expand_as(zero))  # every channel and frame alike
        rows, cols = box.any(1).nonzero().flatten(), box.any(0).nonzero().flatten()
        assert box.sum() == len(rows) * len(cols) > 0  # one rectangle
        assert rows.diff().eq(1).all() and cols.diff().eq(1).all()
        assert 0.02 * 24 * 32 * 0.5 <= box.sum() <= 24 * 32 / 3 * 1.5  # torchvision's area range, rounded
    kept = erased != 0
    assert torch.equal(erased[kept], clips[kept])


def test_probability_zero_erases_nothing_and_the_draws_repeat():
    clips = torch.rand(8, 3, 2, 16, 16) + 1
    assert torch.equal(random_erase(clips, 0.0, np.random.default_rng(0)), clips)
    half = [random_erase(clips, 0.5, np.random.default_rng(4)) for _ in range(2)]
    assert torch.equal(half[0], half[1])
    erased_clips = int((half[0] == 0).flatten(1).any(1).sum())
    assert 0 < erased_clips < 8
