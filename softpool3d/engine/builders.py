"""The one place that maps a run config to objects: datasets, the model, the normalizer, and for
training the optimizer, schedule, samplers, loaders, switches and the loop's settings.

Everything past this module receives objects: the trainer (:mod:`softpool3d.engine.training.train`) is
handed :class:`TrainingParts` and :class:`LoopSettings` and reads no config key.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader

from softpool3d.datasets import Annotations, ClipDataset, make_demo_dataset, start_worker_server
from softpool3d.datasets import build_dataset as build_clip_dataset
from softpool3d.datasets import build_shard_dataset
from softpool3d.engine.checkpoint import has_digest, load_checkpoint
from softpool3d.engine.config import ConfigError, run_dir, save_config, to_container
from softpool3d.engine.evaluation.evaluate import evaluation_loader
from softpool3d.engine.inputs import ClipNormalizer
from softpool3d.engine.processes import backends
from softpool3d.engine.processes.amp import resolve_amp
from softpool3d.engine.processes.distributed import DistInfo, barrier
from softpool3d.engine.processes.loaders import EpochIndexed, run_loader
from softpool3d.engine.processes.sampler import ClassBalancedSampler, ResumableDistributedSampler
from softpool3d.engine.run_layout import RunLayout
from softpool3d.engine.splits import split_label
from softpool3d.engine.training.nonfinite import NonFiniteGuard
from softpool3d.engine.training.optim import build_optimizer as optimizer_of
from softpool3d.engine.training.optim import build_scheduler as schedule_of
from softpool3d.engine.training.switches import SwitchContext, TrainingSwitches, build_switches
from softpool3d.engine.training.switches.mixing import SoftTargetCrossEntropy
from softpool3d.engine.training_state import model_weights
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
        missing_list=RunLayout(run_dir(cfg)).missing_list(split),
        **clip_options(cfg, train, num_clips, num_crops),
    )


def build_test_clips(cfg: DictConfig, videos: Sequence[str | Path], classes: Sequence[str], num_clips: int,
                     num_crops: int) -> ClipDataset:
    """The test views of arbitrary ``videos`` (no annotation list, labels 0) cut exactly as
    :func:`build_dataset` cuts ``data.test_split``'s: the same sampler, transform and clip geometry."""
    annotations = Annotations([str(video) for video in videos], [0] * len(videos), list(classes), source="given videos")
    return ClipDataset(annotations, train=False, **clip_options(cfg, False, num_clips, num_crops))


def model_keywords(cfg: DictConfig) -> dict[str, Any]:
    """The ``model`` section as the keywords of the model registry's builders: ``pool``, and ``width``
    when set (``None`` keeps the network's own)."""
    keywords = {"pool": cfg.model.pool}
    if cfg.model.width is not None:
        keywords["width"] = cfg.model.width
    return keywords


def build_architecture(cfg: DictConfig, num_classes: int) -> nn.Module:
    """The ``model`` section's network with a ``num_classes``-way head, freshly initialized (evaluation
    then loads a checkpoint's weights into it)."""
    return build_network(cfg.model.name, num_classes, dropout=cfg.model.dropout, **model_keywords(cfg))


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


def build_normalizer(cfg: DictConfig) -> ClipNormalizer:
    """The normalizer of ``data.mean`` and ``data.std``."""
    return ClipNormalizer(cfg.data.mean, cfg.data.std)


def build_optimizer(model: nn.Module, cfg: DictConfig) -> torch.optim.Optimizer:
    """The ``optim`` section's optimizer (``name``, ``lr``, ``weight_decay``, ``momentum``, ``nesterov``,
    ``betas``) over ``model``'s trainable parameters."""
    optim = cfg.optim
    return optimizer_of(model, optim.name, optim.lr, optim.weight_decay, optim.momentum, optim.nesterov,
                        tuple(optim.betas))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: DictConfig, steps_per_epoch: int) -> Any:
    """The per-step warm-up and cosine schedule of the ``optim`` section over ``train.epochs``."""
    optim = cfg.optim
    return schedule_of(optimizer, optim.lr, steps_per_epoch, cfg.train.epochs, optim.warmup_epochs,
                       optim.warmup_start_factor, optim.min_lr)


def build_train_sampler(cfg: DictConfig, dataset: Any, dist_info: DistInfo) -> ResumableDistributedSampler:
    """``data.sampler`` over ``dataset`` (whose ``labels`` are the training list's) for this rank,
    seeded with ``train.seed``, dropping the last uneven share."""
    options = dict(num_replicas=dist_info.world_size, rank=dist_info.rank, shuffle=True, seed=cfg.train.seed,
                   drop_last=True)
    if cfg.data.sampler == "class_balanced":
        return ClassBalancedSampler(dataset, dataset.labels, **options)
    return ResumableDistributedSampler(dataset, **options)


@dataclass(frozen=True)
class LoopSettings:
    """What the training loop reads of a run config, read once."""

    epochs: int
    accumulate: int
    batch_size: int  # per process and micro-batch, in videos
    repeats: int  # data.repeat_aug: clips per video in a batch
    seed: int
    grad_clip: float
    nonfinite: str  # "stop" or "skip"
    val_every: int
    checkpoint_every_steps: int
    eval_batch_size: int
    num_workers: int
    max_bad_fraction: float
    resume: str  # "", "auto" or a checkpoint path
    data_root: str
    val_label: str  # the validation's and the test's names in logs (summary.split_label)
    test_label: str
    config: dict  # the plain-dict config that checkpoints store


def loop_settings(cfg: DictConfig) -> LoopSettings:
    """The :class:`LoopSettings` of ``cfg``."""
    train, data = cfg.train, cfg.data
    return LoopSettings(
        epochs=train.epochs, accumulate=train.accumulate, batch_size=data.batch_size, repeats=data.repeat_aug,
        seed=train.seed, grad_clip=train.grad_clip, nonfinite=train.nonfinite, val_every=train.val_every,
        checkpoint_every_steps=train.checkpoint_every_steps, eval_batch_size=data.test_batch_size,
        num_workers=data.num_workers, max_bad_fraction=data.max_bad_fraction, resume=cfg.resume or "",
        data_root=str(data.root), val_label=split_label(cfg, "val"), test_label=split_label(cfg, "test"),
        config=to_container(cfg),
    )


@dataclass
class TrainingParts:
    """What a training run is built of, for the trainer: data, model, optimization, switches."""

    run_dir: Path
    train_set: ClipDataset
    val_set: ClipDataset
    test_set: Optional[ClipDataset]  # None without train.test_after_train
    classes: list[str]
    model: nn.Module
    memory_format: torch.memory_format
    amp: str  # resolved: "bf16", "fp16" or "none"
    amp_reason: str
    normalizer: ClipNormalizer
    sampler: ResumableDistributedSampler
    loader: DataLoader
    generator: torch.Generator  # the loader's, reseeded each epoch
    val_loader: DataLoader
    steps_per_epoch: int
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Optional[torch.amp.GradScaler]
    switches: TrainingSwitches
    guard: NonFiniteGuard


def build_training(cfg: DictConfig, dist_info: DistInfo) -> TrainingParts:
    """Everything a run trains with, in the order that draws the run's random numbers: the demo data
    (rank 0, with ``config.yaml``), the datasets, the model (``model.pretrained``, ``freeze_stages``,
    ``train.channels_last``), the sampler and loaders, the optimizer and schedule, the grad scaler
    (``train.amp=fp16``), the switches and the non-finite guard. Call it after seeding."""
    directory = run_dir(cfg)
    set_threads(cfg)
    if cfg.data.num_workers > 0:
        start_worker_server()  # the workers' fork server starts while the data and the model are built
    if dist_info.is_main:
        prepare_data(cfg)
        save_config(cfg, RunLayout(directory).config)
    barrier()
    data, train = cfg.data, cfg.train
    train_set = build_dataset(cfg, data.train_split, train=True)
    val_set = build_dataset(cfg, data.val_split, train=False)
    test_set = (build_dataset(cfg, data.test_split, train=False, num_clips=data.num_clips, num_crops=data.num_crops)
                if train.test_after_train else None)
    amp, amp_reason = resolve_amp(train.amp, dist_info.device)
    normalizer = build_normalizer(cfg)
    classes = list(train_set.classes)
    memory_format = backends.memory_format(train.channels_last)
    model = build_model(cfg, len(classes)).to(dist_info.device, memory_format=memory_format)
    backends.check_deterministic_model(model, dist_info.device, train.deterministic)
    sampler = build_train_sampler(cfg, train_set, dist_info)
    generator = torch.Generator()
    loader = run_loader(EpochIndexed(train_set), sampler, data.batch_size, data.num_workers, dist_info.device,
                        drop_last=True, generator=generator)
    val_loader = evaluation_loader(val_set, dist_info, data.test_batch_size, data.num_workers)
    steps_per_epoch = sampler.num_samples // data.batch_size // train.accumulate
    if train.limit_steps_per_epoch > 0:
        steps_per_epoch = min(steps_per_epoch, train.limit_steps_per_epoch)
    if steps_per_epoch < 1:
        raise ConfigError(
            f"{len(train_set)} training clips over {dist_info.world_size} processes do not fill one step of "
            f"data.batch_size={data.batch_size} x train.accumulate={train.accumulate}"
        )
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    scaler = torch.amp.GradScaler(dist_info.device.type) if train.amp == "fp16" else None
    context = SwitchContext(model, train_set, dist_info, len(classes), normalizer, amp, train.seed, data.batch_size,
                            data.num_workers)
    loss = SoftTargetCrossEntropy(train.label_smoothing)  # cross-entropy of class indices or of mixed targets
    switches = TrainingSwitches(build_switches(cfg, context), loss, train.seed, dist_info.rank)
    guard = NonFiniteGuard(train.nonfinite, train.max_consecutive_skips)
    return TrainingParts(directory, train_set, val_set, test_set, classes, model, memory_format, amp, amp_reason,
                         normalizer, sampler, loader, generator, val_loader, steps_per_epoch, optimizer, scheduler,
                         scaler, switches, guard)
