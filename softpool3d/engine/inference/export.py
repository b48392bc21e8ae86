"""Export a checkpoint's model for deployment: ONNX (standard ops only) or a ``torch.export`` program.

Both are traced inside :func:`softpool3d.exportable.set_exportable`, so SoftPool becomes plain ops
(per-window max shift, exact) instead of the ``softpool3d::`` custom op: the ONNX graph needs no
custom domain (onnxruntime, TensorRT and OpenVINO run it) and the ``.pt2`` program loads with
``torch.export.load`` in any process with torch. The batch size is dynamic; with ``dynamic=True``
the clip length and the crop's height and width are too (the global SoftPool of the head pools
whatever size reaches it), and the ONNX file is checked in onnxruntime at two clip lengths and two
crops. A model whose graph fixes its input size (MViT's position encoding is built for one
``T x H x W``) cannot be exported so, and says why. The ONNX model's
``metadata_props`` carry what a consumer needs: class names, mean/std, frames, sampling rate,
crop and test scale. After writing, the file is run on a clip and compared with the PyTorch model.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from softpool3d.engine.config import ConfigError
from softpool3d.engine.export_formats import EXPORT_FORMATS
from softpool3d.engine.inference.predict import Recognizer
from softpool3d.exportable import set_exportable

logger = logging.getLogger(__name__)

TOLERANCE = 1e-4
"""The largest relative logit difference (``max |exported - torch| / max |torch|``) an export may show."""

ONNX_OPSET = 18


@dataclass
class ExportCheck:
    """The exported model against PyTorch on one batch of clips: the maximum relative logit difference
    (``max |exported - torch| / max |torch|``) and whether every clip's top-1 class agrees."""

    max_relative_difference: float
    top1_agrees: bool

    @property
    def ok(self) -> bool:
        return self.max_relative_difference <= TOLERANCE and self.top1_agrees


def example_clips(recognizer: Recognizer, batch: int, scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    """``(batch, C, T, H, W)`` normal noise (a normalized clip's statistics) times ``scale``, at the model's input size."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *recognizer.input_shape, generator=generator) * scale


def metadata(recognizer: Recognizer) -> dict[str, str]:
    """The ONNX ``metadata_props``: ``classes``, ``mean``, ``std`` (JSON lists), ``num_frames``,
    ``sampling_rate``, ``crop_size``, ``test_scale``, ``model``, ``input_layout``."""
    data = recognizer.cfg.data
    return {
        "classes": json.dumps(recognizer.classes),
        "mean": json.dumps([float(v) for v in data.mean]),
        "std": json.dumps([float(v) for v in data.std]),
        "num_frames": str(int(data.num_frames)),
        "sampling_rate": str(int(data.sampling_rate)),
        "crop_size": str(int(data.crop_size)),
        "test_scale": str(int(data.test_scale)),
        "model": str(recognizer.cfg.model.name),
        "input_layout": "N,C,T,H,W (RGB, scaled to [0, 1], then (x - mean) / std)",
    }


def _compare(exported: np.ndarray, reference: np.ndarray) -> ExportCheck:
    difference = float(np.abs(exported - reference).max() / max(float(np.abs(reference).max()), 1e-12))
    return ExportCheck(difference, bool((exported.argmax(1) == reference.argmax(1)).all()))


def _reference_logits(recognizer: Recognizer, clips: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return recognizer.model(clips.to(recognizer.device)).float().cpu().numpy()


def _dynamic_dims(dynamic: bool) -> tuple[dict[int, object]]:
    """The dynamic input dimensions: the batch, and with ``dynamic`` the clip length, height and width."""
    dims = {0: torch.export.Dim("batch", min=1, max=4096)}
    if dynamic:
        dims.update({2: torch.export.Dim("time", min=1, max=4096), 3: torch.export.Dim("height", min=8, max=8192),
                     4: torch.export.Dim("width", min=8, max=8192)})
    return (dims,)


class NotDynamicError(ConfigError):
    """The model's graph fixes a size that ``--dynamic`` would free (the exporter's reason is in the message)."""


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporters' chatter held back: the ONNX exporter's and optimizer's INFO logs, and two warnings
    torch.export gives about its own tracing of ``nn.LSTM`` (SRTG) and of its size checks."""
    loggers = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [each.level for each in loggers]
    for each in loggers:
        each.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*_flat_weights.*were assigned during export", category=UserWarning)
            warnings.filterwarnings("ignore", message=r"_check_is_size will be removed", category=FutureWarning)
            yield
    finally:
        for each, level in zip(loggers, levels):
            each.setLevel(level)


def write_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, props: dict[str, str],
               dynamic: bool = False) -> Path:
    """Write ``model`` (in eval mode) as ONNX (opset 18, standard ops, input ``clips (N, C, T, H, W)``
    traced at ``example``, output ``logits (N, K)``, dynamic ``N``, and ``T, H, W`` with ``dynamic``)
    with ``metadata_props`` ``props``, atomically. A model that fixes its input size under ``dynamic``
    raises :class:`NotDynamicError`."""
    import onnx

    with tempfile.TemporaryDirectory(dir=path.parent) as folder:
        temporary = Path(folder) / path.name
        with torch.no_grad(), set_exportable(), _quiet_exporter():
            try:
                torch.onnx.export(model, (example,), str(temporary), input_names=["clips"], output_names=["logits"],
                                  dynamic_shapes=_dynamic_dims(dynamic), opset_version=ONNX_OPSET, dynamo=True,
                                  external_data=False, verbose=False)
            except Exception as error:
                if not dynamic:
                    raise
                reason = " ".join(str(error).split())[:400]
                raise NotDynamicError(f"{type(model).__name__} cannot be exported with dynamic clip length and crop "
                                      f"(its graph fixes an input size; export it without --dynamic): {reason}") from error
        proto = onnx.load(str(temporary))
        onnx.helper.set_model_props(proto, props)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(temporary))
        os.replace(temporary, path)
    return path


def export_onnx(recognizer: Recognizer, path: Path, dynamic: bool = False) -> Path:
    """:func:`write_onnx` of ``recognizer``'s model, traced at a batch of 2, with :func:`metadata`
    (``dynamic``: ``"true"`` when clip length and crop are free)."""
    example = example_clips(recognizer, 2).to(recognizer.device)
    props = {**metadata(recognizer), "dynamic_clip_size": "true" if dynamic else "false"}
    return write_onnx(recognizer.model.float().eval(), example, path, props, dynamic)


def dynamic_check_shapes(recognizer: Recognizer) -> list[tuple[int, int]]:
    """``(frames, crop)`` pairs a dynamic export is checked at: the config's clip and a longer one
    (twice the frames), each at the config's crop and a larger one (plus 32 pixels)."""
    _, frames, crop, _ = recognizer.input_shape
    return [(t, c) for t in (frames, 2 * frames) for c in (crop, crop + 32)]


def check_onnx_dynamic(recognizer: Recognizer, path: Path) -> list[tuple[tuple[int, int], ExportCheck]]:
    """:func:`check_onnx` at each of :func:`dynamic_check_shapes` (a batch of 2 clips each)."""
    results = []
    for seed, (frames, crop) in enumerate(dynamic_check_shapes(recognizer)):
        generator = torch.Generator().manual_seed(100 + seed)
        clips = torch.randn(2, 3, frames, crop, crop, generator=generator)
        results.append(((frames, crop), check_onnx(recognizer, path, clips)))
    return results


def custom_domains(path: Path) -> set[str]:
    """The op domains of the ONNX file ``path`` other than the standard ones (``""``, ``ai.onnx``)."""
    import onnx

    proto = onnx.load(str(path))
    return {node.domain for node in proto.graph.node} - {"", "ai.onnx"}


def check_onnx(recognizer: Recognizer, path: Path, clips: torch.Tensor) -> ExportCheck:
    """Run the ONNX file ``path`` in onnxruntime (CPU) on ``clips`` and compare with the PyTorch model."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    exported = session.run(["logits"], {"clips": clips.numpy()})[0]
    return _compare(exported, _reference_logits(recognizer, clips))


def export_pt2(recognizer: Recognizer, path: Path) -> Path:
    """Write ``recognizer``'s model as a ``torch.export`` program (dynamic batch) with ``torch.export.save``, atomically."""
    model = recognizer.model.float().eval()
    with torch.no_grad(), set_exportable(), _quiet_exporter():
        program = torch.export.export(model, (example_clips(recognizer, 2).to(recognizer.device),),
                                      dynamic_shapes=_dynamic_dims(False))
    with tempfile.TemporaryDirectory(dir=path.parent) as folder:
        temporary = Path(folder) / path.name
        torch.export.save(program, str(temporary), extra_files={"softpool3d.json": json.dumps(metadata(recognizer))})
        os.replace(temporary, path)
    return path


def check_pt2(recognizer: Recognizer, path: Path, clips: torch.Tensor) -> ExportCheck:
    """Load the program ``path`` with ``torch.export.load`` and compare its logits on ``clips`` with the model's."""
    program = torch.export.load(str(path))
    with torch.no_grad():
        exported = program.module()(clips.to(recognizer.device)).float().cpu().numpy()
    return _compare(exported, _reference_logits(recognizer, clips))


def run_export(checkpoint: str, fmt: str, out: str, device: str = "cpu", overrides: Sequence[str] = (),
               dynamic: bool = False) -> int:
    """``softpool3d-export``: write ``checkpoint``'s model as ``fmt`` to ``out``, check it on a batch of 3
    clips (another batch size than the traced one), and with ``dynamic`` (ONNX only) at two clip
    lengths and two crops, and log the result; 1 when a check fails."""
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"--format {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")
    if dynamic and fmt != "onnx":
        raise ConfigError("--dynamic is for --format onnx")
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    recognizer = Recognizer.from_checkpoint(checkpoint, device, overrides)
    logger.info("%s: %s, %d classes, input (N, %s)", checkpoint, recognizer.cfg.model.name, len(recognizer.classes),
                ", ".join(map(str, recognizer.input_shape)))
    clips = example_clips(recognizer, 3, seed=1)
    if fmt == "onnx":
        export_onnx(recognizer, path, dynamic)
        foreign = custom_domains(path)
        if foreign:
            logger.error("%s uses custom op domains %s", path, sorted(foreign))
            return 1
        check = check_onnx(recognizer, path, clips)
        if dynamic:
            for (frames, crop), each in check_onnx_dynamic(recognizer, path):
                logger.info("onnxruntime vs PyTorch at %d frames of %dx%d: max relative logit difference %.2e, top-1 %s",
                            frames, crop, crop, each.max_relative_difference,
                            "agrees" if each.top1_agrees else "DISAGREES")
                if not each.ok:
                    check = each
    else:
        export_pt2(recognizer, path)
        check = check_pt2(recognizer, path, clips)
    runtime = "onnxruntime" if fmt == "onnx" else "torch.export.load"
    logger.info("wrote %s (%.1f MB); %s vs PyTorch on %d clips: max relative logit difference %.2e, top-1 %s",
                path, path.stat().st_size / 1e6, runtime, len(clips), check.max_relative_difference,
                "agrees" if check.top1_agrees else "DISAGREES")
    if not check.ok:
        logger.error("%s differs from the PyTorch model beyond the tolerance %.0e (difference %.2e, top-1 %s)", path,
                     TOLERANCE, check.max_relative_difference, "agrees" if check.top1_agrees else "disagrees")
        return 1
    return 0
