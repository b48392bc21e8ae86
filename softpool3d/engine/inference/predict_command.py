"""``softpool3d-predict``: a :class:`~softpool3d.engine.inference.predict.Recognizer` on the videos named, a table on
stdout, and the files asked for (predictions, features, rendered videos)."""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from tqdm import tqdm

from softpool3d.datasets import NUM_CROPS, start_worker_server
from softpool3d.engine.config import ConfigError
from softpool3d.engine.inference.predict import Recognizer, decoding_workers
from softpool3d.engine.inference.prediction_outputs import format_table, output_format, write_features, write_output
from softpool3d.engine.inference.render import render
from softpool3d.engine.inference.video_inputs import collect_videos

logger = logging.getLogger(__name__)


def run_predict(checkpoint: str, inputs: Sequence[str], *, top_k: int = 5, num_clips: Optional[int] = None,
                num_crops: Optional[int] = None, window: Optional[float] = None, stride: Optional[float] = None,
                out: Optional[str] = None, features_dir: Optional[str] = None, render_dir: Optional[str] = None,
                batch_size: Optional[int] = None, workers: int = 0, device: Optional[str] = None,
                overrides: Sequence[str] = (), runtime: str = "eager", onnx: Optional[str] = None) -> int:
    """``softpool3d-predict``: the table on stdout, and ``out`` / ``features_dir`` / ``render_dir`` if given.
    Returns 1 when some video could not be decoded (each named in a warning), else 0."""
    if out is not None:
        output_format(out)  # before any work
    if stride is not None and window is None:
        raise ConfigError("--stride needs --window")
    for name, value in (("--top-k", top_k), ("--clips", num_clips), ("--batch-size", batch_size),
                        ("--window", window), ("--stride", stride)):
        if value is not None and value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    if workers < 0:
        raise ConfigError(f"--workers must be 0 or more, got {workers}")
    if num_crops is not None and num_crops not in NUM_CROPS:
        raise ConfigError(f"--crops must be one of {', '.join(map(str, NUM_CROPS))}, got {num_crops}")
    videos = collect_videos(inputs)
    if decoding_workers(workers, len(videos), len(videos)) > 0:
        start_worker_server()  # the workers' fork server imports torch while the model loads
    recognizer = Recognizer.from_checkpoint(checkpoint, device, overrides, runtime, onnx)
    logger.info("%s: %s (%d classes) on %s (%s), %d videos", checkpoint, recognizer.cfg.model.name,
                len(recognizer.classes), recognizer.device, runtime, len(videos))
    predictions = recognizer.predict_videos(videos, num_clips=num_clips, num_crops=num_crops, window=window,
                                            stride=stride, batch_size=batch_size, workers=workers,
                                            features=features_dir is not None, progress=len(videos) > 3)
    failed = [p for p in predictions if p.error is not None]
    for prediction in failed:
        logger.warning("cannot predict on %s: %s", prediction.video, prediction.error)
    sys.stdout.write(format_table(predictions, recognizer.classes, top_k))
    sys.stdout.flush()
    if out is not None:
        write_output(Path(out), checkpoint, recognizer.classes, predictions, top_k)
        logger.info("predictions written to %s", out)
    if features_dir is not None:
        written = write_features(Path(features_dir), predictions)
        logger.info("%d feature files written under %s", len(written), features_dir)
    if render_dir is not None:
        good = [p for p in predictions if p.error is None]
        for prediction in tqdm(good, desc="render", disable=len(good) <= 3, leave=False, dynamic_ncols=True):
            render(Path(render_dir), prediction, recognizer.classes)
        logger.info("%d videos rendered under %s", len(good), render_dir)
    if failed:
        logger.warning("%d of %d videos could not be decoded", len(failed), len(predictions))
    return 1 if failed else 0
