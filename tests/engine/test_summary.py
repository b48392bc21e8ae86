"""The start-up summary lists the pools replace_pooling swapped in a torchvision network, and says
nothing of it for the package's own backbones (whose pools are built of kind model.pool)."""
import logging

import pytest
import torch

from softpool3d.engine.config import load_config
from softpool3d.engine.processes.distributed import DistInfo
from softpool3d.engine.training.summary import log_startup_summary
from softpool3d.models import build_model


class _Videos:
    """What the summary reads of a dataset."""

    num_videos, classes, num_missing, num_views, source = 4, ["a", "b"], 0, 1, None

    def skipped_files(self):
        return []


@pytest.mark.parametrize("name, width, lines", [
    ("torchvision.r3d_18", None, ["pooling -> soft: 1 layer(s) replaced, 0 left",
                                "replaced avgpool: AdaptiveAvgPool3d(output_size=(1, 1, 1)) -> SoftAdaptivePool3d"]),
    ("r3d_18", 4, []),
])
def test_summary_prints_the_pool_replacement_report(caplog, name, width, lines):
    cfg = load_config(overrides=[f"model.name={name}", f"model.width={width or 'null'}", "data.num_frames=4",
                                 "data.crop_size=32"])
    kw = {"width": width} if width else {}
    datasets = {"train": _Videos(), "val": _Videos(), "test": None}
    with caplog.at_level(logging.INFO, logger="softpool3d"):
        log_startup_summary(cfg, DistInfo(0, 1, 0, torch.device("cpu")), datasets, build_model(name, 2, **kw), 3, "none",
                            "train.amp=none")
    summary = next(record.getMessage() for record in caplog.records if record.getMessage().startswith("run "))
    model_line = next(i for i, line in enumerate(summary.splitlines()) if line.startswith(f"  model {name}"))
    following = summary.splitlines()[model_line + 1 : model_line + 1 + len(lines)]
    assert [line.strip()[: len(want)] for line, want in zip(following, lines)] == lines
    assert ("pooling ->" in summary) == bool(lines)
