"""replace_pooling: torchvision's networks keep their shapes and keys with SoftPool in place of
every pool, each replaced layer agrees with the original on inputs constant per channel, and what
cannot be swapped (dilation, indices, divisor, functional pools) is reported."""
import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from softpool3d import SoftPool2d, replace_pooling
from softpool3d.ops import SoftAdaptivePool3d

TORCH_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
               nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
               nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)

# network, input (N, C, [T,] H, W), layers replaced, modules whose code calls a functional pool
NETWORKS = {
    "s3d": (lambda: torchvision.models.video.s3d(), (1, 3, 14, 224, 224), 14, []),
    "mvit_v2_s": (lambda: torchvision.models.video.mvit_v2_s(), (1, 3, 16, 224, 224), 3, []),
    "r3d_18": (lambda: torchvision.models.video.r3d_18(), (1, 3, 4, 32, 32), 1, []),
    "resnet18": (lambda: torchvision.models.resnet18(), (1, 3, 64, 64), 2, []),
    "googlenet": (lambda: torchvision.models.googlenet(init_weights=False), (1, 3, 96, 96), 14, ["aux1", "aux2"]),
}
SLOW = {"s3d", "mvit_v2_s"}  # 224x224 inputs: tens of seconds on the shared 2-core CPU


def _pool_inputs(model, x):
    """``{name: input}`` of every torch pooling layer of ``model`` on a forward of ``x``."""
    inputs, handles = {}, []

    def record(name):
        def hook(module, args, output):
            inputs.setdefault(name, args[0])
        return hook

    for name, module in model.named_modules():
        if isinstance(module, TORCH_POOLS):
            handles.append(module.register_forward_hook(record(name)))
    with torch.no_grad():
        out = model(x)
    for handle in handles:
        handle.remove()
    return inputs, out


def _interior(layer, shape):
    """Index of the outputs of average pooling ``layer`` over an input of ``shape`` whose windows
    lie wholly inside the input (no padding, no ceil_mode overhang); all outputs of max pooling
    (which never lets padding into a value) and of adaptive layers (no padding)."""
    if not isinstance(layer, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
        return (Ellipsis,)
    dims = len(shape) - 2
    def per_dim(value):
        return tuple(value) if isinstance(value, (tuple, list)) else (value,) * dims
    kernel, stride, padding = per_dim(layer.kernel_size), per_dim(layer.stride or layer.kernel_size), per_dim(layer.padding)
    index = []
    for size, k, s, p in zip(shape[2:], kernel, stride, padding):
        first = -(-p // s)  # first output whose window starts at or after position 0
        last = (size + p - k) // s  # last output whose window ends inside the input
        index.append(slice(first, last + 1))
    return (Ellipsis, *index)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in NETWORKS])
def test_replace_pooling_on_torchvision_networks(name):
    build, shape, replaced, callers = NETWORKS[name]
    torch.manual_seed(0)
    original = build().eval()
    model = copy.deepcopy(original)
    pools = [n for n, m in original.named_modules() if isinstance(m, TORCH_POOLS)]
    keys = {k: v.clone() for k, v in original.state_dict().items()}

    report = replace_pooling(model)

    # every replaceable pool replaced, the rest reported
    assert sorted(entry.name for entry in report.replaced) == sorted(pools)
    assert len(report.replaced) == replaced
    assert not any(isinstance(m, TORCH_POOLS) for m in model.modules())
    assert sorted(report.functional_callers) == callers
    assert [entry.name for entry in report.left] == callers
    # state dict: same keys, same tensors
    assert list(model.state_dict()) == list(keys)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in keys.items())

    x = torch.randn(shape)
    inputs, expected = _pool_inputs(original, x)
    with torch.no_grad():
        got = model(x)
    assert got.shape == expected.shape and torch.isfinite(got).all()
    modules = dict(model.named_modules())
    for pool_name, pool_input in inputs.items():
        old, new = dict(original.named_modules())[pool_name], modules[pool_name]
        generator = torch.Generator().manual_seed(1)
        levels = torch.randn(pool_input.shape[:2], generator=generator).view(*pool_input.shape[:2], *[1] * (pool_input.dim() - 2))
        constant = levels.expand(pool_input.shape).contiguous()
        with torch.no_grad():
            want, have = old(constant), new(constant)
        assert have.shape == want.shape == old(pool_input).shape, pool_name
        index = _interior(old, constant.shape)
        assert have[index].numel() > 0, pool_name
        torch.testing.assert_close(have[index], want[index], rtol=1e-5, atol=1e-5, msg=pool_name)


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("kernel, stride, padding, ceil_mode", [
    (3, 2, 1, False), (3, 2, 1, True), (2, 2, 0, True), (3, 1, 1, True), (4, 3, 2, True), (3, None, 0, False),
])
def test_replaced_windowed_layers_keep_the_output_shape(dims, kernel, stride, padding, ceil_mode):
    """Over lengths 4..11, SoftPool's output shape is max and avg pooling's, ceil_mode included."""
    for pool_class in ({1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}[dims],
                       {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}[dims]):
        original = pool_class(kernel, stride, padding, ceil_mode=ceil_mode)
        model = nn.Sequential(original)
        assert len(replace_pooling(model).replaced) == 1
        for length in range(4, 12):
            x = torch.randn(1, 2, *(length,) * dims)
            assert model(x).shape == original(x).shape, (pool_class.__name__, length)


def test_what_a_swap_cannot_reach_is_left_with_its_reason():
    class CallsPools(nn.Module):
        def forward(self, x):
            return F.max_pool2d(x, 2) + torch.nn.functional.avg_pool2d(x, 2)

    model = nn.Sequential(
        nn.MaxPool2d(3, 1, 1, dilation=2),
        nn.MaxPool2d(2, return_indices=True),
        nn.AvgPool2d(2, divisor_override=3),
        nn.LPPool2d(2, 2),
        CallsPools(),
        nn.AdaptiveAvgPool2d(1),
    )
    report = replace_pooling(model, kinds=("max", "avg"))
    expected = [("0", "dilation=2 > 1"), ("1", "return_indices=True"), ("2", "divisor_override=3"),
                ("3", "LPPool2d has no soft counterpart"), ("5", "kind 'adaptive' not in kinds=('max', 'avg')"),
                ("4", "calls F.max_pool2d in "), ("4", "calls torch.nn.functional.avg_pool2d in ")]
    assert len(report.left) == len(expected)
    assert all(entry.name == name and entry.reason.startswith(reason) for entry, (name, reason) in zip(report.left, expected))
    assert report.replaced == [] and report.functional_callers == ["4", "4"]
    assert [type(m) for m in model] == [nn.MaxPool2d, nn.MaxPool2d, nn.AvgPool2d, nn.LPPool2d, CallsPools,
                                        nn.AdaptiveAvgPool2d]
    assert "test_replace.py" not in " ".join(report.lines()) and "CallsPools, line" in " ".join(report.lines())


def test_count_include_pad_becomes_padding_left_out():
    """A border window of an AvgPool with count_include_pad=True averages zeros in; its SoftPool
    replacement sees only the real positions, as SoftPool with the same padding does."""
    model = nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=True))
    x = torch.full((1, 1, 4, 4), 2.0)
    assert model(x)[0, 0, 0, 0] == pytest.approx(2.0 * 4 / 9)
    replace_pooling(model)
    torch.testing.assert_close(model(x), x)


def test_a_shared_layer_is_replaced_once_and_training_mode_is_kept():
    shared = nn.MaxPool3d(2)
    model = nn.ModuleDict({"a": nn.Sequential(shared), "b": nn.Sequential(shared), "head": nn.AdaptiveAvgPool3d(1)})
    model.train()
    model["head"].eval()
    report = replace_pooling(model)
    assert sorted(entry.name for entry in report.replaced) == ["a.0", "head"]
    assert model["a"][0] is model["b"][0] and model["a"][0].training
    assert isinstance(model["head"], SoftAdaptivePool3d) and not model["head"].training


def test_max_and_avg_targets_keep_the_geometry():
    model = nn.Sequential(nn.MaxPool2d(3, 2, 1, ceil_mode=True), SoftPool2d(2), nn.AdaptiveAvgPool2d((2, 3)))
    report = replace_pooling(model, pool="avg")
    assert [entry.name for entry in report.replaced] == ["0"] and report.left == []
    assert isinstance(model[0], nn.AvgPool2d) and not model[0].count_include_pad
    assert (model[0].kernel_size, model[0].stride, model[0].padding, model[0].ceil_mode) == (3, 2, 1, True)
    replace_pooling(model, pool="max")
    assert isinstance(model[0], nn.MaxPool2d) and isinstance(model[2], nn.AdaptiveMaxPool2d)
    assert model[2].output_size == (2, 3) and isinstance(model[1], SoftPool2d)


def test_replace_pooling_names_a_bad_kind():
    with pytest.raises(ValueError, match="kinds must be taken from .* got \\['maxpool'\\]"):
        replace_pooling(nn.Sequential(), kinds=("maxpool",))
    with pytest.raises(ValueError, match="pool must be one of .* got 'lp'"):
        replace_pooling(nn.Sequential(), pool="lp")


def test_dropin_benchmark_measures_both_variants_in_the_same_rounds(monkeypatch):
    from softpool3d.benchmarks import dropin

    tiny = lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    monkeypatch.setitem(dropin.CASES, "tiny", (tiny, (2, 3, 16, 16)))
    order, step = [], dropin.train_step

    def recording_step(model, x):
        order.append("soft" if any(isinstance(m, SoftPool2d) for m in model.modules()) else "original")
        return step(model, x)

    monkeypatch.setattr(dropin, "train_step", recording_step)
    result = dropin.compare("tiny", repeats=2)
    assert order == ["original", "soft"] * 3  # one warm-up step each, then rounds that alternate
    assert (result.replaced, result.left) == (2, 0)
    assert all(len(result.seconds[v]) == len(result.peak_mb[v]) == 2 for v in dropin.VARIANTS)
    assert dropin.table_row(result).startswith("| tiny | 2x3x16x16 | 2 | 0 |")
