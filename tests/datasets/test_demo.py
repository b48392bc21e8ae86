"""The demo generator's difficulty knobs: ``noise`` sets the per-pixel noise's standard deviation,
and ``distractors`` adds shapes that move behind an actor that does not (a fading square)."""
import numpy as np
import pytest

from softpool3d.datasets.demo import render_action


@pytest.mark.parametrize("noise", [5.0, 30.0])
def test_noise_sets_the_pixel_noise_standard_deviation(noise):
    frames = render_action("FadeIn", 4, 64, np.random.default_rng(0), noise=noise).astype(np.float64)
    corner = frames[0, :8, :8]  # background only: the shape sits in the middle
    assert corner.std(axis=(0, 1)).mean() == pytest.approx(noise, rel=0.2)


def test_distractors_move_where_the_actor_stands_still():
    plain = render_action("FadeIn", 8, 64, np.random.default_rng(1), noise=0.0).astype(np.int16)
    busy = render_action("FadeIn", 8, 64, np.random.default_rng(1), noise=0.0, distractors=2).astype(np.int16)
    outside = np.ones((64, 64), dtype=bool)
    outside[8:56, 8:56] = False  # the fading shape stays inside the middle
    assert (np.abs(np.diff(plain, axis=0))[:, outside] == 0).all()  # a still background without distractors
    moved = (np.abs(np.diff(busy, axis=0))[:, outside] > 0).any(axis=-1).sum(axis=-1)
    assert (moved > 0).sum() >= 5  # most frame pairs change outside the actor
