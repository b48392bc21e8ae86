"""Command lines of ``softpool3d-train`` / ``tools/train.py``, ``softpool3d-test`` / ``tools/test.py``,
``softpool3d-predict`` / ``tools/predict.py``, ``softpool3d-export`` / ``tools/export.py`` and
``softpool3d-explain`` / ``tools/explain.py``.

The arguments are parsed before anything imports torch (the engine is imported inside each
command's job), so ``--help`` answers at once. A user error (a bad config value, a missing file, a
damaged checkpoint, bad data, ...: the types of :func:`user_errors`) ends the command with one ``ERROR`` line naming the file, key or value and
exit code 2. ``--debug`` or ``SOFTPOOL3D_DEBUG=1`` shows the traceback instead. A training job
stopped by SIGTERM, SIGINT or SIGUSR1 after writing its checkpoint exits with 75
(:data:`softpool3d.engine.processes.preemption.PREEMPTED_EXIT_CODE`); rank 0 then also writes the file
``SOFTPOOL3D_PREEMPTED_FILE`` names, if set (torchrun turns its workers' 75 into its own 1).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Optional, Sequence

from softpool3d.engine.export_formats import EXPORT_FORMATS
from softpool3d.startup import imports_frozen

logger = logging.getLogger("softpool3d")


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that are the user's to fix: one ``ERROR`` line and exit code 2, no traceback.

    Imported here, after the arguments are parsed, so that ``--help`` never imports torch.
    """
    from softpool3d.datasets import AnnotationError
    from softpool3d.engine.checkpoint import CheckpointError
    from softpool3d.engine.config import ConfigError
    from softpool3d.engine.evaluation.evaluate import UnreadableVideosError
    from softpool3d.engine.training.nonfinite import NonFiniteLossError
    from softpool3d.engine.processes.run_lock import RunDirError

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


def setup_logging(debug: bool = False, stream=None) -> None:
    """INFO messages on ``stream`` (default stdout) from rank 0 (DEBUG with ``debug``); warnings only from
    the other ranks.

    A task of ``srun`` (no torchrun) first takes its rank and peers from SLURM's variables
    (:func:`~softpool3d.engine.processes.slurm_env.adopt_slurm_task_environment`)."""
    from softpool3d.engine.processes.slurm_env import adopt_slurm_task_environment

    adopt_slurm_task_environment()
    rank = int(os.environ.get("RANK", "0"))
    level = (logging.DEBUG if debug else logging.INFO) if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, stream=sys.stdout if stream is None else stream,
                        format="%(asctime)s %(levelname)s %(message)s" if rank == 0 else f"[rank {rank}] %(message)s",
                        datefmt="%H:%M:%S")


def _debug_requested(args: argparse.Namespace) -> bool:
    return args.debug or os.environ.get("SOFTPOOL3D_DEBUG", "") not in ("", "0")


def _run_reporting_user_errors(job: Callable[[], int], debug: bool) -> int:
    """``job()``, with a user error turned into one ``ERROR`` line and exit code 2 (re-raised with ``debug``).

    The engine's imports (torch's among them, through :func:`user_errors`) are made first, with the
    garbage collector paused and what they create frozen (:func:`~softpool3d.startup.imports_frozen`)."""
    with imports_frozen():
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
        from softpool3d.engine.processes.preemption import PREEMPTED_EXIT_CODE, Preempted
        from softpool3d.engine.splits import split_label
        from softpool3d.engine.training.train import train

        cfg = load_config(args.config, args.overrides)
        check_runnable(cfg)
        try:
            result = train(cfg)
        except Preempted as stop:
            logger.warning("%s", stop)
            marker = os.environ.get("SOFTPOOL3D_PREEMPTED_FILE")
            if marker and int(os.environ.get("RANK", "0")) == 0:  # for wrappers that see no exit status (torchrun)
                with open(marker, "w") as file:
                    file.write(f"{stop}\n")
            return PREEMPTED_EXIT_CODE
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
        from softpool3d.engine.evaluation.test_command import run_test

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
    parser.add_argument("inputs", nargs="*", metavar="INPUT",
                        help="video files, folders (searched recursively) or @list.txt (one path a line)")
    parser.add_argument("--stream", default=None, metavar="URL",
                        help="predict live on rtsp://, udp://, http(s)://, a camera /dev/videoN or a file played at "
                             "its frame rate: one JSON line per window (--window, default 2 s, every --stride, "
                             "default 1 s), skipping windows rather than falling behind")
    parser.add_argument("--stall-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="with --stream: seconds without a frame before the stream counts as stalled (default: 10)")
    parser.add_argument("--reconnect", type=int, default=3, metavar="N",
                        help="with --stream: times a stalled or failed live stream is opened again (default: 3)")
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
                        help="write each video again under DIR with its prediction drawn on the frames "
                             "(with --stream: the annotated stream to the file OUT.mp4)")
    parser.add_argument("--batch-size", type=int, default=None, help="views per forward pass (default: the config's "
                                                                     "data.test_batch_size)")
    parser.add_argument("--workers", type=int, default=2, help="decoding processes (default: 2; 0: in this process)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--runtime", default="eager", choices=("eager", "onnx"),
                        help="eager: PyTorch; onnx: onnxruntime on the CPU, from --onnx FILE or the checkpoint "
                             "exported once into the cache (default: eager)")
    parser.add_argument("--onnx", default=None, metavar="FILE", help="the .onnx file --runtime onnx runs "
                                                                     "(written by softpool3d-export)")
    _add_debug(parser)
    args = parser.parse_args(argv)
    if bool(args.inputs) == bool(args.stream):
        parser.error("give either INPUT... or --stream URL")
    debug = _debug_requested(args)
    setup_logging(debug, sys.stderr if args.stream and args.out is None else None)

    def job() -> int:
        device = "cpu" if args.runtime == "onnx" and args.device is None else args.device
        if args.stream:
            from softpool3d.engine.inference.stream import run_stream

            return run_stream(args.checkpoint, args.stream, window=args.window or 2.0, stride=args.stride or 1.0,
                              top_k=args.top_k, num_clips=args.clips, num_crops=args.crops, out=args.out,
                              render_path=args.render, stall_timeout=args.stall_timeout, reconnects=args.reconnect,
                              device=device, runtime=args.runtime, onnx=args.onnx)
        from softpool3d.engine.inference.predict_command import run_predict

        return run_predict(args.checkpoint, args.inputs, top_k=args.top_k, num_clips=args.clips,
                           num_crops=args.crops, window=args.window, stride=args.stride, out=args.out,
                           features_dir=args.features, render_dir=args.render, batch_size=args.batch_size,
                           workers=args.workers, device=device, runtime=args.runtime, onnx=args.onnx)

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
    parser.add_argument("--dynamic", action="store_true",
                        help="ONNX with dynamic clip length and crop size (checked at two of each); models whose "
                             "graph fixes the input size (MViT) refuse, saying why")
    _add_debug(parser)
    args = parser.parse_args(argv)
    debug = _debug_requested(args)
    setup_logging(debug)

    def job() -> int:
        from softpool3d.engine.inference.export import run_export

        return run_export(args.checkpoint, args.format, args.out, args.device, dynamic=args.dynamic)

    return _run_reporting_user_errors(job, debug)


def explain_main(argv: Optional[Sequence[str]] = None) -> int:
    """``softpool3d-explain CHECKPOINT VIDEO... --out DIR``: exit 0, 1 when some video could not be decoded,
    2 on a user error."""
    parser = argparse.ArgumentParser(
        description="Pictures of why: the Grad-CAM of each video's top class on the model's last stage (a heat-map "
                    "video and a PNG contact sheet) and what one SoftPool layer keeps of its input (a PNG).")
    parser.add_argument("checkpoint", help="a checkpoint written by softpool3d-train")
    parser.add_argument("inputs", nargs="+", metavar="VIDEO",
                        help="video files, folders (searched recursively) or @list.txt (one path a line)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for <video>-gradcam.mp4/.png and "
                                                                    "<video>-softpool.png")
    parser.add_argument("--top-k", type=int, default=3, help="classes named on the contact sheet (default: 3)")
    parser.add_argument("--class", dest="class_name", default=None, metavar="NAME",
                        help="explain this class instead of each video's top-1")
    parser.add_argument("--pool-layer", default=None, metavar="NAME",
                        help="the SoftPool layer to draw, by module name (default: the model's first)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    _add_debug(parser)
    args = parser.parse_args(argv)
    debug = _debug_requested(args)
    setup_logging(debug)

    def job() -> int:
        from softpool3d.engine.inference.explain_command import run_explain

        return run_explain(args.checkpoint, args.inputs, args.out, top_k=args.top_k, class_name=args.class_name,
                           pool_layer=args.pool_layer, device=args.device)

    return _run_reporting_user_errors(job, debug)
