"""The shard benchmarks run end to end on small inputs: decode-on-device vs training-step rates (here on
the CPU), and bench_loader --shards' side-by-side table (slow: it prepares videos and shards)."""
import subprocess
import sys
from pathlib import Path

import pytest

from softpool3d.benchmarks.device_decode import decode_vs_step
from softpool3d.benchmarks.shard_loader import Geometry
from softpool3d.datasets.prepare_shards import prepare_shards

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def test_decode_vs_step_measures_both_rates(demo_root, tmp_path):
    prepare_shards(demo_root / "Grow", tmp_path / "shards", dataset="custom", workers=0, progress=False)
    result = decode_vs_step(tmp_path / "shards", Geometry("tiny", 4, 2, 32, (32, 40), 64), "r3d_18", "cpu", batch=2,
                            repeats=1, width=4)
    assert result.decode_clips_per_s > 0 and result.step_clips_per_s > 0 and result.batch == 2
    assert result.ratio == pytest.approx(result.decode_clips_per_s / result.step_clips_per_s)


@pytest.mark.slow
def test_bench_loader_shards_prints_every_setting_and_form(demo_root, tmp_path):
    src = tmp_path / "videos"
    src.mkdir()
    for path in sorted((demo_root / "Grow").glob("*.mp4"))[:2]:
        (src / path.name).symlink_to(path)
    done = subprocess.run([sys.executable, str(TOOLS / "bench_loader.py"), "--shards", "--videos-dir", str(src),
                           "--geometries", "r3d_18", "--items", "2", "--frame-steps", "1", "2"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    for line in ("source video", "prepared video (128)", "shards k=1, disk", "shards k=2, disk",
                 "shards k=1, HTTP 127.0.0.1", "GB per hour of video"):
        assert line in done.stdout, done.stdout
