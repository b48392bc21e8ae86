"""Command lines of ``tools/train.py`` and ``tools/test.py``."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

from softpool3d.checkpoint import CheckpointError
from softpool3d.config import ConfigError, load_config
from softpool3d.evaluate import run_test
from softpool3d.nonfinite import NonFiniteLossError
from softpool3d.run_lock import RunDirError
from softpool3d.train import train

logger = logging.getLogger("softpool3d")


def setup_logging() -> None:
    """INFO messages on stdout from rank 0; warnings only from the other ranks."""
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(message)s" if rank == 0 else f"[rank {rank}] %(message)s",
                        datefmt="%H:%M:%S")


def train_main(argv: Optional[Sequence[str]] = None) -> int:
    """``train.py [CONFIG] [key=value ...]``; CONFIG defaults to ``configs/demo.yaml``."""
    parser = argparse.ArgumentParser(description="Train a video action recognizer (run under torchrun for DDP).")
    parser.add_argument("config", nargs="?", default=None, help="YAML config (default: configs/demo.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=0.05 train.epochs=3")
    args = parser.parse_args(argv)
    if args.config is not None and "=" in args.config:
        args.overrides.insert(0, args.config)
        args.config = None
    setup_logging()
    try:
        cfg = load_config(args.config, args.overrides)
        result = train(cfg)
    except (ConfigError, CheckpointError, NonFiniteLossError, RunDirError) as error:
        logger.error("%s", error)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        if result.test is not None:
            logger.info("video top-1 on the %s split: %.2f%% (%d videos)", cfg.data.test_split,
                        100 * result.test.top1, result.test.num_videos)
        logger.info("checkpoint: %s", result.last_checkpoint.resolve())
        logger.info("TensorBoard logs: %s  (tensorboard --logdir %s)", result.tensorboard_dir.resolve(),
                    result.tensorboard_dir)
    return 0


def test_main(argv: Optional[Sequence[str]] = None) -> int:
    """``test.py CHECKPOINT [key=value ...]``."""
    parser = argparse.ArgumentParser(description="Multi-view evaluation of a checkpoint (run under torchrun for DDP).")
    parser.add_argument("checkpoint", help="a checkpoint written by tools/train.py (e.g. runs/demo/checkpoints/best.pt)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.num_clips=5 data.root=...")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        run_test(args.checkpoint, args.overrides)
    except (ConfigError, CheckpointError) as error:
        logger.error("%s", error)
        return 2
    return 0
