"""The EMA of the weights: each update against ``decay * ema + (1 - decay) * w`` in float64 (BatchNorm
buffers averaged too, the batch counter copied), and its checkpoint round trip: saved as ``ema``,
restored on resume, and the weights a checkpoint gives for the test and export; a checkpoint written
before the switches kept their own states (the EMA at its top level) still loads."""
from pathlib import Path

import pytest
import torch
from torch import nn

from softpool3d.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from softpool3d.engine.training.switches import TrainingSwitches
from softpool3d.engine.training.switches.ema import EmaSwitch, ModelEma
from softpool3d.engine.training_state import (
    Progress,
    load_model_state,
    model_weights,
    restore_training,
    rng_state,
    training_checkpoint,
)


def _model(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv3d(2, 3, 1), nn.BatchNorm3d(3), nn.Flatten(), nn.Linear(3 * 2 * 2 * 2, 4))


def _perturb_and_run(model, seed):
    """Move every weight and the BatchNorm statistics, as a training step would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator))
        model.train()(torch.randn(5, 2, 2, 2, 2, generator=generator))


def test_ema_update_follows_the_formula_for_weights_and_buffers():
    decay = 0.9
    model = _model(0)
    ema = ModelEma(model, decay)
    expected = None
    for step in range(4):
        _perturb_and_run(model, step)
        ema.update(model)
        current = {key: value.double() for key, value in model.state_dict().items() if value.is_floating_point()}
        expected = current if expected is None else {key: decay * expected[key] + (1 - decay) * current[key]
                                                     for key in current}
    averaged = ema.state_dict()
    assert set(expected) == {key for key, value in averaged.items() if value.is_floating_point()}
    for key, value in expected.items():
        assert torch.allclose(averaged[key].double(), value, rtol=1e-5, atol=1e-6), key
    assert not torch.allclose(averaged["1.running_mean"], model.state_dict()["1.running_mean"])
    assert int(averaged["1.num_batches_tracked"]) == int(model.state_dict()["1.num_batches_tracked"]) == 4
    assert ema.updates == 4


def test_ema_checkpoint_round_trip_restores_it_and_test_and_export_read_it(tmp_path):
    model = _model(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2)
    switch = EmaSwitch(model, 0.5)
    ema = switch.ema
    for step in range(3):
        _perturb_and_run(model, step)
        switch.after_step(model, updated=True)
    switches = TrainingSwitches([switch], nn.CrossEntropyLoss(), 0, 0)
    state = training_checkpoint(model, optimizer, scheduler, None, Progress(step=3), 0, {}, ["a"], [rng_state()],
                                switches.state_dict(), switches.eval_weights)
    assert set(state["switches"]) == {"ema"} and state["eval_weights"] == "ema"
    path = save_checkpoint(state, tmp_path / "last.pt")

    fresh = _model(1)
    fresh_optimizer = torch.optim.SGD(fresh.parameters(), lr=0.1)
    fresh_switch = EmaSwitch(fresh, 0.5)
    fresh_ema = fresh_switch.ema
    restore_training(load_checkpoint(path), path, fresh, fresh_optimizer,
                     torch.optim.lr_scheduler.StepLR(fresh_optimizer, step_size=2), None,
                     switches=TrainingSwitches([fresh_switch], nn.CrossEntropyLoss(), 0, 0))
    for a, b in ((fresh.state_dict(), model.state_dict()), (fresh_ema.state_dict(), ema.state_dict())):
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    assert fresh_ema.updates == 3
    _perturb_and_run(model, 9)  # the next update continues the average, not a fresh copy
    for target in (ema, fresh_ema):
        target.update(model)
    assert all(torch.equal(a, b) for a, b in zip(ema.state_dict().values(), fresh_ema.state_dict().values()))

    checkpoint = load_checkpoint(path)
    tested = _model(2)
    load_model_state(tested, checkpoint, path)  # the test and export: weights="auto" reads the EMA
    averaged = checkpoint["switches"]["ema"]["weights"]
    assert all(torch.equal(tested.state_dict()[key], value) for key, value in averaged.items())
    assert model_weights(checkpoint, "model") is checkpoint["model"]
    assert not torch.equal(averaged["0.weight"], checkpoint["model"]["0.weight"])


def test_a_checkpoint_without_ema_gives_its_model_weights_and_refuses_ema(tmp_path):
    model = _model(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    state = training_checkpoint(model, optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=2), None,
                                Progress(), 0, {}, ["a"], [rng_state()])
    assert state["switches"] == {} and state["eval_weights"] is None
    assert model_weights(state) is state["model"]
    with pytest.raises(CheckpointError, match="x.pt holds no ema weights"):
        model_weights(state, "ema", "x.pt")


OLD_LAYOUT = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoints" / "ema_at_top_level.pt"
"""A checkpoint written before the switches kept their own states, by ``tools/train.py output_dir=runs name=ema
data.root=demo data.num_frames=4 data.crop_size=32 data.train_scale=[32,40] data.test_scale=32 data.batch_size=4
data.num_workers=0 model.width=4 train.device=cpu train.test_after_train=false train.epochs=1
train.limit_steps_per_epoch=2 train.ema_decay=0.9 train.val_every=100`` on the demo set: r3d_18 of width 4, 2
steps, its EMA as ``ema`` and ``ema_updates`` at the top level."""


def test_a_checkpoint_with_the_ema_at_its_top_level_still_resumes_and_gives_its_ema(caplog):
    from softpool3d.engine import builders
    from softpool3d.engine.config import from_container

    checkpoint = load_checkpoint(OLD_LAYOUT)
    assert "switches" not in checkpoint and checkpoint["ema_updates"] == 2
    cfg = from_container(checkpoint["config"])
    tested = builders.build_architecture(cfg, len(checkpoint["classes"]))
    load_model_state(tested, checkpoint, OLD_LAYOUT)  # the test and export: weights="auto" reads the EMA
    assert all(torch.equal(tested.state_dict()[key], value) for key, value in checkpoint["ema"].items())
    assert model_weights(checkpoint, "model") is checkpoint["model"]
    assert model_weights(checkpoint, "ema") is checkpoint["ema"]

    model = builders.build_architecture(cfg, len(checkpoint["classes"]))
    optimizer = builders.build_optimizer(model, cfg)
    scheduler = builders.build_scheduler(optimizer, cfg, 2)
    switch = EmaSwitch(model, cfg.train.ema_decay)
    progress = restore_training(checkpoint, OLD_LAYOUT, model, optimizer, scheduler, None,
                                switches=TrainingSwitches([switch], nn.CrossEntropyLoss(), 0, 0))
    assert progress.step == 2 and switch.ema.updates == 2
    assert all(torch.equal(switch.ema.state_dict()[key], value) for key, value in checkpoint["ema"].items())
    assert all(torch.equal(model.state_dict()[key], value) for key, value in checkpoint["model"].items())
    assert "holds no EMA" not in caplog.text
