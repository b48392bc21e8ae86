"""A training step's figures kept on the device: the loss, the gradient norm and the non-finite
flags, reduced over ranks in one collective and read by the host once per step.

Each ``.item()`` or ``.cpu()`` of a CUDA tensor waits for the GPU to finish everything queued, so a
step that read its loss per micro-batch, its norm and three flags separately would stall the GPU
five times; :func:`reduce_step` stalls it once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from softpool3d.engine.processes.distributed import all_reduce_sum


def gradient_norm(parameters: Sequence[torch.Tensor], max_norm: float) -> torch.Tensor:
    """The total 2-norm of the gradients of ``parameters`` (a 0-dim float32 tensor on their device,
    0 when none has a gradient); with ``max_norm > 0`` the gradients are clipped to it
    (``clip_grad_norm_``), otherwise left untouched and only measured, in one fused kernel per
    device and dtype."""
    if max_norm > 0:
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm).detach().float()
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([norm.float() for norm in torch._foreach_norm(grads)]))


@dataclass(frozen=True)
class StepSummary:
    """A step's figures over all ranks: the mean loss and gradient norm, and what was non-finite
    on any rank (``problems``, in the words :class:`~softpool3d.engine.training.nonfinite.NonFiniteGuard` logs)."""

    loss: float
    grad_norm: float
    problems: list[str]
    stop: bool = False


def reduce_step(loss: torch.Tensor, norm: torch.Tensor, check_norm: bool, bad_buffers: torch.Tensor,
                world_size: int, device: torch.device, stop: bool = False) -> StepSummary:
    """Sum this rank's ``loss`` (its mean over micro-batches), gradient ``norm`` (equal on every rank
    after DDP's all-reduce), whether either is non-finite (the norm only with ``check_norm``; a grad
    scaler handles its own overflows) and ``bad_buffers`` (:func:`~softpool3d.engine.training.nonfinite.count_nonfinite`
    of the BatchNorm
    statistics) over ranks in one all-reduce, then read them with one device-to-host copy. ``stop``
    (this rank received a preemption signal, :mod:`~softpool3d.engine.processes.preemption`) travels in the
    same all-reduce: the summary's ``stop`` is true on every rank when it was on any."""
    loss, norm = loss.detach().to(device, torch.float64), norm.detach().to(device, torch.float64)
    flags = [~torch.isfinite(loss), ~torch.isfinite(norm) & check_norm, bad_buffers.to(device) > 0]
    stop_flag = torch.tensor(float(stop), dtype=torch.float64, device=device)
    packed = torch.stack([loss, norm, *(flag.to(torch.float64) for flag in flags), stop_flag])
    values = all_reduce_sum(packed).tolist()
    problems = [what for what, count in zip(("loss", "gradient norm", "BatchNorm running statistics"), values[2:5])
                if count > 0]
    return StepSummary(values[0] / world_size, values[1] / world_size, problems, stop=values[5] > 0)
