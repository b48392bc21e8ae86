"""The CPU kernels split their work over threads with ``at::parallel_for``: rows of windows where windows do not
overlap (and for adaptive windows), whole ``(n, c)`` planes where they do, and the CUDA grid's index range for the
per-index bodies. With four threads, each op's values and gradients equal one thread's bit for bit (every output
and every input gradient is computed by one task, in a fixed order) and the float64 formula. Under pytest-xdist
each test process runs torch at its share of the cores (one thread each on two cores, tests/conftest.py), so this
module is where the split runs, whatever the machine."""
from __future__ import annotations

from typing import Callable

import pytest
import torch
from test_ops import formula, sample
from test_ops_adaptive import loop_reference
from test_ops_per_index import PerIndex

import softpool3d
from softpool3d import extension

POOLS = {
    # (input shape, kernel, stride, padding, ceil_mode): 1,024 rows of 16 windows; 16 planes of overlapping windows
    "disjoint": ((2, 8, 8, 32, 32), (2, 2, 2), (2, 2, 2), (0, 0, 0), False),
    "overlapping": ((2, 8, 6, 20, 20), (3, 3, 3), (1, 1, 1), (1, 1, 1), False),
}
ADAPTIVE = ((2, 8, 9, 30, 30), (4, 7, 7))


def _at_threads(threads: int, run: Callable[[], tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return run()
    finally:
        torch.set_num_threads(before)


def _values_and_grads(op: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                      grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_()
    y = op(x)
    y.backward(grad)
    return y.detach(), x.grad


def _reference(op64: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
               grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x64 = x.double().requires_grad_()
    y = op64(x64)
    (dx,) = torch.autograd.grad(y, x64, grad.double())
    return y.detach(), dx


def _check(op, op64, x: torch.Tensor) -> None:
    """``op`` at 1 and at 4 threads: equal bit for bit, and to ``op64`` (the float64 formula)."""
    grad = sample(op(x).shape, seed=1)
    one = _at_threads(1, lambda: _values_and_grads(op, x, grad))
    four = _at_threads(4, lambda: _values_and_grads(op, x, grad))
    for single, split, what in zip(one, four, ("values", "gradients")):
        assert torch.equal(single, split), f"{what} at 4 threads differ from 1 thread's"
    for got, expected in zip(one, _reference(op64, x, grad)):
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module", autouse=True)
def fused_kernel():
    assert extension.for_device(torch.device("cpu")) is not None, "the CPU extension did not build"


@pytest.mark.parametrize("pool", sorted(POOLS))
def test_fused_kernel_at_four_threads_equals_one_thread_and_the_formula(pool):
    shape, *args = POOLS[pool]
    _check(lambda x: softpool3d.soft_pool3d(x, *args), lambda x: formula(x, *args), sample(shape))


def test_adaptive_kernel_at_four_threads_equals_one_thread_and_the_formula():
    shape, size = ADAPTIVE
    _check(lambda x: softpool3d.soft_adaptive_pool3d(x, size), lambda x: loop_reference(x, size), sample(shape))


@pytest.mark.parametrize("pool", sorted(POOLS))
def test_per_index_bodies_at_four_threads_equal_one_thread_and_the_formula(pool):
    shape, *args = POOLS[pool]
    module = extension.for_device(torch.device("cpu"))
    _check(lambda x: PerIndex.apply(x, module, (*args, False, True)), lambda x: formula(x, *args), sample(shape))
