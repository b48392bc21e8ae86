"""Checkpoints: atomic writes with the usual file mode, round trips, a digest that refuses damaged
files, one clear error for every unreadable file, provenance, stale temporaries, RNG states."""
import os
import random
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from softpool3d.engine import checkpoint, cli
from softpool3d.engine.checkpoint import (
    CheckpointError,
    git_commit,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
)
from softpool3d.engine.training_state import Progress, restore_training, rng_state, set_rng_state, training_checkpoint
import softpool3d


def _state():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return {"model": {**model.state_dict(), "ramp": torch.arange(1000, dtype=torch.float32)},
            "optimizer": optimizer.state_dict(), "scheduler": {}, "epoch": 1, "step": 7, "config": {"name": "x"},
            "classes": ["a", "b"]}


@pytest.fixture
def umask():
    def set_mask(mask):
        os.umask(mask)
    saved = os.umask(0o022)
    yield set_mask
    os.umask(saved)


def _training_objects(seed):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2)
    scaler = torch.amp.GradScaler("cpu", init_scale=64.0 if seed == 0 else 8.0)
    return model, optimizer, scheduler, scaler


def test_training_checkpoint_restores_every_object_and_the_progress(tmp_path):
    model, optimizer, scheduler, scaler = _training_objects(0)
    model(torch.ones(4, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    progress = Progress(epoch=3, step=17, step_in_epoch=2, best_top1=0.5, skipped_steps=1, consecutive_skips=1)
    state = training_checkpoint(model, optimizer, scheduler, scaler, progress, 2, {"name": "x"}, ["a", "b"],
                                [rng_state()])
    assert set(state) == {"model", "optimizer", "scheduler", "scaler", "epoch", "step", "step_in_epoch",
                          "sampler_epoch", "best_top1", "config", "classes", "rng", "skipped_steps",
                          "consecutive_skips", "switches", "eval_weights"}
    path = save_checkpoint(state, tmp_path / "last.pt")
    fresh = _training_objects(1)
    assert restore_training(load_checkpoint(path), path, *fresh) == progress
    assert all(torch.equal(a, b) for a, b in zip(fresh[0].state_dict().values(), model.state_dict().values()))
    momentum = [o.state_dict()["state"][0]["momentum_buffer"] for o in (fresh[1], optimizer)]
    assert torch.equal(*momentum)
    assert fresh[2].last_epoch == 1 and fresh[3].get_scale() == 64.0


def test_round_trip_and_no_temporary_left(tmp_path):
    state = _state()
    path = save_checkpoint(state, tmp_path / "ck" / "last.pt")
    save_checkpoint(state, path)  # replacing an existing file
    loaded = load_checkpoint(path)
    assert loaded["step"] == 7 and loaded["classes"] == ["a", "b"]
    assert all(torch.equal(loaded["model"][k], v) for k, v in state["model"].items())
    assert [p.name for p in (tmp_path / "ck").iterdir()] == ["last.pt"]


def test_plain_torch_load_with_weights_only_still_reads_the_file(tmp_path):
    path = save_checkpoint(_state(), tmp_path / "last.pt")
    plain = torch.load(path, map_location="cpu", weights_only=True)
    assert torch.equal(plain["model"]["ramp"], torch.arange(1000, dtype=torch.float32))
    assert zipfile.ZipFile(path).comment.startswith(b"softpool3d-sha256:")


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_checkpoint_gets_the_mode_a_plain_open_gives(tmp_path, umask, mask):
    umask(mask)
    reference = tmp_path / "reference"
    reference.write_bytes(b"")  # what open() creates under this umask
    path = save_checkpoint(_state(), tmp_path / "last.pt")
    assert path.stat().st_mode & 0o777 == reference.stat().st_mode & 0o777 == 0o666 & ~mask


def _git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs the git command as the reference")
def test_checkpoint_records_package_python_torch_cuda_versions_and_git_commit(tmp_path, monkeypatch):
    """The versions, and the commit of the package's source tree: HEAD in a git checkout, None in a
    copy without ``.git``; then the same for a fresh repository standing in as the source tree."""
    meta = load_checkpoint(save_checkpoint(_state(), tmp_path / "last.pt"))["meta"]
    assert meta["softpool3d"] == softpool3d.__version__
    assert meta["python"] == "{}.{}.{}".format(*sys.version_info[:3])
    assert meta["torch"] == torch.__version__ and meta["cuda"] == torch.version.cuda
    tree = checkpoint._SOURCE_TREE
    assert meta["git_commit"] == (_git("rev-parse", "HEAD", cwd=tree) if (tree / ".git").exists() else None)
    repo = tmp_path / "repo"
    repo.mkdir()
    _git("init", "-q", cwd=repo)
    _git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "one", cwd=repo)
    monkeypatch.setattr(checkpoint, "_SOURCE_TREE", repo)
    meta = load_checkpoint(save_checkpoint(_state(), tmp_path / "repo.pt"))["meta"]
    assert meta["git_commit"] == _git("rev-parse", "HEAD", cwd=repo)
    monkeypatch.setattr(checkpoint, "_SOURCE_TREE", tmp_path)
    assert load_checkpoint(save_checkpoint(_state(), tmp_path / "none.pt"))["meta"]["git_commit"] is None


@pytest.mark.skipif(shutil.which("git") is None, reason="needs the git command as the reference")
def test_git_commit_reads_repositories_worktrees_packed_refs_and_detached_heads(tmp_path):
    def git(*args, cwd=tmp_path / "repo"):
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()

    (tmp_path / "repo").mkdir()
    git("init", "-q", "-b", "main")
    for message in ("one", "two"):
        git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", message)
    assert git_commit(tmp_path / "repo") == git("rev-parse", "HEAD")
    git("worktree", "add", "-q", "-b", "side", str(tmp_path / "wt"), "HEAD~1")
    assert git_commit(tmp_path / "wt") == git("rev-parse", "HEAD", cwd=tmp_path / "wt") != git("rev-parse", "HEAD")
    git("pack-refs", "--all")
    assert git_commit(tmp_path / "repo") == git("rev-parse", "HEAD")
    assert git_commit(tmp_path / "wt") == git("rev-parse", "HEAD", cwd=tmp_path / "wt")
    git("checkout", "-q", "--detach", "HEAD~1")
    assert git_commit(tmp_path / "repo") == git("rev-parse", "HEAD")
    assert git_commit(tmp_path / "nothing") is None


def test_flipped_bytes_in_tensor_data_are_refused(tmp_path):
    path = save_checkpoint(_state(), tmp_path / "last.pt")
    data = bytearray(path.read_bytes())
    start = bytes(data).find(torch.arange(1000, dtype=torch.float32).numpy().tobytes())
    assert start > 0
    data[start + 400 : start + 464] = bytes(b ^ 0xFF for b in data[start + 400 : start + 464])
    path.write_bytes(bytes(data))
    # Without the digest the damage goes unnoticed: torch reads other numbers.
    damaged = torch.load(path, map_location="cpu", weights_only=True)["model"]["ramp"]
    assert not torch.equal(damaged, torch.arange(1000, dtype=torch.float32))
    with pytest.raises(CheckpointError, match=r"last\.pt is unreadable: its contents are damaged \(SHA-256"):
        load_checkpoint(path)


def test_damaged_digest_is_refused(tmp_path):
    path = save_checkpoint(_state(), tmp_path / "last.pt")
    data = bytearray(path.read_bytes())
    data[-1] = ord("0") if data[-1] != ord("0") else ord("1")
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="contents are damaged"):
        load_checkpoint(path)


def _foreign_zip(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "not a checkpoint")


UNREADABLE = {
    "empty": lambda path: path.write_bytes(b""),
    "text": lambda path: path.write_text("epoch: 3\nthis is a text file, not a checkpoint\n" * 20),
    "random bytes": lambda path: path.write_bytes(np.random.default_rng(0).bytes(5000)),
    "truncated": lambda path: path.write_bytes(save_checkpoint(_state(), path).read_bytes()[:100]),
    "cut at the end": lambda path: path.write_bytes(save_checkpoint(_state(), path).read_bytes()[:-1]),
    "foreign zip": _foreign_zip,
    "plain torch.save": lambda path: torch.save(_state(), path),
}


@pytest.mark.parametrize("kind", list(UNREADABLE))
def test_every_unreadable_file_gets_the_same_clear_error(tmp_path, kind):
    path = tmp_path / "model.pt"
    UNREADABLE[kind](path)
    with pytest.raises(CheckpointError, match=r"^checkpoint .*model\.pt is unreadable: "):
        load_checkpoint(path)


def test_directory_missing_file_and_missing_keys_fail_naming_the_path(tmp_path):
    with pytest.raises(CheckpointError, match=f"checkpoint {tmp_path} is unreadable"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="missing.pt does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    partial = save_checkpoint({"model": {}}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="partial.pt lacks keys"):
        load_checkpoint(partial)


def test_test_tool_given_a_text_file_exits_2_with_one_line(tmp_path, caplog):
    text = tmp_path / "notes.pt"
    text.write_text("hello\n")
    assert cli.test_main([str(text)]) == 2
    errors = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0] and str(text) in errors[0]


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    keep = [tmp_path / "last.pt", tmp_path / "best.pt", tmp_path / "notes.tmp"]
    stale = [tmp_path / ".last.pt.a1b2c3d4.tmp", tmp_path / ".best.pt.k_x9z2q1.tmp"]
    for file in keep + stale:
        file.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == sorted(stale)
    assert sorted(tmp_path.iterdir()) == sorted(keep)


def test_rng_state_restores_every_generator():
    saved = rng_state()
    first = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(saved)
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == again[0] and first[1] == again[1] and torch.equal(first[2], again[2])
