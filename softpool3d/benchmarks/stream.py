"""Latency of ``softpool3d-predict --stream`` on a real stream served on 127.0.0.1 by a sender process
(:mod:`softpool3d.benchmarks.stream_sender`: H.264 in MPEG-TS over UDP at 25 fps) with a model slower
than real time: the latency of every prediction (p50, p95, max) and the windows skipped and frames
left unused, from the command's own summary line.
"""
from __future__ import annotations

import json
import platform
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from softpool3d.benchmarks.inference import moving_pattern
from softpool3d.benchmarks.runtime import clip_overrides, model_checkpoint
from softpool3d.datasets import write_video
from softpool3d.engine.inference.stream import run_stream


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stream_latency(seconds: float = 60.0, model: str = "x3d_s", clip: tuple[int, int] = (13, 160),
                   window: float = 2.0, stride: float = 0.5, runtime: str = "eager") -> str:
    """Markdown: serve ``seconds`` of a 25 fps 320x240 video over UDP, predict on it with ``model`` at ``clip``
    (frames, crop; 2 clips x 3 crops a window, the demo config's views), and report the summary."""
    frames, crop = clip
    overrides = clip_overrides(model, frames, crop)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        checkpoint = model_checkpoint(folder, overrides)
        video = folder / "live.mp4"
        write_video(video, moving_pattern(int(seconds * 25), 240, 320), fps=25)
        port = _free_udp_port()
        sender = subprocess.Popen([sys.executable, "-m", "softpool3d.benchmarks.stream_sender",
                                   f"udp://127.0.0.1:{port}?pkt_size=1316", str(video), "1.0"],
                                  stdout=subprocess.DEVNULL)
        out = folder / "stream.jsonl"
        try:
            run_stream(str(checkpoint), f"udp://127.0.0.1:{port}", window=window, stride=stride, out=str(out),
                       stall_timeout=3.0, reconnects=0, device="cpu", runtime=runtime)
        finally:
            sender.wait(timeout=seconds + 60)
        lines = [json.loads(line) for line in out.read_text().splitlines()]
    summary = lines[-1]
    where = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    latency, forward = summary["latency"], summary["forward"]
    return "\n".join([
        f"{seconds:g} s of 25 fps 320x240 H.264 over udp://127.0.0.1, {model} at {frames}x{crop}x{crop} ({runtime}), "
        f"windows of {window:g} s every {stride:g} s ({where}):", "",
        "| predictions | windows skipped | frames | frames unused | forward p50 | latency p50 | latency p95 | latency max |",
        "|---|---|---|---|---|---|---|---|",
        f"| {summary['predictions']} | {summary['windows_skipped']} | {summary['frames']} | {summary['frames_unused']} "
        f"| {forward['p50']:.2f} s | {latency['p50']:.2f} s | {latency['p95']:.2f} s | {latency['max']:.2f} s |", "",
        f"Bound: one stride plus one forward pass = {stride:g} + {forward['max']:.2f} s (the slowest forward)."])
