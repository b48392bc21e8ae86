"""The CUDA kernels' per-index bodies (``softpool_kernel.h``) and launch sequence
(``softpool_launch.h``), run on the CPU by the extension's ``per_element`` mode over the same
index ranges as the CUDA grids, against SoftPool evaluated here in float64 from unfolded windows.

Every line a CUDA thread runs (index, unravel, strides, bounds check, the split of long windows
and the choice between the disjoint and gather backward) runs in these tests; only the launch
itself does not.
"""
from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from softpool3d import extension

# (input shape, kernel, stride, padding, ceil_mode, chunks per window, backward kind)
CASES = [
    ((2, 3, 4, 6, 6), (2, 2, 2), (2, 2, 2), (0, 0, 0), False, 1, "disjoint"),
    ((2, 2, 5, 7, 9), (3, 3, 3), (2, 2, 2), (1, 1, 1), False, 1, "gather"),
    ((1, 2, 5, 7, 6), (3, 3, 3), (1, 2, 1), (1, 1, 1), True, 1, "gather"),
    ((1, 3, 7, 5, 8), (2, 3, 2), (2, 3, 3), (1, 1, 0), True, 1, "disjoint"),
    ((2, 2, 3, 9, 7), (1, 3, 3), (1, 2, 2), (0, 1, 1), True, 1, "gather"),
    ((1, 2, 6, 11, 10), (2, 2, 2), (3, 4, 3), (0, 0, 1), False, 1, "disjoint"),
    ((2, 3, 4, 5, 3), (4, 5, 3), (1, 1, 1), (0, 0, 0), False, 1, "gather"),
    ((1, 1, 2, 40, 70), (1, 2, 3), (1, 2, 2), (0, 1, 1), True, 1, "gather"),
    # long windows (more than 256 elements): split into chunks of 64
    ((1, 2, 3, 25, 26), (2, 12, 12), (2, 12, 12), (0, 0, 0), True, 5, "gather"),
    ((2, 1, 4, 13, 15), (3, 10, 10), (2, 5, 6), (1, 5, 5), True, 5, "gather"),
    ((1, 2, 2, 9, 17), (2, 9, 17), (2, 9, 17), (0, 0, 0), False, 5, "gather"),
]
CASE_IDS = [f"k{c[1]}s{c[2]}p{c[3]}{'ceil' if c[4] else ''}" for c in CASES]
LAYOUTS = ["contiguous", "channels_last_3d", "strided", "transposed_sliced"]
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.fixture(scope="module")
def module():
    built = extension.for_device(torch.device("cpu"))
    assert built is not None, "the CPU extension did not build"
    return built


def formula(x: torch.Tensor, kernel, stride, padding, ceil_mode: bool) -> torch.Tensor:
    """``sum exp(x) x / sum exp(x)`` over every window in float64 (differentiable); padded positions
    are excluded and the output shape is taken from ``F.avg_pool3d``."""
    x = x.double()
    out = F.avg_pool3d(torch.zeros((1, *x.shape[-3:])), kernel, stride, padding, ceil_mode).shape[-3:]
    pads = []
    for d in reversed(range(3)):
        pads += [padding[d], max((out[d] - 1) * stride[d] + kernel[d] - x.shape[d + 2] - padding[d], 0)]
    values = F.pad(x, pads)
    valid = F.pad(torch.ones_like(x, dtype=torch.bool), pads)
    for d in range(3):
        values = values.unfold(d + 2, kernel[d], stride[d]).narrow(d + 2, 0, out[d])
        valid = valid.unfold(d + 2, kernel[d], stride[d]).narrow(d + 2, 0, out[d])
    values, valid = values.flatten(-3), valid.flatten(-3)
    top = values.detach().masked_fill(~valid, -math.inf).amax(-1, keepdim=True)
    weights = torch.where(valid, torch.exp(values - top), 0.0)
    return (weights * values).sum(-1) / weights.sum(-1)


def sample(shape, dtype, seed=0, scale=3.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator, dtype=torch.float64) * scale).to(dtype)


def in_layout(values: torch.Tensor, layout: str) -> torch.Tensor:
    """``values`` (N, C, T, H, W) laid out as ``layout``: a contiguous, channels_last_3d, strided
    (every other channel and W of a larger tensor) or transposed-then-sliced tensor."""
    n, c, t, h, w = values.shape
    if layout == "contiguous":
        return values.contiguous()
    if layout == "channels_last_3d":
        return values.contiguous(memory_format=torch.channels_last_3d)
    if layout == "strided":
        out = torch.zeros((n, 2 * c, t, h, 2 * w), dtype=values.dtype)[:, ::2, :, :, ::2]
    else:
        out = torch.zeros((n, c, t, w, h + 2), dtype=values.dtype).transpose(3, 4)[:, :, :, 1:-1]
    assert not out.is_contiguous() and not out.is_contiguous(memory_format=torch.channels_last_3d)
    return out.copy_(values)


@functools.lru_cache(maxsize=None)
def reference(case: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input, output gradient, and the float64 formula's output and input gradient of a case."""
    shape, kernel, stride, padding, ceil_mode = CASES[case][:5]
    x = sample(shape, dtype)
    x64 = x.double().requires_grad_()
    y = formula(x64, kernel, stride, padding, ceil_mode)
    grad = sample(y.shape, dtype, seed=1)
    (dx,) = torch.autograd.grad(y, x64, grad.double())
    return x, grad, y.detach(), dx


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(CASES)), ids=CASE_IDS)
def test_per_index_bodies_equal_formula(module, case, dtype, layout):
    shape, kernel, stride, padding, ceil_mode = CASES[case][:5]
    values, grad, y_ref, dx_ref = reference(case, dtype)
    x = in_layout(values, layout)
    channels_last = layout == "channels_last_3d"
    args = (list(kernel), list(stride), list(padding), ceil_mode, channels_last, True)
    y = module.forward(x, *args)
    tol = TOL[dtype]
    torch.testing.assert_close(y.double(), y_ref, rtol=tol, atol=tol)
    dx = module.backward(grad, x, y, *args)
    torch.testing.assert_close(dx.double(), dx_ref, rtol=tol, atol=tol * max(1.0, dx_ref.abs().max().item()))
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    assert y.stride() == torch.empty(y.shape, memory_format=fmt).stride()
    assert dx.stride() == torch.empty(dx.shape, memory_format=fmt).stride()
    # the int64_t index path computes the very same values
    assert module.plan(x, *args[:4], y=y, grad=grad)["index_bits"] == 32
    assert module.plan(x, *args[:4], y=y, grad=grad, force_int64=True)["index_bits"] == 64
    assert torch.equal(module.forward(x, *args, force_int64=True), y)
    assert torch.equal(module.backward(grad, x, y, *args, force_int64=True), dx)


@pytest.mark.parametrize("case", range(len(CASES)), ids=CASE_IDS)
def test_expanded_output_gradient(module, case):
    """An output gradient with stride 0 everywhere (``ones.expand``), as ``y.sum().backward()`` gives."""
    kernel, stride, padding, ceil_mode = CASES[case][1:5]
    values, _, y_ref, _ = reference(case, torch.float64)
    x64 = values.clone().requires_grad_()
    (dx_ref,) = torch.autograd.grad(formula(x64, kernel, stride, padding, ceil_mode).sum(), x64)
    args = (list(kernel), list(stride), list(padding), ceil_mode, False, True)
    y = module.forward(values, *args)
    grad = torch.ones((), dtype=torch.float64).expand(y.shape)
    torch.testing.assert_close(module.backward(grad, values, y, *args), dx_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", range(len(CASES)), ids=CASE_IDS)
def test_plan_picks_split_and_backward_kind(module, case):
    shape, kernel, stride, padding, ceil_mode, chunks, backward = CASES[case]
    x = torch.empty(shape, device="meta")
    plan = module.plan(x, list(kernel), list(stride), list(padding), ceil_mode)
    assert (plan["chunks"], plan["backward"]) == (chunks, backward)


class PerIndex(torch.autograd.Function):
    """The per_element forward and backward as an autograd function, for gradcheck."""

    @staticmethod
    def forward(ctx, x, module, args):  # noqa: ANN001, ANN205
        y = module.forward(x, *args)
        ctx.save_for_backward(x, y)
        ctx.module, ctx.args = module, args
        return y

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        x, y = ctx.saved_tensors
        return ctx.module.backward(grad.contiguous(), x, y, *ctx.args), None, None


@pytest.mark.parametrize("case", [0, 1, 2, 3, 4, 5, 10], ids=[CASE_IDS[i] for i in (0, 1, 2, 3, 4, 5, 10)])
def test_gradcheck_float64(module, case):
    shape, kernel, stride, padding, ceil_mode = CASES[case][:5]
    x = sample((1, 1, *shape[2:]), torch.float64, scale=1.0).requires_grad_()
    args = (list(kernel), list(stride), list(padding), ceil_mode, False, True)
    assert torch.autograd.gradcheck(lambda t: PerIndex.apply(t, module, args), (x,))


def meta(shape, strides=None) -> torch.Tensor:
    """A tensor of any size that allocates nothing."""
    x = torch.empty(shape, device="meta")
    return x if strides is None else x.as_strided(shape, strides)


LIMIT = 2**31


@pytest.mark.parametrize(
    "shape,kernel,bits",
    [
        ((1, 1, 1, 1, LIMIT - 256), (1, 1, 1), 32),  # the grid of x.numel() threads ends at 2^31 - 1
        ((1, 1, 1, 1, LIMIT - 255), (1, 1, 1), 64),  # rounded up to whole blocks of 256 threads it reaches 2^31
        ((1, 1, 1, 1, LIMIT - 1), (1, 1, 1), 64),
        ((2, 1, 1024, 1024, 1023), (2, 2, 2), 32),  # 2^31 - 2^21 elements
        ((1, 2, 1024, 1024, 1024), (2, 2, 2), 64),  # 2^31 elements
        ((8, 24, 16, 56, 56), (16, 56, 56), 32),  # X3D-S's first SE pool at batch 8
        # 16,384 x 16,128 overlapping long windows fill the GPU unsplit: no partials to index
        ((1, 1, 1, 16384, 16384), (1, 1, 257), 32),
        ((1, 1, 1, 4096, 16384), (1, 1, 257), 32),
    ],
)
def test_index_width_near_two_to_the_31(module, shape, kernel, bits):
    x = meta(shape)
    args = (list(kernel), [1, 1, 1] if kernel[-1] == 257 else list(kernel), [0, 0, 0], False)
    assert module.plan(x, *args)["index_bits"] == bits
    y = meta(F.avg_pool3d(torch.empty(shape, device="meta"), kernel, args[1]).shape)
    assert module.plan(x, *args, y=y, grad=y)["index_bits"] == bits


@pytest.mark.parametrize(
    "shape,kernel,stride,chunks,groups",
    [
        ((8, 24, 16, 56, 56), (16, 56, 56), (16, 56, 56), 784, 25),  # X3D-S's first SE pool at batch 8
        ((2048, 24, 16, 56, 56), (16, 56, 56), (16, 56, 56), 5, 0),  # 49,152 outputs: 5 chunks fill the GPU
        ((8192, 24, 16, 56, 56), (16, 56, 56), (16, 56, 56), 1, 0),  # 196,608 outputs: no split
        ((8, 432, 16, 7, 7), (16, 7, 7), (16, 7, 7), 13, 0),  # X3D-S's head pool
        ((1, 1, 1, 16384, 16384), (1, 1, 257), (1, 1, 1), 1, 0),  # 264,241,152 overlapping windows
        ((1, 1, 1, 64, 16384), (1, 1, 257), (1, 1, 1), 1, 0),  # 1,032,192 outputs
        ((1, 1, 1, 4, 2000), (1, 1, 257), (1, 1, 1), 5, 0),  # 6,976 outputs
    ],
)
def test_split_only_where_it_pays_with_capped_partials(module, shape, kernel, stride, chunks, groups):
    """Long windows are split into at most ceil(volume / 64) chunks while the outputs alone leave the
    GPU idle (fewer than 2^17), into no more than 2^18 threads; so the partials (3 per chunk and per
    group of 32 chunks) stay under 3 x (2^18 + 2^13 + outputs) accumulators whatever the stride."""
    x = meta(shape)
    plan = module.plan(x, list(kernel), list(stride), [0, 0, 0], False)
    assert (plan["chunks"], plan["groups"]) == (chunks, groups)
    outputs = math.prod(F.avg_pool3d(torch.empty(shape, device="meta"), kernel, stride).shape)
    partials = 3 * outputs * (chunks + groups) if chunks > 1 else 0
    assert partials <= 3 * (2**18 + 2**13 + outputs) and partials * 8 < 10 * 2**20


def test_index_width_counts_every_tensors_strides(module):
    """Offsets, not element counts, bound the index: a small view into a huge tensor needs int64."""
    x = meta((2, 2, 4, 4, 4))
    args = ([2, 2, 2], [2, 2, 2], [0, 0, 0], False)
    y = meta((2, 2, 2, 2, 2))
    assert module.plan(x, *args, y=y, grad=y)["index_bits"] == 32
    assert module.plan(meta((2, 2, 4, 4, 4), (2**30, 64, 16, 4, 1)), *args)["index_bits"] == 32  # last offset 2^30 + 127
    assert module.plan(meta((2, 2, 4, 4, 4), (LIMIT - 64, 64, 16, 4, 1)), *args)["index_bits"] == 64  # 2^31 + 63
    assert module.plan(meta((1, 2, 4, 4, 4), (LIMIT, 64, 16, 4, 1)), *args)["index_bits"] == 32  # n stays 0
    huge = meta((2, 2, 2, 2, 2), (16, LIMIT - 16, 4, 2, 1))  # last offset 2^31 + 7
    assert module.plan(x, *args, y=y, grad=huge)["index_bits"] == 64
    assert module.plan(x, *args, y=huge, grad=y)["index_bits"] == 64


def test_index_paths_agree_on_expanded_input(module):
    """Stride-0 inputs: the element count, not the last offset, bounds the linear index."""
    x = sample((1, 1, 3, 7, 300), torch.float64).expand(2, 3, 3, 7, 300)
    args = ([2, 3, 290], [1, 2, 3], [1, 1, 0], True, False, True)
    y = module.forward(x, *args)
    torch.testing.assert_close(y, formula(x, *args[:4]), rtol=1e-12, atol=1e-12)
    assert torch.equal(y, module.forward(x, *args, force_int64=True))


# (input shape, pooling arguments): X3D-S's SE pool window (16 x 56 x 56 = 50,176 elements) over
# the whole input, and overlapping windows of the same size cut by padding and ceil_mode
LONG = [
    ((2, 3, 16, 56, 56), ([16, 56, 56], [16, 56, 56], [0, 0, 0], False)),
    ((1, 2, 16, 57, 58), ([16, 56, 56], [1, 1, 2], [0, 1, 0], True)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,args", LONG, ids=["global", "overlapping"])
def test_split_long_windows_within_fused_kernel_accuracy(module, shape, args, dtype):
    """50,176-element windows through the split path are as accurate against float64 as the fused
    CPU kernel (errors relative to the largest value of y or dx)."""
    x = sample(shape, dtype, scale=2.0)
    assert module.plan(x, *args)["chunks"] == 784
    x64 = x.double().requires_grad_()
    y_ref = formula(x64, *args)
    grad = sample(y_ref.shape, dtype, seed=1)
    (dx_ref,) = torch.autograd.grad(y_ref, x64, grad.double())

    def errors(per_element: bool) -> tuple[float, float]:
        y = module.forward(x, *args, False, per_element)
        dx = module.backward(grad, x, y, *args, False, per_element)
        return tuple(((a.double() - b).abs().max() / b.abs().max()).item() for a, b in ((y, y_ref), (dx, dx_ref)))

    split, fused = errors(True), errors(False)
    if dtype == torch.float64:
        assert max(split) < 1e-13, split
        return
    assert max(split) < 2e-5, split
    assert split[0] <= 1.5 * fused[0] + 1e-6 and split[1] <= 1.5 * fused[1] + 1e-6, (split, fused)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")


@CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(CASES)), ids=CASE_IDS)
def test_cuda_kernels_equal_formula(case, dtype, layout):
    """The same matrix through the CUDA kernels, with both index widths."""
    module = extension.for_device(torch.device("cuda"))
    kernel, stride, padding, ceil_mode = CASES[case][1:5]
    values, grad, y_ref, dx_ref = reference(case, dtype)
    x = in_layout(values, layout).cuda()
    if layout != "contiguous":
        assert not x.is_contiguous()
    args = (list(kernel), list(stride), list(padding), ceil_mode, layout == "channels_last_3d", False)
    tol = TOL[dtype]
    for force_int64 in (False, True):
        y = module.forward(x, *args, force_int64=force_int64)
        torch.testing.assert_close(y.cpu().double(), y_ref, rtol=tol, atol=tol)
        dx = module.backward(grad.cuda(), x, y, *args, force_int64=force_int64)
        torch.testing.assert_close(dx.cpu().double(), dx_ref, rtol=tol, atol=tol * max(1.0, dx_ref.abs().max().item()))


@CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("shape,args", LONG, ids=["global", "overlapping"])
def test_cuda_split_long_windows_equal_formula(shape, args):
    module = extension.for_device(torch.device("cuda"))
    x = sample(shape, torch.float32, scale=2.0)
    x64 = x.double().requires_grad_()
    y_ref = formula(x64, *args)
    grad = sample(y_ref.shape, torch.float32, seed=1)
    (dx_ref,) = torch.autograd.grad(y_ref, x64, grad.double())
    y = module.forward(x.cuda(), *args, False, False)
    dx = module.backward(grad.cuda(), x.cuda(), y, *args, False, False)
    assert ((y.cpu().double() - y_ref).abs().max() / y_ref.abs().max()).item() < 2e-5
    assert ((dx.cpu().double() - dx_ref).abs().max() / dx_ref.abs().max()).item() < 2e-5


# (input shape, kernel, stride, padding, ceil_mode): disjoint short windows, overlapping windows,
# and long windows split into chunks (and into groups of chunks)
MAPPING = [
    ((2, 4, 4, 6, 8), (2, 2, 2), (2, 2, 2), (0, 0, 0), False),
    ((2, 4, 5, 7, 9), (3, 3, 3), (2, 2, 2), (1, 1, 1), False),
    ((1, 4, 3, 25, 26), (2, 12, 12), (2, 12, 12), (0, 0, 0), True),
    ((1, 3, 4, 41, 43), (4, 41, 43), (4, 41, 43), (0, 0, 0), False),
]
# the (n, c, t, h, w) columns from innermost to outermost in memory
MEMORY_ORDER = {"contiguous": (4, 3, 2, 1, 0), "channels_last_3d": (1, 4, 3, 2, 0)}
# bodies with one thread per input element (or per chunk of input elements), the others per output
INPUT_BODIES = {"partial", "gather_backward"}


@pytest.mark.parametrize("layout", list(MEMORY_ORDER))
@pytest.mark.parametrize("case", range(len(MAPPING)), ids=["disjoint", "overlapping", "split", "split_groups"])
def test_consecutive_threads_walk_the_innermost_memory_dimension(module, case, layout):
    """Neighbouring thread indices of every body work on neighbouring elements of the innermost memory
    dimension (W of contiguous tensors, C of channels_last_3d ones): coalesced reads and writes."""
    shape, kernel, stride, padding, ceil_mode = MAPPING[case]
    x = in_layout(sample(shape, torch.float32), layout)
    out_shape = F.avg_pool3d(torch.empty(shape, device="meta"), kernel, stride, padding, ceil_mode).shape
    seen = set()
    for backward in (False, True):
        records = module.thread_coords(x, list(kernel), list(stride), list(padding), ceil_mode, backward)
        for name, coords in records.items():
            seen.add(name)
            # the innermost dimension of the tensor the body walks, skipping dimensions of length 1
            sizes = shape if name in INPUT_BODIES else out_shape
            inner = next(k for k in MEMORY_ORDER[layout] if sizes[k] > 1)
            step = coords[1:, :5] - coords[:-1, :5]
            others = [k for k in range(5) if k != inner]
            along = (step[:, inner] == 1) & (step[:, others] == 0).all(1)
            assert along.double().mean() > 0.6, (name, coords[:8])
            # the same pairs, as element offsets in a tensor of this layout
            addresses = coords[:, :5] @ torch.tensor(torch.empty(sizes, memory_format=x_format(layout)).stride())
            assert ((addresses[1:] - addresses[:-1])[along] == 1).all()
    expected = [{"forward", "disjoint_backward"}, {"forward", "gather_backward"},
                {"partial", "combine", "gather_backward"}, {"partial", "group", "combine", "gather_backward"}][case]
    assert seen == expected


def x_format(layout: str) -> torch.memory_format:
    return torch.channels_last_3d if layout == "channels_last_3d" else torch.contiguous_format


def test_fast_division_equals_integer_division(module):
    """The int32 index path's multiply-shift division (softpool_kernel.h's Divider) against //:
    every n < 4,096 by every d <= 1,024, and random and extreme 31-bit operands."""
    n, d = torch.meshgrid(torch.arange(4096), torch.arange(1, 1025), indexing="ij")
    n, d = n.flatten(), d.flatten()
    assert torch.equal(module.divide32(n, d), n // d)
    generator = torch.Generator().manual_seed(0)
    big = torch.randint(0, 2**31, (200_000,), generator=generator)
    divisors = torch.cat([torch.randint(1, 2**31, (100_000,), generator=generator),
                          torch.randint(1, 2**16, (100_000,), generator=generator)])
    assert torch.equal(module.divide32(big, divisors), big // divisors)
    powers = torch.tensor([2**k + e for k in range(1, 31) for e in (-1, 0, 1)])
    extremes = torch.tensor([0, 1, 2**31 - 2, 2**31 - 1]).repeat_interleave(len(powers) + 1)
    by = torch.cat([powers, torch.tensor([2**31 - 1])]).repeat(4)
    assert torch.equal(module.divide32(extremes, by), extremes // by)
