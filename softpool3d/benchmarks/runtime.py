"""``softpool3d-predict --runtime onnx`` against ``--runtime eager``: videos/s of the same videos and
the same checkpoint, in interleaved rounds of one run (so both see the same machine load).

The checkpoint is a freshly initialised model (its speed does not depend on the weights) of the demo
config with the model and clip given; the videos are the demo set's first ``videos`` files.
"""
from __future__ import annotations

import logging
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Sequence

import torch

from softpool3d.datasets import make_demo_dataset
from softpool3d.engine import builders
from softpool3d.engine.checkpoint import save_checkpoint
from softpool3d.engine.config import load_config, to_container
from softpool3d.engine.inference.predict import Recognizer, collect_videos
from softpool3d.engine.training_state import Progress, rng_state, training_checkpoint

logger = logging.getLogger(__name__)


def model_checkpoint(folder: Path, overrides: Sequence[str]) -> Path:
    """A freshly initialised model of the demo config with ``overrides``, saved as a checkpoint (8 classes)."""
    cfg = load_config(None, [f"output_dir={folder}", *overrides])
    classes = [f"class {k}" for k in range(8)]
    torch.manual_seed(0)
    model = builders.build_architecture(cfg, len(classes))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    state = training_checkpoint(model, optimizer, scheduler, None, Progress(), 0, to_container(cfg), classes,
                                [rng_state()])
    return save_checkpoint(state, folder / "model.pt")


def clip_overrides(model: str, frames: int, crop: int) -> list[str]:
    """The demo config's overrides for ``model`` (full width) at ``frames`` x ``crop`` x ``crop`` clips on the CPU."""
    return [f"model.name={model}", "model.width=null", f"data.num_frames={frames}", f"data.crop_size={crop}",
            f"data.test_scale={crop}", f"data.train_scale=[{crop},{crop + 32}]", "train.device=cpu"]


def runtime_speed(model: str = "x3d_s", clip: tuple[int, int] = (13, 160), videos: int = 8, rounds: int = 3,
                  workers: int = 0) -> str:
    """Markdown: videos/s of ``softpool3d-predict`` (``Recognizer.predict_videos``) on ``videos`` demo videos
    with ``model`` at ``clip`` (frames, crop), eager and onnx, median of ``rounds`` interleaved rounds."""
    frames, crop = clip
    overrides = clip_overrides(model, frames, crop)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        checkpoint = model_checkpoint(folder, overrides)
        inputs = collect_videos([make_demo_dataset(folder / "demo")])[:videos]
        eager = Recognizer.from_checkpoint(checkpoint, "cpu")
        start = time.perf_counter()
        onnx = Recognizer.from_checkpoint(checkpoint, "cpu", runtime="onnx")
        export_seconds = time.perf_counter() - start
        seconds: dict[str, list[float]] = {"eager": [], "onnx": []}
        probabilities = {}
        for name, recognizer in (("eager", eager), ("onnx", onnx)):
            recognizer.predict_videos(inputs[:1], workers=workers)  # warm-up
        for _ in range(rounds):
            for name, recognizer in (("eager", eager), ("onnx", onnx)):
                start = time.perf_counter()
                results = recognizer.predict_videos(inputs, workers=workers)
                seconds[name].append(time.perf_counter() - start)
                probabilities[name] = torch.tensor([list(r.probabilities) for r in results])
        views = results[0].views
    difference = float((probabilities["eager"] - probabilities["onnx"]).abs().max())
    speed = {name: len(inputs) / statistics.median(values) for name, values in seconds.items()}
    where = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    return "\n".join([
        f"softpool3d-predict on {len(inputs)} demo videos, {model} at {frames}x{crop}x{crop}, {views} views a video "
        f"({where}), median of {rounds} interleaved rounds:", "",
        "| runtime | seconds | videos/s | vs eager |", "|---|---|---|---|",
        *(f"| {name} | {statistics.median(seconds[name]):.2f} | {speed[name]:.2f} | {speed[name] / speed['eager']:.2f}x |"
          for name in ("eager", "onnx")),
        "", f"On-the-fly export into the cache: {export_seconds:.1f} s (once per checkpoint). "
            f"Max |probability difference| onnx vs eager: {difference:.1e}."])
