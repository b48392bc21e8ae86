"""The training loop: DDP under torchrun (one process without it), AMP, accumulation, clipping,
validation, TensorBoard, atomic checkpoints and exact resume.

``train(cfg)`` runs a whole job: optionally generate the demo videos, train ``train.epochs``
epochs with validation every ``train.val_every`` epochs (clip top-1/top-5), then evaluate the
test split with ``data.num_clips x data.num_crops`` views per video.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from softpool3d import builders
from softpool3d.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from softpool3d.config import run_dir, save_config, to_container
from softpool3d.datasets import freeze_inherited_objects
from softpool3d.distributed import (
    DistInfo,
    ResumableDistributedSampler,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    cleanup,
    init_distributed,
)
from softpool3d.evaluate import EvalResult, evaluate, write_predictions
from softpool3d.metrics import confusion_image
from softpool3d.optim import build_optimizer, build_scheduler

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient norm became NaN or infinite and ``train.nonfinite=stop``."""


@dataclass
class TrainResult:
    """Where a finished run left its files, and its last figures."""

    run_dir: Path
    last_checkpoint: Path
    best_checkpoint: Optional[Path]
    tensorboard_dir: Path
    step: int
    clips_per_s: float
    val_top1: Optional[float]
    test: Optional[EvalResult]


@dataclass
class _State:
    epoch: int = 0
    step: int = 0
    step_in_epoch: int = 0
    best_top1: float = -1.0
    clips: int = 0
    seconds: float = 0.0


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def parameter_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter's bytes, in order (equal digests = equal weights).

    Buffers are left out: under DDP each rank's BatchNorm statistics follow its own batches
    until the next forward pass broadcasts rank 0's.
    """
    digest = hashlib.sha256()
    for tensor in model.parameters():
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def train(cfg: DictConfig) -> TrainResult:
    """Run the job described by ``cfg`` in this process (one rank of torchrun's, or the only one)."""
    dist_info = init_distributed(cfg.train.device)
    try:
        return _Trainer(cfg, dist_info).run()
    finally:
        cleanup()


class _Trainer:
    def __init__(self, cfg: DictConfig, dist_info: DistInfo) -> None:
        self.cfg, self.dist = cfg, dist_info
        self.device = dist_info.device
        self.run_dir = run_dir(cfg)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.tensorboard_dir = self.run_dir / "tensorboard"
        seed_everything(cfg.train.seed + dist_info.rank)
        builders.set_threads(cfg)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        if dist_info.is_main:
            builders.prepare_data(cfg)
            save_config(cfg, self.run_dir / "config.yaml")
        barrier()
        self.train_set = builders.build_dataset(cfg, cfg.data.train_split, train=True)
        self.classes = list(self.train_set.classes)
        self.model = builders.build_model(cfg, len(self.classes)).to(self.device)
        self.sampler = ResumableDistributedSampler(
            self.train_set, num_replicas=dist_info.world_size, rank=dist_info.rank, shuffle=True,
            seed=cfg.train.seed, drop_last=True,
        )
        self.generator = torch.Generator()
        self.loader = DataLoader(
            self.train_set, batch_size=cfg.data.batch_size, sampler=self.sampler, num_workers=cfg.data.num_workers,
            drop_last=True, pin_memory=self.device.type == "cuda", generator=self.generator,
            worker_init_fn=freeze_inherited_objects,
        )
        self.steps_per_epoch = self.sampler.num_samples // cfg.data.batch_size // cfg.train.accumulate
        if cfg.train.limit_steps_per_epoch > 0:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.train.limit_steps_per_epoch)
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"{len(self.train_set)} training clips over {dist_info.world_size} processes do not fill one step of "
                f"data.batch_size={cfg.data.batch_size} x train.accumulate={cfg.train.accumulate}"
            )
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, self.steps_per_epoch, cfg.train.epochs)
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.train.amp == "fp16" else None
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
        self.state = _State()
        self._resume()
        self.ddp = (
            DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if dist_info.distributed
            else self.model
        )
        self.writer = SummaryWriter(str(self.tensorboard_dir)) if dist_info.is_main else None
        self.val_set = None
        self.warmed_up = False

    def _resume(self) -> None:
        resume = self.cfg.resume
        if not resume:
            return
        path = self.checkpoint_dir / "last.pt" if resume == "auto" else Path(resume)
        if resume == "auto" and not path.is_file():
            logger.info("resume=auto: no %s yet, starting fresh", path)
            return
        checkpoint = load_checkpoint(path)
        if list(checkpoint["classes"]) != self.classes:
            raise ValueError(f"checkpoint {path} was trained on other classes than {self.cfg.data.root}")
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if self.scaler is not None and checkpoint.get("scaler") is not None:
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.state = _State(checkpoint["epoch"], checkpoint["step"], checkpoint.get("step_in_epoch", 0),
                            checkpoint.get("best_top1", -1.0))
        states = checkpoint.get("rng") or []
        if len(states) == self.dist.world_size:
            set_rng_state(states[self.dist.rank])
        else:
            logger.warning("checkpoint %s has RNG states of %d processes, this run has %d: RNG not restored",
                           path, len(states), self.dist.world_size)
        logger.info("resumed from %s at epoch %d, step %d", path, self.state.epoch, self.state.step)

    def _checkpoint(self, name: str) -> Path:
        """Write ``checkpoints/<name>.pt`` on rank 0 (collective: every rank contributes its RNG state)."""
        states = all_gather_objects(rng_state())
        path = self.checkpoint_dir / f"{name}.pt"
        if self.dist.is_main:
            save_checkpoint({
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "epoch": self.state.epoch,
                "step": self.state.step,
                "step_in_epoch": self.state.step_in_epoch,
                "sampler_epoch": self.sampler.epoch,
                "best_top1": self.state.best_top1,
                "config": to_container(self.cfg),
                "classes": self.classes,
                "rng": states,
            }, path)
        return path

    def run(self) -> TrainResult:
        cfg = self.cfg
        val_top1 = None
        last = self.checkpoint_dir / "last.pt"
        while self.state.epoch < cfg.train.epochs:
            self._train_epoch()
            epoch = self.state.epoch
            self.state.epoch, self.state.step_in_epoch = epoch + 1, 0
            if (epoch + 1) % cfg.train.val_every == 0 or epoch + 1 == cfg.train.epochs:
                val_top1 = self._validate(epoch)
                if val_top1 > self.state.best_top1:
                    self.state.best_top1 = val_top1
                    self._checkpoint("best")
            last = self._checkpoint("last")
        test = self._test() if cfg.train.test_after_train else None
        if self.writer is not None:
            self.writer.close()
        best = self.checkpoint_dir / "best.pt"
        result = TrainResult(
            run_dir=self.run_dir, last_checkpoint=last, best_checkpoint=best if best.is_file() else None,
            tensorboard_dir=self.tensorboard_dir, step=self.state.step,
            clips_per_s=self.state.clips / self.state.seconds if self.state.seconds else 0.0,
            val_top1=val_top1, test=test,
        )
        if self.dist.is_main:
            summary = {"step": result.step, "world_size": self.dist.world_size, "clips_per_s": result.clips_per_s,
                       "val_top1": val_top1, "test_top1": test.top1 if test else None,
                       "test_top5": test.top5 if test else None}
            (self.run_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
        return result

    def _train_epoch(self) -> None:
        cfg, state = self.cfg, self.state
        accumulate, batch_size = cfg.train.accumulate, cfg.data.batch_size
        self.sampler.set_epoch(state.epoch)
        self.sampler.set_start(state.step_in_epoch * accumulate * batch_size)
        self.generator.manual_seed(cfg.train.seed * 100_003 + state.epoch)
        self.model.train()
        batches = iter(self.loader)
        bar = tqdm(total=self.steps_per_epoch, initial=state.step_in_epoch, desc=f"epoch {state.epoch + 1}",
                   disable=not self.dist.is_main, dynamic_ncols=True, leave=False)
        while state.step_in_epoch < self.steps_per_epoch:
            started = time.perf_counter()
            wait, loss_sum, lr = 0.0, torch.zeros((), dtype=torch.float64), self.scheduler.get_last_lr()[0]
            buffers = self._snapshot_buffers() if cfg.train.nonfinite == "skip" else None
            for micro in range(accumulate):
                fetched = time.perf_counter()
                clips, labels, _ = next(batches)
                wait += time.perf_counter() - fetched
                clips = clips.to(self.device, non_blocking=True)
                labels = labels.to(self.device, non_blocking=True)
                sync = micro == accumulate - 1 or not self.dist.distributed
                with contextlib.nullcontext() if sync else self.ddp.no_sync():
                    with builders.autocast(self.device, cfg.train.amp):
                        logits = self.ddp(clips)
                    loss = self.criterion(logits.float(), labels)
                    scaled = loss / accumulate
                    (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
                loss_sum += loss.detach().double().cpu()
            loss_mean = self._optimizer_step(loss_sum / accumulate, buffers)
            elapsed = time.perf_counter() - started
            clips_per_s = accumulate * batch_size * self.dist.world_size / elapsed
            state.step += 1
            state.step_in_epoch += 1
            if self.warmed_up:  # the first step of a process (lazy init, JIT builds) is left out
                state.clips += accumulate * batch_size * self.dist.world_size
                state.seconds += elapsed
            self.warmed_up = True
            bar.update(1)
            bar.set_postfix(loss=f"{loss_mean:.4f}", lr=f"{lr:.3g}", clips_s=f"{clips_per_s:.1f}")
            if self.writer is not None:
                self.writer.add_scalar("train/loss", loss_mean, state.step)
                self.writer.add_scalar("train/lr", lr, state.step)
                self.writer.add_scalar("train/clips_per_s", clips_per_s, state.step)
                self.writer.add_scalar("train/data_wait_s", wait, state.step)
            self._after_step()
        bar.close()

    def _snapshot_buffers(self) -> list[torch.Tensor]:
        return [buffer.clone() for buffer in self.model.buffers()]

    def _optimizer_step(self, local_loss: torch.Tensor, buffers: Optional[list[torch.Tensor]]) -> float:
        """Check the loss on every rank, then step (or skip, or stop); returns the loss averaged over ranks.

        A skipped step also restores the buffers (BatchNorm statistics) from ``buffers``, taken
        before its forward passes.
        """
        cfg = self.cfg
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = cfg.train.grad_clip if cfg.train.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(trainable, max_norm).detach().double().cpu()
        loss_bad = float(not torch.isfinite(local_loss))
        grad_bad = float(not torch.isfinite(norm)) if self.scaler is None else 0.0
        summary = all_reduce_sum(torch.tensor([float(local_loss), loss_bad + grad_bad], dtype=torch.float64,
                                              device=self.device)).cpu()
        loss_mean = float(summary[0]) / self.dist.world_size
        if summary[1] > 0:
            where = f"step {self.state.step + 1} (epoch {self.state.epoch + 1}, loss {loss_mean}, grad norm {float(norm)})"
            if cfg.train.nonfinite == "stop":
                raise NonFiniteLossError(f"non-finite loss or gradient at {where}; stopping (train.nonfinite=stop)")
            logger.warning("non-finite loss or gradient at %s: update skipped (train.nonfinite=skip)", where)
            with torch.no_grad():
                for buffer, saved in zip(self.model.buffers(), buffers):
                    buffer.copy_(saved)
        elif self.scaler is not None:
            self.scaler.step(self.optimizer)
        else:
            self.optimizer.step()
        if self.scaler is not None:
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            # A skipped update (non-finite step, or the grad scaler's) still advances the schedule.
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            self.scheduler.step()
        return loss_mean

    def _after_step(self) -> None:
        cfg, step = self.cfg, self.state.step
        if cfg.debug.step_checksums:
            path = self.run_dir / "debug" / f"rank{self.dist.rank}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as file:
                file.write(json.dumps({"step": step, "digest": parameter_digest(self.model)}) + "\n")
        every = cfg.train.checkpoint_every_steps
        if every > 0 and step % every == 0 and self.state.step_in_epoch < self.steps_per_epoch:
            self._checkpoint("last")
        if step == cfg.debug.kill_at_step:
            barrier()
            os.kill(os.getpid(), signal.SIGKILL)

    def _validate(self, epoch: int) -> float:
        cfg = self.cfg
        if self.val_set is None:
            self.val_set = builders.build_dataset(cfg, cfg.data.val_split, train=False)
        result = evaluate(self.model, self.val_set, self.dist, cfg.data.test_batch_size, cfg.data.num_workers,
                          cfg.train.amp)
        logger.info("epoch %d: val clip top-1 %.2f%%, top-5 %.2f%% (%d clips)", epoch + 1, 100 * result.top1,
                    100 * result.top5, result.num_videos)
        if self.writer is not None:
            self.writer.add_scalar("val/top1", result.top1, self.state.step)
            self.writer.add_scalar("val/top5", result.top5, self.state.step)
            self.writer.add_image("val/confusion_matrix", confusion_image(result.confusion), self.state.step)
        return result.top1

    def _test(self) -> EvalResult:
        cfg = self.cfg
        dataset = builders.build_dataset(cfg, cfg.data.test_split, train=False, num_clips=cfg.data.num_clips,
                                         num_crops=cfg.data.num_crops)
        result = evaluate(self.model, dataset, self.dist, cfg.data.test_batch_size, cfg.data.num_workers,
                          cfg.train.amp, progress=True)
        if self.dist.is_main:
            csv_path, _ = write_predictions(result, self.run_dir / "test")
            logger.info("test %s: %d videos x %d views, video top-1 %.2f%%, top-5 %.2f%%; predictions in %s",
                        cfg.data.test_split, result.num_videos, dataset.num_views, 100 * result.top1,
                        100 * result.top5, csv_path)
        if self.writer is not None:
            self.writer.add_scalar("test/top1", result.top1, self.state.step)
            self.writer.add_scalar("test/top5", result.top5, self.state.step)
            self.writer.add_image("test/confusion_matrix", confusion_image(result.confusion), self.state.step)
        return result
