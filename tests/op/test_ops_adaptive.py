"""Adaptive SoftPool against a float64 loop over the windows of ``F.adaptive_avg_pool3d``
(window o of a dimension of length L pooled to ``out``: ``[floor(o L / out), ceil((o + 1) L / out))``),
written here independently of the package: the fused CPU kernel, the CUDA kernels' per-index
bodies (``per_element`` mode) at both index widths, and the pure-PyTorch fallback (torch.compile: the
compile test of test_ops.py runs an adaptive case)."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import softpool3d
from softpool3d import extension, ops

# (input shape, output size, backward kind of the per-index launch, chunks per window)
CASES = [
    ((2, 3, 4, 6, 6), (2, 3, 2), "disjoint", 1),  # sizes divide: windows tile the input
    ((1, 2, 5, 7, 9), (3, 4, 5), "gather", 1),  # do not divide: windows of different lengths overlap
    ((2, 2, 3, 4, 5), (5, 6, 7), "gather", 1),  # more outputs than inputs: inputs in several windows
    ((2, 3, 4, 7, 7), (1, 1, 1), "disjoint", 1),  # global
    ((1, 2, 3, 4, 5), (1, 3, 3), "gather", 1),
    ((1, 2, 4, 20, 21), (1, 1, 1), "gather", 27),  # global window of 1,680 elements: split
    ((1, 1, 5, 33, 40), (2, 2, 3), "gather", 12),  # long overlapping windows of 3 x 17 x 14: split
]
CASE_IDS = [f"{c[0][2:]}to{c[1]}" for c in CASES]
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def bounds(length: int, out: int) -> list[tuple[int, int]]:
    return [(math.floor(o * length / out), math.ceil((o + 1) * length / out)) for o in range(out)]


def loop_reference(x: torch.Tensor, output_size) -> torch.Tensor:
    """``sum exp(x) x / sum exp(x)`` over each adaptive window of a 5-D ``x``, in float64
    (differentiable)."""
    x = x.double()
    slices = [[slice(a, b) for a, b in bounds(x.shape[d + 2], output_size[d])] for d in range(3)]
    values = []
    for st, sh, sw in itertools.product(*slices):
        win = x[:, :, st, sh, sw].flatten(2)
        e = torch.exp(win - win.detach().amax(-1, keepdim=True))
        values.append((e * win).sum(-1) / e.sum(-1))
    return torch.stack(values, -1).unflatten(-1, tuple(output_size))


def sample(shape, dtype=torch.float64, seed=0, scale=3.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator, dtype=torch.float64) * scale).to(dtype)


def reference(shape, output_size, dtype):
    x = sample(shape, dtype)
    x64 = x.double().requires_grad_()
    y = loop_reference(x64, output_size)
    grad = sample(y.shape, dtype, seed=1)
    (dx,) = torch.autograd.grad(y, x64, grad.double())
    return x, grad, y.detach(), dx


@pytest.fixture(scope="module")
def module():
    built = extension.for_device(torch.device("cpu"))
    assert built is not None, "the CPU extension did not build"
    return built


def test_windows_are_adaptive_avg_pools():
    """The reference's windows are adaptive_avg_pool3d's: averaging over them gives its output."""
    x = sample((1, 2, 5, 7, 9))
    for output_size in [(3, 4, 5), (5, 6, 7), (2, 7, 4)]:
        slices = [[slice(a, b) for a, b in bounds(x.shape[d + 2], output_size[d])] for d in range(3)]
        means = torch.stack([x[:, :, st, sh, sw].mean((2, 3, 4)) for st, sh, sw in itertools.product(*slices)], -1)
        torch.testing.assert_close(means.unflatten(-1, output_size), F.adaptive_avg_pool3d(x, output_size))
        assert [ops.adaptive_windows(x.shape[d + 2], output_size[d]) for d in range(3)] == [
            bounds(x.shape[d + 2], output_size[d]) for d in range(3)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,output_size", [c[:2] for c in CASES], ids=CASE_IDS)
def test_values_and_grads_equal_loop_reference(shape, output_size, dtype):
    x, grad, y_ref, dx_ref = reference(shape, output_size, dtype)
    x.requires_grad_()
    y = softpool3d.soft_adaptive_pool3d(x, output_size)
    assert y.dtype == dtype and y.shape == F.adaptive_avg_pool3d(x.detach().float(), output_size).shape
    tol = TOL[dtype]
    torch.testing.assert_close(y.double(), y_ref, rtol=tol, atol=tol)
    (dx,) = torch.autograd.grad(y, x, grad)
    torch.testing.assert_close(dx.double(), dx_ref, rtol=tol, atol=tol * max(1.0, dx_ref.abs().max().item()))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last_3d"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", range(len(CASES)), ids=CASE_IDS)
def test_per_index_bodies_equal_loop_reference(module, case, dtype, layout):
    shape, output_size, backward, chunks = CASES[case]
    x, grad, y_ref, dx_ref = reference(shape, output_size, dtype)
    channels_last = layout == "channels_last_3d"
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    tol = TOL[dtype]
    y = module.adaptive_forward(x, list(output_size), channels_last, True)
    torch.testing.assert_close(y.double(), y_ref, rtol=tol, atol=tol)
    dx = module.adaptive_backward(grad, x, y, list(output_size), channels_last, True)
    torch.testing.assert_close(dx.double(), dx_ref, rtol=tol, atol=tol * max(1.0, dx_ref.abs().max().item()))
    assert dx.is_contiguous(memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format)
    plan = module.adaptive_plan(x, list(output_size), y=y, grad=grad)
    assert (plan["backward"], plan["chunks"], plan["index_bits"]) == (backward, chunks, 32)
    assert module.adaptive_plan(x, list(output_size), y=y, grad=grad, force_int64=True)["index_bits"] == 64
    assert torch.equal(module.adaptive_forward(x, list(output_size), channels_last, True, force_int64=True), y)
    assert torch.equal(module.adaptive_backward(grad, x, y, list(output_size), channels_last, True, force_int64=True), dx)


class PerIndex(torch.autograd.Function):
    """The per_element adaptive forward and backward as an autograd function, for gradcheck."""

    @staticmethod
    def forward(ctx, x, module, output_size):  # noqa: ANN001, ANN205
        y = module.adaptive_forward(x, output_size, False, True)
        ctx.save_for_backward(x, y)
        ctx.module, ctx.output_size = module, output_size
        return y

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        x, y = ctx.saved_tensors
        return ctx.module.adaptive_backward(grad.contiguous(), x, y, ctx.output_size, False, True), None, None


@pytest.mark.parametrize("shape,output_size", [c[:2] for c in CASES[:5]], ids=CASE_IDS[:5])
def test_gradcheck_float64(module, shape, output_size):
    x = sample((1, 2, *shape[2:]), scale=1.0).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: softpool3d.soft_adaptive_pool3d(t, output_size), (x,))
    assert torch.autograd.gradcheck(lambda t: PerIndex.apply(t, module, list(output_size)), (x,))


@pytest.mark.parametrize("shape,output_size", [c[:2] for c in CASES[:5]], ids=CASE_IDS[:5])
def test_reference_path_equals_loop_reference(shape, output_size):
    x, grad, y_ref, dx_ref = reference(shape, output_size, torch.float64)
    y = ops.soft_adaptive_pool_reference(x, output_size)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    dx = ops.soft_adaptive_pool_reference_backward(grad, x, y, output_size)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-12, atol=1e-12)


@pytest.fixture
def without_extension(monkeypatch):
    """The op as it runs where the extension is disabled (``SOFTPOOL3D_DISABLE_EXTENSION=1``) or cannot be built."""
    monkeypatch.setenv("SOFTPOOL3D_DISABLE_EXTENSION", "1")
    extension.load.cache_clear()
    assert extension.for_device(torch.device("cpu")) is None
    yield
    extension.load.cache_clear()


@pytest.mark.parametrize("shape,output_size", [c[:2] for c in CASES[:5]], ids=CASE_IDS[:5])
def test_op_without_the_extension_equals_loop_reference(without_extension, shape, output_size):
    """The public function and module with no compiled kernel: values and gradients of the formula."""
    x, grad, y_ref, dx_ref = reference(shape, output_size, torch.float64)
    x = x.requires_grad_()
    y = softpool3d.soft_adaptive_pool3d(x, output_size)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(softpool3d.SoftAdaptivePool3d(output_size)(x), y_ref, rtol=1e-12, atol=1e-12)
    (dx,) = torch.autograd.grad(y, x, grad)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "dims,shape,output_size",
    [
        (1, (2, 3, 11), 4),
        (1, (3, 11), (5,)),
        (2, (2, 3, 11, 9), (4, None)),
        (2, (3, 11, 9), 3),
        (3, (3, 5, 11, 9), (None, 4, 2)),
        (3, (2, 3, 5, 11, 9), (None, None, None)),
    ],
)
def test_1d_2d_and_none_entries_follow_adaptive_avg_pool(dims, shape, output_size):
    x = sample(shape).requires_grad_()
    pool = {1: softpool3d.soft_adaptive_pool1d, 2: softpool3d.soft_adaptive_pool2d, 3: softpool3d.soft_adaptive_pool3d}
    module = {1: softpool3d.SoftAdaptivePool1d, 2: softpool3d.SoftAdaptivePool2d, 3: softpool3d.SoftAdaptivePool3d}
    avg = {1: torch.nn.AdaptiveAvgPool1d, 2: torch.nn.AdaptiveAvgPool2d, 3: torch.nn.AdaptiveAvgPool3d}
    y = pool[dims](x, output_size)
    expected = avg[dims](output_size)(x)
    assert y.shape == expected.shape
    torch.testing.assert_close(module[dims](output_size)(x), y)
    x5 = x.detach().reshape((1,) * (x.dim() == dims + 1) + x.shape[: x.dim() - dims] + (1,) * (3 - dims) + x.shape[-dims:])
    out5 = (1,) * (3 - dims) + tuple(expected.shape[-dims:])
    torch.testing.assert_close(y.detach(), loop_reference(x5, out5).reshape(y.shape), rtol=1e-12, atol=1e-12)
    y.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize(
    "output_size,error,text",
    [((2, 0, 2), ValueError, "positive"), ((2, 2), ValueError, "output_size"), (2.5, ValueError, "output_size")],
)
def test_bad_output_size_raises_naming_it(output_size, error, text):
    with pytest.raises(error, match=text):
        softpool3d.soft_adaptive_pool3d(sample((1, 2, 4, 6, 6)), output_size)


def test_constant_input_pools_to_the_constant():
    """A window of equal values has equal weights: the output is that value, as adaptive_avg_pool's."""
    x = torch.full((2, 3, 5, 7, 9), 1.25)
    torch.testing.assert_close(softpool3d.soft_adaptive_pool3d(x, (3, 4, 5)), F.adaptive_avg_pool3d(x, (3, 4, 5)))


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")


@CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", range(len(CASES)), ids=CASE_IDS)
def test_cuda_equals_loop_reference(case, dtype):
    shape, output_size = CASES[case][:2]
    x, grad, y_ref, dx_ref = reference(shape, output_size, dtype)
    x = x.cuda().requires_grad_()
    y = softpool3d.soft_adaptive_pool3d(x, output_size)
    (dx,) = torch.autograd.grad(y, x, grad.cuda())
    tol = TOL[dtype]
    torch.testing.assert_close(y.cpu().double(), y_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(dx.cpu().double(), dx_ref, rtol=tol, atol=tol * max(1.0, dx_ref.abs().max().item()))


@pytest.mark.parametrize("out,bits", [(20000, 32), (40000, 64)])
def test_index_width_covers_the_window_products(module, out, bits):
    """Adaptive bounds form products of an index and a size (o * L): 70,000 x 40,001 passes 2^31."""
    x = torch.empty((1, 1, 1, 1, 70000), device="meta")
    assert module.adaptive_plan(x, [1, 1, out])["index_bits"] == bits
