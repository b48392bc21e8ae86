"""The dataset index at Kinetics-700 scale, and one clip of a long PyAV-only video.

Part 1 writes (once) a Kinetics-700-2020 folder in the published layout: ``annotations/`` with
``train.csv`` (``--train`` rows, 700 classes), ``validate.csv`` and a label-less ``test.csv``,
and empty placeholder videos ``train/<label>/<id>_<start>_<end>.mp4`` for all but ``--missing``
of the training rows (the index lists folders and never opens a video). A fresh process then
builds ``train`` and ``val`` with ``build_dataset`` and reports counts, classes, time, process
growth (resident size after, and peak), and the private memory a forked DataLoader worker
dirties after ``gc.collect()`` (``Private_Dirty`` of ``/proc/<pid>/smaps_rollup``), side by side
with a list of ``Path`` objects (what the index used to hold) and with no data at all. A second
process starts on the same folder with the index cache from the first.

Part 2 writes an AV1 mp4 of ``--minutes`` minutes (decord cannot open AV1, so PyAV reads it),
reads one training clip near its end in a fresh process, and reports that clip's peak memory
against what a whole-video decode would hold, and checks the frames against PyAV decoding the
same indices from frame 0.

    python tools/bench_index.py [--root /tmp/k700-bench] [--train 545317] [--minutes 5] [--compare 07bca79]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def status_mb(key: str) -> float:
    """This process's ``/proc/self/status`` figure ``key`` (``VmRSS``, ``VmHWM``, ...) in MB."""
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(key + ":")) / 1024


def reset_peak() -> None:
    """Reset this process's peak resident size (``VmHWM``) to its current one (``VmRSS``)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # VmHWM := VmRSS


class WorkerMemory:
    """A one-item dataset whose item is its worker's Private_Dirty (MB) after gc.collect()."""

    def __init__(self, payload: object) -> None:
        self.payload = payload

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> float:
        gc.collect()
        with open("/proc/self/smaps_rollup") as handle:
            return next(int(line.split()[1]) for line in handle if line.startswith("Private_Dirty")) / 1024


def worker_private_mb(payload: object, freeze: bool, start_method: str = "fork") -> float:
    """Private_Dirty (MB) of one DataLoader worker holding ``payload``, started by ``start_method``
    (``"fork"``, ``"spawn"``, or ``"forkserver"`` as :func:`~softpool3d.datasets.worker_context` sets it up)."""
    import multiprocessing

    from torch.utils.data import DataLoader

    from softpool3d.datasets import freeze_inherited_objects, worker_context

    context = worker_context() if start_method == "forkserver" else multiprocessing.get_context(start_method)
    loader = DataLoader(WorkerMemory(payload), batch_size=None, num_workers=1, multiprocessing_context=context,
                        worker_init_fn=freeze_inherited_objects if freeze else None)
    return float(next(iter(loader)))


def child_index(root: str, run_dir: str) -> dict:
    """Build train and val in this (fresh) process and measure."""
    from softpool3d.datasets import build_dataset

    result = {"worker_no_data": worker_private_mb(None, False), "worker_no_data_frozen": worker_private_mb(None, True)}
    gc.collect()
    result["gc_objects_no_data"] = len(gc.get_objects())
    for split in ("train", "val"):
        gc.collect()
        before = status_mb("VmRSS")
        reset_peak()
        start = time.perf_counter()
        dataset = build_dataset("kinetics700", root, split, train=split == "train",
                                missing_list=Path(run_dir) / f"missing_{split}.txt")
        seconds = time.perf_counter() - start
        peak = status_mb("VmHWM") - before
        gc.collect()
        result[split] = {"videos": dataset.num_videos, "missing": dataset.num_missing, "classes": len(dataset.classes),
                         "seconds": seconds, "growth_mb": status_mb("VmRSS") - before, "peak_growth_mb": peak}
        if split == "train":
            train = dataset
    result["gc_objects_index"] = len(gc.get_objects())
    result["worker_index"] = worker_private_mb(train, False)
    result["worker_index_frozen"] = worker_private_mb(train, True)
    before = status_mb("VmRSS")
    as_paths = list(train.videos)
    result["paths_list_growth_mb"] = status_mb("VmRSS") - before
    result["gc_objects_paths_list"] = len(gc.get_objects())
    result["worker_paths_list"] = worker_private_mb(as_paths, False)
    return result


def child_old(commit: str, root: str) -> dict:
    """The index of ``commit`` (its ``datasets/annotations.py``, imported from git) on the same
    folder: ``parse_kinetics`` plus one ``is_file()`` per video, as its ``load_annotations`` did.
    It parsed every CSV in the folder and refused the label-less ``test.csv``, so it gets a
    folder holding only ``train.csv`` and ``validate.csv``."""
    import importlib.util

    import torch  # noqa: F401  (the same imports as a training process, like child_index)

    source = subprocess.run(["git", "show", f"{commit}:datasets/annotations.py"], check=True, capture_output=True,
                            text=True, cwd=Path(__file__).resolve().parent).stdout
    with tempfile.TemporaryDirectory() as scratch:
        module_path = Path(scratch) / "old_annotations.py"
        module_path.write_text(source)
        spec = importlib.util.spec_from_file_location("old_annotations", module_path)
        old = importlib.util.module_from_spec(spec)
        sys.modules["old_annotations"] = old
        spec.loader.exec_module(old)
        annotations = Path(scratch) / "annotations"
        annotations.mkdir()
        for name in ("train.csv", "validate.csv"):
            (annotations / name).symlink_to(Path(root) / "annotations" / name)
        gc.collect()
        before, objects = status_mb("VmRSS"), len(gc.get_objects())
        reset_peak()
        start = time.perf_counter()
        parsed = old.parse_kinetics(Path(root), annotations, "train")
        kept = [i for i, path in enumerate(parsed.videos) if path.is_file()]
        videos = [parsed.videos[i] for i in kept]
        del parsed, kept
        seconds = time.perf_counter() - start
        peak = status_mb("VmHWM") - before
        gc.collect()
        return {"videos": len(videos), "seconds": seconds, "growth_mb": status_mb("VmRSS") - before,
                "peak_growth_mb": peak, "gc_objects": len(gc.get_objects()) - objects}


def write_av1(path: Path, minutes: float, height: int, width: int, fps: int = 25) -> int:
    """A moving box over gradients, streamed into an AV1 mp4 (keyframe every 10 s); returns the frame count."""
    import av

    count = int(minutes * 60 * fps)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 200 // width, yy * 200 // height, (xx + yy) % 200], -1).astype(np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libsvtav1", rate=fps)
        stream.width, stream.height, stream.pix_fmt, stream.gop_size = width, height, "yuv420p", 10 * fps
        for t in range(count):
            frame = base.copy()
            x = (7 * t) % (width - 64)
            frame[height // 3 : height // 3 + 64, x : x + 64] = (230, (3 * t) % 256, 30)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return count


def child_clip(path: str, indices: list[int]) -> dict:
    """One clip of ``path`` in this (fresh) process: peak memory, time, and equality with PyAV from frame 0."""
    import av
    import decord

    from softpool3d.datasets import OpenVideo

    try:
        decord.VideoReader(path)
        refused = False
    except Exception:  # decord raises DECORDError or RuntimeError
        refused = True
    gc.collect()
    before = status_mb("VmRSS")
    reset_peak()
    start = time.perf_counter()
    video = OpenVideo(path)
    opened = time.perf_counter() - start
    clip = video.frames(indices).numpy()
    seconds = time.perf_counter() - start
    peak = status_mb("VmHWM") - before
    start = time.perf_counter()
    wanted, reference = set(indices), {}
    with av.open(path) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in wanted:
                reference[index] = frame.to_ndarray(format="rgb24")
            if index >= max(indices):
                break
    reference_seconds = time.perf_counter() - start
    return {"decord_refuses": refused, "num_frames": video.info.num_frames, "fps": video.info.fps, "open_seconds": opened,
            "clip_seconds": seconds, "clip_peak_growth_mb": peak, "clip_mb": clip.nbytes / 2**20,
            "equal_to_pyav_from_frame_0": bool(np.array_equal(clip, np.stack([reference[i] for i in indices]))),
            "pyav_from_frame_0_seconds": reference_seconds}


def _child(*args: str, env: dict | None = None) -> dict:
    output = subprocess.run([sys.executable, "-m", "softpool3d.benchmarks.index", "--child", *args], check=True,
                            capture_output=True, text=True, env={**os.environ, **(env or {})})
    return json.loads(output.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "k700-bench"))
    parser.add_argument("--train", type=int, default=545_317)
    parser.add_argument("--val", type=int, default=34_000)
    parser.add_argument("--test", type=int, default=68_000)
    parser.add_argument("--missing", type=float, default=0.02)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--compare", metavar="COMMIT", help="also time the index of this git commit (e.g. 07bca79)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "index":
            result = child_index(*rest)
        elif kind == "old":
            result = child_old(*rest)
        else:
            result = child_clip(rest[0], [int(i) for i in rest[1:]])
        print(json.dumps(result))
        return 0

    from softpool3d.benchmarks.synthetic_layout import write_kinetics_layout

    root = Path(args.root)
    marker = root / f".complete-{args.train}-{args.val}-{args.test}-{args.missing}"
    if not marker.is_file():
        start = time.perf_counter()
        counts = write_kinetics_layout(root, num_train=args.train, num_val=args.val, num_test=args.test,
                                       missing_fraction=args.missing)
        marker.write_text(json.dumps(counts))
        print(f"wrote the layout in {time.perf_counter() - start:.0f} s: {counts}")
    counts = json.loads(marker.read_text())
    with tempfile.TemporaryDirectory() as scratch:
        env = {"SOFTPOOL3D_CACHE_DIR": os.path.join(scratch, "cache")}
        cold = _child("index", str(root), scratch, env=env)
        warm = _child("index", str(root), scratch, env=env)
    print(f"\nKinetics-700 layout under {root}: train.csv {counts['train_rows']} rows ({counts['train_files']} videos on "
          f"disk), validate.csv {counts['val_rows']} rows, test.csv {counts['test_rows']} rows without labels")
    for name, run in (("first start", cold), ("second start (cached index)", warm)):
        for split in ("train", "val"):
            r = run[split]
            print(f"{name:28s} {split:5s}: {r['videos']} videos, {r['missing']} missing, {r['classes']} classes, "
                  f"{r['seconds']:.2f} s, process growth {r['growth_mb']:.0f} MB (peak {r['peak_growth_mb']:.0f} MB)")
    if args.compare:
        old = _child("old", args.compare, str(root))
        print(f"{'commit ' + args.compare + ' index':28s} train: {old['videos']} videos, {old['seconds']:.2f} s, "
              f"process growth {old['growth_mb']:.0f} MB (peak {old['peak_growth_mb']:.0f} MB), "
              f"{old['gc_objects']} more gc-tracked objects")
    print("\nforked worker, Private_Dirty after gc.collect() (first start):")
    print(f"  no dataset                      {cold['worker_no_data']:7.1f} MB   with freeze_inherited_objects "
          f"{cold['worker_no_data_frozen']:6.1f} MB")
    print(f"  + train index (PathList)        {cold['worker_index']:7.1f} MB   with freeze_inherited_objects "
          f"{cold['worker_index_frozen']:6.1f} MB")
    print(f"  + the same as a list of Paths   {cold['worker_paths_list']:7.1f} MB   "
          f"(the list grows the process by {cold['paths_list_growth_mb']:.0f} MB)")
    print(f"  gc-tracked objects: {cold['gc_objects_no_data']} before the index, {cold['gc_objects_index']} with it, "
          f"{cold['gc_objects_paths_list']} with the list of Paths")

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "long_av1.mp4"
        start = time.perf_counter()
        count = write_av1(path, args.minutes, args.height, args.width)
        encode = time.perf_counter() - start
        size_mb = path.stat().st_size / 2**20
        indices = list(range(count - 40, count - 8, 2))
        clip = _child("clip", str(path), *map(str, indices))
    whole_gb = count * args.height * args.width * 3 / 2**30
    print(f"\nPyAV-only video: AV1 mp4, {args.minutes:g} min, {count} frames of {args.width}x{args.height} "
          f"({size_mb:.0f} MB, encoded in {encode:.0f} s); decord refuses it: "
          f"{clip['decord_refuses']}")
    print(f"  one clip of {len(indices)} frames (every 2nd, ending 8 frames before the end): open {clip['open_seconds']:.2f} s, "
          f"open + clip {clip['clip_seconds']:.2f} s, peak growth {clip['clip_peak_growth_mb']:.0f} MB "
          f"(the clip itself {clip['clip_mb']:.0f} MB; a whole-video decode holds {whole_gb:.1f} GB)")
    print(f"  equal to PyAV decoding from frame 0: {clip['equal_to_pyav_from_frame_0']} "
          f"(which took {clip['pyav_from_frame_0_seconds']:.1f} s); frame count {clip['num_frames']}, fps {clip['fps']:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
