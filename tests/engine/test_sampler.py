"""The training samplers: the class-balanced one draws each class equally often from an imbalanced
list, with 2 ranks taking disjoint shares of one seeded draw, and resumes mid-epoch; the uniform one
keeps DistributedSampler's order."""
import torch
from torch.utils.data import DistributedSampler

from softpool3d.engine.processes.sampler import ClassBalancedSampler, ResumableDistributedSampler

LABELS = [0] * 600 + [1] * 300 + [2] * 90 + [3] * 10  # 1000 videos, 60:30:9:1


def _ranks(epoch, labels=LABELS, seed=3):
    samplers = [ClassBalancedSampler(range(len(labels)), labels, num_replicas=2, rank=rank, shuffle=True, seed=seed,
                                     drop_last=True) for rank in (0, 1)]
    for sampler in samplers:
        sampler.set_epoch(epoch)
    return samplers


def _indices(sampler):
    """The dataset indices a sampler yields, with the epoch each ``(epoch, index)`` pair carries checked."""
    pairs = list(sampler)
    assert all(epoch == sampler.epoch for epoch, _ in pairs)
    return [index for _, index in pairs]


def test_two_ranks_take_disjoint_shares_of_one_draw_with_balanced_class_frequencies():
    counts = torch.zeros(4)
    for epoch in range(20):
        shares = [_indices(sampler) for sampler in _ranks(epoch)]
        assert len(shares[0]) == len(shares[1]) == 500
        order = _ranks(epoch)[0].epoch_order()
        assert shares[0] == order[0::2] and shares[1] == order[1::2]  # disjoint positions of the global draw
        counts += torch.bincount(torch.tensor([LABELS[i] for i in shares[0] + shares[1]]), minlength=4)
    frequencies = counts / counts.sum()  # 20000 draws: binomial std of a frequency is about 0.003
    assert torch.allclose(frequencies, torch.full((4,), 0.25), atol=0.015), frequencies


def test_each_video_within_a_class_is_drawn_equally_often():
    counts = torch.zeros(len(LABELS))
    for epoch in range(20):
        for sampler in _ranks(epoch):
            counts.index_add_(0, torch.tensor(_indices(sampler)), torch.ones(500))
    rare = counts[990:]  # class 3's 10 videos share a quarter of 20000 draws: 500 each (binomial std about 21)
    assert ((rare - 500).abs() < 100).all(), rare
    common = counts[:600]  # class 0's 600 videos: 5000 / 600 = 8.3 each on average
    assert abs(float(common.mean()) - 5000 / 600) < 0.5


def test_order_is_deterministic_given_seed_and_epoch_and_resumes_mid_epoch():
    first, again = _indices(_ranks(4)[1]), _indices(_ranks(4)[1])
    assert first == again
    assert first != _indices(_ranks(5)[1]) and first != _indices(_ranks(4, seed=4)[1])
    resumed = _ranks(4)[1]
    resumed.set_start(123)
    assert _indices(resumed) == first[123:] and len(resumed) == 500 - 123


def test_uniform_sampler_keeps_distributed_samplers_order():
    for rank in (0, 1):
        ours = ResumableDistributedSampler(range(11), num_replicas=2, rank=rank, shuffle=True, seed=5)
        torchs = DistributedSampler(range(11), num_replicas=2, rank=rank, shuffle=True, seed=5)
        ours.set_epoch(2)
        torchs.set_epoch(2)
        assert _indices(ours) == list(torchs)
