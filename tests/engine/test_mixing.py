"""Mixup/CutMix and the soft-target loss: the loss against its float64 formula (with label smoothing),
mixed clips and targets against the blend they claim, CutMix's box through all frames, and the
per-step draws (same key, same batch; another rank, another mix)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from softpool3d.engine.training.switches import step_generator
from softpool3d.engine.training.switches.mixing import Mixer, soft_target_cross_entropy


def _reference_loss(logits, targets, smoothing):
    """``mean_n -sum_k t'_nk log softmax(z_n)_k`` in float64, ``t' = (1 - eps) t + eps / K``, written out."""
    z = logits.double()
    n, k = z.shape
    total = 0.0
    for row in range(n):
        log_norm = math.log(sum(math.exp(float(v)) for v in z[row]))
        for cls in range(k):
            t = (1 - smoothing) * float(targets[row, cls]) + smoothing / k
            total -= t * (float(z[row, cls]) - log_norm)
    return total / n


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_soft_target_loss_matches_the_float64_formula(smoothing):
    torch.manual_seed(0)
    logits = torch.randn(6, 5) * 3
    targets = torch.softmax(torch.randn(6, 5), dim=1)
    assert float(soft_target_cross_entropy(logits, targets, smoothing)) == pytest.approx(
        _reference_loss(logits, targets, smoothing), rel=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_hard_labels_give_the_cross_entropy_of_their_one_hot_targets(smoothing):
    torch.manual_seed(1)
    logits, labels = torch.randn(7, 4), torch.randint(4, (7,))
    expected = _reference_loss(logits, F.one_hot(labels, 4).double(), smoothing)
    assert float(soft_target_cross_entropy(logits, labels, smoothing)) == pytest.approx(expected, rel=1e-6)
    assert float(soft_target_cross_entropy(logits, F.one_hot(labels, 4).float(), smoothing)) == pytest.approx(
        expected, rel=1e-6)


def _batch():
    torch.manual_seed(2)
    return torch.randn(4, 3, 2, 8, 10), torch.tensor([0, 1, 2, 1])


def test_mixup_blends_each_clip_with_its_reversed_partner_by_the_targets_weight():
    clips, labels = _batch()
    mixed, targets = Mixer(0.8, 0.0, 1.0, 3)(clips, labels, np.random.default_rng(0))
    lam = float(targets[0, labels[0]])  # clip 0 (class 0) is paired with clip 3 (class 1)
    assert 0 < lam < 1 and float(targets[0, labels[3]]) == pytest.approx(1 - lam)
    assert torch.allclose(mixed, lam * clips + (1 - lam) * clips.flip(0), atol=1e-6)
    assert torch.allclose(targets.sum(1), torch.ones(4))


def test_cutmix_pastes_one_box_through_all_frames_and_weights_targets_by_area():
    clips, labels = _batch()
    mixed, targets = Mixer(0.0, 1.0, 1.0, 3)(clips, labels, np.random.default_rng(3))
    from_partner = (mixed == clips.flip(0)) & (mixed != clips)
    box = from_partner[0, 0, 0]  # (H, W) of clip 0, channel 0, frame 0
    assert box.any()
    assert torch.equal(from_partner[0], box.expand_as(from_partner[0]))  # every channel and frame alike
    rows, cols = box.any(1).nonzero().flatten(), box.any(0).nonzero().flatten()
    assert box.sum() == len(rows) * len(cols)  # a rectangle
    lam = 1 - len(rows) * len(cols) / (8 * 10)
    assert float(targets[0, 0]) == pytest.approx(lam) and float(targets[0, 1]) == pytest.approx(1 - lam)


def test_mix_prob_zero_leaves_clips_and_gives_one_hot_targets():
    clips, labels = _batch()
    mixed, targets = Mixer(0.8, 1.0, 0.0, 3)(clips, labels, np.random.default_rng(0))
    assert torch.equal(mixed, clips) and torch.equal(targets, F.one_hot(labels, 3).float())


def test_both_on_choose_mixup_or_cutmix_per_batch():
    clips, labels = _batch()
    kinds = set()
    for seed in range(20):
        mixed, _ = Mixer(0.8, 1.0, 1.0, 3)(clips, labels, np.random.default_rng(seed))
        kinds.add("cutmix" if bool((mixed == clips).any()) else "mixup")
    assert kinds == {"mixup", "cutmix"}


def test_step_draws_repeat_for_the_same_key_and_differ_by_rank_and_micro_batch():
    clips, labels = _batch()
    mixer = Mixer(0.8, 1.0, 1.0, 3)
    again = [mixer(clips, labels, step_generator(7, 1, 5, 0, 0))[1] for _ in range(2)]
    assert torch.equal(again[0], again[1])
    others = [mixer(clips, labels, step_generator(7, 1, 5, rank, micro))[1] for rank, micro in ((1, 0), (0, 1))]
    assert not any(torch.equal(again[0], other) for other in others)
