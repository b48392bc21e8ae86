"""Two CUDA behaviours no CPU run reaches: forward + backward captured in a CUDA graph and replayed
(what ``torch.compile(mode="reduce-overhead")`` does) equal eager, and one real launch over 2^31
elements (bf16, 4 GiB) on the 64-bit index path equals SoftPool's formula computed piece by piece."""
from __future__ import annotations

import pytest
import torch

from softpool3d import extension, soft_adaptive_pool3d, soft_pool3d

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]

# (input shape, dtype, channels_last, pooling): short overlapping windows, and long windows (the
# split forward, and the backward from the saved log-sum-exp)
GRAPH_CASES = [
    ((4, 16, 8, 28, 28), torch.float32, False, lambda x: soft_pool3d(x, 3, 1, 1)),
    ((4, 24, 13, 40, 40), torch.bfloat16, True, lambda x: soft_pool3d(x, (13, 40, 40))),
    ((4, 24, 13, 40, 40), torch.bfloat16, True, lambda x: soft_adaptive_pool3d(x, (2, 3, 3))),
]


def _input(shape, dtype, channels_last, seed):
    generator = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(shape, device="cuda", generator=generator).to(dtype)
    return x.contiguous(memory_format=torch.channels_last_3d) if channels_last else x


@pytest.mark.parametrize("case", range(len(GRAPH_CASES)), ids=["overlapping", "split", "adaptive_split"])
def test_forward_and_backward_replayed_from_a_cuda_graph_equal_eager(case):
    shape, dtype, channels_last, pool = GRAPH_CASES[case]
    static_x = _input(shape, dtype, channels_last, 0).requires_grad_()
    static_grad = torch.ones_like(pool(static_x.detach()))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture (the extension's load, the allocator)
        for _ in range(2):
            pool(static_x).backward(static_grad)
            static_x.grad = None
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = pool(static_x)
        static_y.backward(static_grad)
    for seed in (1, 2):  # new data in the captured buffers, then a replay
        x = _input(shape, dtype, channels_last, seed)
        grad = torch.randn(static_grad.shape, device="cuda", dtype=dtype)
        with torch.no_grad():
            static_x.copy_(x)
            static_grad.copy_(grad)
        graph.replay()
        eager_x = x.clone().requires_grad_()
        eager_y = pool(eager_x)
        eager_y.backward(grad)
        torch.cuda.synchronize()
        assert torch.equal(static_y, eager_y)
        assert torch.equal(static_x.grad, eager_x.grad)


def test_one_launch_over_two_to_the_31_elements_equals_the_formula_piece_by_piece():
    """(2, 16, 64, 1024, 1024) bf16 = 2^31 elements (4 GiB): int32 indices cannot address it, so
    the kernels run the 64-bit path; each 1/16 of the input, pooled on its own in float32 by the
    formula, must equal that part of the one launch's output and input gradient."""
    free, _ = torch.cuda.mem_get_info()
    if free < 14 * 2**30:
        pytest.skip(f"needs 14 GiB of free GPU memory, {free / 2**30:.1f} GiB free")
    shape, kernel = (2, 16, 64, 1024, 1024), (2, 2, 2)
    x = torch.empty(shape, device="cuda", dtype=torch.bfloat16)
    for n in range(shape[0]):  # filled in pieces, to keep float32 scratch small
        for c in range(shape[1]):
            x[n, c].normal_(generator=torch.Generator(device="cuda").manual_seed(n * 100 + c))
    module = extension.for_device(x.device)
    assert module is not None, "no compiled CUDA extension"
    assert x.numel() == 2**31
    assert module.plan(x, list(kernel), list(kernel), [0, 0, 0], False)["index_bits"] == 64
    x.requires_grad_()
    y = soft_pool3d(x, kernel)
    grad = torch.ones_like(y)
    y.backward(grad)
    torch.cuda.synchronize()
    for n in range(shape[0]):
        for c0 in range(0, shape[1], 2):
            piece = x.detach()[n : n + 1, c0 : c0 + 2].float().requires_grad_()
            windows = piece.unfold(2, 2, 2).unfold(3, 2, 2).unfold(4, 2, 2).flatten(-3)
            expected = (windows.softmax(-1) * windows).sum(-1)
            (expected_dx,) = torch.autograd.grad(expected, piece, grad[n : n + 1, c0 : c0 + 2].float())
            torch.testing.assert_close(y[n : n + 1, c0 : c0 + 2].float(), expected, rtol=1.6e-2, atol=1.6e-2)
            torch.testing.assert_close(x.grad[n : n + 1, c0 : c0 + 2].float(), expected_dx, rtol=1.6e-2,
                                       atol=1.6e-2)
