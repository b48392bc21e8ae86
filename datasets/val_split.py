"""A validation split carved out of a training list, for datasets that publish none.

Carving is a deterministic function of the training list, ``fraction`` and ``seed``: the
``train`` split is the list minus the carved videos, ``val`` the carved ones, so the two never
share a video, and model selection on ``val`` never sees the test list.

Videos are carved in whole groups, so near-duplicates never fall on both sides. Each dataset
format says what a group is (:meth:`softpool3d.datasets.registry.DatasetFormat.val_groups`):

- UCF-101: the group ``gXX`` (the clips of one group share actor and scene). Whole group numbers
  are taken across all classes, as the official splits do (``testlist01`` holds groups 1-7).
- HMDB-51: the source video: ``<name>_<n>.avi`` clips cut from one video stay together, chosen
  per class.
- custom data (and the default of a new format): the video, chosen per class.
"""
from __future__ import annotations

import numpy as np


def group_ids(keys: list[str]) -> np.ndarray:
    """An integer id per entry, equal for equal ``keys``."""
    return np.unique(np.array(keys, dtype=str), return_inverse=True)[1].reshape(-1)


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
