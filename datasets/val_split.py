"""A validation split carved out of a training list, for datasets that publish none.

Carving is a deterministic function of the training list, ``fraction`` and ``seed``: the
``train`` split is the list minus the carved videos, ``val`` the carved ones, so the two never
share a video, and model selection on ``val`` never sees the test list.

Videos are carved in whole groups, so near-duplicates never fall on both sides:

- UCF-101: by group ``gXX`` (the clips of one group share actor and scene). Whole group numbers
  are taken across all classes, as the official splits do (``testlist01`` holds groups 1-7).
- HMDB-51: by source video: ``<name>_<n>.avi`` clips cut from one video stay together, chosen
  per class.
- custom data: by video, chosen per class.
"""
from __future__ import annotations

import os
import re

import numpy as np

from softpool3d.datasets.index import VideoIndex

UCF101_GROUP = re.compile(r"_g(\d+)_c\d+$")
HMDB51_CLIP = re.compile(r"_\d+$")


def _ucf101_groups(index: VideoIndex) -> np.ndarray:
    groups = []
    for i, name in enumerate(index.videos.names.tolist()):
        match = UCF101_GROUP.search(os.path.splitext(name.decode("utf-8", "surrogateescape"))[0])
        if match is None:
            raise ValueError(f"cannot carve a UCF-101 val split by group: no '_gXX_cYY' in {index.videos[i]}")
        groups.append(int(match.group(1)))
    return np.array(groups, dtype=np.int64)


def _group_ids(keys: list[str]) -> np.ndarray:
    return np.unique(np.array(keys, dtype=str), return_inverse=True)[1].reshape(-1)


def _hmdb51_groups(index: VideoIndex) -> np.ndarray:
    names = [os.path.splitext(name.decode("utf-8", "surrogateescape"))[0] for name in index.videos.names.tolist()]
    return _group_ids([HMDB51_CLIP.sub("", name) for name in names])


def carve_groups(groups: np.ndarray, strata: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the entries whose group is carved out.

    Within each stratum, ``round(fraction * n)`` of its ``n`` distinct groups are drawn by a
    generator seeded with ``seed`` (at least one and at most ``n - 1`` when ``n >= 2``). The
    result depends on the set of ``(stratum, group)`` pairs, not on the order of entries.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    carved = np.zeros(len(groups), dtype=bool)
    for stratum in np.unique(strata):
        members = strata == stratum
        choices = np.unique(groups[members])
        count = int(round(fraction * len(choices)))
        if len(choices) >= 2:
            count = min(max(count, 1), len(choices) - 1)
        chosen = rng.permutation(choices)[:count]
        carved |= members & np.isin(groups, chosen)
    return carved


def carve_val(dataset: str, index: VideoIndex, fraction: float, seed: int) -> np.ndarray:
    """Mask of the entries of ``index`` (a training list of ``dataset``) that form ``val``."""
    if dataset == "ucf101":
        return carve_groups(_ucf101_groups(index), np.zeros(len(index.labels), dtype=np.int64), fraction, seed)
    if dataset == "hmdb51":
        return carve_groups(_hmdb51_groups(index), index.labels, fraction, seed)
    return carve_groups(_group_ids([str(path) for path in index.videos]), index.labels, fraction, seed)


def describe(dataset: str, fraction: float, seed: int) -> str:
    """How :func:`carve_val` chose the videos, for logs."""
    unit = {"ucf101": "of the groups gXX", "hmdb51": "of the source videos of each class"}.get(dataset, "of each class's videos")
    return f"{fraction:.0%} {unit}, seed {seed}"
