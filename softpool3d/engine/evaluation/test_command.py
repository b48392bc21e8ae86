"""``softpool3d-test``: a checkpoint evaluated on its test split, with ``data.num_clips x data.num_crops``
views a video, its predictions written beside its run."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

from softpool3d.engine import builders
from softpool3d.engine.checkpoint import load_checkpoint
from softpool3d.engine.config import ConfigError, check_runnable
from softpool3d.engine.evaluation.evaluate import EvalResult
from softpool3d.engine.evaluation.testing import test_model
from softpool3d.engine.evaluation.trained_model import evaluation_config, trained_model
from softpool3d.engine.processes.amp import precision_name, resolve_amp, slow_bf16_warning
from softpool3d.engine.processes.distributed import cleanup, init_distributed
from softpool3d.engine.run_layout import RunLayout

logger = logging.getLogger(__name__)


def test_output_dir(checkpoint: str | Path, out: Optional[str | Path] = None) -> Path:
    """Where ``tools/test.py`` writes: ``out`` if given, else ``<run>/test-<checkpoint stem>/`` for a
    checkpoint in ``<run>/checkpoints/`` (beside the run's own ``test/``, never over it). A checkpoint
    elsewhere needs ``out`` (:class:`ConfigError`)."""
    if out is not None:
        return Path(out)
    layout = RunLayout.of_checkpoint(checkpoint)
    if layout is None:
        raise ConfigError(f"checkpoint {checkpoint} is not in a run's checkpoints/ folder, so there is no run "
                          f"directory to write to; choose one with --out DIR")
    return layout.test_of(checkpoint)


def run_test(checkpoint: str, overrides: Sequence[str] = (), out: Optional[str | Path] = None) -> EvalResult:
    """``tools/test.py``: evaluate ``checkpoint`` on ``data.test_split`` with ``data.num_clips x data.num_crops``
    views; the checkpoint's config with ``overrides`` applied (:func:`evaluation_config`: on the GPU when
    there is one, whatever device trained it). Rank 0 writes the predictions into
    :func:`test_output_dir` and logs the metrics (:func:`test_model`)."""
    directory = test_output_dir(checkpoint, out)
    state = load_checkpoint(checkpoint)
    cfg = evaluation_config(state["config"], overrides, checkpoint)
    check_runnable(cfg, training=False)
    dist_info = init_distributed(cfg.train.device)
    builders.set_threads(cfg)
    try:
        if dist_info.is_main:
            directory.mkdir(parents=True, exist_ok=True)
        dataset = builders.build_dataset(cfg, cfg.data.test_split, train=False,
                                         num_clips=cfg.data.num_clips, num_crops=cfg.data.num_crops)
        if list(dataset.classes) != list(state["classes"]):
            raise ConfigError(f"the classes of {cfg.data.dataset} at {cfg.data.root} ({len(dataset.classes)}: "
                              f"{', '.join(dataset.classes[:5])}, ...) differ from those checkpoint {checkpoint} was "
                              f"trained on ({len(state['classes'])}: {', '.join(state['classes'][:5])}, ...)")
        model = trained_model(cfg, state, checkpoint).to(dist_info.device)
        amp, reason = resolve_amp(cfg.train.amp, dist_info.device)
        warning = slow_bf16_warning(cfg.train.amp, dist_info.device)
        if dist_info.is_main:
            logger.info("%s: %d videos x %d views on %s, precision %s (%s)", checkpoint, dataset.num_videos,
                        dataset.num_views, dist_info.device, precision_name(amp), reason)
            if warning is not None:
                logger.warning("%s", warning)
        return test_model(model, dataset, dist_info, amp, builders.build_normalizer(cfg), directory,
                          f"test (split '{cfg.data.test_split}')", batch_size=cfg.data.test_batch_size,
                          num_workers=cfg.data.num_workers, max_bad_fraction=cfg.data.max_bad_fraction)
    finally:
        cleanup()
