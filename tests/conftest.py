"""Shared fixtures: a demo video set generated once per test session."""
from __future__ import annotations

from pathlib import Path

import pytest

from softpool3d.datasets import make_demo_dataset


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo set (8 classes, 6 videos each: 4 train + 2 test, 16 frames of 64x64) in UCF-101 layout."""
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), videos_per_class=6, test_per_class=2)
