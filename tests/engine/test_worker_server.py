"""Training starts its workers' fork server before it prepares its data and builds its model, and
only when it has workers (:func:`softpool3d.datasets.start_worker_server`)."""
import pytest
import torch

from softpool3d.engine import builders
from softpool3d.engine.config import load_config
from softpool3d.engine.processes.distributed import DistInfo


class _DataPrepared(Exception):
    """Raised where training prepares its data, the step after the server's start."""


@pytest.mark.parametrize("workers, calls", [(2, ["server"]), (0, [])])
def test_training_starts_the_worker_server_before_its_data_when_it_has_workers(workers, calls, demo_root, tmp_path,
                                                                               monkeypatch):
    seen = []
    monkeypatch.setattr(builders, "start_worker_server", lambda: seen.append("server"))
    monkeypatch.setattr(builders, "prepare_data", lambda cfg: (_ for _ in ()).throw(_DataPrepared()))
    cfg = load_config(None, [f"data.root={demo_root}", "data.make_demo=false", f"data.num_workers={workers}",
                             f"output_dir={tmp_path}", "train.device=cpu"])
    with pytest.raises(_DataPrepared):
        builders.build_training(cfg, DistInfo(0, 1, 0, torch.device("cpu")))
    assert seen == calls
