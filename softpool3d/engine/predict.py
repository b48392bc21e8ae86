"""Prediction on new videos: top-k classes, pooled features, windows of long videos, rendered videos.

:class:`Recognizer` holds a checkpoint's model, config and class names. Its clips are cut exactly as
``softpool3d-test`` cuts the test split's (one :class:`~softpool3d.datasets.ClipDataset` test path,
built by :func:`softpool3d.engine.builders.build_test_clips`) and batches of views become logits in
:func:`softpool3d.engine.evaluate.forward_views`, as in evaluation. A video's probabilities are
the softmax averaged over its views; with windows (``window`` / ``stride`` seconds) each window
gets ``num_clips x num_crops`` views spread over its own frames, and the video's probabilities
average the windows'. Features are the input of the model's classifier (``get_classifier()``:
the globally pooled, for X3D also projected, backbone features), averaged like the probabilities.

Decoding runs in DataLoader workers: a first pass reads each video's frame count and rate, a
second decodes the views. A video that cannot be decoded gets :attr:`Prediction.error` and the
others go on.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from softpool3d.datasets import ClipDataset, OpenVideo, VideoReadError
from softpool3d.datasets.annotations import VIDEO_EXTENSIONS
from softpool3d.datasets.atomic import atomic_writer
from softpool3d.engine import builders
from softpool3d.engine.checkpoint import load_checkpoint, load_model_state
from softpool3d.engine.config import ConfigError
from softpool3d.engine.evaluate import evaluation_config, forward_views
from softpool3d.engine.inputs import ClipNormalizer
from softpool3d.engine.loaders import run_loader

logger = logging.getLogger(__name__)

OUTPUT_FORMATS = (".json", ".jsonl", ".csv")


@dataclass(frozen=True)
class VideoInput:
    """A video to predict on: its ``path``, and ``relative``, where its outputs go under an output folder."""

    path: Path
    relative: Path


def collect_videos(inputs: Sequence[str | os.PathLike]) -> list[VideoInput]:
    """The videos named by ``inputs``: files (kept even if missing or not videos: they fail later,
    named), folders (every file with a video extension below them, sorted) and ``@list.txt`` (one
    input a line, relative to the list's folder). A folder without videos, or a missing list,
    raises ``FileNotFoundError`` naming it."""
    videos: list[VideoInput] = []
    for raw in inputs:
        text = os.fspath(raw)
        if text.startswith("@"):
            listing = Path(text[1:])
            if not listing.is_file():
                raise FileNotFoundError(f"list of videos {listing} (from {text}) does not exist")
            lines = [line.strip() for line in listing.read_text(encoding="utf-8").splitlines()]
            videos += collect_videos([listing.parent / line for line in lines if line and not line.startswith("#")])
            continue
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
            if not found:
                raise FileNotFoundError(f"folder {path} holds no video files (looked for {', '.join(VIDEO_EXTENSIONS)} "
                                        f"in it and its subfolders)")
            videos += [VideoInput(p, p.relative_to(path)) for p in found]
        else:
            videos.append(VideoInput(path, Path(path.name)))
    return videos


def window_spans(duration: float, window: float, stride: float) -> list[tuple[float, float]]:
    """``(start, end)`` seconds of windows of ``window`` seconds every ``stride`` seconds covering
    ``[0, duration]`` in order: the last one ends at ``duration`` (so 10 s, window 2, stride 1 gives
    9); a video shorter than ``window`` is one window."""
    if window <= 0 or stride <= 0:
        raise ValueError(f"window and stride must be positive seconds, got {window} and {stride}")
    if duration <= window:
        return [(0.0, duration)]
    count = math.ceil(round((duration - window) / stride, 6)) + 1
    starts = [min(i * stride, duration - window) for i in range(count)]
    return [(float(round(start, 6)), float(round(start + window, 6))) for start in starts]


@dataclass
class WindowPrediction:
    """One window ``[start, end)`` seconds: mean ``probabilities (K,)`` and ``features (D,)`` over its views."""

    start: float
    end: float
    probabilities: np.ndarray
    features: Optional[np.ndarray] = None


@dataclass
class Prediction:
    """A video's result: mean ``probabilities (K,)`` over its ``views`` (over its windows' when windowed),
    ``features`` ``(D,)`` (``(W, D)`` with windows), or ``error`` when it cannot be decoded."""

    video: str
    duration: Optional[float] = None
    views: int = 0
    probabilities: Optional[np.ndarray] = None
    windows: list[WindowPrediction] = field(default_factory=list)
    features: Optional[np.ndarray] = None
    error: Optional[str] = None
    relative: Optional[Path] = None

    def top_k(self, classes: Sequence[str], k: int = 5, probabilities: Optional[np.ndarray] = None) -> list[dict]:
        """``[{"label": NAME, "score": P}, ...]``: the ``k`` most probable classes, most probable first."""
        scores = self.probabilities if probabilities is None else probabilities
        order = np.argsort(-scores, kind="stable")[: min(k, len(classes))]
        return [{"label": classes[i], "score": round(float(scores[i]), 6)} for i in order]

    def record(self, classes: Sequence[str], k: int = 5) -> dict:
        """The JSON form: ``{"video", "duration", "views", "top_k", "windows"}`` or ``{"video", "error"}``."""
        if self.error is not None:
            return {"video": self.video, "error": self.error}
        record = {"video": self.video, "duration": None if self.duration is None else round(self.duration, 6),
                  "views": self.views, "top_k": self.top_k(classes, k)}
        if self.windows:
            record["windows"] = [{"start": w.start, "end": w.end, "top_k": self.top_k(classes, k, w.probabilities)}
                                 for w in self.windows]
        return record


@dataclass(frozen=True)
class _Unit:
    """What one set of views covers: frames ``first .. end - 1`` of video ``video``, seconds ``start .. stop``."""

    video: int
    first: int
    end: int
    start: float
    stop: float


class _Probe(Dataset):
    """Item ``i``: ``(frame count, fps, error)`` of ``paths[i]`` (an empty error when it opens)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = [str(path) for path in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, float, str]:
        path = self.paths[index]
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            return 0, 0.0, f"{path} is empty (0 bytes)"
        try:
            info = OpenVideo(path).info
        except VideoReadError as error:
            return 0, 0.0, str(error)
        return info.num_frames, info.fps, ""


class _UnitViews(Dataset):
    """Item ``i``: ``(clip (C, T, H, W), unit, error)``: view ``i % num_views`` of unit ``i // num_views``,
    cut by ``clips``' test path; an unreadable view is ``clips``' zero view with the error's text."""

    def __init__(self, clips: ClipDataset, units: Sequence[_Unit]) -> None:
        self.clips, self.units = clips, list(units)

    def __len__(self) -> int:
        return len(self.units) * self.clips.num_views

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str]:
        unit_index, view = divmod(index, self.clips.num_views)
        unit = self.units[unit_index]
        try:
            video = OpenVideo(self.clips.videos[unit.video])
            return self.clips.test_view(video, view, (unit.first, unit.end)), unit_index, ""
        except VideoReadError as error:
            return self.clips.unreadable_view(), unit_index, str(error) or type(error).__name__


def default_device() -> torch.device:
    """``cuda`` when a GPU is available, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Recognizer:
    """A trained model ready for new videos: ``Recognizer.from_checkpoint(path).predict("video.mp4")``."""

    def __init__(self, model: nn.Module, cfg: DictConfig, classes: Sequence[str], device: torch.device,
                 checkpoint: str = "", runner: Optional[nn.Module] = None) -> None:
        self.model = model.eval().to(device)
        self.runner = self.model if runner is None else runner
        """What computes the logits: ``model`` (eager), or an :class:`~softpool3d.engine.runtime.OnnxModel`."""
        self.cfg = cfg
        self.classes = list(classes)
        self.device = device
        self.amp = builders.resolve_amp(cfg.train.amp, device)[0]
        self.normalizer = ClipNormalizer.from_config(cfg)
        self.checkpoint = checkpoint

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device | None = None,
                        overrides: Sequence[str] = (), runtime: str = "eager",
                        onnx: Optional[str | os.PathLike] = None) -> "Recognizer":
        """The model of checkpoint ``path`` (its config with ``overrides``, e.g. ``data.num_clips=1``, read as
        ``softpool3d-test`` reads it: :func:`~softpool3d.engine.evaluate.evaluation_config`) on ``device``
        (default :func:`default_device`). A missing or damaged file raises ``CheckpointError``.
        ``runtime="onnx"`` computes in onnxruntime (CPU): the file ``onnx``, or the checkpoint exported
        once into the cache (:func:`~softpool3d.engine.runtime.cached_onnx`)."""
        from softpool3d.engine.runtime import RUNTIMES

        if runtime not in RUNTIMES:
            raise ConfigError(f"--runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
        if onnx is not None and runtime != "onnx":
            raise ConfigError("--onnx FILE needs --runtime onnx")
        state = load_checkpoint(path)
        cfg = evaluation_config(state["config"], overrides, path)
        device = default_device() if device is None else torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {device} was asked for, but torch sees no CUDA device")
        model = builders.build_architecture(cfg, len(state["classes"]))
        load_model_state(model, state, path)
        recognizer = cls(model, cfg, state["classes"], device, str(path))
        if runtime == "onnx":
            from softpool3d.engine.runtime import OnnxModel, cached_onnx

            if device.type != "cpu":
                raise ConfigError(f"--runtime onnx runs on the CPU, not {device}")
            runner = OnnxModel(onnx if onnx is not None else cached_onnx(recognizer, path))
            runner.check_classes(recognizer.classes, str(path))
            recognizer.runner = runner
        return recognizer

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """``(C, T, H, W)`` of one view: 3 channels, ``data.num_frames``, ``data.crop_size`` squared."""
        data = self.cfg.data
        return 3, int(data.num_frames), int(data.crop_size), int(data.crop_size)

    def predict(self, video: str | os.PathLike, top_k: int = 5, window: Optional[float] = None,
                stride: Optional[float] = None) -> list[dict]:
        """The ``top_k`` classes of ``video`` (``[{"label", "score"}]``, most probable first), over
        ``data.num_clips x data.num_crops`` views; with ``window`` (and ``stride``, default ``window``)
        seconds, ``[{"start", "end", "top_k"}]`` per window instead. Raises ``VideoReadError``."""
        prediction = self._one(video, window, stride, features=False)
        if window is None:
            return prediction.top_k(self.classes, top_k)
        return prediction.record(self.classes, top_k)["windows"]

    def features(self, video: str | os.PathLike, window: Optional[float] = None,
                 stride: Optional[float] = None) -> np.ndarray:
        """Pooled features (the classifier's input) of ``video``: ``(D,)``, or ``(W, D)`` for ``W`` windows."""
        return self._one(video, window, stride, features=True).features

    def _one(self, video: str | os.PathLike, window: Optional[float], stride: Optional[float],
             features: bool) -> Prediction:
        prediction = self.predict_videos([VideoInput(Path(video), Path(Path(video).name))], window=window,
                                         stride=stride, features=features)[0]
        if prediction.error is not None:
            raise VideoReadError(prediction.error)
        return prediction

    def predict_videos(
        self,
        videos: Sequence[VideoInput],
        *,
        num_clips: Optional[int] = None,
        num_crops: Optional[int] = None,
        window: Optional[float] = None,
        stride: Optional[float] = None,
        batch_size: Optional[int] = None,
        workers: int = 0,
        features: bool = False,
        progress: bool = False,
    ) -> list[Prediction]:
        """:class:`Prediction` of every video, in order (``error`` set for those that cannot be decoded).

        ``num_clips x num_crops`` views per video or window (default ``data.num_clips``/``data.num_crops``),
        ``batch_size`` views a forward pass (default ``data.test_batch_size``), ``workers`` decoding
        processes, ``features`` to keep pooled features, ``progress`` for a bar.
        """
        data = self.cfg.data
        if features and self.runner is not self.model:
            raise ConfigError("--features reads the PyTorch model's classifier input: use --runtime eager")
        num_clips, num_crops = num_clips or int(data.num_clips), num_crops or int(data.num_crops)
        stride = stride if stride is not None else window
        results = [Prediction(str(v.path), relative=v.relative) for v in videos]
        units = self._units(videos, results, window, stride, workers)
        if not units:
            return results
        clips = builders.build_test_clips(self.cfg, [v.path for v in videos], self.classes, num_clips, num_crops)
        loader = run_loader(_UnitViews(clips, units), None, batch_size or int(data.test_batch_size), workers,
                            self.device)
        sums = torch.zeros(len(units), len(self.classes), dtype=torch.float64)
        counts = torch.zeros(len(units), dtype=torch.float64)
        feature_sums: Optional[torch.Tensor] = None
        with torch.no_grad(), _Capture(self.model.get_classifier()) as captured:
            bar = tqdm(loader, desc="predict", unit="batch", disable=not progress, leave=False, dynamic_ncols=True)
            for batch, unit, errors in bar:
                good = torch.tensor([not error for error in errors], dtype=torch.bool)
                for index in (~good).nonzero().flatten().tolist():
                    video = units[int(unit[index])].video
                    results[video].error = results[video].error or errors[index]
                if not bool(good.any()):
                    continue
                captured.clear()
                logits = forward_views(self.runner, batch[good], self.device, self.amp, self.normalizer)
                sums.index_add_(0, unit[good], logits.float().softmax(dim=1).double().cpu())
                counts.index_add_(0, unit[good], torch.ones(int(good.sum()), dtype=torch.float64))
                if features:
                    pooled = captured[-1].flatten(1).double().cpu()
                    if feature_sums is None:
                        feature_sums = torch.zeros(len(units), pooled.shape[1], dtype=torch.float64)
                    feature_sums.index_add_(0, unit[good], pooled)
        self._gather(results, units, sums, counts, feature_sums, window is not None)
        return results

    @staticmethod
    def _window_units(video: int, num_frames: int, fps: float, window: float, stride: float) -> list[_Unit]:
        units = []
        for start, stop in window_spans(num_frames / fps, window, stride):
            first = min(int(round(start * fps)), num_frames - 1)
            end = max(first + 1, min(num_frames, int(round(stop * fps))))
            units.append(_Unit(video, first, end, start, stop))
        return units

    def _units(self, videos: Sequence[VideoInput], results: list[Prediction], window: Optional[float],
               stride: Optional[float], workers: int) -> list[_Unit]:
        """Probe every video (frame count, fps) and split the readable ones into units (windows, or whole)."""
        probe = run_loader(_Probe([v.path for v in videos]), None, None, min(workers, len(videos)), self.device)
        units: list[_Unit] = []
        for index, (num_frames, fps, error) in enumerate(probe):
            result = results[index]
            if error:
                result.error = error
                continue
            result.duration = num_frames / fps if fps > 0 else None
            if window is None:
                units.append(_Unit(index, 0, num_frames, 0.0, result.duration or 0.0))
            elif fps <= 0:
                result.error = f"{result.video} has no frame rate, so it cannot be cut into windows of seconds"
            else:
                units += self._window_units(index, num_frames, fps, window, stride)
        return units

    @staticmethod
    def _gather(results: list[Prediction], units: list[_Unit], sums: torch.Tensor, counts: torch.Tensor,
                feature_sums: Optional[torch.Tensor], windowed: bool) -> None:
        by_video: dict[int, list[int]] = {}
        for index, unit in enumerate(units):
            by_video.setdefault(unit.video, []).append(index)
        for video, indices in by_video.items():
            result = results[video]
            if result.error is not None:
                continue
            if bool((counts[indices] < 1).any()):
                result.error = f"{result.video}: some views could not be decoded"
                continue
            probabilities = (sums[indices] / counts[indices, None]).numpy()
            features = None if feature_sums is None else (feature_sums[indices] / counts[indices, None]).numpy()
            result.views = int(counts[indices].sum())
            result.probabilities = probabilities.mean(axis=0)
            if windowed:
                result.windows = [WindowPrediction(units[i].start, units[i].stop, probabilities[row],
                                                   None if features is None else features[row])
                                  for row, i in enumerate(indices)]
                result.features = features
            elif features is not None:
                result.features = features[0]


class _Capture:
    """A context in which every call of ``module`` appends its first input (the classifier's: ``(N, D)``,
    or ``(N, 1, 1, 1, D)`` for X3D) to the list it yields."""

    def __init__(self, module: nn.Module) -> None:
        self.module, self.inputs = module, []

    def __enter__(self) -> list[torch.Tensor]:
        self.handle = self.module.register_forward_pre_hook(lambda _, args: self.inputs.append(args[0].detach()))
        return self.inputs

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def format_table(predictions: Sequence[Prediction], classes: Sequence[str], top_k: int) -> str:
    """A plain-text table: one row per video (and one per window), the top-k labels with their scores."""
    rows = [("video", "duration", f"top-{top_k}")]
    for prediction in predictions:
        if prediction.error is not None:
            rows.append((prediction.video, "", f"failed: {prediction.error}"))
            continue
        def scores(probabilities: Optional[np.ndarray] = None) -> str:
            return ", ".join(f"{t['label']} {t['score']:.3f}" for t in prediction.top_k(classes, top_k, probabilities))

        duration = "" if prediction.duration is None else f"{prediction.duration:.2f}s"
        rows.append((prediction.video, duration, scores()))
        rows += [(f"  {w.start:.2f}-{w.end:.2f}s", "", scores(w.probabilities)) for w in prediction.windows]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    return "\n".join(f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]}" for row in rows) + "\n"


def output_format(path: str | os.PathLike) -> str:
    """The format ``--out`` names by its extension, one of :data:`OUTPUT_FORMATS`; else ``ConfigError``."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise ConfigError(f"--out {path}: the format is chosen by the extension, one of {', '.join(OUTPUT_FORMATS)}")
    return suffix


def write_output(path: Path, checkpoint: str, classes: Sequence[str], predictions: Sequence[Prediction],
                 top_k: int) -> None:
    """Write ``predictions`` to ``path`` (atomically) as ``.json`` (``{"checkpoint", "classes", "videos"}``),
    ``.jsonl`` (one video's record a line) or ``.csv`` (one row per video and per window)."""
    records = [prediction.record(classes, top_k) for prediction in predictions]
    suffix = output_format(path)
    if suffix == ".json":
        text = json.dumps({"checkpoint": checkpoint, "classes": list(classes), "videos": records}, indent=2) + "\n"
    elif suffix == ".jsonl":
        text = "".join(json.dumps(record) + "\n" for record in records)
    else:
        text = _csv_text(records, top_k)
    with atomic_writer(path) as out:
        out.write(text.encode("utf-8"))


def _csv_text(records: Sequence[dict], top_k: int) -> str:
    buffer = io.StringIO()
    ranks = [f"{kind}_{rank}" for rank in range(1, top_k + 1) for kind in ("label", "score")]
    writer = csv.DictWriter(buffer, fieldnames=["video", "start", "end", "duration", "views", *ranks, "error"])
    writer.writeheader()
    for record in records:
        if "error" in record:
            writer.writerow({"video": record["video"], "error": record["error"]})
            continue
        spans = [(None, None, record["top_k"])] + [(w["start"], w["end"], w["top_k"]) for w in record.get("windows", [])]
        for start, end, top in spans:
            row = {"video": record["video"], "start": start, "end": end, "duration": record["duration"],
                   "views": record["views"]}
            for rank, entry in enumerate(top, 1):
                row[f"label_{rank}"], row[f"score_{rank}"] = entry["label"], entry["score"]
            writer.writerow(row)
    return buffer.getvalue()


def write_features(directory: Path, predictions: Sequence[Prediction]) -> list[Path]:
    """One ``.npy`` per readable video under ``directory`` at its relative path: ``(D,)`` or ``(W, D)``."""
    written = []
    for prediction in predictions:
        if prediction.features is None:
            continue
        path = directory / prediction.relative.with_suffix(".npy")
        buffer = io.BytesIO()
        np.save(buffer, prediction.features.astype(np.float32))
        with atomic_writer(path) as out:
            out.write(buffer.getvalue())
        written.append(path)
    return written


def _label_at(prediction: Prediction, classes: Sequence[str], seconds: float) -> str:
    """The caption at ``seconds``: the video's top class, or the window's whose centre is nearest."""
    probabilities = prediction.probabilities
    if prediction.windows:
        nearest = min(prediction.windows, key=lambda w: abs((w.start + w.end) / 2 - seconds))
        probabilities = nearest.probabilities
    best = prediction.top_k(classes, 1, probabilities)[0]
    return f"{best['label']} {best['score']:.2f}"


def _frames_with_captions(container, prediction: Prediction, classes: Sequence[str]) -> Iterator[np.ndarray]:
    from PIL import Image, ImageDraw, ImageFont

    stream = container.streams.video[0]
    fps = float(stream.average_rate or stream.guessed_rate or 25)
    font = None
    for index, frame in enumerate(container.decode(stream)):
        image = frame.to_image()
        if font is None:
            font = ImageFont.load_default(size=max(10, image.height // 18))
        draw = ImageDraw.Draw(image)
        text = _label_at(prediction, classes, index / fps)
        left, top, right, bottom = draw.textbbox((4, 4), text, font=font)
        draw.rectangle((0, 0, right + 4, bottom + 4), fill=(0, 0, 0))
        draw.text((4, 4), text, fill=(255, 255, 255), font=font)
        yield np.asarray(image)


def render(directory: Path, prediction: Prediction, classes: Sequence[str]) -> Path:
    """Write ``prediction``'s video again under ``directory`` (relative path, ``.mp4``, H.264) with its
    top class and score (per window: the nearest window's) drawn in the top-left corner of every frame."""
    import av

    path = directory / prediction.relative.with_suffix(".mp4")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.part.mp4")
    with av.open(prediction.video) as source, av.open(str(temporary), "w") as target:
        rate = source.streams.video[0].average_rate or 25
        stream = None
        for pixels in _frames_with_captions(source, prediction, classes):
            if stream is None:
                stream = target.add_stream("libx264", rate=rate)
                stream.height, stream.width = pixels.shape[0] // 2 * 2, pixels.shape[1] // 2 * 2
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": "20", "preset": "veryfast"}
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels[: stream.height, : stream.width]), format="rgb24")
            target.mux(stream.encode(frame))
        if stream is not None:
            target.mux(stream.encode())
    os.replace(temporary, path)
    return path


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
    videos = collect_videos(inputs)
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

