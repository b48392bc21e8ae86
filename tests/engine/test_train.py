"""The training loop in one process on synthetic clips: files written, NaN policy, resume, fine-tuning,
the run-directory lock and unwritable output directories."""
import hashlib
import json
import math
import os
import re
import signal
import socket

import pytest
import torch
from torch.utils.data import Dataset

from softpool3d.datasets import worker_context
from softpool3d.engine import builders, cli
from softpool3d.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from softpool3d.engine.config import load_config
from softpool3d.engine.processes.run_lock import RunDirError, RunLock, claim_run_dir
from softpool3d.engine.training import train as train_module
from softpool3d.engine.training.callbacks import parameter_digest
from softpool3d.engine.training.nonfinite import NonFiniteGuard
from softpool3d.engine.training.optim import param_groups, warmup_cosine
from softpool3d.engine.training.train import NonFiniteLossError, seed_everything, train


class SyntheticClips(Dataset):
    """Class ``c`` is a clip of constant brightness ``c`` plus noise, times ``scale``; the clips
    fetched ``nan_fetches`` (0: the first ``__getitem__`` call) are NaN."""

    def __init__(self, train: bool, num_clips: int = 1, num_crops: int = 1, nan_fetches=(), fail_after=None,
                 scale: float = 1.0):
        self.classes = ["dark", "mid", "bright"]
        self.num_videos = 12
        self.num_missing, self.source = 0, ""  # ClipDataset's provenance, shown in the start-up summary
        self.num_views = 1 if train else num_clips * num_crops
        self.train, self.nan_fetches, self.fail_after, self.scale = train, nan_fetches, fail_after, scale
        self.fetched = 0

    def __len__(self):
        return self.num_videos * self.num_views

    def skipped_files(self):
        return []

    def set_epoch(self, epoch):
        """Like ``ClipDataset``'s; these clips draw from the global RNG, which the engine seeds per epoch."""

    def __getitem__(self, index):
        if self.fail_after is not None:
            self.fail_after[0] -= 1
            if self.fail_after[0] < 0:
                raise KeyboardInterrupt("simulated crash")
        video = index // self.num_views
        label = video % 3
        generator = None if self.train else torch.Generator().manual_seed(index)
        clip = self.scale * ((label - 1.0) + 0.3 * torch.randn(3, 4, 16, 16, generator=generator))
        if self.fetched in self.nan_fetches:
            clip = torch.full_like(clip, float("nan"))
        self.fetched += 1
        return clip, label, video


@pytest.fixture
def synthetic(monkeypatch):
    options = {}

    def build(cfg, split, train, num_clips=1, num_crops=1):
        if not train:
            return SyntheticClips(train, num_clips, num_crops)
        return SyntheticClips(train, nan_fetches=options.get("nan_fetches", ()), fail_after=options.get("fail_after"),
                              scale=options.get("scale", 1.0))

    monkeypatch.setattr(builders, "build_dataset", build)
    return options


def _overrides(tmp_path, *extra):
    return [
        f"output_dir={tmp_path}", "name=run", f"data.root={tmp_path}", "data.make_demo=false", "data.batch_size=4", "data.num_workers=0",
        "data.test_batch_size=5", "data.num_clips=2", "data.num_crops=1", "model.width=4", "train.epochs=2",
        "train.val_every=1", "optim.name=sgd", "optim.lr=0.05", "train.deterministic=true", *extra,
    ]


def _cfg(tmp_path, *extra):
    return load_config(None, _overrides(tmp_path, *extra))


def test_warmup_cosine_matches_formula():
    assert warmup_cosine(0, 100, 10, 0.1, 0.0) == pytest.approx(0.1)
    assert warmup_cosine(5, 100, 10, 0.1, 0.0) == pytest.approx(0.55)
    for step in (10, 40, 77, 100):
        expected = 0.5 * (1 + math.cos(math.pi * (step - 10) / 90))
        assert warmup_cosine(step, 100, 10, 0.1, 0.0) == pytest.approx(expected)
    assert warmup_cosine(100, 100, 10, 0.1, 0.2) == pytest.approx(0.2)


def test_no_weight_decay_on_norms_and_biases():
    model = torch.nn.Sequential(torch.nn.Conv3d(3, 4, 3), torch.nn.BatchNorm3d(4), torch.nn.Linear(4, 2))
    decay, no_decay = param_groups(model, 0.1)
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert {id(p) for p in no_decay["params"]} == {id(model[0].bias), id(model[1].weight), id(model[1].bias),
                                                   id(model[2].bias)}
    assert no_decay["weight_decay"] == 0.0


def test_train_writes_checkpoints_config_tensorboard_and_predictions(tmp_path, synthetic):
    result = train(_cfg(tmp_path))
    run = tmp_path / "run"
    assert result.step == 2 * 3  # 12 clips / batch 4 = 3 steps per epoch
    assert (run / "config.yaml").is_file()
    checkpoint = load_checkpoint(run / "checkpoints" / "last.pt")
    assert checkpoint["step"] == 6 and checkpoint["epoch"] == 2 and checkpoint["classes"] == ["dark", "mid", "bright"]
    assert set(checkpoint) >= {"optimizer", "scheduler", "scaler", "rng", "config", "sampler_epoch"}
    assert (run / "checkpoints" / "best.pt").is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "test" / "predictions.csv").read_text().count("\n") == 12 + 1
    assert result.test.num_videos == 12 and (result.test.views == 2).all()
    assert json.loads((run / "metrics.json").read_text())["test_top1"] == result.test.top1


def test_fine_tuning_loads_backbone_new_head_and_freezes_stages(tmp_path, synthetic):
    source = train(_cfg(tmp_path / "src", "train.epochs=1", "train.test_after_train=false")).last_checkpoint
    pretrained = load_checkpoint(source)["model"]
    cfg = _cfg(tmp_path / "ft", "train.epochs=1", "train.test_after_train=false", f"model.pretrained={source}",
               "model.freeze_stages=2")
    model = builders.build_model(cfg, num_classes=5)
    assert model.fc.weight.shape == (5, 32)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in pretrained.items() if not k.startswith("fc."))
    tuned = load_checkpoint(train(cfg).last_checkpoint)["model"]
    frozen = [k for k in pretrained if k.startswith(("stem.", "layer1."))]
    assert frozen and all(torch.equal(tuned[k], pretrained[k]) for k in frozen)
    assert not torch.equal(tuned["layer2.0.conv1.0.weight"], pretrained["layer2.0.conv1.0.weight"])


def test_step_callbacks_see_every_step_and_the_weights_after_it(tmp_path, synthetic):
    seen = []
    result = train(_cfg(tmp_path, "train.test_after_train=false"),
                   step_callbacks=[lambda c: seen.append((c.step, c.epoch, c.rank, parameter_digest(c.model)))])
    assert [(step, epoch, rank) for step, epoch, rank, _ in seen] == [(s, (s - 1) // 3, 0) for s in range(1, 7)]
    assert len({digest for *_, digest in seen}) == 6  # every step changed the weights the callback saw
    last = builders.build_architecture(_cfg(tmp_path), 3)
    last.load_state_dict(load_checkpoint(result.last_checkpoint)["model"])
    assert seen[-1][3] == parameter_digest(last)


def test_testing_a_fine_tuned_checkpoint_needs_neither_its_pretrained_source_nor_its_freezing(tmp_path, synthetic):
    source = train(_cfg(tmp_path / "src", "train.epochs=1", "train.test_after_train=false")).last_checkpoint
    tuned = train(_cfg(tmp_path / "ft", "train.epochs=1", f"model.pretrained={source}", "model.freeze_stages=2"))
    source.unlink()
    assert cli.test_main([str(tuned.last_checkpoint), "--out", str(tmp_path / "out")]) == 0
    tested, at_end = (json.loads((folder / "predictions.json").read_text())
                      for folder in (tmp_path / "out", tmp_path / "ft" / "run" / "test"))
    assert tested["top1"] == pytest.approx(tuned.test.top1) and tested["predictions"] == at_end["predictions"]


def test_pretrained_checkpoint_of_ours_is_digest_checked(tmp_path):
    cfg = _cfg(tmp_path)
    source = builders.build_model(cfg, 3).state_dict()
    path = save_checkpoint({"model": source, "optimizer": {}, "scheduler": {}, "epoch": 1, "step": 1, "config": {},
                            "classes": ["a", "b", "c"]}, tmp_path / "ours.pt")
    cfg.model.pretrained = str(path)
    loaded = builders.build_model(cfg, 3).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in source.items())
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="ours.pt is unreadable: its contents are damaged"):
        builders.build_model(cfg, 3)


def test_resume_from_a_bit_flipped_checkpoint_is_refused(tmp_path, synthetic, caplog):
    last = train(_cfg(tmp_path, "train.epochs=1", "train.test_after_train=false")).last_checkpoint
    data = bytearray(last.read_bytes())
    weights = load_checkpoint(last)["model"]["fc.weight"].numpy().tobytes()
    start = bytes(data).find(weights)
    assert start > 0
    data[start : start + 64] = bytes(b ^ 0x10 for b in data[start : start + 64])
    last.write_bytes(bytes(data))
    assert cli.train_main(_overrides(tmp_path, "train.epochs=2", "resume=auto")) == 2
    assert _errors(caplog) == [f"checkpoint {last} is unreadable: its contents are damaged (SHA-256 "
                               f"{hashlib.sha256(data[:-84]).hexdigest()} of its first {len(data) - 84} bytes, the "
                               f"digest stored in it is {data[-64:].decode()})"]


def _errors(caplog):
    return [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]


def test_nonfinite_loss_stops_naming_step_loss_and_last_good_checkpoint(tmp_path, synthetic, caplog):
    synthetic["nan_fetches"] = {9}  # in the third step's batch of 4
    assert cli.train_main(_overrides(tmp_path, "train.nonfinite=stop", "train.checkpoint_every_steps=1")) == 2
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    assert _errors(caplog) == [
        "non-finite loss, gradient norm and BatchNorm running statistics at step 3 (epoch 1, loss nan, grad norm "
        f"nan); stopping (train.nonfinite=stop); last good checkpoint: {last} (step 2)"
    ]
    assert load_checkpoint(last)["step"] == 2


def test_nonfinite_loss_skip_counts_the_skipped_step(tmp_path, synthetic, caplog):
    synthetic["nan_fetches"] = {5}
    result = train(_cfg(tmp_path, "train.nonfinite=skip", "train.test_after_train=false"))
    state = load_checkpoint(result.last_checkpoint)
    assert all(torch.isfinite(v.float()).all() for v in state["model"].values())
    assert result.skipped_steps == state["skipped_steps"] == 1 and result.step == 6
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["skipped_steps"] == 1
    assert "1 of 6 steps were skipped as non-finite" in caplog.text


@pytest.mark.parametrize("cap", [2, 3])
def test_consecutive_nonfinite_steps_stop_a_skipping_run(tmp_path, synthetic, caplog, cap):
    synthetic["nan_fetches"] = range(100)
    assert cli.train_main(_overrides(tmp_path, "train.nonfinite=skip", f"train.max_consecutive_skips={cap}")) == 2
    [error] = _errors(caplog)
    assert error.startswith(f"non-finite loss, gradient norm and BatchNorm running statistics at step {cap} "
                            f"(epoch 1, loss nan, grad norm nan); ")
    assert error.endswith(f"stopping after {cap} non-finite steps in a row (train.max_consecutive_skips={cap}, "
                          f"{cap} skipped in all); no checkpoint written yet")
    assert caplog.text.count("update skipped") == cap - 1


def test_a_good_step_resets_the_consecutive_skip_count():
    guard = NonFiniteGuard("skip", max_consecutive_skips=2)
    assert [guard.step_ok(problems, "here") for problems in (["loss"], [], ["loss"], [])] == [False, True, False, True]
    assert guard.step_ok(["loss"], "here") is False
    with pytest.raises(NonFiniteLossError, match="stopping after 2 non-finite steps in a row .* 4 skipped in all"):
        guard.step_ok(["gradient norm"], "here")


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_overflowing_batchnorm_statistics_stop_the_run(tmp_path, synthetic, policy):
    """Inputs of about 1e30 keep the loss finite (BatchNorm normalizes them) but make running_var inf."""
    synthetic["scale"] = 1e30
    with pytest.raises(NonFiniteLossError, match="non-finite BatchNorm running statistics at step"):
        train(_cfg(tmp_path, f"train.nonfinite={policy}", "train.test_after_train=false"))
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_checkpoint_with_nonfinite_state_is_never_written(tmp_path, synthetic, monkeypatch):
    build = builders.build_optimizer

    def poisoned(model, cfg):
        optimizer, steps = build(model, cfg), []

        def poison(optimizer, args, kwargs):  # the second step leaves an inf momentum behind
            steps.append(1)
            if len(steps) == 2:
                next(iter(optimizer.state.values()))["momentum_buffer"].fill_(float("inf"))
        optimizer.register_step_post_hook(poison)
        return optimizer
    monkeypatch.setattr(builders, "build_optimizer", poisoned)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    with pytest.raises(NonFiniteLossError, match=rf"refusing to write {last} at step 2: 1 tensor\(s\) hold NaN/inf, "
                                                 rf"first optimizer state 0 momentum_buffer; last good checkpoint: "
                                                 rf"{last} \(step 1\)"):
        train(_cfg(tmp_path, "train.checkpoint_every_steps=1"))
    assert load_checkpoint(last)["step"] == 1


def test_crash_mid_epoch_then_resume_auto_reaches_the_same_weights(tmp_path, synthetic):
    options = ["train.epochs=3", "train.test_after_train=false", "train.checkpoint_every_steps=2"]
    straight = train(_cfg(tmp_path / "a", *options))
    synthetic["fail_after"] = [4 * 4]  # 4 batches of 4 clips: the 5th step (epoch 2) crashes
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tmp_path / "b", *options))
    crashed = load_checkpoint(tmp_path / "b" / "run" / "checkpoints" / "last.pt")
    assert (crashed["step"], crashed["epoch"], crashed["step_in_epoch"]) == (4, 1, 1)
    synthetic["fail_after"] = None
    resumed = train(_cfg(tmp_path / "b", *options, "resume=auto"))
    assert resumed.step == straight.step == 9
    a = load_checkpoint(straight.last_checkpoint)
    b = load_checkpoint(resumed.last_checkpoint)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert b["optimizer"]["state"].keys() == a["optimizer"]["state"].keys()
    assert all(torch.equal(a["optimizer"]["state"][k]["momentum_buffer"], b["optimizer"]["state"][k]["momentum_buffer"])
               for k in a["optimizer"]["state"])


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_with_accumulation_and_clipping_trains(tmp_path, synthetic, amp):
    cfg = _cfg(tmp_path, "train.epochs=1", "train.test_after_train=false", f"train.amp={amp}", "train.accumulate=2",
               "data.batch_size=2", "train.grad_clip=0.5", "train.deterministic=false")
    seed_everything(cfg.train.seed)  # as the trainer does before building its model
    initial = builders.build_model(cfg, 3).state_dict()
    result = train(cfg)
    assert result.step == 3  # 12 clips / (2 clips x 2 micro-batches)
    state = load_checkpoint(result.last_checkpoint)
    assert (state["scaler"] is not None) == (amp == "fp16")
    weights = state["model"]["fc.weight"]
    assert torch.isfinite(weights).all() and weights.dtype == torch.float32
    assert not torch.equal(weights, initial["fc.weight"])


def _hold_lock(run_dir, ready):
    RunLock(run_dir).acquire()
    ready.set()
    signal.pause()


@pytest.fixture
def lock_holder(tmp_path):
    """Another process holding the lock of ``tmp_path / "run"``; SIGKILLed at the end."""
    (tmp_path / "run").mkdir()
    context = worker_context()  # never a fork of this multi-threaded process, nor a server without its preload
    ready = context.Event()
    holder = context.Process(target=_hold_lock, args=(tmp_path / "run", ready), daemon=True)
    holder.start()
    assert ready.wait(30)
    yield holder
    if holder.is_alive():
        os.kill(holder.pid, signal.SIGKILL)
    holder.join()


def test_second_job_on_a_locked_run_directory_refuses(tmp_path, synthetic, caplog, lock_holder):
    assert cli.train_main(_overrides(tmp_path, "train.epochs=1")) == 2
    [error] = _errors(caplog)
    assert error.startswith(f"run directory {tmp_path / 'run'} is in use by another job "
                            f"(pid {lock_holder.pid} on host {socket.gethostname()}, since ")
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_lock_of_a_killed_job_is_taken_over_and_its_temporaries_removed(tmp_path, synthetic, caplog, lock_holder):
    stale = tmp_path / "run" / "checkpoints" / ".last.pt.0a1b2c3d.tmp"
    stale.parent.mkdir()
    stale.write_bytes(b"half a checkpoint")
    os.kill(lock_holder.pid, signal.SIGKILL)
    lock_holder.join()
    result = train(_cfg(tmp_path, "train.epochs=1", "train.test_after_train=false"))
    assert result.step == 3
    assert re.search(rf"took over the lock of {tmp_path / 'run'} from a job that ended without releasing it "
                     rf"\(pid {lock_holder.pid} on host ", caplog.text)
    assert "removed 1 temporary file(s) of interrupted checkpoint writes" in caplog.text
    assert not stale.exists()
    assert (tmp_path / "run" / ".lock").read_text() == ""  # released at the end
    assert cli.train_main(_overrides(tmp_path, "train.epochs=1", "train.test_after_train=false")) == 0


def test_output_dir_under_a_regular_file_fails_before_the_first_step(tmp_path, synthetic, caplog, monkeypatch):
    """Unwritable for every user, root included: a path below a regular file."""
    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(train_module, "_Trainer", None)  # nothing may be built
    assert cli.train_main(_overrides(tmp_path / "file" / "out", "train.epochs=1", f"data.root={tmp_path}")) == 2
    [error] = _errors(caplog)
    assert error == f"output directory {tmp_path / 'file' / 'out' / 'run'} is not writable: Not a directory"


def _claim_in_child(run_dir, errors):
    if os.geteuid() == 0:  # root writes anywhere: drop to "nobody", who may not write there either
        os.setgid(65534)
        os.setuid(65534)
    try:
        claim_run_dir(run_dir)
        errors.put(None)
    except RunDirError as error:
        errors.put(str(error))


def test_read_only_output_dir_fails_with_the_directory_named(tmp_path):
    (tmp_path / "read_only").mkdir(mode=0o555)
    context = worker_context()  # never a fork of this multi-threaded process, nor a server without its preload
    errors = context.Queue()
    child = context.Process(target=_claim_in_child, args=(tmp_path / "read_only" / "run", errors))
    child.start()
    error = errors.get(timeout=30)
    child.join()
    assert error == f"output directory {tmp_path / 'read_only' / 'run'} is not writable: Permission denied"


def test_channels_last_trains_to_the_weights_of_the_contiguous_layout(tmp_path, synthetic):
    options = ["train.epochs=1", "train.test_after_train=false", "train.deterministic=false"]
    contiguous = load_checkpoint(train(_cfg(tmp_path / "a", *options)).last_checkpoint)["model"]
    channels_last = load_checkpoint(train(_cfg(tmp_path / "b", *options, "train.channels_last=true")).last_checkpoint)
    layout = torch.channels_last_3d
    assert channels_last["model"]["stem.0.weight"].is_contiguous(memory_format=layout)
    assert not contiguous["stem.0.weight"].is_contiguous(memory_format=layout)
    for key, value in contiguous.items():  # the same training up to the rounding of another summation order
        torch.testing.assert_close(channels_last["model"][key], value, rtol=1e-3, atol=2e-4)
    assert not torch.equal(channels_last["model"]["fc.weight"], builders.build_model(_cfg(tmp_path), 3).fc.weight)
