"""SRTG: Squeeze and Recursion Temporal Gates (Stergiou & Poppe, "Learn to cycle:
time-consistent feature discovery for action recognition", Pattern Recognition Letters 2021).

After each residual block (after the residual add and ReLU), a squeeze-and-recursion step
pools every frame over H x W into a sequence ``(N, C, T)``, runs a 2-layer LSTM (C -> C) over
T, and multiplies the block output by the LSTM states ``h``, broadcast over H x W. A temporal
gate passes ``x * h`` only for the clips whose pooled sequence and ``h`` are cycle-consistent
(soft nearest neighbours in both directions); the other clips pass ``x`` unchanged.

The SRTG networks are the base 3D-ResNet / R(2+1)D with these steps added: the base keys
(``stem.*``, ``layer*.*``, ``fc.*``) are unchanged and the LSTMs live under ``recursions.*``,
so base weights load into an SRTG model (reporting only the LSTMs missing), and ``srtg=False``
builds exactly the base network.
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn
from torchvision.models.video.resnet import BasicBlock, Bottleneck, Conv2Plus1D, Conv3DSimple

from softpool3d.models.pooling import GlobalPool3d
from softpool3d.models.registry import register_model
from softpool3d.models.resnet3d import ResNet3d, _resnet, resnet_info


def cycle_consistent(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Per-clip temporal cycle consistency of sequence ``u`` through sequence ``v``.

    ``u``, ``v``: ``(N, T, C)``. Each frame ``u_i`` goes to its soft nearest neighbour in ``v``,
    ``sum_j softmax_j(-||u_i - v_j||^2) v_j``, and back to the nearest frame of ``u`` (hard
    nearest neighbour, squared Euclidean distance). Returns a bool ``(N,)``: True where every
    frame comes back to itself.
    """
    distances = (u.unsqueeze(2) - v.unsqueeze(1)).pow(2).sum(-1)
    soft_neighbours = torch.softmax(-distances, dim=-1) @ v
    back = (soft_neighbours.unsqueeze(2) - u.unsqueeze(1)).pow(2).sum(-1).argmin(-1)
    frames = torch.arange(u.shape[1], device=u.device)
    return (back == frames).all(dim=-1)


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast disabled on ``device_type`` (nothing to disable where torch has no autocast, e.g. ``meta``)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


class SqueezeRecursion(nn.Module):
    """The squeeze-and-recursion step with optional temporal gates, ``(N, C, T, H, W)`` -> same.

    The LSTM and the gate compute in float32 whatever the autocast; the output keeps ``x``'s dtype.

    Pools at: the per-frame squeeze over H x W (kind ``pool``).
    """

    def __init__(self, channels: int, pool: str, gates: bool = True, num_layers: int = 2) -> None:
        super().__init__()
        self.squeeze = GlobalPool3d(pool, per_frame=True)
        self.lstm = nn.LSTM(channels, channels, num_layers=num_layers, batch_first=True)
        self.gates = gates

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeezed = self.squeeze(x).flatten(2).transpose(1, 2)
        # The LSTM and the gate run in float32 with autocast off: under bf16 autocast torch would run
        # the cuDNN LSTM in fp16 (with no grad scaler) and promote the residual stream to float32.
        with _autocast_off(x.device.type):
            states, _ = self.lstm(squeezed.float())
            if self.gates:
                with torch.no_grad():
                    u, v = squeezed.detach().float(), states.detach()
                    passes = cycle_consistent(u, v) & cycle_consistent(v, u)
        recursed = x * states.to(x.dtype).transpose(1, 2)[..., None, None]
        if not self.gates:
            return recursed
        return torch.where(passes[:, None, None, None, None], recursed, x)

    def extra_repr(self) -> str:
        return f"gates={self.gates}"


class SRTGResNet3d(ResNet3d):
    """A :class:`ResNet3d` with a :class:`SqueezeRecursion` after every residual block.

    Pools (kind ``pool``) at: the global head, the stem (``stem_pool=True`` only) and the
    per-frame squeeze of every SRTG step. ``gates=False`` applies the recursion to every clip.
    """

    def __init__(self, *args: Any, gates: bool = True, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.recursions = nn.ModuleList(
            nn.ModuleList(SqueezeRecursion(_out_channels(block), self.pool_kind, gates) for block in stage)
            for stage in self.stages()
        )

    def stem_and_stages(self) -> list[list[nn.Module]]:
        """Freezing groups: ``[[stem], [layer1, its SRTG steps], ..., [layer4, its SRTG steps]]``."""
        groups = super().stem_and_stages()
        return [groups[0], *(group + [steps] for group, steps in zip(groups[1:], self.recursions))]

    def forward_stage(self, index: int, x: torch.Tensor) -> torch.Tensor:
        for block, recursion in zip(self.stages()[index], self.recursions[index]):
            x = recursion(block(x))
        return x


def _out_channels(block: nn.Module) -> int:
    last = block.conv3 if isinstance(block, Bottleneck) else block.conv2
    return last[-1].num_features


def _srtg(*args: Any, srtg: bool = True, gates: bool = True, **kw: Any) -> ResNet3d:
    if not srtg:
        return _resnet(*args, **kw)
    return _resnet(*args, model_class=SRTGResNet3d, gates=gates, **kw)


@register_model(resnet_info())
def srtg_r3d_34(num_classes: int = 400, pool: str = "soft", **kw: Any) -> ResNet3d:
    """SRTG 3D-ResNet-34: ``r3d_34`` with an SRTG step after each of its 16 blocks.

    Pools (kind ``pool``) at the global head, every SRTG per-frame squeeze and, with
    ``stem_pool=True``, after the stem. Keywords: ``srtg`` (True; False builds exactly the
    base network), ``gates`` (True), and those of ``r3d_34``.
    """
    return _srtg(BasicBlock, Conv3DSimple, [3, 4, 6, 3], False, num_classes, pool, **kw)


@register_model(resnet_info())
def srtg_r3d_50(num_classes: int = 400, pool: str = "soft", **kw: Any) -> ResNet3d:
    """SRTG 3D-ResNet-50: ``r3d_50`` (bottleneck expansion 4) with an SRTG step after each block.

    Pools (kind ``pool``) at the global head, every SRTG per-frame squeeze and, with
    ``stem_pool=True``, after the stem. Keywords: ``srtg`` (True; False builds exactly the
    base network), ``gates`` (True), and those of ``r3d_50``.
    """
    return _srtg(Bottleneck, Conv3DSimple, [3, 4, 6, 3], False, num_classes, pool, **kw)


@register_model(resnet_info())
def srtg_r3d_101(num_classes: int = 400, pool: str = "soft", **kw: Any) -> ResNet3d:
    """SRTG 3D-ResNet-101: ``r3d_101`` (bottleneck expansion 4) with an SRTG step after each block.

    Pools (kind ``pool``) at the global head, every SRTG per-frame squeeze and, with
    ``stem_pool=True``, after the stem. Keywords: ``srtg`` (True; False builds exactly the
    base network), ``gates`` (True), and those of ``r3d_101``.
    """
    return _srtg(Bottleneck, Conv3DSimple, [3, 4, 23, 3], False, num_classes, pool, **kw)


@register_model(resnet_info())
def srtg_r2plus1d_34(num_classes: int = 400, pool: str = "soft", **kw: Any) -> ResNet3d:
    """SRTG R(2+1)D-34: ``r2plus1d_34`` with an SRTG step after each of its 16 blocks.

    Pools (kind ``pool``) at the global head, every SRTG per-frame squeeze and, with
    ``stem_pool=True``, after the stem. Keywords: ``srtg`` (True; False builds exactly the
    base network), ``gates`` (True), and those of ``r2plus1d_34``.
    """
    return _srtg(BasicBlock, Conv2Plus1D, [3, 4, 6, 3], True, num_classes, pool, **kw)
