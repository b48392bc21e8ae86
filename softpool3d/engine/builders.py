"""Datasets, models and autocast contexts built from a run config (the one place that maps config to objects)."""
from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path
from typing import Any, ContextManager, Sequence

import torch
from omegaconf import DictConfig
from torch import nn

from softpool3d.engine.checkpoint import has_digest, load_checkpoint, model_weights
from softpool3d.engine.config import ConfigError
from softpool3d.engine.config import run_dir
from softpool3d.datasets import Annotations, ClipDataset, make_demo_dataset
from softpool3d.datasets import build_dataset as build_clip_dataset
from softpool3d.datasets import build_shard_dataset
from softpool3d.models import build_model as build_network
from softpool3d.models import freeze_stages, load_pretrained

logger = logging.getLogger(__name__)


def set_threads(cfg: DictConfig) -> None:
    """Apply ``train.num_threads`` (0 leaves torch's default)."""
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)


def prepare_data(cfg: DictConfig) -> None:
    """Generate the demo videos into ``data.root`` when ``data.make_demo`` is set (idempotent)."""
    if cfg.data.make_demo:
        make_demo_dataset(Path(cfg.data.root))


def clip_options(cfg: DictConfig, train: bool, num_clips: int = 1, num_crops: int = 1) -> dict[str, Any]:
    """The ``ClipDataset`` keywords of the ``data`` section: clip geometry, scales, normalization."""
    data = cfg.data
    return dict(
        num_frames=data.num_frames,
        sampling_rate=data.sampling_rate,
        num_clips=num_clips,
        num_crops=num_crops,
        crop_size=data.crop_size,
        train_scale=tuple(data.train_scale),
        test_scale=data.test_scale,
        seed=cfg.train.seed,
        repeat_aug=data.repeat_aug if train else 1,
        rand_augment_n=data.rand_augment_n,
        rand_augment_m=data.rand_augment_m,
    )


def build_dataset(cfg: DictConfig, split: str, train: bool, num_clips: int = 1, num_crops: int = 1) -> ClipDataset:
    """``softpool3d.datasets.build_dataset`` with the ``data`` section's clip geometry (:func:`clip_options`);
    the paths of missing videos go to ``<run_dir>/missing_<split>.txt``. ``data.format=shards`` reads the
    frame shards at ``data.root`` (a folder or URL) instead (``build_shard_dataset``; ``data.annotations``
    does not apply: the shards keep the lists they were prepared with); training on a CUDA device, their
    JPEGs are decoded and transformed there (``decode_on_device``)."""
    data = cfg.data
    if data.format == "shards":
        on_gpu = train and cfg.train.device != "cpu" and torch.cuda.is_available()  # JPEGs decoded by nvJPEG
        return build_shard_dataset(data.dataset, data.root, split, train=train, fold=data.fold, decode_on_device=on_gpu,
                                   val_fraction=data.val_fraction, val_seed=data.val_seed,
                                   missing_list=run_dir(cfg) / f"missing_{split}.txt",
                                   **clip_options(cfg, train, num_clips, num_crops))
    return build_clip_dataset(
        data.dataset,
        data.root,
        split,
        train=train,
        annotations=data.annotations,
        fold=data.fold,
        val_fraction=data.val_fraction,
        val_seed=data.val_seed,
        missing_list=run_dir(cfg) / f"missing_{split}.txt",
        **clip_options(cfg, train, num_clips, num_crops),
    )


def build_test_clips(cfg: DictConfig, videos: Sequence[str | Path], classes: Sequence[str], num_clips: int,
                     num_crops: int) -> ClipDataset:
    """The test views of arbitrary ``videos`` (no annotation list, labels 0) cut exactly as
    :func:`build_dataset` cuts ``data.test_split``'s: the same sampler, transform and clip geometry."""
    annotations = Annotations([str(video) for video in videos], [0] * len(videos), list(classes), source="given videos")
    return ClipDataset(annotations, train=False, **clip_options(cfg, False, num_clips, num_crops))


def build_architecture(cfg: DictConfig, num_classes: int) -> nn.Module:
    """The ``model`` section's network with a ``num_classes``-way head, freshly initialized (evaluation
    then loads a checkpoint's weights into it)."""
    kwargs = {"dropout": cfg.model.dropout}
    if cfg.model.width is not None:
        kwargs["width"] = cfg.model.width
    return build_network(cfg.model.name, num_classes, pool=cfg.model.pool, **kwargs)


def build_model(cfg: DictConfig, num_classes: int) -> nn.Module:
    """:func:`build_architecture` with the weights training starts from: ``pretrained`` weights and
    ``freeze_stages`` applied (a source of another class count gets a fresh head by the model's
    ``reset_classifier``)."""
    model = build_architecture(cfg, num_classes)
    if cfg.model.pretrained:
        source = cfg.model.pretrained  # a checkpoint of ours is read, digest checked, by load_checkpoint
        try:
            report = load_pretrained(model, model_weights(load_checkpoint(source), path=source)
                                     if has_digest(source) else source)
        except ValueError as error:  # unreadable, not a state dict, or of another architecture or width
            raise ConfigError(f"model.pretrained={source}: {error}") from None
        if report.missing_keys:
            logger.warning("pretrained %s left %d keys untouched: %s", cfg.model.pretrained,
                           len(report.missing_keys), report.missing_keys[:5])
    if cfg.model.freeze_stages:
        freeze_stages(model, cfg.model.freeze_stages)
    return model


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
