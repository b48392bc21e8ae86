"""A process that decodes shard frames keeps its freed memory (softpool3d.datasets.heap): buffers of a
clip's size come from the heap and stay there when freed, so the next clip reuses their pages instead of
faulting in fresh ones. Read from glibc's own accounting (mallinfo2), in fresh processes so that this
one's malloc stays as it is."""
import os
import subprocess
import sys
import textwrap

import pytest

from softpool3d.benchmarks.loader import write_videos
from softpool3d.datasets.prepare_shards import prepare_shards


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (AttributeError, ValueError, OSError):
        return False


pytestmark = [pytest.mark.slow, pytest.mark.skipif(not _glibc(), reason="mallopt is glibc's")]

# four training clips of a ShardDataset at X3D-S's geometry, then four 10 MB buffers malloc'ed, written and freed:
# the bytes the heap then holds free (glibc's mallinfo2)
_CLIPS = textwrap.dedent("""
    import ctypes, sys
    import softpool3d.datasets.shard_dataset as shard_dataset
    from softpool3d.datasets import Annotations
    if sys.argv[2] == "plain malloc":
        shard_dataset.keep_freed_memory = lambda: False
    videos = ["class0/video000.mp4", "class1/video001.mp4"]
    dataset = shard_dataset.ShardDataset(Annotations(videos, [0, 1], videos), shard_dataset.ShardSet(sys.argv[1]),
                                         train=True, num_frames=13, sampling_rate=2, crop_size=160,
                                         train_scale=(182, 228), seed=0)
    for i in range(4):
        dataset.set_epoch(i // 2)
        dataset[i % 2]
    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                         "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes, libc.mallinfo2.restype = [ctypes.c_void_p], MallInfo2
    buffers = [libc.malloc(10 << 20) for _ in range(4)]
    for buffer in buffers:
        ctypes.memset(buffer, 1, 10 << 20)
    for buffer in reversed(buffers):
        libc.free(buffer)
    print(libc.mallinfo2().fordblks)
""")


@pytest.fixture(scope="module")
def x3d_shards(tmp_path_factory):
    """Two 30-frame videos stored at short side 182 (frames of 182x320, as X3D-S's shards hold them)."""
    root = tmp_path_factory.mktemp("x3d")
    write_videos(root / "videos", count=2, frames=30, height=182, width=320)
    prepare_shards(root / "videos", root / "shards", dataset="custom", short_side=182, quality=90, workers=0,
                   progress=False)
    return root / "shards"


def _free_bytes_after_40_mb(shards, malloc: str) -> int:
    result = subprocess.run([sys.executable, "-c", _CLIPS, str(shards), malloc], capture_output=True, text=True,
                            check=True, timeout=120)
    return int(result.stdout.split()[-1])


def test_a_process_that_decodes_shard_frames_keeps_what_it_frees(x3d_shards):
    # glibc's own thresholds give each 10 MB buffer its own mmap, returned to the kernel when freed
    plain = _free_bytes_after_40_mb(x3d_shards, "plain malloc")
    assert plain < 40 << 20, f"plain malloc kept {plain} bytes free"
    kept = _free_bytes_after_40_mb(x3d_shards, "kept")
    assert kept >= 40 << 20, f"{kept} bytes free in the heap after four 10 MB buffers were freed: not all kept"
