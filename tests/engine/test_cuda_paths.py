"""The engine's GPU paths, checked on the CPU with faked CUDA devices: RNG states per rank's own
device (resume under another GPU visibility), the device of a LOCAL_RANK, native bf16 only for
amp=auto, determinism switches set before CUDA starts, the device softpool3d-test picks, the
(epoch, index) sampler that reaches persistent workers, and the step figures kept on the device."""
import os

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DistributedSampler

from softpool3d.engine.config import ConfigError, load_config
from softpool3d.engine.evaluation.trained_model import evaluation_config
from softpool3d.engine.processes import amp, backends
from softpool3d.engine.processes.distributed import init_distributed
from softpool3d.engine.processes.loaders import EpochIndexed, run_loader
from softpool3d.engine.processes.sampler import ResumableDistributedSampler
from softpool3d.engine.training import train as train_module
from softpool3d.engine.training.step_stats import gradient_norm, reduce_step
from softpool3d.engine.training_state import Progress, restore_training, rng_state, set_rng_state, training_checkpoint
from softpool3d.models import build_model


class FakeCuda:
    """``count`` visible CUDA devices, faked in ``torch.cuda``: each device's RNG state is a distinct
    byte tensor; setting the state of a device that is not visible raises like CUDA does."""

    def __init__(self, monkeypatch, count, current=0):
        self.count, self.current, self.set_states, self.set_devices = count, current, [], []
        for module in (torch.cuda, torch.cuda.random):
            monkeypatch.setattr(module, "set_rng_state", self.set_rng_state)
            monkeypatch.setattr(module, "get_rng_state", lambda device="cuda": torch.full((8,), self._index(device),
                                                                                             dtype=torch.uint8))
            monkeypatch.setattr(module, "device_count", lambda: self.count)
            monkeypatch.setattr(module, "current_device", lambda: self.current)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "set_device", self.set_device)

    def _index(self, device):
        index = device if isinstance(device, int) else torch.device(device).index
        index = self.current if index is None else index
        if not 0 <= index < self.count:
            raise RuntimeError("CUDA error: invalid device ordinal")
        return index

    def set_rng_state(self, state, device="cuda"):
        self.set_states.append((self._index(device), int(state[0])))

    def set_device(self, device):
        self.set_devices.append(self._index(device))
        self.current = device


def test_rng_state_holds_the_current_device_state_alone(monkeypatch):
    FakeCuda(monkeypatch, count=8, current=3)
    saved = rng_state()["cuda"]
    assert len(saved) == 1 and int(saved[0][0]) == 3


def test_checkpoint_with_more_cuda_states_than_visible_devices_resumes(monkeypatch):
    cuda = FakeCuda(monkeypatch, count=1)
    state = rng_state()
    state["cuda"] = [torch.full((8,), device, dtype=torch.uint8) for device in range(8)]  # 8 visible when saved
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    checkpoint = training_checkpoint(model, optimizer, scheduler, None, Progress(1, 5), 1, {}, ["a"], [state])
    progress = restore_training(checkpoint, "ckpt.pt", model, optimizer, scheduler, None)
    assert progress.step == 5
    assert cuda.set_states == [(0, 0)]  # the one visible device got a state, no invalid ordinal


def test_one_state_checkpoint_restores_into_the_current_device(monkeypatch):
    cuda = FakeCuda(monkeypatch, count=4, current=2)
    state = rng_state()
    state["cuda"] = [torch.full((8,), 7, dtype=torch.uint8)]
    set_rng_state(state)
    assert cuda.set_states == [(2, 7)]


@pytest.mark.parametrize("visible, local_rank, expected", [(1, 3, 0), (4, 3, 3), (8, 11, 3), (1, 0, 0)])
def test_local_rank_picks_a_visible_device(monkeypatch, visible, local_rank, expected):
    cuda = FakeCuda(monkeypatch, count=visible)
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    monkeypatch.setenv("WORLD_SIZE", "1")
    info = init_distributed("cuda")
    assert info.device == torch.device("cuda", expected) and cuda.set_devices == [expected]
    assert info.local_rank == local_rank


@pytest.mark.parametrize("major, expected", [(7, "none"), (8, "bf16"), (9, "bf16")])
def test_amp_auto_counts_native_bf16_only(monkeypatch, major, expected):
    FakeCuda(monkeypatch, count=1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: type("Props", (), {"major": major}))
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)  # emulation works
    assert torch.cuda.is_bf16_supported()  # torch's default counts the emulated bf16 of a V100
    precision, reason = amp.resolve_amp("auto", torch.device("cuda", 0))
    assert precision == expected and ("native bf16" in reason)


@pytest.fixture
def restore_determinism():
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
              torch.backends.cudnn.deterministic)
    yield
    torch.use_deterministic_algorithms(before[0])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[1:]


def test_deterministic_sets_cublas_workspace_before_the_device_is_picked(monkeypatch, tmp_path, restore_determinism):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")  # recorded, so the test leaves the environment as it was
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    seen = {}

    def picked(device, timeout_s):
        seen.update(cublas=os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
                    deterministic=torch.are_deterministic_algorithms_enabled(), benchmark=torch.backends.cudnn.benchmark)
        raise KeyboardInterrupt("stop before training")

    monkeypatch.setattr(train_module, "init_distributed", picked)
    with pytest.raises(KeyboardInterrupt):
        train_module.train(load_config(None, [f"output_dir={tmp_path}", "train.deterministic=true"]))
    assert seen == {"cublas": backends.CUBLAS_WORKSPACE_CONFIG, "deterministic": True, "benchmark": False}
    with pytest.raises(KeyboardInterrupt):
        train_module.train(load_config(None, [f"output_dir={tmp_path}", "train.deterministic=false"]))
    assert seen["deterministic"] is False and seen["benchmark"] is True


@pytest.mark.parametrize("pool, stem_pool, refused", [("avg", True, True), ("avg", False, False), ("soft", True, False),
                                                      ("max", True, False)])
def test_deterministic_cuda_refuses_the_avg_stem_pool(pool, stem_pool, refused):
    model = build_model("r3d_18", 3, pool=pool, width=4, stem_pool=stem_pool)
    cuda = torch.device("cuda", 0)
    backends.check_deterministic_model(model, torch.device("cpu"), True)  # the CPU has a deterministic backward
    backends.check_deterministic_model(model, cuda, False)
    if refused:
        with pytest.raises(ConfigError, match=r"deterministic=true on CUDA: .*stem.*AvgPool3d.*model\.pool=soft"):
            backends.check_deterministic_model(model, cuda, True)
    else:
        backends.check_deterministic_model(model, cuda, True)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_torch_has_no_deterministic_cuda_backward_for_exactly_the_refused_modules(restore_determinism):
    torch.use_deterministic_algorithms(True)
    for module in (torch.nn.AvgPool3d(2), torch.nn.MaxPool3d(2), torch.nn.AdaptiveAvgPool3d(1)):
        x = torch.randn(1, 2, 4, 4, 4, device="cuda", requires_grad=True)
        refused = isinstance(module, backends.NONDETERMINISTIC_CUDA_BACKWARD)
        if refused:
            with pytest.raises(RuntimeError, match="deterministic"):
                module(x).sum().backward()
        else:
            module(x).sum().backward()


def test_softpool3d_test_picks_the_device_unless_told():
    stored = load_config(None, ["train.device=cpu"])
    container = OmegaConf.to_container(stored, resolve=True)
    assert evaluation_config(container).train.device == "auto"
    assert evaluation_config(container, ["train.device=cpu"]).train.device == "cpu"
    assert evaluation_config(container, ["data.num_clips=3"]).data.num_clips == 3


@pytest.mark.parametrize("world, drop_last", [(1, True), (3, True), (3, False)])
def test_sampler_yields_the_epoch_with_distributed_samplers_order(world, drop_last):
    for rank in range(world):
        reference = DistributedSampler(range(11), world, rank, shuffle=True, seed=4, drop_last=drop_last)
        ours = ResumableDistributedSampler(range(11), world, rank, shuffle=True, seed=4, drop_last=drop_last)
        reference.set_epoch(2)
        ours.set_epoch(2)
        assert list(ours) == [(2, index) for index in reference]
        ours.set_start(2)
        assert list(ours) == [(2, index) for index in list(reference)[2:]] and len(ours) == len(reference) - 2


class Reversed(ResumableDistributedSampler):
    def epoch_order(self):
        return list(reversed(range(len(self.dataset))))


def test_a_subclass_changes_the_epoch_order_alone():
    shards = []
    for rank in range(2):
        sampler = Reversed(range(7), 2, rank, shuffle=True, seed=0, drop_last=False)
        sampler.set_epoch(5)
        shards.append(list(sampler))
    assert shards == [[(5, 6), (5, 4), (5, 2), (5, 0)], [(5, 5), (5, 3), (5, 1), (5, 6)]]  # padded with its start


class EpochEcho(torch.utils.data.Dataset):
    """Item ``i`` is ``(epoch, i, worker pid)`` of the copy that reads it."""

    def __init__(self):
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return 6

    def __getitem__(self, index):
        return torch.tensor([self.epoch, index, os.getpid()])


def test_persistent_workers_draw_each_epoch_from_the_sampled_pairs():
    sampler = ResumableDistributedSampler(range(6), 1, 0, shuffle=True, seed=0, drop_last=True)
    loader = run_loader(EpochIndexed(EpochEcho()), sampler, batch_size=3, num_workers=2, device=torch.device("cpu"))
    seen = {}
    for epoch in range(3):
        sampler.set_epoch(epoch)
        rows = torch.cat(list(loader))
        seen[epoch] = rows
        assert rows[:, 0].tolist() == [epoch] * 6  # set_epoch on the main copy would not reach the workers
        assert rows[:, 1].tolist() == [index for _, index in sampler]
    assert set(seen[0][:, 2].tolist()) == set(seen[2][:, 2].tolist()) != {os.getpid()}  # the same workers


def test_unclipped_gradient_norm_measures_without_touching_the_gradients():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(3, 2)),
              torch.nn.Parameter(torch.zeros(2))]
    for p in params[:2]:
        p.grad = torch.randn_like(p) * 10
    grads = [p.grad.clone() for p in params[:2]]
    reference = torch.cat([g.double().flatten() for g in grads]).norm()
    norm = gradient_norm(params, 0.0)
    torch.testing.assert_close(norm.double(), reference, rtol=1e-6, atol=0)
    assert all(torch.equal(p.grad, g) for p, g in zip(params, grads))
    clipped = gradient_norm(params, 1.0)
    torch.testing.assert_close(clipped.double(), reference, rtol=1e-6, atol=0)
    torch.testing.assert_close(torch.cat([p.grad.double().flatten() for p in params[:2]]).norm(),
                               torch.tensor(1.0, dtype=torch.float64), rtol=1e-5, atol=0)


def test_step_summary_names_what_is_nonfinite():
    cpu = torch.device("cpu")
    good = reduce_step(torch.tensor(2.5, dtype=torch.float64), torch.tensor(3.0), True, torch.tensor(0), 1, cpu)
    assert (good.loss, good.grad_norm, good.problems) == (2.5, 3.0, [])
    bad = reduce_step(torch.tensor(float("nan")), torch.tensor(float("inf")), True, torch.tensor(2), 1, cpu)
    assert bad.problems == ["loss", "gradient norm", "BatchNorm running statistics"]
    scaled = reduce_step(torch.tensor(1.0), torch.tensor(float("inf")), False, torch.tensor(0), 1, cpu)
    assert scaled.problems == []  # a grad scaler handles its own overflows
