"""SoftPool in plain tensor ops, for exporting models to formats that know no custom op (ONNX).

Inside :func:`set_exportable` every ``soft_pool1d/2d/3d`` call (and so every ``SoftPool*`` module
and every SoftPool ``GlobalPool3d``) computes with :func:`soft_pool_plain` instead of the
``softpool3d::soft_pool3d_forward`` custom op, and every ``soft_adaptive_pool1d/2d/3d`` call with
:func:`soft_adaptive_pool_plain`; training and ordinary inference never see it
(timm's ``set_layer_config(exportable=True)`` is the model).

:func:`soft_pool_plain` computes the op's function as stably as the kernel: each window is
shifted by its own maximum before ``exp``, so it is finite and exact for any finite input.
Windows are formed per dimension with standard ops only (pad, strided slices, reshape): a
dimension whose stride equals its kernel is reshaped into ``(windows, kernel)`` (a global
window is the one window of a dimension), an overlapping one stacks its ``kernel`` strided
slices. Padded positions (``padding`` and the tail ``ceil_mode`` adds) take no part in a window,
as in the op.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

_state = threading.local()


def is_exportable() -> bool:
    """Whether SoftPool is computed in plain ops (inside :func:`set_exportable`)."""
    return getattr(_state, "exportable", False)


@contextlib.contextmanager
def set_exportable(exportable: bool = True) -> Iterator[None]:
    """Compute SoftPool with :func:`soft_pool_plain` (``exportable=True``) in this block and thread."""
    previous = is_exportable()
    _state.exportable = exportable
    try:
        yield
    finally:
        _state.exportable = previous


def _windows_along(x: torch.Tensor, axis: int, kernel: int, stride: int, out: int) -> torch.Tensor:
    """Split ``axis`` of ``x`` (long enough for ``out`` windows) into ``(out, kernel)`` at ``axis, axis + 1``."""
    if stride == kernel:
        x = x.narrow(axis, 0, out * kernel)
        return x.reshape(*x.shape[:axis], out, kernel, *x.shape[axis + 1:])
    span = (out - 1) * stride + 1
    slices = [x.narrow(axis, offset, span)[(slice(None),) * axis + (slice(None, None, stride),)] for offset in range(kernel)]
    return torch.stack(slices, dim=axis + 1)


def soft_pool_plain(
    x: torch.Tensor,
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    outs: Sequence[int],
) -> torch.Tensor:
    """SoftPool of ``x (N, C, T, H, W)`` over windows ``kernel`` / ``stride`` / ``padding`` into the output
    sizes ``outs`` (``(T', H', W')``, as :func:`softpool3d.ops.pooled_size` gives them), in standard ops.

    ``y = sum_i exp(x_i - m) x_i / sum_j exp(x_j - m)`` with ``m`` the window's maximum over its
    real (unpadded) positions; computed in float32 (float64 for float64 input), returned in ``x``'s dtype.
    """
    compute = x if x.dtype in (torch.float32, torch.float64) else x.float()
    sizes = compute.shape[2:]
    pads: list[int] = []
    for size, k, st, p, out in reversed(list(zip(sizes, kernel, stride, padding, outs))):
        pads += [p, max((out - 1) * st + k - size - p, 0)]
    padded = any(pads)
    values = F.pad(compute, pads) if padded else compute
    valid = None
    if padded:
        valid = F.pad(torch.ones(sizes, dtype=torch.bool, device=x.device), pads, value=False)[None, None]
    for d, (k, st, out) in enumerate(zip(kernel, stride, outs)):
        axis = 2 + 2 * d
        values = _windows_along(values, axis, k, st, out)
        if valid is not None:
            valid = _windows_along(valid, axis, k, st, out)
    return _soft_reduce(values, valid).to(x.dtype)


def _soft_reduce(values: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """SoftPool of windows laid out ``(N, C, T', kT, H', kH, W', kW)`` (``valid``: which are real
    positions, broadcastable, or None when all are) -> ``(N, C, T', H', W')``, each window shifted by its maximum."""
    window_dims = (3, 5, 7)
    if valid is None:
        peak = values.amax(dim=window_dims, keepdim=True)
        weights = torch.exp(values - peak)
    else:
        peak = values.masked_fill(~valid, float("-inf")).amax(dim=window_dims, keepdim=True)
        weights = torch.exp(values - peak).masked_fill(~valid, 0.0)
    return (weights * values).sum(dim=window_dims) / weights.sum(dim=window_dims)


def soft_adaptive_pool_plain(x: torch.Tensor, windows: Sequence[Sequence[tuple[int, int]]]) -> torch.Tensor:
    """Adaptive SoftPool of ``x (N, C, T, H, W)`` in standard ops: ``windows[d]`` lists the ``[start, end)``
    of each output's window along spatial dimension ``d`` (:func:`softpool3d.ops.adaptive_windows`).

    Each dimension gathers its windows padded to the longest one (index_select, a constant index);
    the repeated tail positions are masked out, and every window is shifted by its own maximum."""
    compute = x if x.dtype in (torch.float32, torch.float64) else x.float()
    values, masks, ragged = compute, [], False
    for d, bounds in enumerate(windows):
        longest = max(end - start for start, end in bounds)
        ragged = ragged or any(end - start < longest for start, end in bounds)
        index = torch.tensor([[min(start + k, end - 1) for k in range(longest)] for start, end in bounds],
                             device=x.device)
        masks.append(torch.tensor([[start + k < end for k in range(longest)] for start, end in bounds],
                                  device=x.device))
        axis = 2 + 2 * d
        values = values.index_select(axis, index.flatten()).unflatten(axis, (len(bounds), longest))
    valid = None
    if ragged:
        valid = (masks[0][:, :, None, None, None, None] & masks[1][None, None, :, :, None, None]
                 & masks[2][None, None, None, None, :, :])[None, None]
    return _soft_reduce(values, valid).to(x.dtype)
