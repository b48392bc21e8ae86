"""Command lines of ``softpool3d-train`` / ``tools/train.py`` and ``softpool3d-test`` / ``tools/test.py``.

A user error (a bad config value, a missing file, a damaged checkpoint, bad data, ...: the types in
:data:`USER_ERRORS`) ends the command with one ``ERROR`` line naming the file, key or value and
exit code 2. ``--debug`` or ``SOFTPOOL3D_DEBUG=1`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Optional, Sequence

from softpool3d.engine.checkpoint import CheckpointError
from softpool3d.engine.config import ConfigError, check_runnable, load_config
from softpool3d.datasets import AnnotationError
from softpool3d.engine.evaluate import UnreadableVideosError, run_test
from softpool3d.engine.nonfinite import NonFiniteLossError
from softpool3d.engine.run_lock import RunDirError
from softpool3d.engine.summary import split_label
from softpool3d.engine.train import train

logger = logging.getLogger("softpool3d")

USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,  # a config value out of range, an unknown name, a missing path, no CUDA device
    CheckpointError,  # an unreadable checkpoint, or one of another model or width
    AnnotationError,  # a malformed annotation file or line
    FileNotFoundError,  # a missing annotation file or dataset folder
    UnreadableVideosError,  # more than data.max_bad_fraction of the val/test videos cannot be decoded
    NonFiniteLossError,  # a NaN/inf loss or gradient under train.nonfinite=stop, or too many skips in a row
    RunDirError,  # the run directory is locked by another job, or cannot be written
)
"""The exceptions that are the user's to fix: one ``ERROR`` line and exit code 2, no traceback."""

USER_ERROR_EXIT_CODE = 2


def setup_logging(debug: bool = False) -> None:
    """INFO messages on stdout from rank 0 (DEBUG with ``debug``); warnings only from the other ranks."""
    rank = int(os.environ.get("RANK", "0"))
    level = (logging.DEBUG if debug else logging.INFO) if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(message)s" if rank == 0 else f"[rank {rank}] %(message)s",
                        datefmt="%H:%M:%S")


def _debug_requested(args: argparse.Namespace) -> bool:
    return args.debug or os.environ.get("SOFTPOOL3D_DEBUG", "") not in ("", "0")


def _run_reporting_user_errors(job: Callable[[], int], debug: bool) -> int:
    """``job()``, with a user error turned into one ``ERROR`` line and exit code 2 (re-raised with ``debug``)."""
    try:
        return job()
    except USER_ERRORS as error:
        if debug:
            raise
        logger.error("%s", " ".join(str(error).split("\n")) or type(error).__name__)
        return USER_ERROR_EXIT_CODE


def _add_debug(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help="show tracebacks of user errors and DEBUG messages (also SOFTPOOL3D_DEBUG=1)")


def train_main(argv: Optional[Sequence[str]] = None) -> int:
    """``softpool3d-train [CONFIG] [key=value ...]``; CONFIG is a YAML file or the name of a shipped
    config (e.g. ``ucf101/x3d_s_soft``), by default the demo."""
    parser = argparse.ArgumentParser(description="Train a video action recognizer (run under torchrun for DDP).")
    parser.add_argument("config", nargs="?", default=None,
                        help="a YAML file, or the name of a shipped config such as ucf101/x3d_s_soft (default: demo)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=0.05 train.epochs=3")
    _add_debug(parser)
    args = parser.parse_args(argv)
    if args.config is not None and "=" in args.config:
        args.overrides.insert(0, args.config)
        args.config = None
    debug = _debug_requested(args)
    setup_logging(debug)

    def job() -> int:
        cfg = load_config(args.config, args.overrides)
        check_runnable(cfg)
        result = train(cfg)
        if int(os.environ.get("RANK", "0")) == 0:
            figures = []
            if result.val_top1 is not None:
                figures.append(f"{split_label(cfg, 'val')} clip top-1 {100 * result.val_top1:.2f}% (last validation)")
            if result.test is not None:
                figures.append(f"{split_label(cfg, 'test')} video top-1 {100 * result.test.top1:.2f}%, "
                               f"top-5 {100 * result.test.top5:.2f}% ({result.test.coverage})")
            if figures:
                logger.info("%s", "; ".join(figures))
            logger.info("checkpoint: %s", result.last_checkpoint.resolve())
            logger.info("TensorBoard logs: %s  (tensorboard --logdir %s)", result.tensorboard_dir.resolve(),
                        result.tensorboard_dir)
        return 0

    return _run_reporting_user_errors(job, debug)


def test_main(argv: Optional[Sequence[str]] = None) -> int:
    """``softpool3d-test CHECKPOINT [--out DIR] [key=value ...]``."""
    parser = argparse.ArgumentParser(description="Multi-view evaluation of a checkpoint (run under torchrun for DDP).")
    parser.add_argument("checkpoint", help="a checkpoint written by tools/train.py (e.g. runs/demo/checkpoints/best.pt)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.num_clips=5 data.root=...")
    parser.add_argument("--out", default=None,
                        help="folder for predictions.csv/.json (default: <run>/test-<checkpoint name>/ for a "
                             "checkpoint in <run>/checkpoints/; required otherwise)")
    _add_debug(parser)
    args = parser.parse_args(argv)
    debug = _debug_requested(args)
    setup_logging(debug)

    def job() -> int:
        run_test(args.checkpoint, args.overrides, args.out)
        return 0

    return _run_reporting_user_errors(job, debug)
