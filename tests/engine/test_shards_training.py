"""Training on frame shards (data.format=shards): the engine builds a ShardDataset from data.root, and a run
SIGKILLed mid-epoch with 2 decoding workers resumes to weights bit-identical to an uninterrupted run's."""
import pytest
from test_engine_distributed import TOOLS, _run, _small
from test_resume_workers import COMMON, _assert_identical, _load

from softpool3d.datasets import ShardDataset
from softpool3d.datasets.prepare_shards import prepare_shards
from softpool3d.engine import builders
from softpool3d.engine.config import ConfigError, load_config


@pytest.fixture(scope="module")
def demo_shards(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_shards") / "shards"
    prepare_shards(demo_root, out, dataset="ucf101", workers=0, progress=False)
    return out


def test_data_format_shards_builds_a_shard_dataset_of_the_same_split(demo_root, demo_shards, tmp_path):
    video_cfg = load_config(None, _small(demo_root, tmp_path, "v"))
    shard_cfg = load_config(None, [*_small(demo_shards, tmp_path, "s"), "data.format=shards"])
    videos = builders.build_dataset(video_cfg, "train", train=True)
    shards = builders.build_dataset(shard_cfg, "train", train=True)
    assert isinstance(shards, ShardDataset) and not isinstance(videos, ShardDataset)
    assert [p.relative_to(demo_root) for p in videos.videos] == list(shards.videos)
    assert shards[3][0].shape == videos[3][0].shape == (3, 4, 32, 32)


def test_a_bad_data_format_is_refused():
    with pytest.raises(ConfigError, match="data.format"):
        load_config(None, ["data.format=frames"])


@pytest.mark.slow
def test_resume_on_shards_with_two_workers_is_bit_identical(demo_shards, tmp_path):
    shards = [*COMMON, "data.format=shards"]
    _run([TOOLS / "train.py", *_small(demo_shards, tmp_path / "straight", "x"), *shards])
    _run([TOOLS / "train.py", *_small(demo_shards, tmp_path / "killed", "x"), *shards, "debug.kill_at_step=7"], expect=-9)
    killed = _load(tmp_path / "killed" / "x" / "checkpoints" / "last.pt")
    assert (killed["step"], killed["epoch"], killed["step_in_epoch"]) == (6, 1, 2)  # mid-epoch 2
    _run([TOOLS / "train.py", *_small(demo_shards, tmp_path / "killed", "x"), *shards, "resume=auto"])
    straight = _load(tmp_path / "straight" / "x" / "checkpoints" / "last.pt")
    resumed = _load(tmp_path / "killed" / "x" / "checkpoints" / "last.pt")
    assert resumed["step"] == straight["step"] == 8
    for part in ("model", "optimizer", "scheduler"):
        _assert_identical(straight[part], resumed[part], part)
