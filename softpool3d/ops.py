"""SoftPool: each window R is downsampled to ``sum_i exp(x_i) * x_i / sum_j exp(x_j)``.

Functional forms ``soft_pool1d/2d/3d`` and modules ``SoftPool1d/2d/3d`` take the same
arguments, with the same defaults, as ``F.avg_pool{1,2,3}d``; the output shape equals
``avg_pool``'s, and padded positions take no part in a window. ``soft_adaptive_pool1d/2d/3d``
and ``SoftAdaptivePool1d/2d/3d`` take ``output_size`` as ``F.adaptive_avg_pool{1,2,3}d`` and pool
exactly its windows (``softpool3d::soft_adaptive_pool3d_forward``/``_backward``, the same kernels).

All of them run the ``softpool3d::soft_pool3d_forward``/``_backward`` custom ops on a 5-D view
of the input (1-D, 2-D and unbatched inputs are reshaped), so ``torch.compile(fullgraph=True)``
traces them (inside :func:`softpool3d.exportable.set_exportable` they compute in plain ops
instead, for export). The ops call the fused CPU/CUDA kernel of ``softpool3d/csrc`` (built on first use,
see :mod:`softpool3d.extension`), or, when it cannot be built, :func:`soft_pool_reference` and
:func:`soft_pool_reference_backward`. Backward needs only the saved input and output, and for long
windows on CUDA each window's log-sum-exp, which the forward saves (:func:`_saves_lse`) so that the
backward does not run the whole (split) forward again.
"""
from __future__ import annotations

import itertools
import math
from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from softpool3d import exportable, extension

IntOrTuple = Union[int, Sequence[int]]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _ntuple(value: IntOrTuple | None, dims: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * dims
    values = tuple(value)
    if len(values) != dims or not all(isinstance(v, int) for v in values):
        raise ValueError(f"{name} must be an int or a sequence of {dims} ints, got {value!r}")
    return values


def pooled_size(length: int, kernel: int, stride: int, padding: int, ceil_mode: bool) -> int:
    """Output length of one pooled dimension, following ``F.avg_pool3d``'s rule."""
    span = length + 2 * padding - kernel
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= length + padding:
        out -= 1
    return out


def _check_input(x: torch.Tensor, dims: int, name: str) -> None:
    """``x`` is a floating ``(N, C, *spatial)`` or ``(C, *spatial)`` tensor with ``dims`` spatial
    dimensions, whose non-batch dimensions are not empty (as ``avg_pool``'s)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"input dtype must be one of float16, bfloat16, float32, float64, got {x.dtype}")
    if x.dim() not in (dims + 1, dims + 2):
        raise ValueError(
            f"{name} expects a {dims + 2}-D (batched) or {dims + 1}-D (unbatched) input, "
            f"got input of shape {tuple(x.shape)}"
        )
    if any(size == 0 for size in x.shape[x.dim() - dims - 1:]):
        raise ValueError(
            f"{name} expects non-batch dimensions of positive length (as avg_pool{dims}d), "
            f"got input of shape {tuple(x.shape)}"
        )


def check_pool_args(
    x: torch.Tensor,
    dims: int,
    kernel_size: IntOrTuple,
    stride: IntOrTuple | None,
    padding: IntOrTuple,
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Validate a ``soft_pool{dims}d`` call; return ``(kernel, stride, padding)`` tuples."""
    _check_input(x, dims, f"soft_pool{dims}d")
    kernel = _ntuple(kernel_size, dims, "kernel_size")
    stride_ = kernel if stride is None or (not isinstance(stride, int) and len(stride) == 0) else _ntuple(stride, dims, "stride")
    pad = _ntuple(padding, dims, "padding")
    if any(k <= 0 for k in kernel):
        raise ValueError(f"kernel_size must be positive, got {kernel}")
    if any(s <= 0 for s in stride_):
        raise ValueError(f"stride must be positive, got {stride_}")
    if any(p < 0 for p in pad):
        raise ValueError(f"padding must be non-negative, got {pad}")
    if any(2 * p > k for p, k in zip(pad, kernel)):
        raise ValueError(f"padding should be at most half of kernel_size, got padding={pad}, kernel_size={kernel}")
    sizes = x.shape[-dims:]
    for size, k, p in zip(sizes, kernel, pad):
        if size + 2 * p < k:
            raise ValueError(
                f"kernel_size {kernel} is larger than the padded input {tuple(s + 2 * q for s, q in zip(sizes, pad))}"
            )
    return kernel, stride_, pad


def _padded(
    x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...], padding: tuple[int, ...], ceil_mode: bool
) -> tuple[torch.Tensor, torch.Tensor, list[int], list[int]]:
    """``x`` in its compute dtype padded so every window fits, a mask of its real positions,
    the output sizes and the ``F.pad`` amounts."""
    dims = len(kernel)
    sizes = x.shape[-dims:]
    outs = [pooled_size(s, k, st, p, ceil_mode) for s, k, st, p in zip(sizes, kernel, stride, padding)]
    pads: list[int] = []
    for size, k, st, p, out in reversed(list(zip(sizes, kernel, stride, padding, outs))):
        pads += [p, max((out - 1) * st + k - size - p, 0)]
    compute_dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    xc = x.to(compute_dtype)
    return F.pad(xc, pads, value=0.0), F.pad(torch.ones_like(xc, dtype=torch.bool), pads, value=False), outs, pads


def _windows(
    x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...], padding: tuple[int, ...], ceil_mode: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unfolded windows ``(..., *out, prod(kernel))`` of ``x`` and of its mask of real positions."""
    values, valid, outs, _ = _padded(x, kernel, stride, padding, ceil_mode)
    dims = len(kernel)
    for d, (k, st, out) in enumerate(zip(kernel, stride, outs)):
        axis = x.dim() - dims + d
        values = values.unfold(axis, k, st).narrow(axis, 0, out)
        valid = valid.unfold(axis, k, st).narrow(axis, 0, out)
    return values.flatten(-dims), valid.flatten(-dims)


def soft_pool_reference(
    x: torch.Tensor,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    ceil_mode: bool,
) -> torch.Tensor:
    """Numerically stable SoftPool in plain PyTorch over the last ``len(kernel)`` dims.

    Windows are unfolded, so memory grows with ``prod(kernel) / prod(stride)``; this is
    the fallback when the compiled kernel is unavailable.
    """
    values, valid = _windows(x, kernel, stride, padding, ceil_mode)
    weights = torch.softmax(values.masked_fill(~valid, -math.inf), dim=-1)
    return (weights * values).sum(-1).to(x.dtype)


def soft_pool_reference_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    ceil_mode: bool,
) -> torch.Tensor:
    """Gradient of :func:`soft_pool_reference` wrt ``x`` without autograd (usable inside a
    custom op): ``dx_i = sum over windows w containing i of g_w exp(x_i - lse_w) (1 + x_i - y_w)``."""
    values, valid = _windows(x, kernel, stride, padding, ceil_mode)
    lse = torch.logsumexp(values.masked_fill(~valid, -math.inf), dim=-1)
    padded, mask, outs, pads = _padded(x, kernel, stride, padding, ceil_mode)
    g = grad.to(padded.dtype)
    yc = y.to(padded.dtype)
    dx = torch.zeros_like(padded)
    dims = len(kernel)
    for offset in itertools.product(*(range(k) for k in kernel)):
        index = (Ellipsis, *(slice(o, o + st * (n - 1) + 1, st) for o, st, n in zip(offset, stride, outs)))
        xi = padded[index]
        dx[index] += torch.where(mask[index], g * torch.exp(xi - lse) * (1 + xi - yc), 0.0)
    unpad = (Ellipsis, *(slice(pads[2 * (dims - 1 - d)], padded.shape[-dims + d] - pads[2 * (dims - 1 - d) + 1])
                         for d in range(dims)))
    return dx[unpad].to(x.dtype)


def _channels_last(x: torch.Tensor) -> bool:
    """Whether a 5-D tensor is laid out channels_last_3d (its output and gradient follow it)."""
    return x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last_3d if _channels_last(x) else torch.contiguous_format


def _output_like(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=_memory_format(x))


SPLIT_ABOVE = 256
"""Windows of more elements than this are long: the CUDA kernels split them (``kSplitAbove`` in
``softpool_launch.h``), and their forward saves each window's log-sum-exp for the backward."""


def _saves_lse(x: torch.Tensor, window_volume: int) -> bool:
    """Whether the forward of ``x`` over windows of up to ``window_volume`` elements saves each
    window's log-sum-exp: on CUDA, for long windows, whose backward would otherwise run the whole
    split forward again (a few bytes an output; short windows recompute it in the backward instead of
    holding a float32 tensor of the output's size)."""
    return x.device.type == "cuda" and window_volume > SPLIT_ABOVE


def _lse_like(x: torch.Tensor, shape: Sequence[int], saved: bool) -> torch.Tensor:
    """The forward's log-sum-exp output: the output's ``shape`` in the accumulation type when
    ``saved``, else empty."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return torch.empty(shape if saved else (0,), dtype=dtype, device=x.device)


def _no_lse(x: torch.Tensor) -> torch.Tensor:
    return _lse_like(x, (), False)


@torch.library.custom_op("softpool3d::soft_pool3d_forward", mutates_args=())
def _forward_op(
    x: torch.Tensor, kernel: list[int], stride: list[int], padding: list[int], ceil_mode: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """SoftPool forward on ``(N, C, T, H, W)``: the fused kernel, or the reference path without it.
    Returns ``y`` and each window's log-sum-exp (of ``y``'s shape when :func:`_saves_lse`, else empty)."""
    module = extension.for_device(x.device)
    if module is None:
        out = soft_pool_reference(x, tuple(kernel), tuple(stride), tuple(padding), ceil_mode)
        return out.contiguous(memory_format=_memory_format(x)), _no_lse(x)
    if _saves_lse(x, math.prod(kernel)):
        return module.forward_lse(x, kernel, stride, padding, ceil_mode, _channels_last(x), False)
    return module.forward(x, kernel, stride, padding, ceil_mode, _channels_last(x), False), _no_lse(x)


@_forward_op.register_fake
def _forward_fake(
    x: torch.Tensor, kernel: list[int], stride: list[int], padding: list[int], ceil_mode: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    sizes = [pooled_size(s, k, st, p, ceil_mode) for s, k, st, p in zip(x.shape[2:], kernel, stride, padding)]
    shape = (*x.shape[:2], *sizes)
    return _output_like(x, shape), _lse_like(x, shape, _saves_lse(x, math.prod(kernel)))


@torch.library.custom_op("softpool3d::soft_pool3d_backward", mutates_args=())
def _backward_op(
    grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lse: torch.Tensor, kernel: list[int], stride: list[int],
    padding: list[int], ceil_mode: bool
) -> torch.Tensor:
    """Gradient wrt ``x`` of SoftPool, from the input ``x``, output ``y`` and the forward's ``lse``
    (empty: computed again where needed)."""
    module = extension.for_device(x.device)
    if module is None:
        dx = soft_pool_reference_backward(grad, x, y, tuple(kernel), tuple(stride), tuple(padding), ceil_mode)
        return dx.contiguous(memory_format=_memory_format(x))
    return module.backward(grad, x, y, kernel, stride, padding, ceil_mode, _channels_last(x), False, lse=lse)


@_backward_op.register_fake
def _backward_fake(
    grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lse: torch.Tensor, kernel: list[int], stride: list[int],
    padding: list[int], ceil_mode: bool
) -> torch.Tensor:
    return _output_like(x, x.shape)


def _setup_context(ctx, inputs, output) -> None:  # noqa: ANN001 (torch.library's callback signature)
    x, kernel, stride, padding, ceil_mode = inputs
    ctx.save_for_backward(x, *output)
    ctx.pool_args = (kernel, stride, padding, ceil_mode)


def _backward(ctx, grad: torch.Tensor, grad_lse: torch.Tensor | None):  # noqa: ANN001, ANN202
    x, y, lse = ctx.saved_tensors
    return _backward_op(grad, x, y, lse, *ctx.pool_args), None, None, None, None


_forward_op.register_autograd(_backward, setup_context=_setup_context)


def _as_5d(x: torch.Tensor, dims: int) -> torch.Tensor:
    """``x`` (``(N, C, *spatial)`` or ``(C, *spatial)``, ``dims`` spatial dimensions) as ``(N, C, T, H, W)``."""
    x5 = x.unsqueeze(0) if x.dim() == dims + 1 else x
    for _ in range(3 - dims):
        x5 = x5.unsqueeze(2)
    return x5


def _from_5d(y: torch.Tensor, dims: int, unbatched: bool) -> torch.Tensor:
    """The inverse of :func:`_as_5d` on a pooled output."""
    for _ in range(3 - dims):
        y = y.squeeze(2)
    return y.squeeze(0) if unbatched else y


def _soft_pool(
    x: torch.Tensor,
    dims: int,
    kernel_size: IntOrTuple,
    stride: IntOrTuple | None,
    padding: IntOrTuple,
    ceil_mode: bool,
) -> torch.Tensor:
    kernel, stride_, pad = check_pool_args(x, dims, kernel_size, stride, padding)
    lead = (1,) * (3 - dims)
    x5 = _as_5d(x, dims)
    kernel5, stride5, pad5 = list(lead + kernel), list(lead + stride_), [0] * (3 - dims) + list(pad)
    if exportable.is_exportable():
        outs = [pooled_size(s, k, st, p, ceil_mode) for s, k, st, p in zip(x5.shape[2:], kernel5, stride5, pad5)]
        y = exportable.soft_pool_plain(x5, kernel5, stride5, pad5, outs)
    else:
        y = _forward_op(x5, kernel5, stride5, pad5, ceil_mode)[0]
    return _from_5d(y, dims, x.dim() == dims + 1)


def soft_pool1d(
    x: torch.Tensor, kernel_size: IntOrTuple, stride: IntOrTuple | None = None, padding: IntOrTuple = 0, ceil_mode: bool = False
) -> torch.Tensor:
    """SoftPool over ``(N, C, L)`` or ``(C, L)``; output shape as ``F.avg_pool1d``."""
    return _soft_pool(x, 1, kernel_size, stride, padding, ceil_mode)


def soft_pool2d(
    x: torch.Tensor, kernel_size: IntOrTuple, stride: IntOrTuple | None = None, padding: IntOrTuple = 0, ceil_mode: bool = False
) -> torch.Tensor:
    """SoftPool over ``(N, C, H, W)`` or ``(C, H, W)``; output shape as ``F.avg_pool2d``."""
    return _soft_pool(x, 2, kernel_size, stride, padding, ceil_mode)


def soft_pool3d(
    x: torch.Tensor, kernel_size: IntOrTuple, stride: IntOrTuple | None = None, padding: IntOrTuple = 0, ceil_mode: bool = False
) -> torch.Tensor:
    """SoftPool over ``(N, C, T, H, W)`` or ``(C, T, H, W)``; output shape as ``F.avg_pool3d``."""
    return _soft_pool(x, 3, kernel_size, stride, padding, ceil_mode)


class _SoftPoolNd(nn.Module):
    dims = 0

    def __init__(
        self, kernel_size: IntOrTuple, stride: IntOrTuple | None = None, padding: IntOrTuple = 0, ceil_mode: bool = False
    ) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.ceil_mode = ceil_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _soft_pool(x, self.dims, self.kernel_size, self.stride, self.padding, self.ceil_mode)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, ceil_mode={self.ceil_mode}"


class SoftPool1d(_SoftPoolNd):
    """Module form of :func:`soft_pool1d`: ``(N, C, L) -> (N, C, L_out)``."""

    dims = 1


class SoftPool2d(_SoftPoolNd):
    """Module form of :func:`soft_pool2d`: ``(N, C, H, W) -> (N, C, H_out, W_out)``."""

    dims = 2


class SoftPool3d(_SoftPoolNd):
    """Module form of :func:`soft_pool3d`: ``(N, C, T, H, W) -> (N, C, T_out, H_out, W_out)``."""

    dims = 3


# ---------------------------------------------------------------------------------------------
# Adaptive SoftPool: the windows of F.adaptive_avg_pool{1,2,3}d, window o of a dimension of
# length L pooled to `out` outputs covering [floor(o L / out), ceil((o + 1) L / out)).
# ---------------------------------------------------------------------------------------------

AdaptiveSize = Union[int, None, Sequence[Union[int, None]]]


def adaptive_windows(length: int, out: int) -> list[tuple[int, int]]:
    """``[start, end)`` of each of the ``out`` windows of ``adaptive_avg_pool`` over ``length``."""
    return [(o * length // out, -(-(o + 1) * length // out)) for o in range(out)]


def check_adaptive_args(x: torch.Tensor, dims: int, output_size: AdaptiveSize) -> tuple[int, ...]:
    """Validate a ``soft_adaptive_pool{dims}d`` call; return the output size, ``None`` entries
    replaced by the input's size as in ``nn.AdaptiveAvgPool{dims}d``."""
    _check_input(x, dims, f"soft_adaptive_pool{dims}d")
    sizes = tuple(x.shape[-dims:])
    if output_size is None or isinstance(output_size, int):
        values = (output_size,) * dims
    elif isinstance(output_size, Sequence):
        values = tuple(output_size)
    else:
        values = ()
    if len(values) != dims or not all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in values):
        raise ValueError(f"output_size must be an int, None or a sequence of {dims} ints or None, got {output_size!r}")
    out = tuple(size if v is None else v for v, size in zip(values, sizes))
    if any(v <= 0 for v in out):
        raise ValueError(f"output_size must be positive, got {output_size!r}")
    return out


def _adaptive_gather(x: torch.Tensor, output_size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Windows ``(N, C, T_out, H_out, W_out, M)`` of a 5-D ``x`` (padded to the longest window,
    M its volume), their mask of real positions, and per dimension the ``(out, longest)`` input
    index of each window position (clamped into the window)."""
    values, masks, indices = x, [], []
    for d, out in enumerate(output_size):
        bounds = torch.tensor(adaptive_windows(x.shape[d + 2], out), device=x.device)
        longest = int((bounds[:, 1] - bounds[:, 0]).max())
        position = bounds[:, :1] + torch.arange(longest, device=x.device)
        masks.append(position < bounds[:, 1:])
        index = torch.minimum(position, bounds[:, 1:] - 1)
        indices.append(index)
        axis = 2 + 2 * d
        values = values.index_select(axis, index.flatten()).unflatten(axis, index.shape)
    n, c = x.shape[:2]
    values = values.permute(0, 1, 2, 4, 6, 3, 5, 7).flatten(-3)
    mask = (masks[0][:, None, None, :, None, None] & masks[1][None, :, None, None, :, None]
            & masks[2][None, None, :, None, None, :]).flatten(-3)
    return values, mask, indices


def soft_adaptive_pool_reference(x: torch.Tensor, output_size: Sequence[int]) -> torch.Tensor:
    """Adaptive SoftPool of a 5-D ``x`` in plain PyTorch: the fallback when the compiled kernel is
    unavailable (memory grows with the windows' overlap)."""
    compute_dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    values, mask, _ = _adaptive_gather(x.to(compute_dtype), output_size)
    weights = torch.softmax(values.masked_fill(~mask, -math.inf), dim=-1)
    return (weights * values).sum(-1).to(x.dtype)


def soft_adaptive_pool_reference_backward(
    grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor, output_size: Sequence[int]
) -> torch.Tensor:
    """Gradient of :func:`soft_adaptive_pool_reference` wrt ``x`` without autograd:
    ``dx_i = sum over windows w containing i of g_w exp(x_i - lse_w) (1 + x_i - y_w)``."""
    compute_dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    values, mask, indices = _adaptive_gather(x.to(compute_dtype), output_size)
    lse = torch.logsumexp(values.masked_fill(~mask, -math.inf), dim=-1, keepdim=True)
    g = grad.to(compute_dtype).unsqueeze(-1)
    contribution = torch.where(mask, g * torch.exp(values - lse) * (1 + values - y.to(compute_dtype).unsqueeze(-1)), 0.0)
    lengths = [index.shape[1] for index in indices]
    # (N, C, T_out, H_out, W_out, mT, mH, mW) -> (N, C, T_out, mT, H_out, mH, W_out, mW)
    dx = contribution.unflatten(-1, lengths).permute(0, 1, 2, 5, 3, 6, 4, 7)
    for d in reversed(range(3)):
        axis = 2 + 2 * d
        flat = dx.flatten(axis, axis + 1)
        shape = list(flat.shape)
        shape[axis] = x.shape[d + 2]
        dx = flat.new_zeros(shape).index_add_(axis, indices[d].flatten(), flat)
    return dx.to(x.dtype)


def _adaptive_window_volume(x: torch.Tensor, output_size: Sequence[int]) -> int:
    """The most elements an adaptive window of ``x`` pooled to ``output_size`` holds."""
    return math.prod(max(end - start for start, end in adaptive_windows(n, o)) for n, o in zip(x.shape[2:], output_size))


@torch.library.custom_op("softpool3d::soft_adaptive_pool3d_forward", mutates_args=())
def _adaptive_forward_op(x: torch.Tensor, output_size: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive SoftPool forward on ``(N, C, T, H, W)``: the fused kernel, or the reference path without it;
    returns ``y`` and the log-sum-exp as :func:`_forward_op` does."""
    module = extension.for_device(x.device)
    if module is None:
        return soft_adaptive_pool_reference(x, output_size).contiguous(memory_format=_memory_format(x)), _no_lse(x)
    if _saves_lse(x, _adaptive_window_volume(x, output_size)):
        return module.adaptive_forward_lse(x, output_size, _channels_last(x), False)
    return module.adaptive_forward(x, output_size, _channels_last(x), False), _no_lse(x)


@_adaptive_forward_op.register_fake
def _adaptive_forward_fake(x: torch.Tensor, output_size: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (*x.shape[:2], *output_size)
    return _output_like(x, shape), _lse_like(x, shape, _saves_lse(x, _adaptive_window_volume(x, output_size)))


@torch.library.custom_op("softpool3d::soft_adaptive_pool3d_backward", mutates_args=())
def _adaptive_backward_op(
    grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lse: torch.Tensor, output_size: list[int]
) -> torch.Tensor:
    """Gradient wrt ``x`` of adaptive SoftPool, from the input ``x``, output ``y`` and the forward's ``lse``."""
    module = extension.for_device(x.device)
    if module is None:
        dx = soft_adaptive_pool_reference_backward(grad, x, y, output_size)
        return dx.contiguous(memory_format=_memory_format(x))
    return module.adaptive_backward(grad, x, y, output_size, _channels_last(x), False, lse=lse)


@_adaptive_backward_op.register_fake
def _adaptive_backward_fake(
    grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lse: torch.Tensor, output_size: list[int]
) -> torch.Tensor:
    return _output_like(x, x.shape)


def _adaptive_setup_context(ctx, inputs, output) -> None:  # noqa: ANN001 (torch.library's callback signature)
    x, output_size = inputs
    ctx.save_for_backward(x, *output)
    ctx.output_size = output_size


def _adaptive_backward(ctx, grad: torch.Tensor, grad_lse: torch.Tensor | None):  # noqa: ANN001, ANN202
    x, y, lse = ctx.saved_tensors
    return _adaptive_backward_op(grad, x, y, lse, ctx.output_size), None


_adaptive_forward_op.register_autograd(_adaptive_backward, setup_context=_adaptive_setup_context)


def _soft_adaptive_pool(x: torch.Tensor, dims: int, output_size: AdaptiveSize) -> torch.Tensor:
    out = check_adaptive_args(x, dims, output_size)
    x5, out5 = _as_5d(x, dims), [1] * (3 - dims) + list(out)
    if exportable.is_exportable():
        y = exportable.soft_adaptive_pool_plain(x5, [adaptive_windows(n, o) for n, o in zip(x5.shape[2:], out5)])
    else:
        y = _adaptive_forward_op(x5, out5)[0]
    return _from_5d(y, dims, x.dim() == dims + 1)


def soft_adaptive_pool1d(x: torch.Tensor, output_size: AdaptiveSize) -> torch.Tensor:
    """Adaptive SoftPool over ``(N, C, L)`` or ``(C, L)`` to ``(..., L_out)``, with the windows of
    ``F.adaptive_avg_pool1d``."""
    return _soft_adaptive_pool(x, 1, output_size)


def soft_adaptive_pool2d(x: torch.Tensor, output_size: AdaptiveSize) -> torch.Tensor:
    """Adaptive SoftPool over ``(N, C, H, W)`` or ``(C, H, W)`` to ``(..., H_out, W_out)``, with the
    windows of ``F.adaptive_avg_pool2d`` (``None`` entries keep the input's size)."""
    return _soft_adaptive_pool(x, 2, output_size)


def soft_adaptive_pool3d(x: torch.Tensor, output_size: AdaptiveSize) -> torch.Tensor:
    """Adaptive SoftPool over ``(N, C, T, H, W)`` or ``(C, T, H, W)`` to ``(..., T_out, H_out, W_out)``,
    with the windows of ``F.adaptive_avg_pool3d`` (``None`` entries keep the input's size)."""
    return _soft_adaptive_pool(x, 3, output_size)


class _SoftAdaptivePoolNd(nn.Module):
    dims = 0

    def __init__(self, output_size: AdaptiveSize) -> None:
        super().__init__()
        self.output_size = output_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _soft_adaptive_pool(x, self.dims, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class SoftAdaptivePool1d(_SoftAdaptivePoolNd):
    """Module form of :func:`soft_adaptive_pool1d`: ``(N, C, L) -> (N, C, L_out)``."""

    dims = 1


class SoftAdaptivePool2d(_SoftAdaptivePoolNd):
    """Module form of :func:`soft_adaptive_pool2d`: ``(N, C, H, W) -> (N, C, H_out, W_out)``."""

    dims = 2


class SoftAdaptivePool3d(_SoftAdaptivePoolNd):
    """Module form of :func:`soft_adaptive_pool3d`: ``(N, C, T, H, W) -> (N, C, T_out, H_out, W_out)``."""

    dims = 3
