"""How fast the training device decodes shard clips against how fast it trains on them: clips/s of
:meth:`~softpool3d.datasets.device_decode.JpegBatch.decode` (nvJPEG on CUDA, plus the train transform
there) and clips/s of a training step (forward, backward, SGD update) of the model at the same batch,
and their ratio. Above 1, the device decodes its own input with time to spare: the host only reads bytes.

For ``tools/gpu_check.py``'s step (``decode_vs_step(...)`` on ``cuda``); it runs on the CPU as well.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from softpool3d.benchmarks.shard_loader import Geometry
from softpool3d.datasets import Annotations
from softpool3d.datasets.device_decode import JpegBatch
from softpool3d.datasets.shard_dataset import ShardDataset, ShardSet
from softpool3d.engine.inputs import ClipNormalizer
from softpool3d.models import build_model


@dataclass
class DecodeVsStep:
    """Clips/s decoded on the device and trained by one step there, at batch ``batch``."""

    decode_clips_per_s: float
    step_clips_per_s: float
    batch: int

    @property
    def ratio(self) -> float:
        """Decoded clips per trained clip: how many devices' steps one device's decoder keeps fed."""
        return self.decode_clips_per_s / self.step_clips_per_s


def _timed(run, device: torch.device, repeats: int) -> float:
    """Seconds per call of ``run`` (after one warm-up), synchronizing ``device``."""
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - started) / repeats


def decode_vs_step(shards: str | Path, geometry: Geometry, model: str, device: torch.device | str, batch: int = 16,
                   repeats: int = 5, width: int | None = None) -> DecodeVsStep:
    """Decode-on-device and training-step throughput for ``model`` (a registered name, optional ``width``)
    on clips of ``geometry`` from the shard set at ``shards`` (every stored video, labels 0)."""
    device = torch.device(device)
    shard_set = ShardSet(shards)
    paths = [p.decode("utf-8", "surrogateescape") for p in shard_set.index.paths.tolist()]
    dataset = ShardDataset(Annotations(paths, [0] * len(paths), ["any"]), shard_set, decode_on_device=True, train=True,
                           num_frames=geometry.num_frames, sampling_rate=geometry.sampling_rate,
                           crop_size=geometry.crop_size, train_scale=geometry.train_scale)
    jpegs = JpegBatch([dataset[i % len(dataset)][0] for i in range(batch)])
    decode_s = _timed(lambda: jpegs.decode(device), device, repeats)
    network = build_model(model, 10, **({"width": width} if width else {})).to(device).train()
    optimizer = torch.optim.SGD(network.parameters(), lr=1e-3)
    normalizer = ClipNormalizer((0.45,) * 3, (0.225,) * 3)
    clips = jpegs.decode(device)
    labels = torch.zeros(batch, dtype=torch.long, device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = torch.nn.functional.cross_entropy(network(normalizer(clips)).float(), labels)
        loss.backward()
        optimizer.step()

    step_s = _timed(step, device, repeats)
    return DecodeVsStep(batch / decode_s, batch / step_s, batch)
