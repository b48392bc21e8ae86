"""Checkpoints: atomic writes, round trips, RNG states, clear errors for corrupt files."""
import random

import numpy as np
import pytest
import torch

from softpool3d.checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state


def _state():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": {}, "epoch": 1,
            "step": 7, "config": {"name": "x"}, "classes": ["a", "b"]}


def test_round_trip_and_no_temporary_left(tmp_path):
    state = _state()
    path = save_checkpoint(state, tmp_path / "ck" / "last.pt")
    save_checkpoint(state, path)  # replacing an existing file
    loaded = load_checkpoint(path)
    assert loaded["step"] == 7 and loaded["classes"] == ["a", "b"]
    assert all(torch.equal(loaded["model"][k], v) for k, v in state["model"].items())
    assert [p.name for p in (tmp_path / "ck").iterdir()] == ["last.pt"]


def test_truncated_checkpoint_fails_naming_file(tmp_path):
    path = save_checkpoint(_state(), tmp_path / "last.pt")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="last.pt.*corrupt"):
        load_checkpoint(path)


def test_garbage_and_wrong_content_fail_naming_file(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_checkpoint(garbage)
    partial = tmp_path / "partial.pt"
    torch.save({"model": {}}, partial)
    with pytest.raises(CheckpointError, match="partial.pt lacks keys"):
        load_checkpoint(partial)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_rng_state_restores_every_generator():
    saved = rng_state()
    first = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(saved)
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == again[0] and first[1] == again[1] and torch.equal(first[2], again[2])
