"""The precision policy: which precision ``train.amp`` gives on a device, and its autocast context.

``auto`` is bf16 where the device computes bf16 natively and float32 elsewhere; ``fp16`` (with a
grad scaler in training), ``bf16`` and ``none`` are kept as given.
"""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import ContextManager

import torch


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX-BF16 or AVX512-BF16), from torch's CPU probes or,
    failing those, the ``amx_bf16``/``avx512_bf16`` flags of ``/proc/cpuinfo``."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    if all(callable(probe) for probe in probes):
        return any(probe() for probe in probes)
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_amp(amp: str, device: torch.device) -> tuple[str, str]:
    """The precision ``train.amp`` gives on ``device``, and why: ``("bf16" | "fp16" | "none", reason)``.

    ``auto`` is bf16 on a CUDA GPU with native bf16 (compute capability 8.0 or newer: A100, H100,
    ...) and on a CPU with native bf16 (AMX or AVX512-BF16), float32 (``none``) otherwise: a V100
    or T4 only emulates bf16, and on an AVX2-only CPU torch's bf16 3D convolutions run 20-40x
    slower than float32. An explicit value is kept.
    """
    if amp != "auto":
        return amp, f"train.amp={amp}"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return "bf16", "train.amp=auto: this GPU has native bf16"
        return "none", "train.amp=auto: float32, since this GPU has no native bf16 (compute capability below 8.0)"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16", "train.amp=auto: this CPU has native bf16 (AMX or AVX512-BF16)"
    return "none", f"train.amp=auto: float32, since this {device.type.upper()} has no native bf16 (AMX or AVX512-BF16)"


def slow_bf16_warning(amp: str, device: torch.device) -> str | None:
    """The warning for an explicit ``train.amp=bf16`` on a CPU without native bf16, else None."""
    if amp == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        return ("train.amp=bf16 on a CPU without native bf16 (no AMX or AVX512-BF16): bf16 3D convolutions run "
                "20-40x slower than float32 here; train.amp=auto or none runs in float32")
    return None


def precision_name(amp: str) -> str:
    """``"bf16"``, ``"fp16"`` or ``"float32"`` for a resolved ``amp``."""
    return "float32" if amp == "none" else amp


def autocast(device: torch.device, amp: str) -> ContextManager:
    """Mixed precision for ``amp`` in {"auto", "none", "bf16", "fp16"} on ``device`` (``auto``: :func:`resolve_amp`)."""
    amp = resolve_amp(amp, device)[0]
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
