"""Precise BN: the recomputed running statistics are the mean over batches of each batch's mean and
unbiased variance (float64 reference), in one process and in 2 gloo processes, where every rank ends
with the mean over both ranks' batches; BatchNorms in eval mode (frozen stages) keep theirs."""
import copy

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from softpool3d.engine.training.switches.precise_bn import recompute_bn_stats
from softpool3d.models.weights import FrozenBatchNorm3d


def _model():
    torch.manual_seed(0)
    model = nn.Sequential(FrozenBatchNorm3d(2), nn.Conv3d(2, 3, 1), nn.BatchNorm3d(3, momentum=0.3))
    with torch.no_grad():
        model[0].running_mean.fill_(0.5)
        model[0].running_var.fill_(2.0)
        model[2].running_mean.fill_(7.0)  # stale statistics that precise BN must replace
    return model


def _batches(rank):
    generator = torch.Generator().manual_seed(10 + rank)
    return [torch.randn(4, 2, 3, 5, 5, generator=generator) * (1 + rank) + rank for _ in range(3)]


def _reference(batches):
    """Mean over ``batches`` of the BatchNorm input's per-channel mean and unbiased variance, in float64."""
    model = copy.deepcopy(_model()).double().eval()
    means, variances = [], []
    for x in batches:
        h = model[1](model[0](x.double()))
        means.append(h.mean(dim=(0, 2, 3, 4)))
        variances.append(h.var(dim=(0, 2, 3, 4), unbiased=True))
    return torch.stack(means).mean(0), torch.stack(variances).mean(0)


def _forward(model, clips):
    return model(clips)


def _check_layers(model):
    assert model[2].momentum == 0.3 and int(model[2].num_batches_tracked) == 0  # restored
    assert torch.equal(model[0].running_mean, torch.full((2,), 0.5))  # the frozen BN is left alone
    assert torch.equal(model[0].running_var, torch.full((2,), 2.0))


def test_precise_bn_is_the_mean_of_the_batches_statistics():
    model = _model()
    assert recompute_bn_stats([model], _batches(0), _forward) == 3
    mean, var = _reference(_batches(0))
    assert torch.allclose(model[2].running_mean.double(), mean, atol=1e-5)
    assert torch.allclose(model[2].running_var.double(), var, rtol=1e-5)
    _check_layers(model)


def _rank(rank, init_file, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        model = _model()
        recompute_bn_stats([model], _batches(rank), _forward)
        _check_layers(model)
        torch.save({key: value.clone() for key, value in model.state_dict().items()}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_precise_bn_under_two_gloo_processes_equals_the_statistics_of_all_batches(tmp_path):
    mp.spawn(_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    states = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    mean, var = _reference(_batches(0) + _batches(1))
    for state in states:
        assert torch.allclose(state["2.running_mean"].double(), mean, atol=1e-5)
        assert torch.allclose(state["2.running_var"].double(), var, rtol=1e-5)
    assert torch.equal(states[0]["2.running_mean"], states[1]["2.running_mean"])
    own_mean, _ = _reference(_batches(0))
    assert not torch.allclose(own_mean, mean, atol=1e-2)  # rank 0's batches alone would differ
