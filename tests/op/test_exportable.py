"""SoftPool in plain ops (the export path) against a float64 loop over windows: padding, ceil_mode,
overlapping and global windows, finite and accurate at inputs scaled by 30 where a per-tensor shift
would underflow; the op itself is untouched outside ``set_exportable``."""
import itertools

import pytest
import torch

import softpool3d
from softpool3d.exportable import is_exportable, set_exportable
from softpool3d.ops import pooled_size


def loop_reference(x, kernel, stride, padding, ceil_mode):
    """float64 SoftPool, one window at a time, over the real (unpadded) positions of each window."""
    sizes = x.shape[2:]
    outs = [pooled_size(n, k, s, p, ceil_mode) for n, k, s, p in zip(sizes, kernel, stride, padding)]
    y = torch.zeros(*x.shape[:2], *outs, dtype=torch.float64)
    for out in itertools.product(*(range(n) for n in outs)):
        window = []
        for o, k, s, p, n in zip(out, kernel, stride, padding, sizes):
            start = o * s - p
            window.append(slice(max(start, 0), min(start + k, n)))
        values = x.double()[(slice(None), slice(None), *window)].flatten(2)
        y[(slice(None), slice(None), *out)] = (values.softmax(-1) * values).sum(-1)
    return y


CASES = [
    ((3, 3, 3), (2, 2, 2), (1, 1, 1), False),   # overlapping, padded (a ResNet stem pool)
    ((3, 3, 3), (2, 2, 2), (1, 1, 1), True),    # ... with ceil_mode's extra tail windows
    ((2, 3, 3), (2, 2, 2), (0, 1, 1), True),    # non-overlapping in T with a ceil_mode tail
    ((3, 2, 3), (1, 1, 2), (1, 0, 0), True),    # stride 1 next to stride 2
    ((2, 2, 2), (2, 2, 2), (0, 0, 0), False),   # plain tiling, odd sizes leave a remainder
    ((5, 9, 8), (5, 9, 8), (0, 0, 0), False),   # one global window (X3D's head and squeeze-excitation)
    ((1, 9, 8), (1, 9, 8), (0, 0, 0), False),   # per-frame global windows (SRTG's squeeze)
]


@pytest.mark.parametrize("scale", [1.0, 30.0])
@pytest.mark.parametrize("kernel,stride,padding,ceil_mode", CASES)
def test_plain_ops_match_a_float64_loop_over_windows(kernel, stride, padding, ceil_mode, scale):
    x = torch.randn(2, 3, 5, 9, 8, generator=torch.Generator().manual_seed(0)) * scale
    with set_exportable():
        y = softpool3d.soft_pool3d(x, kernel, stride, padding, ceil_mode)
    reference = loop_reference(x, kernel, stride, padding, ceil_mode)
    assert y.shape == reference.shape and y.dtype == x.dtype
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), reference, rtol=2e-5, atol=2e-5 * scale)


def test_a_window_of_large_values_stays_finite_where_a_global_shift_underflows():
    """One window near 0 and one near 3000: a shift by the tensor's maximum would make exp() of the first 0/0."""
    x = torch.tensor([0.0, 1.0, 3000.0, 3001.0]).reshape(1, 1, 1, 1, 4)
    with set_exportable():
        y = softpool3d.soft_pool3d(x, (1, 1, 2))
    reference = loop_reference(x, (1, 1, 2), (1, 1, 2), (0, 0, 0), False)
    torch.testing.assert_close(y.double(), reference)


def test_plain_ops_only_inside_the_block():
    """The exported graph holds the custom op outside ``set_exportable`` and only aten ops inside it."""
    x = torch.randn(1, 2, 4, 6, 6)
    pool = softpool3d.SoftPool3d(2)
    assert not is_exportable()
    with set_exportable():
        assert is_exportable()
        plain = str(torch.export.export(pool, (x,)).graph)
    assert not is_exportable()
    assert "softpool3d" not in plain and "aten.exp" in plain
    assert "softpool3d.soft_pool3d_forward" in str(torch.export.export(pool, (x,)).graph)


def adaptive_loop_reference(x, output_size):
    """float64 adaptive SoftPool, one window at a time, with adaptive_avg_pool's window bounds."""
    sizes = x.shape[2:]
    y = torch.zeros(*x.shape[:2], *output_size, dtype=torch.float64)
    for out in itertools.product(*(range(n) for n in output_size)):
        window = [slice(o * n // m, -(-(o + 1) * n // m)) for o, n, m in zip(out, sizes, output_size)]
        values = x.double()[(slice(None), slice(None), *window)].flatten(2)
        y[(slice(None), slice(None), *out)] = (values.softmax(-1) * values).sum(-1)
    return y


@pytest.mark.parametrize("scale", [1.0, 30.0])
@pytest.mark.parametrize("output_size", [(1, 1, 1), (2, 3, 3), (5, 4, 3), (3, 9, 8), (4, 2, 5)])
def test_adaptive_plain_ops_match_a_float64_loop_over_windows(output_size, scale):
    x = torch.randn(2, 3, 5, 9, 8, generator=torch.Generator().manual_seed(1)) * scale
    with set_exportable():
        y = softpool3d.soft_adaptive_pool3d(x, output_size)
    assert y.shape == (2, 3, *output_size) and torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), adaptive_loop_reference(x, output_size), rtol=2e-5, atol=2e-5 * scale)


def test_adaptive_pool_exports_to_onnx_in_standard_ops(tmp_path):
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    pool = softpool3d.SoftAdaptivePool3d((2, 3, 3)).eval()
    x = torch.randn(2, 4, 5, 9, 8, generator=torch.Generator().manual_seed(2)) * 30
    with torch.no_grad(), set_exportable():
        torch.onnx.export(pool, (x,), str(tmp_path / "pool.onnx"), input_names=["x"], dynamo=True, verbose=False,
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},), external_data=False)
    assert {node.domain for node in onnx.load(str(tmp_path / "pool.onnx")).graph.node} <= {"", "ai.onnx"}
    session = onnxruntime.InferenceSession(str(tmp_path / "pool.onnx"), providers=["CPUExecutionProvider"])
    x3 = torch.randn(3, 4, 5, 9, 8, generator=torch.Generator().manual_seed(3)) * 30
    exported = session.run(None, {"x": x3.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(exported).double(), adaptive_loop_reference(x3, (2, 3, 3)),
                               rtol=2e-5, atol=1e-3)
