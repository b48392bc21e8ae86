"""Frame shards (tools/prepare_videos.py --format shards, ShardDataset): frames equal PyAV's within JPEG
tolerance, the same clips, labels and splits as the videos, tar/webdataset member names, resumable
preparation with bad videos listed, reading over HTTP Range requests, and clear errors naming the file."""
import dataclasses
import io
import json
import pickle
import shutil
import subprocess
import sys
import tarfile
from http.server import SimpleHTTPRequestHandler
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from softpool3d.benchmarks.range_server import RangeRequestHandler, serve_folder
from softpool3d.datasets import ShardIndexError, build_dataset, build_shard_dataset
from softpool3d.datasets import worker_context
from softpool3d.datasets.clip_dataset import UNREADABLE
from softpool3d.datasets.device_decode import JpegBatch
from softpool3d.datasets.device_decode import on_device as on_device_batch
from softpool3d.datasets.prepare_shards import prepare_shards
from softpool3d.datasets.sampling import random_clip, uniform_clips
from softpool3d.datasets.shard_dataset import ShardSet, ShardVideo
from softpool3d.datasets.shard_source import ShardReadError, ShardSourceError, open_source

TOOLS = Path(__file__).resolve().parents[2] / "tools"
CLIPS = dict(num_frames=4, sampling_rate=2, crop_size=32, train_scale=(32, 40), test_scale=32, seed=5)


def _pyav_frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


@pytest.fixture(scope="module")
def shards(demo_root, tmp_path_factory):
    """The demo set as shards at full size (64 px short side), quality 95, shards of ~100 kB. (The demo's
    sharp synthetic shapes lose 3.1 levels a pixel at quality 90, by PIL's encoder as by ours.)"""
    out = tmp_path_factory.mktemp("shards") / "demo"
    summary = prepare_shards(demo_root, out, dataset="ucf101", short_side=64, quality=95, shard_size=100_000,
                             workers=0, progress=False)
    assert summary.converted == 48 and not summary.failed
    return out


def test_shard_frames_equal_pyav_frames_within_jpeg_tolerance(demo_root, shards):
    shard_set = ShardSet(shards)
    for relative in ("Grow/v_Grow_g01_c01.mp4", "Rotate/v_Rotate_g03_c01.mp4"):
        reference = _pyav_frames(demo_root / relative)
        video = ShardVideo(shard_set, int(shard_set.index.find(np.array([relative.encode()]))[0]))
        assert video.info.num_frames == len(reference) and video.info.frame_step == 1
        frames = video.frames(range(len(reference))).numpy()
        assert frames.shape == reference.shape
        error = np.abs(frames.astype(float) - reference).mean()
        assert error < 3.0, f"{relative}: mean abs error {error:.2f} levels"
        pil = []
        for frame in reference:  # what PIL's JPEG at the same quality loses on the same frames
            buffer = io.BytesIO()
            Image.fromarray(frame).save(buffer, "JPEG", quality=95)
            pil.append(np.asarray(Image.open(buffer)))
        assert abs(error - np.abs(np.stack(pil).astype(float) - reference).mean()) < 0.5


def test_frame_step_keeps_every_kth_frame_and_the_sampler_steps_in_stored_frames(demo_root, tmp_path):
    out = tmp_path / "k2"
    prepare_shards(demo_root, out, dataset="ucf101", short_side=64, quality=95, frame_step=2, workers=0, progress=False)
    shard_set = ShardSet(out)
    relative = "Grow/v_Grow_g01_c01.mp4"
    reference = _pyav_frames(demo_root / relative)[::2]
    video = ShardVideo(shard_set, int(shard_set.index.find(np.array([relative.encode()]))[0]))
    assert (video.info.num_frames, video.info.frame_step) == (8, 2)
    assert np.abs(video.frames(range(8)).numpy().astype(float) - reference).mean() < 3.0
    seen = []

    def recording(total, num_frames, rate, generator):
        seen.append((total, rate))
        return random_clip(total, num_frames, rate, generator)

    dataset = build_shard_dataset("ucf101", out, "train", train=True, **{**CLIPS, "sampling_rate": 4},
                                  train_sampler=recording)
    dataset[0]
    assert seen == [(8, 2)]
    odd = build_shard_dataset("ucf101", out, "train", train=True, **{**CLIPS, "sampling_rate": 3})
    with pytest.raises(ValueError, match="every 2-th frame, which does not divide sampling_rate=3"):
        odd[0]


def test_shards_give_the_videos_clip_indices_labels_and_splits(demo_root, shards):
    for split, train in (("train", True), ("val", False), ("test", False)):
        calls = {"video": [], "shards": []}

        def recorder(kind):
            def train_sampler(total, num_frames, rate, generator):
                calls[kind].append((total, list(random_clip(total, num_frames, rate, generator))))
                return calls[kind][-1][1]

            def test_sampler(total, num_frames, rate, num_clips):
                calls[kind].append((total, uniform_clips(total, num_frames, rate, num_clips)))
                return calls[kind][-1][1]

            return dict(train_sampler=train_sampler, test_sampler=test_sampler)

        options = {**CLIPS, "num_clips": 2, "num_crops": 3} if not train else CLIPS
        video = build_dataset("ucf101", demo_root, split, train=train, **options, **recorder("video"))
        shard = build_shard_dataset("ucf101", shards, split, train=train, **options, **recorder("shards"))
        assert [p.relative_to(demo_root) for p in video.videos] == list(shard.videos)
        assert list(video.labels) == list(shard.labels) and video.classes == shard.classes
        assert len(video) == len(shard)
        for dataset in (video, shard):
            dataset.set_epoch(1)
        for i in range(0, len(video), 5):
            clip_v, label_v, index_v = video[i]
            clip_s, label_s, index_s = shard[i]
            assert (label_v, index_v) == (label_s, index_s) and clip_v.shape == clip_s.shape
            assert (clip_v.float() - clip_s.float()).abs().mean() < 4.0
        assert calls["video"] == calls["shards"] and calls["video"]


def test_members_follow_webdataset_naming_and_tar_reads_them(shards):
    shard = sorted((shards / "shards").glob("*.tar"))[0]
    listed = subprocess.run(["tar", "tf", str(shard)], capture_output=True, text=True, check=True).stdout.split()
    keys = [name.split(".", 1)[0] for name in listed]
    assert listed[0].endswith(".json") and listed[1].endswith(".000000.jpg")
    boundaries = [i for i in range(1, len(keys)) if keys[i] != keys[i - 1]]
    assert all(listed[i].endswith(".json") for i in boundaries)  # each sample's members are contiguous
    with tarfile.open(shard) as archive:
        meta = json.loads(archive.extractfile(listed[0]).read())
        jpeg = archive.extractfile(listed[1]).read()
    assert meta["num_frames"] == 16 and meta["step"] == 1 and meta["path"].startswith(keys[0])
    assert jpeg[:2] == b"\xff\xd8"


def test_prepare_resumes_keeps_complete_shards_and_lists_bad_videos(demo_root, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(demo_root, src)
    (src / "Grow" / "v_Grow_g09_c01.mp4").write_bytes(b"not a video")
    out = tmp_path / "out"
    first = subprocess.run([sys.executable, str(TOOLS / "prepare_videos.py"), str(src), str(out), "--format", "shards",
                            "--dataset", "ucf101", "--shard-size-mb", "0.1", "--workers", "0"],
                           capture_output=True, text=True)
    assert first.returncode == 1
    assert "cannot convert" in first.stderr and "v_Grow_g09_c01.mp4" in (out / "failed.txt").read_text()
    assert "MB of sources ->" in first.stderr and "larger" in first.stderr
    shard_files = sorted((out / "shards").glob("*.tar"))
    last = shard_files[-1]
    in_last = len(json.loads(last.with_suffix(".json").read_text())["videos"])
    last.with_suffix(".json").unlink()  # as if killed before the last shard's record was written
    summary = prepare_shards(src, out, dataset="ucf101", shard_size=100_000, workers=0, progress=False)
    assert (summary.converted, summary.skipped, len(summary.failed)) == (in_last, 48 - in_last, 1)
    index = ShardSet(out).index
    assert len(index) == 48 and len(set(index.paths.tolist())) == 48
    assert [p.name for p in sorted((out / "shards").glob("*.tar"))] == [p.name for p in shard_files]


def test_a_failed_video_counts_as_missing(demo_root, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(demo_root, src)
    (src / "Grow" / "v_Grow_g01_c01.mp4").write_bytes(b"not a video")
    prepare_shards(src, tmp_path / "out", dataset="ucf101", workers=0, progress=False)
    missing = {}
    for split in ("train", "val", "test"):
        dataset = build_shard_dataset("ucf101", tmp_path / "out", split, train=False, **CLIPS,
                                      missing_list=tmp_path / f"missing_{split}.txt")
        missing[split] = dataset.num_missing
        if dataset.num_missing:
            assert "Grow/v_Grow_g01_c01.mp4" in (tmp_path / f"missing_{split}.txt").read_text()
    assert sum(missing.values()) == 1


def test_shards_over_http_range_requests_equal_the_shards_on_disk(shards):
    disk = build_shard_dataset("ucf101", shards, "train", train=True, **CLIPS)
    with serve_folder(shards) as url:
        remote = build_shard_dataset("ucf101", url, "train", train=True, **CLIPS)
        for i in range(0, len(disk), 4):
            assert torch.equal(disk[i][0], remote[i][0])


def test_a_server_without_range_support_and_a_silent_url_are_named(shards):
    with serve_folder(shards, SimpleHTTPRequestHandler) as url:
        dataset = build_shard_dataset("ucf101", url, "train", train=True, **CLIPS)
        with pytest.raises(ShardSourceError, match="ignores Range requests"):
            dataset.open_video(0).frames([0])
    with pytest.raises(ShardSourceError, match=r"http://127\.0\.0\.1:9/index\.npz does not answer"):
        ShardSet("http://127.0.0.1:9")


def test_a_missing_index_names_the_file(tmp_path):
    with pytest.raises(ShardIndexError, match=f"no shard index {tmp_path}/index.npz"):
        ShardSet(tmp_path)


@pytest.mark.parametrize("damage, message", [("truncate", "is truncated"), ("append", "does not match")])
def test_a_damaged_shard_is_an_error_naming_it(shards, tmp_path, damage, message):
    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    dataset = build_shard_dataset("ucf101", copy, "train", train=True, **CLIPS)
    shard = copy / ShardSet(copy).index.shards[int(dataset.shards.index.shard[dataset.entries[0]])]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2] if damage == "truncate" else data + b"\0" * 512)
    with pytest.raises(ShardIndexError, match=f"{shard}.*{message}"):
        dataset[0]


def test_an_undecodable_jpeg_is_skipped_like_an_unreadable_video(shards, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    train = build_shard_dataset("ucf101", copy, "train", train=True, **CLIPS)
    test = build_shard_dataset("ucf101", copy, "test", train=False, **CLIPS)
    index = train.shards.index
    for dataset in (train, test):
        video = int(dataset.entries[0])
        shard = copy / index.shards[int(index.shard[video])]
        with open(shard, "r+b") as handle:
            for member in range(int(index.first[video]), int(index.first[video] + index.count[video])):
                handle.seek(int(index.offset[member]) + 2)  # keep the JPEG start marker, break the rest
                handle.write(b"\0" * (int(index.size[member]) - 2))
    clip, label, _ = train[0]
    assert clip.shape == (3, 4, 32, 32) and len(train.skipped_files()) == 1
    assert "v_" in train.skipped_files()[0]
    assert test[0][1] == UNREADABLE


def _device_and_worker_datasets(shards, **extra):
    options = {**CLIPS, **extra}
    return (build_shard_dataset("ucf101", shards, "train", train=True, decode_on_device=True, **options),
            build_shard_dataset("ucf101", shards, "train", train=True, **options))


@pytest.mark.parametrize("extra", [{}, {"repeat_aug": 2, "rand_augment_n": 2}], ids=["plain", "repeat_aug_rand_augment"])
def test_device_decoding_cuts_the_clips_the_workers_cut(shards, extra):
    """On the CPU both paths use libjpeg, so the batch decoded "on the device" equals the workers' clips bit for bit."""
    on_device, in_workers = _device_and_worker_datasets(shards, **extra)
    loader = torch.utils.data.DataLoader(on_device, batch_size=4, num_workers=2,
                                         multiprocessing_context=worker_context())
    batch, labels, indices = next(iter(loader))
    assert isinstance(batch, JpegBatch) and len(batch.clips) == 4
    decoded = on_device_batch(batch, torch.device("cpu"))
    expected = torch.stack([in_workers[int(i)][0] for i in indices])
    assert decoded.dtype == torch.uint8 and torch.equal(decoded, expected)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_nvjpeg_decoding_matches_the_workers_clips_within_jpeg_tolerance(shards):
    on_device, in_workers = _device_and_worker_datasets(shards)
    batch = JpegBatch([on_device[i][0] for i in range(8)])
    decoded = on_device_batch(batch, torch.device("cuda"))
    expected = torch.stack([in_workers[i][0] for i in range(8)])
    assert decoded.is_cuda and decoded.shape == expected.shape
    assert (decoded.cpu().float() - expected.float()).abs().mean() < 2.0


def test_ranges_read_from_disk_and_over_http_are_the_shard_bytes(shards):
    """Ranges out of order, repeated, adjacent and far apart: each is its slice of the file, from a local
    folder (one read a range) as over HTTP (ranges close together merged into one Range request)."""
    name = ShardSet(shards).index.shards[0]
    data = (shards / name).read_bytes()
    ranges = [(5000, 300), (0, 10), (len(data) - 7, 7), (5000, 300), (10, 20), (len(data) // 2, 1)]
    expected = [data[offset : offset + size] for offset, size in ranges]
    assert [bytes(block) for block in open_source(shards).read_ranges(name, ranges)] == expected
    with serve_folder(shards) as url:
        blocks = open_source(url).read_ranges(name, ranges)
        assert [bytes(block) for block in blocks] == expected
        assert not any(memoryview(block).readonly for block in blocks)  # torch.frombuffer wraps them as they are
        past_the_end = [(0, 4), (len(data) - 2, 4)]  # one read a range from disk, one merged Range request
        for location, read in ((shards, f"bytes {len(data) - 2}-{len(data) + 1} asked for, 2 read"),
                               (url, f"bytes 0-{len(data) + 1} asked for, {len(data)} read")):
            with pytest.raises(ShardReadError, match=f"{name} is truncated: {read}"):
                open_source(location).read_ranges(name, past_the_end)


class _HalfBodyHandler(RangeRequestHandler):
    """Announces a range's full length, sends half of it and closes the connection."""

    def send_range(self, handle, start: int, count: int) -> None:
        super().send_range(handle, start, count // 2)
        self.close_connection = True


def test_a_connection_that_ends_mid_range_is_a_truncated_read(shards):
    name = ShardSet(shards).index.shards[0]
    with serve_folder(shards, _HalfBodyHandler) as url:
        with pytest.raises(ShardReadError, match=f"{name} is truncated: bytes 0-999 asked for, 500 read"):
            open_source(url).read_ranges(name, [(0, 1000)])


def test_train_transform_cuts_the_decoded_frames_and_a_given_transform_gets_their_stack(shards):
    """TrainTransform is handed decode_jpeg's frames one tensor each (it cuts its crop from each); a transform
    given to the dataset gets them stacked (T, H, W, 3), as ClipDataset documents; the clips are the same."""
    seen = []

    def given(frames, generator):
        seen.append(frames)
        return dataset.transform(frames, generator)

    dataset = build_shard_dataset("ucf101", shards, "train", train=True, **CLIPS)
    custom = build_shard_dataset("ucf101", shards, "train", train=True, transform=given, **CLIPS)
    video = dataset.open_video(0)
    frames = dataset.train_frames(video, [0, 2, 2, 4])
    assert isinstance(frames, list) and len(frames) == 4 and frames[0].shape[-1] == 3
    assert torch.equal(torch.stack(frames), video.frames([0, 2, 2, 4]))
    for index in range(3):
        assert torch.equal(custom[index][0], dataset[index][0])
    assert all(isinstance(frames, torch.Tensor) and frames.shape[0] == 4 and frames.shape[-1] == 3 for frames in seen)


def test_a_worker_maps_the_frame_arrays_of_the_index_instead_of_receiving_them(shards, tmp_path, monkeypatch, caplog):
    """A shard set's frame arrays are mapped from a local file (index.npz of a local folder; for a URL, a copy of
    the index in the index cache folder), in the process that opens it and in each worker it is pickled to: the
    pickle leaves them out (it is smaller by their bytes), the worker's arrays equal the file's as numpy reads them.
    Where the cache folder cannot be written, the arrays travel in the pickle, with a warning. An index rewritten
    between the two is refused, naming the file."""
    stored = np.load(shards / "index.npz")
    frame_bytes = stored["offset"].nbytes + stored["size"].nbytes
    with serve_folder(shards) as url:
        for location in (shards, url):
            shard_set = ShardSet(location)
            in_memory = dataclasses.replace(shard_set.index, offset=np.array(stored["offset"]),
                                            size=np.array(stored["size"]))
            assert isinstance(shard_set.index.offset, np.memmap)
            assert len(pickle.dumps(in_memory)) - len(pickle.dumps(shard_set)) > frame_bytes - 512
            worker = pickle.loads(pickle.dumps(shard_set))
            for name in ("offset", "size"):
                assert isinstance(getattr(worker.index, name), np.memmap)
                assert np.array_equal(getattr(worker.index, name), stored[name]) and len(stored[name]) == 768
        assert Path(ShardSet(url).frames_file).read_bytes() == (shards / "index.npz").read_bytes()
        (tmp_path / "file").write_text("x")
        monkeypatch.setenv("SOFTPOOL3D_CACHE_DIR", str(tmp_path / "file" / "cache"))
        remote = ShardSet(url)
        assert "cannot keep a local copy of " + f"{url}/index.npz" in caplog.text
        remote = pickle.loads(pickle.dumps(remote))
        assert not isinstance(remote.index.offset, np.memmap) and np.array_equal(remote.index.offset, stored["offset"])
    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    blob = pickle.dumps(ShardSet(copy))
    fewer = dict(np.load(copy / "index.npz"))
    fewer["offset"], fewer["size"] = fewer["offset"][:5], fewer["size"][:5]
    with open(copy / "index.npz", "wb") as handle:
        np.savez(handle, **fewer)
    with pytest.raises(ShardIndexError, match=f"{copy}/index.npz was rewritten since the shard set was opened: 5 frames, it had 768"):
        pickle.loads(blob)
