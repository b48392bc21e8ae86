"""SoftPool values and gradients against a float64 evaluation of the formula, written here
independently of the package: explicit loops over windows of ``exp(x) * x / sum exp(x)``."""
from __future__ import annotations

import itertools
import re
import warnings

import pytest
import torch
import torch.nn.functional as F

import softpool3d
from softpool3d import extension
from softpool3d.ops import soft_pool_reference

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")

# (input shape, kernel, stride, padding, ceil_mode)
CASES = [
    ((2, 3, 4, 6, 6), (2, 2, 2), (2, 2, 2), (0, 0, 0), False),
    ((2, 2, 5, 7, 9), (3, 3, 3), (2, 2, 2), (1, 1, 1), False),
    ((1, 2, 5, 7, 6), (3, 3, 3), (1, 2, 1), (1, 1, 1), True),
    ((1, 3, 7, 5, 8), (2, 3, 2), (2, 3, 3), (1, 1, 0), True),
    ((2, 2, 3, 9, 7), (1, 3, 3), (1, 2, 2), (0, 1, 1), True),
    ((1, 2, 6, 11, 10), (2, 2, 2), (3, 4, 3), (0, 0, 1), False),
    ((2, 3, 4, 5, 3), (4, 5, 3), (1, 1, 1), (0, 0, 0), False),
    ((1, 1, 2, 40, 70), (1, 2, 3), (1, 2, 2), (0, 1, 1), True),
]
CASE_IDS = [f"k{c[1]}s{c[2]}p{c[3]}{'ceil' if c[4] else ''}" for c in CASES]


def windows(size: int, kernel: int, stride: int, padding: int, out: int) -> list[slice]:
    """The input slice of each of ``out`` windows along one dimension, padding excluded."""
    return [slice(max(o * stride - padding, 0), min(o * stride - padding + kernel, size)) for o in range(out)]


def formula(x: torch.Tensor, kernel, stride, padding, ceil_mode: bool) -> torch.Tensor:
    """``sum exp(x) x / sum exp(x)`` per window in float64; output shape taken from avg_pool3d."""
    x = x.double()
    out = F.avg_pool3d(torch.zeros(x.shape[-3:]).unsqueeze(0), kernel, stride, padding, ceil_mode).shape[-3:]
    slices = [windows(x.shape[d + 2], kernel[d], stride[d], padding[d], out[d]) for d in range(3)]
    values = []
    for st, sh, sw in itertools.product(*slices):
        win = x[:, :, st, sh, sw].flatten(2)
        e = win.exp()
        values.append((e * win).sum(-1) / e.sum(-1))
    return torch.stack(values, -1).unflatten(-1, tuple(out))


def sample(shape, dtype=torch.float32, device="cpu", scale=3.0, seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator, dtype=torch.float64) * scale).to(device=device, dtype=dtype)


def test_fused_cpu_kernel_is_built():
    assert extension.for_device(torch.device("cpu")) is not None


@pytest.mark.parametrize("shape,kernel,stride,padding,ceil_mode", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_values_and_grads_equal_formula(shape, kernel, stride, padding, ceil_mode, dtype):
    x = sample(shape, dtype).requires_grad_()
    y = softpool3d.soft_pool3d(x, kernel, stride, padding, ceil_mode)
    assert y.shape == F.avg_pool3d(x, kernel, stride, padding, ceil_mode).shape
    assert y.dtype == dtype
    x64 = x.detach().double().requires_grad_()
    ref = formula(x64, kernel, stride, padding, ceil_mode)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y.double(), ref, **tol)
    g = sample(y.shape, torch.float64, seed=1)
    (dx,) = torch.autograd.grad(y, x, g.to(dtype))
    (dref,) = torch.autograd.grad(ref, x64, g)
    torch.testing.assert_close(dx.double(), dref, **tol)


@pytest.mark.parametrize("shape,kernel,stride,padding,ceil_mode", CASES[:6], ids=CASE_IDS[:6])
def test_reference_path_equals_formula(shape, kernel, stride, padding, ceil_mode):
    x = sample(shape, torch.float64)
    y = soft_pool_reference(x, kernel, stride, padding, ceil_mode)
    torch.testing.assert_close(y, formula(x, kernel, stride, padding, ceil_mode), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
@pytest.mark.parametrize("shape,kernel,stride,padding,ceil_mode", CASES[:4], ids=CASE_IDS[:4])
def test_half_types_within_their_precision(shape, kernel, stride, padding, ceil_mode, dtype, tol):
    x = sample(shape, dtype).requires_grad_()
    y = softpool3d.soft_pool3d(x, kernel, stride, padding, ceil_mode)
    assert y.dtype == dtype
    x64 = x.detach().double().requires_grad_()
    ref = formula(x64, kernel, stride, padding, ceil_mode)
    torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol)
    g = sample(y.shape, torch.float64, seed=1)
    (dx,) = torch.autograd.grad(y, x, g.to(dtype))
    (dref,) = torch.autograd.grad(ref, x64, g)
    torch.testing.assert_close(dx.double(), dref, rtol=tol, atol=tol * dref.abs().max().item())


@pytest.mark.parametrize("shape,kernel,stride,padding,ceil_mode", CASES[:5], ids=CASE_IDS[:5])
def test_gradcheck_float64(shape, kernel, stride, padding, ceil_mode):
    x = sample((1, 2, *shape[2:]), torch.float64, scale=1.0).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: softpool3d.soft_pool3d(t, kernel, stride, padding, ceil_mode), (x,))


def test_global_window_equals_formula():
    x = sample((2, 5, 4, 7, 7)).requires_grad_()
    y = softpool3d.soft_pool3d(x, kernel_size=tuple(x.shape[-3:]))
    assert y.shape == (2, 5, 1, 1, 1)
    x64 = x.detach().double().requires_grad_()
    ref = formula(x64, (4, 7, 7), (4, 7, 7), (0, 0, 0), False)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)
    g = sample(y.shape, torch.float64, seed=1)
    (dx,) = torch.autograd.grad(y, x, g.float())
    (dref,) = torch.autograd.grad(ref, x64, g)
    torch.testing.assert_close(dx.double(), dref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["channels_last_3d", "transposed", "sliced", "expanded_grad"])
def test_memory_layouts_give_the_same_values(layout):
    kernel, stride, padding = (3, 2, 3), (2, 2, 1), (1, 1, 1)
    if layout == "channels_last_3d":
        x = sample((2, 6, 5, 9, 8)).contiguous(memory_format=torch.channels_last_3d)
    elif layout == "transposed":
        x = sample((2, 6, 5, 9, 8)).transpose(3, 4).contiguous().transpose(3, 4)
    else:
        x = sample((2, 6, 5, 18, 8))[:, :, :, ::2]
    x.requires_grad_()
    y = softpool3d.soft_pool3d(x, kernel, stride, padding)
    ref = formula(x.detach(), kernel, stride, padding, False)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)
    if layout == "channels_last_3d":
        assert y.is_contiguous(memory_format=torch.channels_last_3d)
    grad = torch.ones(1).expand_as(y) if layout == "expanded_grad" else torch.ones_like(y)
    (dx,) = torch.autograd.grad(y, x, grad)
    x64 = x.detach().double().requires_grad_()
    (dref,) = torch.autograd.grad(formula(x64, kernel, stride, padding, False).sum(), x64)
    torch.testing.assert_close(dx.double(), dref, rtol=1e-5, atol=1e-5)
    if layout == "channels_last_3d":
        assert dx.is_contiguous(memory_format=torch.channels_last_3d)


def test_input_is_not_modified():
    x = sample((1, 2, 4, 6, 6)).requires_grad_()
    before = x.detach().clone()
    softpool3d.soft_pool3d(x, 3, 2, 1).sum().backward()
    assert torch.equal(x.detach(), before)


@pytest.mark.parametrize("dtype,magnitude", [(torch.float32, 1e4), (torch.float16, 6e4), (torch.bfloat16, 1e38)])
def test_extreme_inputs_give_finite_values_and_grads(dtype, magnitude):
    x = (torch.sign(sample((1, 2, 4, 6, 6))) * magnitude).to(dtype)
    x[0, 0, 0, 0, 0] = 0.5
    x.requires_grad_()
    y = softpool3d.soft_pool3d(x, 2, 2)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    # a window holding the largest value pools to it exactly
    windows_max = F.max_pool3d(x.detach().float(), 2, 2)
    hot = windows_max == windows_max.max()
    assert hot.any() and torch.equal(y.float()[hot], windows_max[hot])


@pytest.mark.parametrize("dtype,spike", [(torch.float32, 200.0), (torch.float64, 650.0)])
@pytest.mark.parametrize("shape,kernel,stride,padding,ceil_mode", [CASES[1], CASES[2], CASES[6]], ids=["k3s2", "k3s1", "k4s1"])
def test_overlapping_windows_far_below_a_spike_equal_formula(shape, kernel, stride, padding, ceil_mode, dtype, spike):
    """Windows whose values lie far below the largest value of their plane stay exact: the same
    tolerances as without a spike (measured: float32 values 5e-7, gradients 5e-6 off)."""
    x = sample(shape, dtype)
    x[:, :, 0, 0, 0] = spike
    x[0, 0, -1, -1, -1] = -spike
    x.requires_grad_()
    y = softpool3d.soft_pool3d(x, kernel, stride, padding, ceil_mode)
    x64 = x.detach().double().requires_grad_()
    ref = formula(x64, kernel, stride, padding, ceil_mode)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol)
    g = sample(y.shape, torch.float64, seed=1)
    (dx,) = torch.autograd.grad(y, x, g.to(dtype))
    (dref,) = torch.autograd.grad(ref, x64, g)
    torch.testing.assert_close(dx.double(), dref, rtol=tol, atol=tol)


@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("batched", [True, False])
def test_1d_2d_and_unbatched_follow_avg_pool(dims, batched):
    shape = (2, 3, 11, 9)[: dims + 2] if batched else (3, 11, 9)[: dims + 1]
    x = sample(shape).requires_grad_()
    pool = {1: softpool3d.soft_pool1d, 2: softpool3d.soft_pool2d}[dims]
    avg = {1: F.avg_pool1d, 2: F.avg_pool2d}[dims]
    y = pool(x, 3, 2, 1, True)
    assert y.shape == avg(x, 3, 2, 1, True).shape
    x64 = x.detach().double().requires_grad_()
    x5 = x64.reshape((1,) * (not batched) + x.shape[: x.dim() - dims] + (1,) * (3 - dims) + x.shape[-dims:])
    pad = (1,) * (3 - dims)
    ref = formula(x5, pad + (3,) * dims, pad + (2,) * dims, (0,) * (3 - dims) + (1,) * dims, True).reshape(y.shape)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)
    g = sample(y.shape, torch.float64, seed=1)
    (dx,) = torch.autograd.grad(y, x, g.float())
    (dref,) = torch.autograd.grad(ref, x64, g)
    torch.testing.assert_close(dx.double(), dref, rtol=1e-5, atol=1e-5)


def test_unbatched_3d_equals_batched():
    x = sample((3, 4, 6, 6))
    torch.testing.assert_close(softpool3d.soft_pool3d(x, 2), softpool3d.soft_pool3d(x.unsqueeze(0), 2)[0])


def test_modules_match_functional_forms():
    x = sample((2, 3, 4, 6, 6))
    module = softpool3d.SoftPool3d((2, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), ceil_mode=True)
    torch.testing.assert_close(module(x), softpool3d.soft_pool3d(x, (2, 3, 3), (1, 2, 2), (0, 1, 1), True))
    torch.testing.assert_close(softpool3d.SoftPool2d(2)(x[:, :, 0]), softpool3d.soft_pool2d(x[:, :, 0], 2))
    torch.testing.assert_close(softpool3d.SoftPool1d(3, 2)(x[:, :, 0, 0]), softpool3d.soft_pool1d(x[:, :, 0, 0], 3, 2))


@pytest.mark.parametrize("pools,shape", [
    pytest.param(lambda: (softpool3d.SoftPool3d(2), softpool3d.SoftPool3d((2, 4, 4), stride=1)), (2, 3, 4, 8, 8),
                 marks=pytest.mark.slow, id="soft_pool3d"),
    pytest.param(lambda: (softpool3d.SoftAdaptivePool3d((3, None, 5)), softpool3d.SoftAdaptivePool3d(1)),
                 (2, 3, 4, 7, 9), marks=pytest.mark.slow, id="soft_adaptive_pool3d"),
])
def test_torch_compile_fullgraph_matches_eager(pools, shape):
    torch.manual_seed(0)
    first, second = pools()
    model = torch.nn.Sequential(torch.nn.Conv3d(3, 4, 3, padding=1), first, torch.nn.ReLU(), second, torch.nn.Flatten())
    x = sample(shape)
    compiled = torch.compile(model, fullgraph=True)
    eager_out = model(x)
    eager_out.sum().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    out = compiled(x)
    out.sum().backward()
    torch.testing.assert_close(out, eager_out)
    for p, g in zip(model.parameters(), eager_grads):
        torch.testing.assert_close(p.grad, g)


@pytest.mark.parametrize(
    "call,error,name",
    [
        (lambda x: softpool3d.soft_pool3d(x, 7), ValueError, "kernel_size"),
        (lambda x: softpool3d.soft_pool3d(x, 2, stride=-1), ValueError, "stride"),
        (lambda x: softpool3d.soft_pool3d(x[0, 0], 2), ValueError, "soft_pool3d"),
        (lambda x: softpool3d.soft_pool3d(x.to(torch.int64), 2), TypeError, "dtype"),
        (lambda x: softpool3d.soft_pool3d(x, 2, padding=2), ValueError, "padding"),
        (lambda x: softpool3d.soft_pool3d(x, (2, 2)), ValueError, "kernel_size"),
    ],
    ids=["kernel_too_large", "negative_stride", "3d_input", "integer_dtype", "padding_over_half", "kernel_length"],
)
def test_bad_arguments_raise_naming_the_argument(call, error, name):
    with pytest.raises(error, match=name):
        call(sample((1, 2, 4, 6, 6)))


def test_fallback_warns_once_and_matches_formula(monkeypatch):
    def no_compiler(with_cuda: bool, verbose: bool = False):
        raise OSError("no C++ compiler found")

    monkeypatch.setattr(extension, "build", no_compiler)
    extension.load.cache_clear()
    try:
        x = sample((1, 2, 5, 7, 6), torch.float64).requires_grad_()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # every warning recorded, however often it repeats
            y = softpool3d.soft_pool3d(x, 3, 2, 1, True)
            torch.testing.assert_close(softpool3d.soft_pool3d(x, 3, 2, 1, True), y)
        messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        assert len(messages) == 1 and re.search(r"no C\+\+ compiler found.*pure-PyTorch", messages[0]), messages
        x64 = x.detach().requires_grad_()
        ref = formula(x64, (3,) * 3, (2,) * 3, (1,) * 3, True)
        torch.testing.assert_close(y, ref)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            (dx,) = torch.autograd.grad(y.sum(), x)
        (dref,) = torch.autograd.grad(ref.sum(), x64)
        torch.testing.assert_close(dx, dref)
    finally:
        extension.load.cache_clear()


@CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("shape,kernel,stride,padding,ceil_mode", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_cuda_values_and_grads_equal_formula(shape, kernel, stride, padding, ceil_mode, dtype):
    x = sample(shape, dtype, device="cuda").requires_grad_()
    y = softpool3d.soft_pool3d(x, kernel, stride, padding, ceil_mode)
    x64 = x.detach().cpu().double().requires_grad_()
    ref = formula(x64, kernel, stride, padding, ceil_mode)
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    torch.testing.assert_close(y.cpu().double(), ref, rtol=tol, atol=tol)
    g = sample(y.shape, torch.float64, seed=1)
    (dx,) = torch.autograd.grad(y, x, g.to(device="cuda", dtype=dtype))
    (dref,) = torch.autograd.grad(ref, x64, g)
    torch.testing.assert_close(dx.cpu().double(), dref, rtol=tol, atol=tol * max(1.0, dref.abs().max().item()))


@CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("shape,kernel,stride,padding,ceil_mode", CASES[:5], ids=CASE_IDS[:5])
def test_cuda_gradcheck_float64(shape, kernel, stride, padding, ceil_mode):
    x = sample((1, 2, *shape[2:]), torch.float64, device="cuda", scale=1.0).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: softpool3d.soft_pool3d(t, kernel, stride, padding, ceil_mode), (x,))


@CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("dtype,magnitude", [(torch.float32, 1e4), (torch.float16, 6e4)])
def test_cuda_extreme_inputs_give_finite_values_and_grads(dtype, magnitude):
    x = (torch.sign(sample((1, 2, 4, 6, 6))) * magnitude).to(device="cuda", dtype=dtype).requires_grad_()
    y = softpool3d.soft_pool3d(x, 2, 2)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
