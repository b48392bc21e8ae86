"""The GPU check's results: ``gpu_check.json`` (every step's status, seconds and figures) and
``gpu_check.md`` (tables ready for BENCHMARKS.md), both rewritten atomically after every step."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

RESULTS = "gpu_check.json"
REPORT = "gpu_check.md"
LOG = "gpu_check.log"


def _two_places(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown_report(results: dict, steps: list) -> str:
    """``gpu_check.md``: each step of ``steps`` that ran, with its status and table."""
    from softpool3d.benchmarks.op import markdown_header

    lines = [f"# GPU check ({'dry run, CPU' if results.get('dry_run') else 'GPU'})", "",
             f"Command: `{results.get('command')}`", ""]
    if results.get("interrupted"):
        lines += [f"**Interrupted: {results['interrupted']}**", ""]
    for step in steps:
        entry = results["steps"].get(step.name)
        if entry is None:
            continue
        lines += [f"## {step.title} (`{step.name}`): {entry['status']} in {entry['seconds']:.0f} s", ""]
        if entry.get("error"):
            lines += ["```", entry["error"][-1500:], "```", ""]
        data = entry.get("result") or {}
        if step.name == "bench_op" and data.get("rows"):
            lines += [markdown_header(), *(row["markdown"] for row in data["rows"]), ""]
        elif step.name == "train_steps" and data.get("rows"):
            lines += ["| model | pool | mode | clip | batch | clips/s | peak GiB |", "|---|---|---|---|---|---|---|"]
            lines += [f"| {r['model']} | {r['pool']} | {r['mode']} | {'x'.join(map(str, r['clip']))} | {r['batch']} | "
                      f"{r['clips_per_s']:.1f} | {_two_places(r['peak_gib'])} |" for r in data["rows"]]
            lines += ([f"Left out for time: {', '.join(data['left_out'])}"] if data.get("left_out") else []) + [""]
        elif step.name == "shard_decode" and data.get("decode_clips_per_s"):
            lines += ["| model | clip | batch | decoded clips/s | trained clips/s | ratio | vs `train_steps` |",
                      "|---|---|---|---|---|---|---|",
                      f"| {data['model']} | {data['clip']} | {data['batch']} | {data['decode_clips_per_s']:.1f} | "
                      f"{data['step_clips_per_s']:.1f} | {data['ratio']:.2f} | "
                      f"{_two_places(data['ratio_to_train_steps'])} |", ""]
        elif data:
            lines += ["```json", json.dumps(data, indent=1, default=str)[:3000], "```", ""]
    return "\n".join(lines)


def write_results(out: Path, results: dict, steps: list) -> None:
    """Rewrite ``gpu_check.json`` and ``gpu_check.md`` in ``out`` (each replaced whole)."""
    for name, text in ((RESULTS, json.dumps(results, indent=1, default=str)),
                       (REPORT, markdown_report(results, steps))):
        temporary = out / f".{name}.tmp"
        temporary.write_text(text)
        os.replace(temporary, out / name)
