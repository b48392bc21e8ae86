"""The training loop: DDP under torchrun (one process without it), AMP, accumulation, clipping,
validation, TensorBoard, atomic checkpoints and exact resume.

``train(cfg)`` runs a whole job: claim the run directory (:mod:`softpool3d.engine.processes.run_lock`),
optionally generate the demo videos, train ``train.epochs`` epochs with validation every
``train.val_every`` epochs (clip top-1/top-5), then evaluate the test split with
``data.num_clips x data.num_crops`` views per video. Non-finite steps are handled by
:mod:`softpool3d.engine.training.nonfinite`. After a torchrun restart (``--max-restarts``) the job resumes from
its ``last.pt`` by itself.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from omegaconf import DictConfig
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from softpool3d.datasets.device_decode import on_device
from softpool3d.engine import builders
from softpool3d.engine.checkpoint import load_checkpoint, save_checkpoint
from softpool3d.engine.config import run_dir
from softpool3d.engine.evaluation.evaluate import EvalResult, evaluate, report_left_out
from softpool3d.engine.evaluation.testing import test_model
from softpool3d.engine.inputs import model_inputs
from softpool3d.engine.processes import backends
from softpool3d.engine.processes.amp import autocast
from softpool3d.engine.processes.distributed import (
    DistInfo,
    all_gather_objects,
    cleanup,
    init_distributed,
    restart_count,
)
from softpool3d.engine.processes.loader_failures import explain_loader_failure
from softpool3d.engine.processes.loaders import dead_worker_signals
from softpool3d.engine.processes.preemption import Preempted, PreemptionWatch
from softpool3d.engine.processes.run_lock import RunDirError, RunLock, claim_run_dir
from softpool3d.engine.processes.stall_watch import (ALL_REDUCE, CHECKPOINT, FORWARD_BACKWARD, TEST, VALIDATION,
                                                     WAITING_FOR_DATA, StallWatch)
from softpool3d.engine.run_layout import RunLayout
from softpool3d.engine.training.callbacks import StepCallback, StepContext, debug_callbacks
from softpool3d.engine.training.nonfinite import NonFiniteLossError, count_nonfinite, nonfinite_training_state
from softpool3d.engine.training.step_stats import gradient_norm, reduce_step
from softpool3d.engine.training.summary import log_startup_summary
from softpool3d.engine.training.tensorboard_log import TensorBoardLog
from softpool3d.engine.training_state import Progress, restore_training, rng_state, training_checkpoint

logger = logging.getLogger(__name__)


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
    skipped_steps: int = 0

    def metrics(self, world_size: int) -> dict:
        """What ``metrics.json`` holds."""
        test = self.test
        return {"step": self.step, "world_size": world_size, "clips_per_s": self.clips_per_s,
                "skipped_steps": self.skipped_steps, "val_top1": self.val_top1,
                "test_top1": test.top1 if test else None,
                "test_top5": test.top5 if test else None, "test_videos": test.num_videos if test else None,
                "test_total_videos": test.total_videos if test else None,
                "test_left_out": test.left_out if test else None}


@dataclass
class _Throughput:
    """Clips trained and seconds taken by this process's steps after its first."""

    clips: int = 0
    seconds: float = 0.0


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def flatten_repeats(clips: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``repeat_aug`` batch ``(N, k, C, T, H, W)`` with labels ``(N,)`` -> ``(N * k, C, T, H, W)`` and
    ``(N * k,)``: video ``n``'s clips stay together, each with its video's label."""
    return clips.flatten(0, 1), labels.repeat_interleave(clips.shape[1])


def train(cfg: DictConfig, step_callbacks: Sequence[StepCallback] = ()) -> TrainResult:
    """Run the job described by ``cfg`` in this process (one rank of torchrun's, or the only one).

    After every optimizer step the loop calls the ``debug`` section's callbacks
    (:func:`~softpool3d.engine.training.callbacks.debug_callbacks`), then ``step_callbacks``. SIGTERM, SIGINT
    or SIGUSR1 stop every rank after the same step with a checkpoint and raise :class:`Preempted`
    (:mod:`~softpool3d.engine.processes.preemption`); a rank that stops advancing is reported by every rank
    (:mod:`~softpool3d.engine.processes.stall_watch`).
    """
    backends.configure_determinism(cfg.train.deterministic)  # before CUDA starts
    dist_info = init_distributed(cfg.train.device, cfg.train.dist_timeout_s)
    lock = None
    try:
        with PreemptionWatch() as preemption, \
                StallWatch.for_job(dist_info.rank, dist_info.world_size, cfg.train.stall_warn_s) as watch:
            try:
                lock = _claim_run_dir(cfg, dist_info)
                seed_everything(cfg.train.seed + dist_info.rank)
                parts = builders.build_training(cfg, dist_info)
                trainer = _Trainer(parts, builders.loop_settings(cfg), dist_info,
                                   [*debug_callbacks(cfg.debug), *step_callbacks], preemption, watch)
                log_startup_summary(cfg, dist_info,
                                    {"train": parts.train_set, "val": parts.val_set, "test": parts.test_set},
                                    parts.model, parts.steps_per_epoch, parts.amp, parts.amp_reason)
                return trainer.run()
            except Exception as error:
                watch.annotate(error)
                explain_loader_failure(error, cfg.data.num_workers, dead_worker_signals())
                raise
    finally:
        if lock is not None:
            lock.release()
        cleanup()


def _claim_run_dir(cfg: DictConfig, dist_info: DistInfo) -> Optional[RunLock]:
    """Rank 0 claims the run directory (writable, locked, stale temporaries gone); if it cannot,
    every rank raises its :class:`RunDirError`."""
    lock, error = None, None
    if dist_info.is_main:
        try:
            lock = claim_run_dir(run_dir(cfg))
        except RunDirError as caught:
            error = str(caught)
    error = all_gather_objects(error)[0]
    if error is not None:
        raise RunDirError(error)
    return lock


class _Trainer:
    """The loop over a run's :class:`~softpool3d.engine.builders.TrainingParts` with its
    :class:`~softpool3d.engine.builders.LoopSettings`: it is handed its objects and reads no config."""

    def __init__(self, parts: builders.TrainingParts, settings: builders.LoopSettings, dist_info: DistInfo,
                 step_callbacks: Sequence[StepCallback], preemption: PreemptionWatch, watch: StallWatch) -> None:
        self.settings, self.dist, self.step_callbacks = settings, dist_info, list(step_callbacks)
        self.preemption, self.watch, self.stop_agreed = preemption, watch, False
        self.device = dist_info.device
        self.run_dir, self.layout = parts.run_dir, RunLayout(parts.run_dir)
        self.tensorboard_dir = self.layout.tensorboard
        self.train_set, self.val_set, self.test_set = parts.train_set, parts.val_set, parts.test_set
        self.left_out_reported: set[str] = set()
        self.amp, self.normalizer, self.classes = parts.amp, parts.normalizer, parts.classes
        self.memory_format, self.model = parts.memory_format, parts.model
        self.sampler, self.generator, self.loader, self.val_loader = (parts.sampler, parts.generator, parts.loader,
                                                                      parts.val_loader)
        self.steps_per_epoch = parts.steps_per_epoch
        self.optimizer, self.scheduler, self.scaler = parts.optimizer, parts.scheduler, parts.scaler
        self.switches = parts.switches
        self.criterion = self.switches.criterion
        self.progress, self.throughput = Progress(), _Throughput()
        self.guard = parts.guard
        self.float_buffers = [buffer for buffer in self.model.buffers() if buffer.is_floating_point()]
        self._resume()
        self.ddp = (
            DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if dist_info.distributed
            else self.model
        )
        self.board = TensorBoardLog(self.tensorboard_dir, dist_info)
        self.warmed_up = False

    def _resume(self) -> None:
        resume = self.settings.resume
        restarts = restart_count()
        if restarts > 0 and self.layout.last.is_file():
            logger.warning("torchrun restarted the job (restart %d): resuming from its last checkpoint", restarts)
            resume = "auto"
        if not resume:
            return
        path = self.layout.last if resume == "auto" else Path(resume)
        if resume == "auto" and not path.is_file():
            logger.info("resume=auto: no %s yet, starting fresh", path)
            return
        checkpoint = load_checkpoint(path)
        if list(checkpoint["classes"]) != self.classes:
            raise ValueError(f"checkpoint {path} was trained on other classes than {self.settings.data_root}")
        self.progress = restore_training(checkpoint, path, self.model, self.optimizer, self.scheduler, self.scaler,
                                         self.dist.rank, self.dist.world_size, self.switches)
        self.guard.skipped, self.guard.consecutive = self.progress.skipped_steps, self.progress.consecutive_skips
        self.guard.last_checkpoint = (path, self.progress.step)
        logger.info("resumed from %s at epoch %d, step %d", path, self.progress.epoch, self.progress.step)

    def _checkpoint(self, name: str) -> Path:
        """Write ``checkpoints/<name>.pt`` on rank 0 (collective: every rank contributes its RNG state).

        Raises :class:`NonFiniteLossError` on every rank, writing nothing, if a model or optimizer
        tensor of rank 0 holds a NaN or an inf.
        """
        self.watch.enter(CHECKPOINT, self.progress.step)
        path = self.layout.checkpoint(name)
        bad = nonfinite_training_state(self.model, self.optimizer) if self.dist.is_main else None
        gathered = all_gather_objects((rng_state(), bad))
        states, bad = [state for state, _ in gathered], gathered[0][1]
        if bad:
            raise NonFiniteLossError(
                f"refusing to write {path} at step {self.progress.step}: {len(bad)} tensor(s) hold NaN/inf, first "
                f"{bad[0]}; {self.guard.last_good()}"
            )
        if self.dist.is_main:
            progress = dataclasses.replace(self.progress, skipped_steps=self.guard.skipped,
                                           consecutive_skips=self.guard.consecutive)
            save_checkpoint(training_checkpoint(self.model, self.optimizer, self.scheduler, self.scaler, progress,
                                                self.sampler.epoch, self.settings.config, self.classes, states,
                                                self.switches.state_dict(), self.switches.eval_weights),
                            path)
        if name == "last":
            self.guard.last_checkpoint = (path, self.progress.step)
        return path

    def run(self) -> TrainResult:
        settings = self.settings
        val_top1 = None
        last = self.layout.last
        while self.progress.epoch < settings.epochs:
            self._train_epoch()
            epoch = self.progress.epoch
            self.progress.epoch, self.progress.step_in_epoch = epoch + 1, 0
            if (epoch + 1) % settings.val_every == 0 or epoch + 1 == settings.epochs:
                val_top1 = self._validate(epoch)
                if val_top1 > self.progress.best_top1:
                    self.progress.best_top1 = val_top1
                    self._checkpoint("best")
            last = self._checkpoint("last")
            if self.preemption.agreed(self.device):
                raise self._preempted(last)
        test = self._test() if self.test_set is not None else None
        self.board.close()
        best = self.layout.best
        result = TrainResult(
            run_dir=self.run_dir, last_checkpoint=last, best_checkpoint=best if best.is_file() else None,
            tensorboard_dir=self.tensorboard_dir, step=self.progress.step,
            clips_per_s=self.throughput.clips / self.throughput.seconds if self.throughput.seconds else 0.0,
            val_top1=val_top1, test=test, skipped_steps=self.guard.skipped,
        )
        if self.guard.skipped:
            logger.warning("%d of %d steps were skipped as non-finite (train.nonfinite=skip)", self.guard.skipped,
                           result.step)
        if self.dist.is_main:
            self.layout.metrics.write_text(json.dumps(result.metrics(self.dist.world_size), indent=2))
        return result

    def _train_epoch(self) -> None:
        settings, state = self.settings, self.progress
        accumulate, batch_size, repeats = settings.accumulate, settings.batch_size, settings.repeats
        self.sampler.set_epoch(state.epoch)  # the epoch reaches the dataset through the sampled (epoch, index) pairs
        self.sampler.set_start(state.step_in_epoch * accumulate * batch_size)
        self.generator.manual_seed(settings.seed * 100_003 + state.epoch)
        self.model.train()
        batches = iter(self.loader)
        bar = tqdm(total=self.steps_per_epoch, initial=state.step_in_epoch, desc=f"epoch {state.epoch + 1}",
                   disable=not self.dist.is_main, dynamic_ncols=True, leave=False)
        while state.step_in_epoch < self.steps_per_epoch:
            started = time.perf_counter()
            wait, lr = 0.0, self.scheduler.get_last_lr()[0]
            loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
            buffers = self._snapshot_buffers() if settings.nonfinite == "skip" else None
            for micro in range(accumulate):
                fetched = time.perf_counter()
                self.watch.enter(WAITING_FOR_DATA, state.step + 1)
                clips, labels, _ = next(batches)
                self.watch.enter(FORWARD_BACKWARD)
                wait += time.perf_counter() - fetched
                clips = on_device(clips, self.device)  # a JpegBatch (shards decoded on the GPU) is decoded here
                if repeats > 1:
                    clips, labels = flatten_repeats(clips, labels)
                clips = model_inputs(clips, self.device, self.normalizer).contiguous(memory_format=self.memory_format)
                labels = labels.to(self.device, non_blocking=True)
                clips, targets = self.switches.augment(clips, labels, state.epoch, state.step, micro)
                sync = micro == accumulate - 1 or not self.dist.distributed
                with contextlib.nullcontext() if sync else self.ddp.no_sync():
                    with autocast(self.device, self.amp):
                        logits = self.ddp(clips)
                    loss = self.criterion(logits.float(), targets)
                    scaled = loss / accumulate
                    (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
                loss_sum += loss.detach().double()
            loss_mean = self._optimizer_step(loss_sum / accumulate, buffers)
            self.watch.enter(WAITING_FOR_DATA, state.step + 2)  # past the collective: bookkeeping, next batch
            self.switches.after_step(self.model, updated=self.guard.last_step_ok)
            elapsed = time.perf_counter() - started
            clips_per_step = accumulate * batch_size * repeats * self.dist.world_size
            clips_per_s = clips_per_step / elapsed
            state.step += 1
            state.step_in_epoch += 1
            if self.warmed_up:  # the first step of a process (lazy init, JIT builds) is left out
                self.throughput.clips += clips_per_step
                self.throughput.seconds += elapsed
            self.warmed_up = True
            bar.update(1)
            bar.set_postfix(loss=f"{loss_mean:.4f}", lr=f"{lr:.3g}", clips_s=f"{clips_per_s:.1f}")
            self.board.scalars({"train/loss": loss_mean, "train/lr": lr, "train/clips_per_s": clips_per_s,
                                "train/data_wait_s": wait}, state.step)
            self._after_step()
            if self.stop_agreed:
                raise self._preempted(self._checkpoint("last"))
        bar.close()

    def _preempted(self, checkpoint: Path) -> Preempted:
        """The every-rank stop after a signal: TensorBoard flushed, ``checkpoint`` already written."""
        self.board.close()
        return Preempted(self.progress.step, self.preemption.signal_name, checkpoint)

    def _snapshot_buffers(self) -> list[torch.Tensor]:
        return [buffer.clone() for buffer in self.model.buffers()]

    def _optimizer_step(self, local_loss: torch.Tensor, buffers: Optional[list[torch.Tensor]]) -> float:
        """Check the loss, gradient norm and BatchNorm statistics on every rank, then step (or skip,
        or stop: :class:`NonFiniteGuard`); returns the loss averaged over ranks.

        The figures stay on the device until one all-reduce and one read (:func:`reduce_step`). A
        skipped step also restores the buffers (BatchNorm statistics) from ``buffers``, taken
        before its forward passes.
        """
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        norm = gradient_norm(trainable, self.settings.grad_clip)
        self.watch.enter(ALL_REDUCE)
        summary = reduce_step(local_loss, norm, self.scaler is None, count_nonfinite(self.float_buffers),
                              self.dist.world_size, self.device, stop=self.preemption.requested)
        self.stop_agreed = summary.stop
        loss_mean, problems = summary.loss, summary.problems
        where = (f"step {self.progress.step + 1} (epoch {self.progress.epoch + 1}, loss {loss_mean:.6g}, "
                 f"grad norm {summary.grad_norm:.6g})")
        if not self.guard.step_ok(problems, where):
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
        every, step = self.settings.checkpoint_every_steps, self.progress.step
        if every > 0 and step % every == 0 and self.progress.step_in_epoch < self.steps_per_epoch:
            self._checkpoint("last")
        context = StepContext(step, self.progress.epoch, self.dist.rank, self.model, self.run_dir)
        for callback in self.step_callbacks:
            callback(context)

    def _validate(self, epoch: int) -> float:
        """Validate the models :meth:`TrainingSwitches.eval_models` names; returns the first's clip top-1."""
        settings = self.settings
        self.watch.enter(VALIDATION, self.progress.step)
        results = []
        for name, model in self.switches.eval_models(self.model, epoch, self.progress.step):
            result = evaluate(model, self.val_set, self.dist, settings.eval_batch_size, settings.num_workers,
                              self.amp, max_bad_fraction=settings.max_bad_fraction,
                              loader=self.val_loader, normalizer=self.normalizer)
            if self.dist.is_main:
                report_left_out(result, settings.val_label, self.left_out_reported)
            weights = "" if name == "model" else f", {name} weights"
            logger.info("epoch %d: %s%s clip top-1 %.2f%%, top-5 %.2f%% (%s)", epoch + 1, settings.val_label,
                        weights, 100 * result.top1, 100 * result.top5, result.coverage)
            self.board.evaluation("val" if not results else f"val_{name}", result, self.progress.step)
            results.append(result)
        return results[0].top1

    def _test(self) -> EvalResult:
        self.watch.enter(TEST, self.progress.step)
        _, model = self.switches.eval_models(self.model, self.progress.epoch - 1, self.progress.step)[0]
        settings = self.settings
        result = test_model(model, self.test_set, self.dist, self.amp, self.normalizer, self.layout.test,
                            settings.test_label, batch_size=settings.eval_batch_size,
                            num_workers=settings.num_workers, max_bad_fraction=settings.max_bad_fraction,
                            already_reported=self.left_out_reported)
        self.board.evaluation("test", result, self.progress.step)
        return result
