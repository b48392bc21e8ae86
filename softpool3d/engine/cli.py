"""Command lines of ``softpool3d-train`` / ``tools/train.py``, ``softpool3d-test`` / ``tools/test.py``,
``softpool3d-predict`` / ``tools/predict.py`` and ``softpool3d-export`` / ``tools/export.py``.

The arguments are parsed before anything imports torch (the engine is imported inside each
command's job), so ``--help`` answers at once. A user error (a bad config value, a missing file, a
damaged checkpoint, bad data, ...: the types of :func:`user_errors`) ends the command with one ``ERROR`` line naming the file, key or value and
exit code 2. ``--debug`` or ``SOFTPOOL3D_DEBUG=1`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Optional, Sequence

from softpool3d.engine.export_formats import EXPORT_FORMATS

logger = logging.getLogger("softpool3d")


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that are the user's to fix: one ``ERROR`` line and exit code 2, no traceback.

    Imported here, after the arguments are parsed, so that ``--help`` never imports torch.
    """
    from softpool3d.datasets import AnnotationError
    from softpool3d.engine.checkpoint import CheckpointError
    from softpool3d.engine.config import ConfigError
    from softpool3d.engine.evaluate import UnreadableVideosError
    from softpool3d.engine.nonfinite import NonFiniteLossError
    from softpool3d.engine.run_lock import RunDirError

    return (
        ConfigError,  # a config value out of range, an unknown name, a missing path, no CUDA device
        CheckpointError,  # an unreadable checkpoint, or one of another model or width
        AnnotationError,  # a malformed annotation file or line
        FileNotFoundError,  # a missing annotation file or dataset folder, a folder without videos
        UnreadableVideosError,  # more than data.max_bad_fraction of the val/test videos cannot be decoded
        NonFiniteLossError,  # a NaN/inf loss or gradient under train.nonfinite=stop, or too many skips in a row
        RunDirError,  # the run directory is locked by another job, or cannot be written
    )


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
    errors = user_errors()
    try:
        return job()
    except errors as error:
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
        from softpool3d.engine.config import check_runnable, load_config
        from softpool3d.engine.splits import split_label
        from softpool3d.engine.train import train

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
        from softpool3d.engine.test_command import run_test

        run_test(args.checkpoint, args.overrides, args.out)
        return 0

    return _run_reporting_user_errors(job, debug)


def predict_main(argv: Optional[Sequence[str]] = None) -> int:
    """``softpool3d-predict CHECKPOINT INPUT... [options]``: exit 0, 1 when some video could not be
    decoded, 2 on a user error (a missing or damaged checkpoint, a folder without videos)."""
    parser = argparse.ArgumentParser(
        description="Predict the action classes of videos with a trained checkpoint: a table on stdout, and "
                    "optionally a .json/.jsonl/.csv file, pooled features and videos with the prediction drawn on.")
    parser.add_argument("checkpoint", help="a checkpoint written by softpool3d-train")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="video files, folders (searched recursively) or @list.txt (one path a line)")
    parser.add_argument("--top-k", type=int, default=5, help="classes listed per video (default: 5)")
    parser.add_argument("--clips", type=int, default=None, help="clips per video or window (default: the config's)")
    parser.add_argument("--crops", type=int, default=None,
                        help="crops per clip, 1 or 3 (default: the config's)")
    parser.add_argument("--window", type=float, default=None, metavar="SECONDS",
                        help="also predict on windows of this many seconds; the video's top-k averages them")
    parser.add_argument("--stride", type=float, default=None, metavar="SECONDS",
                        help="seconds between window starts (default: --window)")
    parser.add_argument("--out", default=None, help="write the predictions to FILE.json, FILE.jsonl or FILE.csv")
    parser.add_argument("--features", default=None, metavar="DIR",
                        help="write each video's pooled features as DIR/<relative path>.npy ((D,), or (windows, D))")
    parser.add_argument("--render", default=None, metavar="DIR",
                        help="write each video again under DIR with its prediction drawn on the frames")
    parser.add_argument("--batch-size", type=int, default=None, help="views per forward pass (default: the config's "
                                                                     "data.test_batch_size)")
    parser.add_argument("--workers", type=int, default=2, help="decoding processes (default: 2; 0: in this process)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    _add_debug(parser)
    args = parser.parse_args(argv)
    debug = _debug_requested(args)
    setup_logging(debug)

    def job() -> int:
        from softpool3d.engine.predict_command import run_predict

        return run_predict(args.checkpoint, args.inputs, top_k=args.top_k, num_clips=args.clips,
                           num_crops=args.crops, window=args.window, stride=args.stride, out=args.out,
                           features_dir=args.features, render_dir=args.render, batch_size=args.batch_size,
                           workers=args.workers, device=args.device)

    return _run_reporting_user_errors(job, debug)


def export_main(argv: Optional[Sequence[str]] = None) -> int:
    """``softpool3d-export CHECKPOINT --format onnx|pt2 --out FILE``: exit 0, 1 when the exported model
    differs from PyTorch beyond the tolerance, 2 on a user error."""
    parser = argparse.ArgumentParser(
        description="Export a checkpoint's model to ONNX (standard ops only) or a torch.export program (.pt2), "
                    "then check the file against PyTorch on a clip.")
    parser.add_argument("checkpoint", help="a checkpoint written by softpool3d-train")
    parser.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    parser.add_argument("--out", required=True, help="the file to write")
    parser.add_argument("--device", default="cpu", help="where the model is traced (default: cpu)")
    _add_debug(parser)
    args = parser.parse_args(argv)
    debug = _debug_requested(args)
    setup_logging(debug)

    def job() -> int:
        from softpool3d.engine.export import run_export

        return run_export(args.checkpoint, args.format, args.out, args.device)

    return _run_reporting_user_errors(job, debug)
