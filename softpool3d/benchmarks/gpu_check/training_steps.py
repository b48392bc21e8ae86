"""The GPU check's steps about training: ``train_steps`` (x3d_s and r3d_18 at their recipe clips,
bf16, channels_last_3d, eager and ``torch.compile``), ``loader`` (the real loader against the model's
clips/s), ``shard_decode`` (frame shards' JPEGs decoded on the GPU against x3d_s's training step) and
``ddp`` (``softpool3d`` training under torchrun over NCCL)."""
from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from softpool3d.benchmarks.gpu_check.context import REPO, Context, NotOk, require_extension
from softpool3d.benchmarks.gpu_check.processes import run_group, say

if TYPE_CHECKING:
    from softpool3d.benchmarks.device_decode import DecodeVsStep
    from softpool3d.benchmarks.shard_loader import Geometry

COMPILE_NEEDS_S = 45
"""Seconds a compiled training case needs on the GPU machine (inductor's compilation of the forward
and backward, then the timed steps): one starts only with this much of the step's cap left, so that
it produces a figure instead of being killed mid-compile."""


TRAIN_CASES = {  # model -> (clip (T, H, W), batch per GPU), the recipes' clips and batch
    "x3d_s": ((13, 160, 160), 16),
    "r3d_18": ((16, 112, 112), 16),
}


def _train_step_timing(name: str, pool: str, compiled: bool, context: Context) -> dict:
    import torch

    from softpool3d.models import build_model

    device, dry = context.device, context.dry_run
    clip, batch = ((4, 32, 32), 2) if dry else TRAIN_CASES[name]
    steps = 1 if dry else 10
    torch.manual_seed(0)
    model = build_model(name, 400, pool=pool, **({"width": 4} if dry and name == "r3d_18" else {}))
    model = model.to(device, memory_format=torch.channels_last_3d).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    # inductor's CPU code generation takes minutes on a small CPU; the dry run traces (dynamo, AOT
    # autograd, the op's fake kernels) without it
    forward = torch.compile(model, backend="aot_eager" if dry else "inductor") if compiled else model
    clips = torch.randn(batch, 3, *clip, device=device).contiguous(memory_format=torch.channels_last_3d)
    labels = torch.randint(0, 400, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(forward(clips).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    started = time.perf_counter()
    step()  # warm-up: cuDNN autotuning, compilation
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    warmup = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {"model": name, "pool": pool, "mode": "compile" if compiled else "eager", "clip": list(clip),
            "batch": batch, "clips_per_s": batch * steps / seconds, "peak_gib": peak, "warmup_s": warmup}


def step_train_steps(context: Context) -> dict:
    import torch

    require_extension(context)
    torch.backends.cudnn.benchmark = True
    rows: list[dict] = []
    left_out: list[str] = []
    plan = [(name, pool, False) for name in TRAIN_CASES for pool in ("soft", "max", "avg")]
    # compiling takes tens of seconds a case: soft against max on x3d_s first, while the cap allows
    plan += [(name, pool, True) for name in TRAIN_CASES for pool in ("soft", "max")]
    if context.dry_run:  # every model and pool once, and one compiled case (the code paths, not the figures)
        plan = [("x3d_s", "soft", False), *((("r3d_18", pool, False) for pool in ("soft", "max", "avg"))),
                ("r3d_18", "soft", True)]
    for name, pool, compiled in plan:
        if compiled and not context.dry_run and context.seconds_left() < COMPILE_NEEDS_S:
            left_out.append(f"{name} pool={pool} compile")
            say(f"train step {name} pool={pool} compile: left out, {context.seconds_left():.0f} s of the cap left")
            continue
        row = _train_step_timing(name, pool, compiled, context)
        rows.append(row)
        context.partial("train_steps", {"rows": rows})
        say(f"train step {name} pool={pool} {row['mode']}: {row['clips_per_s']:.1f} clips/s, peak "
            f"{row['peak_gib'] if row['peak_gib'] is None else round(row['peak_gib'], 2)} GiB "
            f"(warm-up {row['warmup_s']:.1f} s)")
        if context.device.type == "cuda":
            torch.cuda.empty_cache()
    return {"rows": rows, "left_out": left_out}


def step_loader(context: Context) -> dict:
    import torch

    from softpool3d.datasets import Annotations, ClipDataset, OpenVideo
    from softpool3d.engine.processes.sampler import ResumableDistributedSampler
    from softpool3d.engine.processes.loaders import EpochIndexed, run_loader

    videos = sorted(context.videos.rglob("*.mp4"))
    if not videos:
        raise FileNotFoundError(f"no videos in {context.videos}: run tools/gpu_wheels.sh here, and carry .gpu_data")
    opened = [OpenVideo(path) for path in videos]
    decord_read = sum(video._reader is not None for video in opened)
    workers, batch, batches = (2, 2, 3) if context.dry_run else (14, 16, 30)
    clip, rate, crop, scale = (13, 6, 160, (182, 228))  # x3d_s's recipe clip
    annotations = Annotations([str(path) for path in videos] * 64, [0] * len(videos) * 64, ["clip"])
    dataset = ClipDataset(annotations, train=True, num_frames=clip, sampling_rate=rate, crop_size=crop,
                          train_scale=scale)
    sampler = ResumableDistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=0, drop_last=True)
    loader = run_loader(EpochIndexed(dataset), sampler, batch, workers, context.device, drop_last=True)
    iterator = iter(loader)
    next(iterator)  # workers started, first batch decoded
    started = time.perf_counter()
    for _ in range(batches):
        clips, _, _ = next(iterator)
        clips = clips.to(context.device, non_blocking=True)
    seconds = time.perf_counter() - started
    loader_rate = batches * batch / seconds
    model_rate = x3d_s_soft_clips_per_s(context.earlier)
    idle = None if model_rate is None else max(0.0, 1.0 - loader_rate / model_rate)
    result = {"videos": len(videos), "decord_opened": decord_read, "workers": workers, "batch": batch,
              "clip": f"{clip} frames every {rate}, {crop} crop, short side {list(scale)}",
              "loader_clips_per_s": loader_rate, "x3d_s_soft_clips_per_s": model_rate, "gpu_idle_fraction": idle}
    say(f"loader: {loader_rate:.1f} clips/s with {workers} workers against the model's "
        f"{model_rate if model_rate is None else round(model_rate, 1)}: GPU idle fraction {idle}")
    if decord_read < len(videos):
        raise NotOk(f"decord opened {decord_read} of {len(videos)} videos: the others need PyAV, not carried")
    return result


def x3d_s_soft_clips_per_s(earlier: dict) -> Optional[float]:
    """x3d_s's best training clips/s with SoftPool in the ``train_steps`` step's results (``earlier``:
    the results of the steps before, by name), or None where that step did not run or measure it."""
    rows = (earlier.get("train_steps") or {}).get("rows", [])
    return max((row["clips_per_s"] for row in rows if row["model"] == "x3d_s" and row["pool"] == "soft"), default=None)


DECODE_MODEL = "x3d_s"
"""The model whose clip and training step the ``shard_decode`` step measures."""


def decode_result(measured: DecodeVsStep, clip: Geometry, earlier: dict) -> dict:
    """The ``shard_decode`` step's result from ``measured`` at geometry ``clip``: clips/s decoded on
    the device and trained there, their ratio (decoded clips per trained clip: above 1, the device
    decodes its own input with time to spare) and the decode rate against ``train_steps``' x3d_s
    figure (bf16, channels_last_3d) where that step ran. :class:`NotOk` when a rate is not a positive
    finite number: nothing was measured, and no figure stands in for it."""
    rates = {"decode": measured.decode_clips_per_s, "step": measured.step_clips_per_s}
    unmeasured = {name: rate for name, rate in rates.items() if not (math.isfinite(rate) and rate > 0)}
    if unmeasured:
        raise NotOk(f"no clips/s measured: {unmeasured}")
    train_rate = x3d_s_soft_clips_per_s(earlier)
    return {"model": DECODE_MODEL, "batch": measured.batch,
            "clip": f"{clip.num_frames} frames every {clip.sampling_rate}, {clip.crop_size} crop, "
                    f"short side {list(clip.train_scale)}",
            "decode_clips_per_s": rates["decode"], "step_clips_per_s": rates["step"],
            "ratio": rates["decode"] / rates["step"],
            "train_steps_x3d_s_soft_clips_per_s": train_rate,
            "ratio_to_train_steps": None if train_rate is None else rates["decode"] / train_rate}


def step_shard_decode(context: Context) -> dict:
    """Clips/s of the carried frame shards (``tools/gpu_wheels.sh`` prepares them here, where PyAV
    decodes: the GPU machine has none) decoded on the device (nvJPEG on CUDA) against x3d_s's training
    step at X3D-S's clip, by :func:`~softpool3d.benchmarks.device_decode.decode_vs_step`."""
    import torch

    from softpool3d.benchmarks.device_decode import decode_vs_step
    from softpool3d.benchmarks.shard_loader import GEOMETRIES
    from softpool3d.datasets.shard_index import INDEX_NAME

    require_extension(context)  # the step's model pools with SoftPool: never the pure-PyTorch path's figure
    if context.shards is None or not (context.shards / INDEX_NAME).is_file():
        raise NotOk(f"no frame shards at {context.shards} (no {INDEX_NAME}): run tools/gpu_wheels.sh here, "
                    f"and carry .gpu_data")
    clip = GEOMETRIES[DECODE_MODEL]  # 13 frames every 6, crop 160 from a short side in [182, 228]
    batch, repeats = TRAIN_CASES[DECODE_MODEL][1], 10
    if context.dry_run:
        clip, batch, repeats = dataclasses.replace(clip, num_frames=4, crop_size=32, train_scale=(32, 40)), 2, 1
    torch.backends.cudnn.benchmark = True
    measured = decode_vs_step(context.shards, clip, DECODE_MODEL, context.device, batch=batch, repeats=repeats)
    result = decode_result(measured, clip, context.earlier)
    say(f"shard decode on {context.device.type}: {result['decode_clips_per_s']:.1f} clips/s decoded, "
        f"{result['step_clips_per_s']:.1f} clips/s trained by {DECODE_MODEL} (batch {batch}): "
        f"ratio {result['ratio']:.2f}")
    return result


def _ddp_command(context: Context, processes: int, run_dir: Path) -> list[str]:
    dry = context.dry_run
    overrides = [
        f"output_dir={run_dir}", "name=ddp", "data.dataset=custom", f"data.root={context.videos}",
        "data.make_demo=false", "data.val_fraction=0.25", "data.num_frames=8", "data.sampling_rate=2",
        "data.crop_size=64" if dry else "data.crop_size=112", "data.train_scale=[64,80]" if dry else "data.train_scale=[128,160]",
        "data.test_scale=64" if dry else "data.test_scale=128", "data.batch_size=2", "data.test_batch_size=2",
        "data.num_workers=2", "model.name=r3d_18", "model.width=8", "train.epochs=1", "train.limit_steps_per_epoch=2",
        "train.val_every=1", "train.test_after_train=false", "train.channels_last=true",
        # CPU bf16 autocast sends this small model's gradients to inf on these clips; a non-finite
        # step on the GPU is counted (skipped_steps in the result), not fatal
        "train.amp=none" if dry else "train.amp=auto", "train.nonfinite=skip", "train.max_consecutive_skips=5",
        f"train.device={'cpu' if dry else 'cuda'}", "train.num_threads=1" if dry else "train.num_threads=0",
    ]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
            str(REPO / "tools" / "train.py"), "demo", *overrides]


def step_ddp(context: Context) -> dict:
    require_extension(context)
    result: dict[str, Any] = {}
    for processes in (1, 2):
        run_dir = context.work / f"ddp_{processes}"
        shutil.rmtree(run_dir, ignore_errors=True)
        left = context.seconds_left() - 5
        timeout = left if processes == 1 or context.dry_run else min(left, 40)  # 2 ranks on one GPU may hang in NCCL
        code, tail = run_group(_ddp_command(context, processes, run_dir), max(5.0, timeout), context.work, capture=True)
        metrics = run_dir / "ddp" / "metrics.json"
        entry: dict[str, Any] = {"exit_code": code}
        if code == 0 and metrics.is_file():
            entry.update(json.loads(metrics.read_text()))
        elif processes == 1 or context.dry_run:
            raise NotOk(f"softpool3d-train under torchrun --nproc-per-node={processes} "
                        f"{'was killed at the cap' if code is None else 'failed'}:\n{tail[-1500:]}")
        else:  # two ranks on one GPU: NCCL may refuse ("Duplicate GPU detected")
            reason = re.findall(r"Duplicate GPU detected[^\n]*|ncclInvalidUsage[^\n]*|Error[^\n]*", tail)
            entry["not_possible"] = reason[0][:300] if reason else tail.strip().splitlines()[-1][:300]
        result[f"ranks_{processes}"] = entry
        context.partial("ddp", result)
        say(f"DDP with {processes} rank(s): {entry}")
    return result
