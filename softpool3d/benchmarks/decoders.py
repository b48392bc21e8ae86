"""decord builds side by side: every frame of the test fixtures decoded by each interpreter's
``decord`` (e.g. decord 0.6.0 and decord2), compared with PyAV's frames and with each other.

The fixtures are what the tests decode: the demo set as ``tests/conftest.py`` makes it (8 classes x
6 videos of 16 frames at 64x64, H.264), one video per codec the tests write (H.264 with B-frames,
MPEG-4 in .avi and .mkv, VP9, AV1; 90 frames of 64x48), and H.264 at 16, 24, 32, 48 and 64 pixels
square. Each ``--python`` interpreter runs a short script that imports only ``decord`` and numpy,
opens every file (``num_threads=1``) and decodes all its frames with one ``get_batch``; this
process decodes them with PyAV (the reference) and prints a row per file and a summary per build.

    python tools/compare_decoders.py --python /usr/bin/python3 --python .venv/bin/python
"""
from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import av
import numpy as np

from softpool3d.datasets import make_demo_dataset, write_video
from softpool3d.datasets.prepare import find_videos

_DUMP = """
import json, re, sys
import numpy as np
import decord
root, out = sys.argv[1], sys.argv[2]
frames, report = {}, {"version": decord.__version__, "module": decord.__file__, "errors": {}}
for name in json.loads(sys.argv[3]):
    try:
        reader = decord.VideoReader(root + "/" + name, ctx=decord.cpu(0), num_threads=1)
        frames[name] = reader.get_batch(list(range(len(reader)))).asnumpy()
    except Exception as error:
        report["errors"][name] = re.sub(r"^\\[[\\d:]+\\] \\S*/", "", str(error).strip().splitlines()[0])
np.savez(out + ".npz", **{str(i): frames[name] for i, name in enumerate(json.loads(sys.argv[3])) if name in frames})
json.dump(report, open(out + ".json", "w"))
"""

CODECS = {"h264_bframes.mp4": ("libx264", 12), "mpeg4.avi": ("mpeg4", 9), "mpeg4.mkv": ("mpeg4", 10),
          "vp9.webm": ("libvpx-vp9", 16), "av1.mp4": ("libsvtav1", 16)}


def _moving_frames(num_frames: int, height: int, width: int) -> np.ndarray:
    """A dark noise background with a bright box sliding right: uint8 ``(T, H, W, 3)``."""
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 60, (num_frames, height, width, 3), dtype=np.uint8)
    box = max(2, min(height, width) // 4)
    for t in range(num_frames):
        left = (3 * t) % max(1, width - box)
        frames[t, height // 4 : height // 4 + box, left : left + box] = (250, (7 * t) % 256, 90)
    return frames


def write_fixtures(root: Path) -> list[str]:
    """Write the fixtures under ``root``; their paths relative to it."""
    make_demo_dataset(root / "demo", videos_per_class=6, test_per_class=2)
    for name, (codec, keyframes) in CODECS.items():
        write_video(root / "codecs" / name, _moving_frames(90, 48, 64), codec=codec, keyframe_interval=keyframes)
    for side in (16, 24, 32, 48, 64):
        write_video(root / "small" / f"h264_{side}x{side}.mp4", _moving_frames(20, side, side), keyframe_interval=8)
    return sorted(str(path.relative_to(root)) for folder in ("demo", "codecs", "small")
                  for path in (root / folder / relative for relative in find_videos(root / folder)))


def _pyav_frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def _verdict(frames: np.ndarray | None, error: str | None, reference: np.ndarray) -> str:
    if frames is None:
        return f"fails: {error}"
    if frames.shape != reference.shape:
        return f"shape {frames.shape} vs {reference.shape}"
    if np.array_equal(frames, reference):
        return "= PyAV"
    differ = np.abs(frames.astype(np.int16) - reference.astype(np.int16))
    return f"differs: max {differ.max()}, {100 * (differ > 0).mean():.1f}% of values"


def compare(root: Path, names: list[str], pythons: list[str]) -> dict[str, dict[str, str]]:
    """Per interpreter (``decord <version>``), per file: its verdict against PyAV."""
    table: dict[str, dict[str, str]] = {}
    decoded: dict[str, dict[str, np.ndarray]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, python in enumerate(pythons):
            out = f"{tmp}/dump{i}"
            subprocess.run([python, "-c", _DUMP, str(root), out, json.dumps(names)], check=True, capture_output=True)
            report = json.loads(Path(out + ".json").read_text())
            with np.load(out + ".npz") as arrays:
                frames = {names[int(key)]: arrays[key] for key in arrays.files}
            label = f"decord {report['version']}"
            print(f"{label}: {python} -> {report['module']}")
            decoded[label] = frames
            table[label] = {name: _verdict(frames.get(name), report["errors"].get(name), _pyav_frames(root / name))
                            for name in names}
    labels = list(decoded)
    for a, b in zip(labels, labels[1:]):
        both = [name for name in names if name in decoded[a] and name in decoded[b]]
        same = sum(decoded[a][name].shape == decoded[b][name].shape and np.array_equal(decoded[a][name], decoded[b][name])
                   for name in both)
        print(f"{a} vs {b}: {same} of {len(both)} files both read give identical frames")
    return table


def print_table(table: dict[str, dict[str, str]], names: list[str]) -> None:
    labels = list(table)
    demo = [name for name in names if name.startswith("demo/")]
    for label in labels:
        equal = sum(table[label][name] == "= PyAV" for name in demo)
        print(f"{label}: {equal} of {len(demo)} demo videos (all frames) equal PyAV's")
    print(f"\n{'file':<24}" + "".join(f"{label:<56}" for label in labels))
    for name in (n for n in names if not n.startswith("demo/")):
        print(f"{name:<24}" + "".join(f"{table[label][name][:54]:<56}" for label in labels))


def run(args: argparse.Namespace) -> int:
    """The benchmark of the command line :func:`softpool3d.benchmarks.cli.decoders_main` parsed."""
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp)
        names = write_fixtures(root)
        print_table(compare(root, names, args.python), names)
    return 0
