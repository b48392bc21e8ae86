"""Model benchmarks: ``complexity`` (params and GMACs, with the published figures) or ``speed``
(forward + backward time per clip at pool=soft vs max vs avg). Prints markdown tables.

    python tools/bench_models.py complexity
    python tools/bench_models.py speed --device cpu --batch 2
"""
from __future__ import annotations

import argparse
import sys

import torch

from softpool3d.models import list_models, model_info
from softpool3d.models.benchmark import time_train_step
from softpool3d.models.complexity import count_complexity

SPEED_CASES = {
    "cpu": [
        ("r3d_18", (8, 112, 112), {}),
        ("r3d_18", (8, 112, 112), {"stem_pool": True}),
        ("r2plus1d_18", (8, 112, 112), {}),
        ("x3d_xs", (4, 160, 160), {}),
        ("srtg_r3d_34", (8, 112, 112), {}),
    ],
    "cuda": [
        ("r3d_18", (16, 112, 112), {}),
        ("r3d_18", (16, 112, 112), {"stem_pool": True}),
        ("r2plus1d_18", (16, 112, 112), {}),
        ("x3d_s", (13, 160, 160), {}),
        ("x3d_m", (16, 224, 224), {}),
        ("srtg_r3d_34", (16, 112, 112), {}),
        ("srtg_r3d_50", (16, 112, 112), {}),
    ],
}


def complexity_table() -> str:
    rows = ["| model | clip (T x H x W) | params (M) | GMACs | published params (M) | published GMACs | source |",
            "|---|---|---|---|---|---|---|"]
    for name in list_models():
        result = count_complexity(name)
        info = model_info(name)
        source = "-" if info.params_m is None and info.gmacs is None else (
            f"params: {info.params_source}; GMACs: {info.gmacs_source}")
        rows.append(
            f"| {name} | {'x'.join(map(str, result.clip_size))} | {result.params / 1e6:.2f} | {result.macs / 1e9:.2f} "
            f"| {'-' if info.params_m is None else info.params_m} | {'-' if info.gmacs is None else info.gmacs} "
            f"| {source} |"
        )
    return "\n".join(rows)


def speed_table(device: str, batch: int, repeats: int, channels_last: bool) -> str:
    rows = ["| model | options | clip (T x H x W) | batch | soft (ms/clip) | max (ms/clip) | avg (ms/clip) | soft / max | soft / avg |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, clip, kw in SPEED_CASES["cuda" if device.startswith("cuda") else "cpu"]:
        timing = time_train_step(name, clip, batch, device=device, repeats=repeats, channels_last=channels_last, **kw)
        s = timing.seconds
        rows.append(
            f"| {name} | {', '.join(f'{k}={v}' for k, v in kw.items()) or '-'} | {'x'.join(map(str, clip))} | {batch} | {s['soft'] * 1e3:.1f} | {s['max'] * 1e3:.1f} "
            f"| {s['avg'] * 1e3:.1f} | {timing.ratio('soft', 'max'):.2f} | {timing.ratio('soft', 'avg'):.2f} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["complexity", "speed"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--channels-last", action="store_true", help="run in torch.channels_last_3d")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for CPU runs")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.what == "complexity":
        print(complexity_table())
    else:
        print(speed_table(args.device, args.batch, args.repeats, args.channels_last))
    return 0


if __name__ == "__main__":
    sys.exit(main())
