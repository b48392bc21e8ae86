"""Shared fixtures: a demo video set generated once per test session."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from softpool3d.datasets import make_demo_dataset


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo set (8 classes, 6 videos each: 4 train + 2 test, 16 frames of 64x64) in UCF-101 layout."""
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), videos_per_class=6, test_per_class=2)


@pytest.fixture(scope="session", autouse=True)
def index_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Dataset index caches go to a per-session folder, not the user's ~/.cache."""
    folder = tmp_path_factory.mktemp("index-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SOFTPOOL3D_CACHE_DIR", str(folder))
        yield folder
