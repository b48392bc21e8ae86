"""Where a :class:`~softpool3d.engine.inference.predict.Recognizer` runs its model: PyTorch eager, or an ONNX
file in onnxruntime (``--runtime onnx``), which on the CPU runs the same network several times faster.

:class:`OnnxModel` puts an onnxruntime session behind a module's call, so inference code calls it
as it calls the PyTorch model: float32 clips ``(N, C, T, H, W)`` in, logits ``(N, K)`` out. Without
a given file, :func:`cached_onnx` exports the checkpoint once with dynamic clip length and crop
(:func:`softpool3d.engine.inference.export.export_onnx`) into the cache, keyed by the checkpoint's stored
SHA-256 and its model section, and checks it against PyTorch before the first use.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch
from torch import nn

from softpool3d.engine.checkpoint import stored_digest
from softpool3d.engine.config import ConfigError, to_container

if TYPE_CHECKING:
    from softpool3d.engine.inference.predict import Recognizer

logger = logging.getLogger(__name__)

RUNTIMES = ("eager", "onnx")


def onnx_cache_dir() -> Path:
    """Where on-the-fly exports go: ``$SOFTPOOL3D_CACHE_DIR/onnx``, else ``$XDG_CACHE_HOME/softpool3d/onnx``,
    else ``~/.cache/softpool3d/onnx``."""
    if os.environ.get("SOFTPOOL3D_CACHE_DIR"):
        return Path(os.environ["SOFTPOOL3D_CACHE_DIR"]) / "onnx"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "softpool3d" / "onnx"


class OnnxModel(nn.Module):
    """An ONNX file (input ``clips``, output ``logits``) run by onnxruntime on the CPU behind a module's
    call: float32 ``(N, C, T, H, W)`` -> logits ``(N, K)`` on the input's device."""

    def __init__(self, path: str | os.PathLike, threads: Optional[int] = None) -> None:
        super().__init__()
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"--onnx {self.path} does not exist")
        self.session = onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        array = clips.detach().to("cpu", torch.float32).contiguous().numpy()
        logits = self.session.run(["logits"], {"clips": array})[0]
        return torch.from_numpy(logits).to(clips.device)

    def check_classes(self, classes: list[str], checkpoint: str) -> None:
        """Raise ``ConfigError`` when the file's ``classes`` metadata is not the checkpoint's."""
        stored = self.metadata.get("classes")
        if stored is not None and json.loads(stored) != list(classes):
            raise ConfigError(f"{self.path} was exported with other classes than checkpoint {checkpoint} "
                              f"({len(json.loads(stored))} vs {len(classes)})")


def cached_onnx(recognizer: "Recognizer", checkpoint: str | os.PathLike) -> Path:
    """The ONNX export of ``recognizer``'s model (dynamic clip length and crop where the model allows,
    else at its configured clip) in :func:`onnx_cache_dir`, written and checked on first use."""
    from softpool3d.engine.inference import export

    model_section = json.dumps(to_container(recognizer.cfg.model), sort_keys=True)
    key = hashlib.sha256(f"{stored_digest(checkpoint)}\n{model_section}".encode()).hexdigest()[:24]
    folder = onnx_cache_dir()
    for dynamic in (True, False):
        name = f"{recognizer.cfg.model.name}-{key}" + ("" if dynamic else "-T{1}x{2}".format(*recognizer.input_shape))
        path = folder / f"{name}.onnx"
        if path.is_file():
            return path
        folder.mkdir(parents=True, exist_ok=True)
        try:
            logger.info("exporting %s to %s for onnxruntime (once)", checkpoint, path)
            export.export_onnx(recognizer, path, dynamic=dynamic)
        except export.NotDynamicError as error:
            logger.warning("%s", error)
            continue
        check = export.check_onnx(recognizer, path, export.example_clips(recognizer, 2, seed=1))
        if not check.ok:
            path.unlink()
            raise ConfigError(f"the ONNX export of {checkpoint} differs from PyTorch (max relative logit difference "
                              f"{check.max_relative_difference:.2e}); use --runtime eager")
        return path
    raise AssertionError("unreachable: the fixed-size export raises rather than failing over")
