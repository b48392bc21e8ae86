"""A DataLoader worker that decodes shard frames keeps its freed memory (softpool3d.datasets.heap): buffers of a
clip's size come from the heap and stay there when freed, so the next clip reuses their pages instead of
faulting in fresh ones. Read from glibc's own accounting (mallinfo2) in the worker. A process that reads clips
itself keeps its allocator as it is."""
import ctypes

import pytest
from torch.utils.data import DataLoader, Dataset

import softpool3d.datasets.shard_dataset as shard_dataset
from softpool3d.benchmarks.loader import write_videos
from softpool3d.datasets import Annotations, worker_context
from softpool3d.datasets.heap import is_glibc
from softpool3d.datasets.prepare_shards import prepare_shards

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not is_glibc(), reason="mallopt is glibc's")]

VIDEOS = ["class0/video000.mp4", "class1/video001.mp4"]


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


class FreeHeapAfterClips(Dataset):
    """One item, read in a DataLoader worker: four training clips of a ShardDataset at X3D-S's geometry, then
    four 10 MB buffers malloc'ed, written and freed; the item is the bytes the heap then holds free."""

    def __init__(self, shards, plain_malloc: bool) -> None:
        self.shards, self.plain_malloc = shards, plain_malloc

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> int:
        if self.plain_malloc:  # this worker's module only
            shard_dataset.keep_freed_memory = lambda: False
        dataset = _x3d_dataset(self.shards)
        for i in range(4):
            dataset.set_epoch(i // 2)
            dataset[i % 2]
        libc = ctypes.CDLL(None)
        libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
        libc.free.argtypes, libc.mallinfo2.restype = [ctypes.c_void_p], _MallInfo2
        buffers = [libc.malloc(10 << 20) for _ in range(4)]
        for buffer in buffers:
            ctypes.memset(buffer, 1, 10 << 20)
        for buffer in reversed(buffers):
            libc.free(buffer)
        return libc.mallinfo2().fordblks


def _x3d_dataset(shards) -> shard_dataset.ShardDataset:
    return shard_dataset.ShardDataset(Annotations(VIDEOS, [0, 1], VIDEOS), shard_dataset.ShardSet(shards), train=True,
                                      num_frames=13, sampling_rate=2, crop_size=160, train_scale=(182, 228), seed=0)


@pytest.fixture(scope="module")
def x3d_shards(tmp_path_factory):
    """Two 30-frame videos stored at short side 182 (frames of 182x320, as X3D-S's shards hold them)."""
    root = tmp_path_factory.mktemp("x3d")
    write_videos(root / "videos", count=2, frames=30, height=182, width=320)
    prepare_shards(root / "videos", root / "shards", dataset="custom", short_side=182, quality=90, workers=0,
                   progress=False)
    return root / "shards"


def _free_bytes_in_a_worker(shards, plain_malloc: bool) -> int:
    loader = DataLoader(FreeHeapAfterClips(shards, plain_malloc), batch_size=None, num_workers=1,
                        multiprocessing_context=worker_context())
    return int(next(iter(loader)))


def test_a_worker_that_decodes_shard_frames_keeps_what_it_frees(x3d_shards):
    # glibc's own thresholds give each 10 MB buffer its own mmap, returned to the kernel when freed
    plain = _free_bytes_in_a_worker(x3d_shards, plain_malloc=True)
    assert plain < 40 << 20, f"plain malloc kept {plain} bytes free"
    kept = _free_bytes_in_a_worker(x3d_shards, plain_malloc=False)
    assert kept >= 40 << 20, f"{kept} bytes free in the worker's heap after four 10 MB buffers were freed: not all kept"


def test_a_process_reading_clips_itself_keeps_its_allocator(x3d_shards, monkeypatch):
    calls = []
    monkeypatch.setattr(shard_dataset, "keep_freed_memory", lambda: calls.append(1))
    dataset = _x3d_dataset(x3d_shards)
    dataset[0]
    assert not calls, "a clip read outside a DataLoader worker changed the process's malloc thresholds"
