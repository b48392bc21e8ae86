"""The training switches for small sets, in one place the training loop calls: random erasing and
mixup/CutMix of each batch, the soft-target loss, the EMA of the weights and precise BatchNorm.

The loop builds one :class:`TrainingSwitches` from the config and calls it at four points: each
micro-batch goes through :meth:`~TrainingSwitches.augment` (then the loss is
:attr:`~TrainingSwitches.criterion`), each optimizer step ends with
:meth:`~TrainingSwitches.after_step`, each evaluation evaluates the models that
:meth:`~TrainingSwitches.eval_models` gives, and checkpoints hold :attr:`~TrainingSwitches.ema`.
With every switch off (the default) a batch and its labels pass through unchanged and the loss is
plain cross-entropy with label smoothing.

Randomness: erasing and mixing draw from :func:`step_generator` ``(seed, epoch, step, rank,
micro_batch)``, so each rank mixes differently and a resumed run draws what an uninterrupted one
did; precise BN reads its own shuffle of the training set (seeded from ``seed + 1`` and the
epoch) through its own DataLoader, under a forked RNG, so the training data stream and the global
RNG are untouched.
"""
from __future__ import annotations

import hashlib
import struct
from typing import Optional

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader

from softpool3d.datasets import ClipDataset
from softpool3d.engine import builders
from softpool3d.engine.distributed import DistInfo
from softpool3d.engine.sampler import ResumableDistributedSampler
from softpool3d.engine.ema import ModelEma
from softpool3d.engine.erasing import random_erase
from softpool3d.engine.inputs import ClipNormalizer, model_inputs
from softpool3d.engine.loaders import EpochIndexed, run_loader
from softpool3d.engine.mixing import Mixer, SoftTargetCrossEntropy
from softpool3d.engine.precise_bn import recompute_bn_stats

PRECISE_BN_SEED_OFFSET = 1
"""Precise BN shuffles the training set with ``train.seed`` plus this, apart from training's order."""


def step_generator(seed: int, epoch: int, step: int, rank: int, micro_batch: int) -> np.random.Generator:
    """A numpy generator seeded from a hash of ``(seed, epoch, step, rank, micro_batch)`` and nothing else."""
    key = hashlib.sha256(struct.pack("<5q", seed, epoch, step, rank, micro_batch)).digest()
    return np.random.default_rng(int.from_bytes(key[:16], "little"))


class TrainingSwitches:
    """``train.mixup_alpha``, ``train.cutmix_alpha``, ``train.mix_prob``, ``data.random_erasing``,
    ``train.ema_decay`` and ``train.precise_bn_batches`` of a run training ``model`` on ``train_set``
    with ``num_classes`` classes, on this rank."""

    def __init__(self, cfg: DictConfig, model: nn.Module, train_set: ClipDataset, dist_info: DistInfo,
                 num_classes: int) -> None:
        self.cfg, self.dist = cfg, dist_info
        train = cfg.train
        self.mixer = Mixer(train.mixup_alpha, train.cutmix_alpha, train.mix_prob, num_classes)
        self.criterion = SoftTargetCrossEntropy(train.label_smoothing)
        self.ema: Optional[ModelEma] = ModelEma(model, train.ema_decay) if train.ema_decay > 0 else None
        self.bn_loader: Optional[DataLoader] = None
        if train.precise_bn_batches > 0:
            sampler = ResumableDistributedSampler(train_set, num_replicas=dist_info.world_size, rank=dist_info.rank,
                                                  shuffle=True, seed=train.seed + PRECISE_BN_SEED_OFFSET,
                                                  drop_last=True)
            self.bn_loader = run_loader(EpochIndexed(train_set), sampler, cfg.data.batch_size, cfg.data.num_workers,
                                        dist_info.device, drop_last=True,
                                        generator=torch.Generator().manual_seed(train.seed))
        self.bn_done: Optional[tuple[int, int]] = None  # (epoch, step) of the last precise BN

    def augment(self, clips: torch.Tensor, labels: torch.Tensor, epoch: int, step: int,
                micro_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A training micro-batch on the device, clips ``(N, C, T, H, W)`` and labels ``(N,)`` -> clips
        and the targets of :attr:`criterion`: the labels, or ``(N, K)`` probabilities when mixing is on."""
        rng = step_generator(self.cfg.train.seed, epoch, step, self.dist.rank, micro_batch)
        if self.cfg.data.random_erasing > 0:
            clips = random_erase(clips, self.cfg.data.random_erasing, rng)
        if self.mixer.enabled:
            clips, labels = self.mixer(clips, labels, rng)
        return clips, labels

    def after_step(self, model: nn.Module, updated: bool) -> None:
        """After an optimizer step (``updated``: False when the step was skipped as non-finite)."""
        if self.ema is not None and updated:
            self.ema.update(model)

    def eval_models(self, model: nn.Module, epoch: int, step: int) -> list[tuple[str, nn.Module]]:
        """The models to evaluate after training epoch ``epoch`` (0-based), at optimizer step ``step``,
        as ``(name, model)``: the first is the one that counts (its validation picks ``best.pt``; the
        test; export): the EMA (``"ema"``) when it is on, followed by the raw weights (``"raw"``);
        else the model alone (``"model"``). With precise BN their BatchNorm statistics are
        recomputed first (collective: every rank must call this)."""
        models = [("ema", self.ema.module), ("raw", model)] if self.ema is not None else [("model", model)]
        if self.bn_loader is not None and self.bn_done != (epoch, step):
            self._precise_bn([m for _, m in models], epoch)
            self.bn_done = (epoch, step)
        return models

    def _precise_bn(self, models: list[nn.Module], epoch: int) -> None:
        device, amp = self.dist.device, builders.resolve_amp(self.cfg.train.amp, self.dist.device)[0]
        self.bn_loader.sampler.set_epoch(epoch)
        limit, normalizer = self.cfg.train.precise_bn_batches, ClipNormalizer.from_config(self.cfg)

        def batches():
            for index, (clips, _, _) in enumerate(self.bn_loader):
                if index == limit:
                    return
                yield clips.flatten(0, 1) if clips.ndim == 6 else clips  # repeat_aug: (N, k, ...) -> (N * k, ...)

        def forward(model: nn.Module, clips: torch.Tensor) -> torch.Tensor:
            with builders.autocast(device, amp):
                return model(model_inputs(clips, device, normalizer))

        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            recompute_bn_stats(models, batches(), forward)
