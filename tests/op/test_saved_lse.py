"""The backward of long windows reads the log-sum-exp its forward saved instead of running the
whole (split) forward again: the CUDA kernels' per-index bodies (``per_element`` mode on the CPU),
with the saved ``lse``, against SoftPool's gradient evaluated here in float64."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from softpool3d import extension, ops
from test_ops_per_index import CASES, formula, reference, sample

# long windows (more than 256 elements, split into chunks): disjoint, padded with ceil_mode
# (partial last windows), and overlapping
LONG_CASES = [8, 9, 10]
LONG_IDS = ["disjoint_ceil", "padded_overlapping_ceil", "disjoint_exact"]


@pytest.fixture(scope="module")
def module():
    built = extension.for_device(torch.device("cpu"))
    assert built is not None, "the CPU extension did not build"
    return built


def window_logsumexp(x: torch.Tensor, kernel, stride) -> torch.Tensor:
    """log sum exp of every window of unpadded, exactly tiling windows, in float64."""
    windows = x.double().unfold(2, kernel[0], stride[0]).unfold(3, kernel[1], stride[1]).unfold(4, kernel[2], stride[2])
    return windows.flatten(-3).logsumexp(-1)


@pytest.mark.parametrize("case", LONG_CASES, ids=LONG_IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_backward_from_the_saved_lse_equals_formula(module, case, dtype):
    shape, kernel, stride, padding, ceil_mode = CASES[case][:5]
    x, grad, y_ref, dx_ref = reference(case, dtype)
    args = (list(kernel), list(stride), list(padding), ceil_mode, False, True)
    assert module.plan(x, *args[:4])["chunks"] > 1  # the split forward
    y, lse = module.forward_lse(x, *args)
    assert torch.equal(y, module.forward(x, *args))
    assert lse.shape == y.shape and lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    dx = module.backward(grad, x, y, *args, lse=lse)
    tol = 1e-12 if dtype == torch.float64 else 1e-5 if dtype == torch.float32 else 1.6e-2
    torch.testing.assert_close(dx.double(), dx_ref, rtol=tol, atol=tol * max(1.0, dx_ref.abs().max().item()))
    assert torch.equal(dx, module.backward(grad, x, y, *args))  # the same as recomputing it


def test_saved_lse_is_each_windows_logsumexp(module):
    shape, kernel, stride, padding, ceil_mode = CASES[10][:5]
    x = sample(shape, torch.float64)
    _, lse = module.forward_lse(x, list(kernel), list(stride), list(padding), ceil_mode, False, True)
    torch.testing.assert_close(lse, window_logsumexp(x, kernel, stride), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("case", LONG_CASES, ids=LONG_IDS)
def test_backward_reads_the_given_lse(module, case):
    """A saved lse larger by log 2 halves every weight exp(x - lse), hence the gradient: the
    backward reads the lse it is given, it does not compute its own."""
    shape, kernel, stride, padding, ceil_mode = CASES[case][:5]
    x, grad, _, _ = reference(case, torch.float64)
    args = (list(kernel), list(stride), list(padding), ceil_mode, False, True)
    y, lse = module.forward_lse(x, *args)
    dx = module.backward(grad, x, y, *args, lse=lse)
    torch.testing.assert_close(module.backward(grad, x, y, *args, lse=lse + math.log(2)), dx / 2)


def test_adaptive_uneven_windows_backward_from_the_saved_lse(module):
    x = sample((1, 2, 5, 23, 19), torch.float64)  # T windows [0, 3) and [2, 5): uneven, overlapping
    x64 = x.clone().requires_grad_()
    y_ref = ops.soft_adaptive_pool_reference(x64, [2, 1, 1])
    grad = sample(y_ref.shape, torch.float64, seed=1)
    (dx_ref,) = torch.autograd.grad(y_ref, x64, grad)
    y, lse = module.adaptive_forward_lse(x, [2, 1, 1], False, True)
    assert lse.shape == y.shape
    torch.testing.assert_close(y, y_ref.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(module.adaptive_backward(grad, x, y, [2, 1, 1], False, True, lse=lse), dx_ref,
                               rtol=1e-12, atol=1e-12)


def test_a_misshapen_lse_is_refused_naming_it(module):
    shape, kernel, stride, padding, ceil_mode = CASES[10][:5]
    x, grad, _, _ = reference(10, torch.float64)
    args = (list(kernel), list(stride), list(padding), ceil_mode, False, True)
    y, lse = module.forward_lse(x, *args)
    with pytest.raises(RuntimeError, match="expected lse of the output shape"):
        module.backward(grad, x, y, *args, lse=lse.float())


def test_only_long_windows_on_cuda_save_an_lse():
    on_cuda, on_cpu = SimpleNamespace(device=torch.device("cuda")), torch.empty(1)
    assert ops._saves_lse(on_cuda, 16 * 56 * 56) and ops._saves_lse(on_cuda, 257)
    assert not ops._saves_lse(on_cuda, 256)  # short windows recompute it in the backward
    assert not ops._saves_lse(on_cpu, 16 * 56 * 56)  # the CPU's row kernels compute it on the fly


def test_autograd_saves_the_lse_the_forward_returns():
    """What the op's autograd keeps for the backward: x, y and the forward's lse (empty on the CPU)."""
    saved = []

    def pack(tensor):
        saved.append((tuple(tensor.shape), tensor.dtype))
        return tensor

    x = sample((1, 2, 16, 20, 20), torch.float64).requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        y = ops.soft_pool3d(x, (16, 20, 20))
    assert saved == [(tuple(x.shape), torch.float64), (tuple(y.shape), torch.float64), ((0,), torch.float64)]
    x64 = x.detach().clone().requires_grad_()
    (dx_ref,) = torch.autograd.grad(formula(x64, (16, 20, 20), (16, 20, 20), (0, 0, 0), False).sum(), x64)
    y.sum().backward()
    torch.testing.assert_close(x.grad, dx_ref)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")


@CUDA
@pytest.mark.cuda
def test_cuda_op_saves_the_lse_of_long_windows_and_its_gradient_equals_formula():
    saved = []

    def pack(tensor):
        saved.append((tuple(tensor.shape), tensor.dtype))
        return tensor

    x = sample((2, 3, 16, 56, 56), torch.float32, scale=2.0)
    x64 = x.double().requires_grad_()
    y_ref = formula(x64, (16, 56, 56), (16, 56, 56), (0, 0, 0), False)
    grad = sample(y_ref.shape, torch.float32, seed=1)
    (dx_ref,) = torch.autograd.grad(y_ref, x64, grad.double())
    xc = x.cuda().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        y = ops.soft_pool3d(xc, (16, 56, 56))
    assert (tuple(y.shape), torch.float32) in saved[2:]  # the lse, beside x and y
    y.backward(grad.cuda())
    assert ((xc.grad.cpu().double() - dx_ref).abs().max() / dx_ref.abs().max()).item() < 2e-5
