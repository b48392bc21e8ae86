"""Prediction on new videos: top-k classes and pooled features of whole videos or of their windows.

:class:`Recognizer` holds a checkpoint's model, config and class names. Its clips are cut exactly as
``softpool3d-test`` cuts the test split's (one :class:`~softpool3d.datasets.ClipDataset` test path,
built by :func:`softpool3d.engine.builders.build_test_clips`) and batches of views become logits in
:func:`softpool3d.engine.evaluation.evaluate.forward_views`, as in evaluation. A video's probabilities are
the softmax averaged over its views; with windows (``window`` / ``stride`` seconds) each window
gets ``num_clips x num_crops`` views spread over its own frames, and the video's probabilities
average the windows'. Features are the input of the model's classifier (``get_classifier()``:
the globally pooled, for X3D also projected, backbone features), averaged like the probabilities.

Decoding runs in DataLoader workers (:func:`decoding_workers`: in this process for one video): a first
pass reads each video's frame count and rate, a second decodes the views. A video that cannot be decoded gets :attr:`Prediction.error` and the
others go on. The inputs are :mod:`~softpool3d.engine.inference.video_inputs`', the windows
:mod:`~softpool3d.engine.inference.windows`', the results and their files :mod:`~softpool3d.engine.inference.prediction_outputs`';
the command is :mod:`~softpool3d.engine.inference.predict_command`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from softpool3d.datasets import ClipDataset, OpenVideo, VideoReadError
from softpool3d.engine import builders
from softpool3d.engine.checkpoint import load_checkpoint
from softpool3d.engine.config import ConfigError
from softpool3d.engine.evaluation.evaluate import forward_views
from softpool3d.engine.evaluation.trained_model import evaluation_config, trained_model
from softpool3d.engine.inference.prediction_outputs import Prediction, WindowPrediction
from softpool3d.engine.inference.video_inputs import VideoInput, collect_videos
from softpool3d.engine.inference.windows import ViewUnit, window_units
from softpool3d.engine.processes.amp import resolve_amp
from softpool3d.engine.processes.loaders import run_loader

# the Python API of prediction: the recognizer, what it is given and what it returns
__all__ = ["Recognizer", "VideoInput", "collect_videos", "Prediction", "WindowPrediction", "decoding_workers",
           "default_device"]


def decoding_workers(requested: int, videos: int, items: int) -> int:
    """The workers a prediction loader of ``items`` items (probes or batches of views) over ``videos`` videos
    starts: none for a single video (starting workers costs more than decoding one video in this process),
    else ``requested`` but no more than there are items."""
    return 0 if videos <= 1 else min(requested, items)


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

    def __init__(self, clips: ClipDataset, units: Sequence[ViewUnit]) -> None:
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
        """What computes the logits: ``model`` (eager), or an :class:`~softpool3d.engine.inference.runtime.OnnxModel`."""
        self.cfg = cfg
        self.classes = list(classes)
        self.device = device
        self.amp = resolve_amp(cfg.train.amp, device)[0]
        self.normalizer = builders.build_normalizer(cfg)
        self.checkpoint = checkpoint

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device | None = None,
                        overrides: Sequence[str] = (), runtime: str = "eager",
                        onnx: Optional[str | os.PathLike] = None) -> "Recognizer":
        """The model of checkpoint ``path`` (its config with ``overrides``, e.g. ``data.num_clips=1``, read as
        ``softpool3d-test`` reads it: :func:`~softpool3d.engine.evaluation.trained_model.evaluation_config`) on ``device``
        (default :func:`default_device`). A missing or damaged file raises ``CheckpointError``.
        ``runtime="onnx"`` computes in onnxruntime (CPU): the file ``onnx``, or the checkpoint exported
        once into the cache (:func:`~softpool3d.engine.inference.runtime.cached_onnx`)."""
        from softpool3d.engine.inference.runtime import RUNTIMES

        if runtime not in RUNTIMES:
            raise ConfigError(f"--runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
        if onnx is not None and runtime != "onnx":
            raise ConfigError("--onnx FILE needs --runtime onnx")
        state = load_checkpoint(path)
        cfg = evaluation_config(state["config"], overrides, path)
        device = default_device() if device is None else torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {device} was asked for, but torch sees no CUDA device")
        recognizer = cls(trained_model(cfg, state, path), cfg, state["classes"], device, str(path))
        if runtime == "onnx":
            from softpool3d.engine.inference.runtime import OnnxModel, cached_onnx

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
        processes (:func:`decoding_workers`), ``features`` to keep pooled features, ``progress`` for a bar.
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
        views, batch_size = _UnitViews(clips, units), batch_size or int(data.test_batch_size)
        batches = -(-len(views) // batch_size)
        loader = run_loader(views, None, batch_size, decoding_workers(workers, len(videos), batches), self.device)
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

    def _units(self, videos: Sequence[VideoInput], results: list[Prediction], window: Optional[float],
               stride: Optional[float], workers: int) -> list[ViewUnit]:
        """Probe every video (frame count, fps) and split the readable ones into units (windows, or whole)."""
        probe_workers = decoding_workers(workers, len(videos), len(videos))
        probe = run_loader(_Probe([v.path for v in videos]), None, None, probe_workers, self.device)
        units: list[ViewUnit] = []
        for index, (num_frames, fps, error) in enumerate(probe):
            result = results[index]
            if error:
                result.error = error
                continue
            result.duration = num_frames / fps if fps > 0 else None
            if window is None:
                units.append(ViewUnit(index, 0, num_frames, 0.0, result.duration or 0.0))
            elif fps <= 0:
                result.error = f"{result.video} has no frame rate, so it cannot be cut into windows of seconds"
            else:
                units += window_units(index, num_frames, fps, window, stride)
        return units

    @staticmethod
    def _gather(results: list[Prediction], units: list[ViewUnit], sums: torch.Tensor, counts: torch.Tensor,
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
