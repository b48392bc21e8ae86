"""Inference speed: clips/s of PyTorch eager, ``torch.compile`` and onnxruntime (CPU) side by side at a
recipe's clip shape, and ``softpool3d-predict``'s videos/s on the demo set and on a 720p file.

The three backends run the same weights on the same input; after warm-up (which for
``torch.compile`` includes compiling), they are timed in interleaved rounds (eager, compiled,
onnxruntime, eager, ...) so that a change in machine load hits all of them alike, and each
reports ``batch / median seconds``. onnxruntime runs the file :func:`softpool3d.engine.inference.export.write_onnx`
writes (SoftPool in standard ops).
"""
from __future__ import annotations

import logging
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from softpool3d.benchmarks.runtime import model_checkpoint
from softpool3d.datasets import make_demo_dataset, write_video
from softpool3d.engine.config import load_config
from softpool3d.engine.inference.export import write_onnx
from softpool3d.engine.inference.predict import Recognizer
from softpool3d.engine.inference.video_inputs import collect_videos
from softpool3d.models import build_model, model_info

logger = logging.getLogger(__name__)

RECIPES = {"r3d_18": None, "x3d_s": "ucf101/x3d_s_soft", "srtg_r3d_34": "ucf101/srtg_r3d_34_soft"}
"""The models benchmarked and the config whose clip shape they run at (None: the model's standard clip)."""

BACKENDS = ("eager", "compile", "onnxruntime")


def recipe_clip(name: str, config: Optional[str]) -> tuple[int, int, int]:
    """``(T, H, W)`` of one view: the config's ``data.num_frames`` and ``data.crop_size``, or ``name``'s standard clip."""
    if config is None:
        return tuple(model_info(name).clip_size)
    data = load_config(config).data
    return int(data.num_frames), int(data.crop_size), int(data.crop_size)


@dataclass
class InferenceTiming:
    """``clips_per_second[backend]`` of ``name`` at ``clip`` and ``batch``, and the compile time."""

    name: str
    clip: tuple[int, int, int]
    batch: int
    clips_per_second: dict[str, float]
    compile_seconds: float


def _timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def time_inference(name: str, clip: tuple[int, int, int], batches: Sequence[int] = (1, 8), repeats: int = 3,
                   num_classes: int = 101) -> list[InferenceTiming]:
    """Time ``name`` (SoftPool, eval mode, float32 on the CPU) per backend of :data:`BACKENDS` at each batch size."""
    import onnxruntime

    torch.manual_seed(0)
    model = build_model(name, num_classes, pool="soft").eval()
    compiled = torch.compile(model)
    with tempfile.TemporaryDirectory() as folder:
        path = write_onnx(model, torch.randn(2, 3, *clip), Path(folder) / f"{name}.onnx", {})
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    results = []
    for batch in batches:
        clips = torch.randn(batch, 3, *clip)
        array = clips.numpy()
        calls = {"eager": lambda: model(clips), "compile": lambda: compiled(clips),
                 "onnxruntime": lambda: session.run(None, {"clips": array})}
        with torch.no_grad():
            compile_seconds = _timed(calls["compile"])
            for call in calls.values():
                call()
            rounds: dict[str, list[float]] = {backend: [] for backend in BACKENDS}
            for _ in range(repeats):
                for backend in BACKENDS:
                    rounds[backend].append(_timed(calls[backend]))
        results.append(InferenceTiming(name, clip, batch, {b: batch / statistics.median(s) for b, s in rounds.items()},
                                       compile_seconds))
        logger.info("%s batch %d: %s", name, batch, results[-1].clips_per_second)
    return results


def inference_table(timings: Sequence[InferenceTiming]) -> str:
    """A markdown table: clips/s per backend and the ratios to eager."""
    rows = ["| model | clip T x H x W | batch | eager clips/s | torch.compile clips/s | onnxruntime clips/s "
            "| compile / eager | onnxruntime / eager | first compiled call s |", "|" + "---|" * 9]
    for t in timings:
        s = t.clips_per_second
        rows.append(f"| {t.name} | {'x'.join(map(str, t.clip))} | {t.batch} | {s['eager']:.2f} | {s['compile']:.2f} "
                    f"| {s['onnxruntime']:.2f} | {s['compile'] / s['eager']:.2f} | {s['onnxruntime'] / s['eager']:.2f} "
                    f"| {t.compile_seconds:.1f} |")
    return "\n".join(rows)


def demo_checkpoint(folder: Path) -> Path:
    """A freshly initialised model of the demo config (classes of the demo set) saved as a checkpoint:
    what ``softpool3d-predict`` reads; its speed does not depend on the weights."""
    return model_checkpoint(folder, [])


def moving_pattern(frames: int, height: int, width: int) -> np.ndarray:
    """uint8 ``(frames, height, width, 3)``: colour ramps drifting across the frame and a moving block, so
    the video compresses like filmed footage (random noise would make the decoder, not the model, the cost)."""
    t = np.arange(frames, dtype=np.int32)[:, None, None]
    y, x = np.arange(height, dtype=np.int32)[None, :, None], np.arange(width, dtype=np.int32)[None, None, :]
    video = np.empty((frames, height, width, 3), dtype=np.uint8)
    video[..., 0] = (x // 5 + 3 * t) % 256
    video[..., 1] = (y // 3 + 2 * t) % 256
    video[..., 2] = ((x + y) // 9) % 256
    for index in range(frames):
        top, left = (7 * index) % (height - 120), (11 * index) % (width - 160)
        video[index, top:top + 120, left:left + 160] = (240, 240, 40)
    return video


def predict_speed(workers: int = 2, hd_seconds: float = 6.0) -> str:
    """``softpool3d-predict``'s videos/s (the demo config: 2 clips x 3 crops of 8 x 64 x 64) on the demo
    set and on one 720p file of ``hd_seconds`` (25 fps, :func:`moving_pattern`; also with ``--window 2
    --stride 1``), as markdown."""
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        recognizer = Recognizer.from_checkpoint(demo_checkpoint(folder), "cpu")
        demo = collect_videos([make_demo_dataset(folder / "demo")])
        write_video(folder / "hd.mp4", moving_pattern(int(hd_seconds * 25), 720, 1280), fps=25)
        hd = collect_videos([folder / "hd.mp4"])
        rows = ["| input | videos | views a video | seconds | videos/s |", "|---|---|---|---|---|"]
        for label, videos, window in ((f"demo set ({len(demo)} videos of 16 frames, 64x64)", demo, None),
                                      (f"720p file, {hd_seconds:g} s", hd, None),
                                      (f"720p file, {hd_seconds:g} s, --window 2 --stride 1", hd, 2.0)):
            start = time.perf_counter()
            results = recognizer.predict_videos(videos, window=window, stride=1.0 if window else None, workers=workers)
            seconds = time.perf_counter() - start
            rows.append(f"| {label} | {len(videos)} | {results[0].views} | {seconds:.1f} | {len(videos) / seconds:.2f} |")
    return "\n".join(rows)


def run(models: Sequence[str], batches: Sequence[int], repeats: int, threads: int, workers: int,
        skip_predict: bool) -> str:
    """The markdown of ``tools/bench_inference.py``: the backends table for ``models`` and the predict table."""
    torch.set_num_threads(threads)
    where = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    timings = []
    for name in models:
        timings += time_inference(name, recipe_clip(name, RECIPES.get(name)), batches, repeats)
    parts = []
    if timings:
        parts += [f"Inference on the CPU ({where}), median of {repeats} interleaved rounds:", "", inference_table(timings), ""]
    if not skip_predict:
        parts += [f"softpool3d-predict ({workers} decoding workers):", "", predict_speed(workers)]
    return "\n".join(parts)
