"""Shared fixtures: a demo video set generated once per test session."""
from __future__ import annotations

import gc
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import build_race
import pytest
import torch

from softpool3d.datasets import make_demo_dataset


def _share_the_cores_under_xdist() -> None:
    """Under pytest-xdist, torch in each of its processes, and in the processes their tests start, runs
    on that process's share of the cores (``OMP_NUM_THREADS``), unless the user set a thread count. At
    torch's default, a thread a core in each process, two processes on two cores keep four threads busy,
    and a thread that waits for a descheduled sibling spins: the model tests took three times the CPU."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if "PYTEST_XDIST_WORKER" not in os.environ or workers < 2 or "OMP_NUM_THREADS" in os.environ:
        return
    threads = max(1, len(os.sched_getaffinity(0)) // workers)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


_share_the_cores_under_xdist()


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Under pytest-xdist (``-n 2``, as CI runs), each test module runs whole in one process, so that
    its module fixtures (a reference training run, a SLURM cluster) are made once. The modules are
    handed out in the order :func:`pytest_collection_modifyitems` leaves them (xdist's own order, most
    tests first, would leave the few-test modules of long subprocess runs and compiles for the end, where
    one process runs them while the other has nothing left)."""
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False
    return LoadScopeScheduling(config, log)


MODULE_SECONDS = Path(__file__).with_name("module_seconds.json")
"""Each test module's seconds (setup, call and teardown of its tests) in a full ``pytest -n 2`` run, as
``--record-module-seconds`` writes them: the order in which the modules are handed out. Only the order
depends on it; a module it does not name counts as a second a test."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--record-module-seconds", action="store_true",
                     help=f"write each module's seconds in this run into {MODULE_SECONDS.name} (merged with the "
                          "modules this run left out), which orders the modules under pytest-xdist")


def _module(nodeid: str) -> str:
    return nodeid.split("::")[0]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order the modules by their recorded seconds, longest first (each keeps its own order), so that
    pytest-xdist's processes end together: the short modules at the end fill in around the long ones."""
    recorded = json.loads(MODULE_SECONDS.read_text()) if MODULE_SECONDS.exists() else {}
    seconds: dict[str, float] = {}
    first: dict[str, int] = {}
    for position, item in enumerate(items):
        module = _module(item.nodeid)
        first.setdefault(module, position)
        seconds[module] = recorded[module] if module in recorded else seconds.get(module, 0.0) + 1.0
    items.sort(key=lambda item: (-seconds[_module(item.nodeid)], first[_module(item.nodeid)]))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Freeze what collecting imported (torch, torchvision, pytorchvideo, the package: half a million
    objects), as the commands freeze their imports (softpool3d/startup.py): the full collections during
    the tests then skip them (in the model and op tests, 8 s of CPU in collections down to 2 s)."""
    gc.freeze()


class ModuleSeconds:
    """Adds up each module's test durations as their reports arrive (in pytest-xdist's controller, from
    both processes) and writes them into :data:`MODULE_SECONDS` when the session ends."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.seconds: dict[str, float] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        module = _module(report.nodeid)
        self.seconds[module] = self.seconds.get(module, 0.0) + report.duration

    def pytest_sessionfinish(self) -> None:
        recorded = json.loads(MODULE_SECONDS.read_text()) if MODULE_SECONDS.exists() else {}
        merged = {**recorded, **{module: round(total, 1) for module, total in self.seconds.items()}}
        kept = {module: merged[module] for module in sorted(merged) if (self.root / module).exists()}
        MODULE_SECONDS.write_text(json.dumps(kept, indent=1) + "\n")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--record-module-seconds") and not hasattr(config, "workerinput"):
        config.pluginmanager.register(ModuleSeconds(config.rootpath), "module-seconds")


def _selects_the_build_race_test(config: pytest.Config) -> bool:
    """Whether the session runs tests/op/test_extension.py's build race: its arguments name that file
    or a folder above it, and no ``-m`` or ``-k`` narrows them."""
    if config.option.markexpr or config.option.keyword:
        return False
    target = (config.rootpath / "tests" / "op" / "test_extension.py").resolve()
    for arg in config.args:
        path = (config.invocation_params.dir / arg.split("::")[0]).resolve()
        if path == target or path in target.parents:
            return True
    return False


def pytest_sessionstart(session: pytest.Session) -> None:
    """When the extension cache lacks the CPU build (a fresh machine, as in CI), the build every kernel
    test needs is started here, before the tests (and pytest-xdist's workers), as the race of two
    building processes that tests/op/test_extension.py checks: one build serves both (see build_race)."""
    config = session.config
    if (hasattr(config, "workerinput") or os.environ.get("SOFTPOOL3D_DISABLE_EXTENSION") == "1"
            or not _selects_the_build_race_test(config)):
        return
    from torch.utils import cpp_extension

    from softpool3d import extension

    name = extension.build_name(with_cuda=False)
    directory = Path(cpp_extension._get_build_directory(name, False))
    if (directory / f"{name}.so").exists():
        return
    results = Path(tempfile.mkdtemp(prefix="softpool3d-build-race-"))
    build_race.start(directory.parent, results)
    os.environ[build_race.RESULTS_ENV] = str(results)


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not hasattr(session.config, "workerinput") and build_race.RESULTS_ENV in os.environ:
        shutil.rmtree(os.environ.pop(build_race.RESULTS_ENV), ignore_errors=True)


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


TINY_CLIPS = ("data.num_frames=4", "data.sampling_rate=2", "data.crop_size=32", "data.train_scale=[32,40]",
              "data.test_scale=32", "data.num_clips=2", "data.num_crops=1", "data.test_batch_size=4",
              "data.num_workers=0", "train.device=cpu")
"""Config overrides for 4-frame 32x32 clips, 2 test views a video, on the CPU."""


@pytest.fixture(scope="session")
def make_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    """``make(model, classes, *overrides) -> Path``: a freshly initialised ``model`` saved as a training
    checkpoint in the real format (``training_checkpoint`` + ``save_checkpoint``) with the demo config,
    :data:`TINY_CLIPS` and ``overrides``; what prediction and export read."""
    import torch

    from softpool3d.engine import builders
    from softpool3d.engine.checkpoint import save_checkpoint
    from softpool3d.engine.training_state import Progress, rng_state, training_checkpoint
    from softpool3d.engine.config import load_config, to_container

    folder = tmp_path_factory.mktemp("checkpoints")

    def make(model: str, classes: list[str], *overrides: str) -> Path:
        cfg = load_config(None, [f"model.name={model}", *TINY_CLIPS, *overrides])
        torch.manual_seed(0)
        network = builders.build_architecture(cfg, len(classes))
        optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        state = training_checkpoint(network, optimizer, scheduler, None, Progress(), 0, to_container(cfg),
                                    list(classes), [rng_state()])
        return save_checkpoint(state, folder / f"{model}-{len(list(folder.iterdir()))}.pt")

    return make
