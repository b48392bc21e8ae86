"""``softpool3d-explain``: for each video, the Grad-CAM of the checkpoint's model as a heat-map video and a
PNG contact sheet with the top classes named, and a picture of what one SoftPool layer keeps
(:mod:`softpool3d.engine.inference.explain` computes them; this module draws them with PIL and PyAV).

Each video's clip is the centre view of its test path (one clip, centre crop: the view
``softpool3d-test`` would cut with ``data.num_clips=1 data.num_crops=1``).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from softpool3d.datasets import OpenVideo, VideoReadError
from softpool3d.engine import builders
from softpool3d.engine.config import ConfigError
from softpool3d.engine.inference.explain import (grad_cam, layer_input, pool_outputs, pool_weights, soft_pool_layers,
                                       strongest_channel, upsample_cam, window_geometry)
from softpool3d.engine.inference.predict import Recognizer
from softpool3d.engine.inference.video_inputs import collect_videos
from softpool3d.models.pooling import GlobalPool3d

logger = logging.getLogger(__name__)

_STOPS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64)
"""Colour stops of the heat map (inferno-like: black, purple, red, orange, pale yellow)."""


def heat_colours(values: np.ndarray) -> np.ndarray:
    """``values`` in ``[0, 1]`` (any shape) -> uint8 RGB ``(..., 3)`` along :data:`_STOPS`."""
    position = np.clip(values, 0, 1) * (len(_STOPS) - 1)
    low = np.minimum(position.astype(int), len(_STOPS) - 2)
    fraction = (position - low)[..., None]
    return np.round(_STOPS[low] * (1 - fraction) + _STOPS[low + 1] * fraction).astype(np.uint8)


def overlay(frame: np.ndarray, cam: np.ndarray, opacity: float = 0.5) -> np.ndarray:
    """uint8 ``frame (H, W, 3)`` with the heat map of ``cam (H, W)`` in ``[0, 1]`` blended over it."""
    return np.round(frame * (1 - opacity) + heat_colours(cam) * opacity).astype(np.uint8)


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def contact_sheet(frames: np.ndarray, cam: np.ndarray, title: str, count: int = 6, tile: int = 160) -> Image.Image:
    """A row of ``count`` frames spread over the clip, each ``tile`` pixels, the frame above its heat map,
    under ``title`` (the top classes). ``frames`` uint8 ``(T, H, W, 3)``, ``cam`` ``(T, H, W)`` in ``[0, 1]``."""
    picks = np.unique(np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int))
    header = 28
    sheet = Image.new("RGB", (tile * len(picks), header + 2 * tile + 16), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 6), title, fill=(0, 0, 0), font=_font(15))
    for column, index in enumerate(picks):
        plain = Image.fromarray(frames[index]).resize((tile, tile), Image.BILINEAR)
        heat = Image.fromarray(overlay(frames[index], cam[index])).resize((tile, tile), Image.BILINEAR)
        sheet.paste(plain, (column * tile, header))
        sheet.paste(heat, (column * tile, header + tile))
        draw.text((column * tile + 4, header + 2 * tile + 2), f"frame {index}", fill=(0, 0, 0), font=_font(11))
    return sheet


def write_heat_video(path: Path, frames: np.ndarray, cam: np.ndarray, fps: float, size: int = 256) -> Path:
    """H.264 ``path``: the clip's frames with the heat map over them, ``size`` pixels square, at ``fps``."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as target:
        stream = target.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "20", "preset": "veryfast"}
        for frame, heat in zip(frames, cam):
            image = Image.fromarray(overlay(frame, heat)).resize((size, size), Image.BILINEAR)
            target.mux(stream.encode(av.VideoFrame.from_image(image)))
        target.mux(stream.encode())
    return path


def _panel(values: np.ndarray, label: str, tile: int, low: float, high: float) -> Image.Image:
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    image = Image.fromarray(heat_colours(scaled)).resize((tile, tile), Image.NEAREST)
    panel = Image.new("RGB", (tile, tile + 20), (255, 255, 255))
    panel.paste(image, (0, 20))
    ImageDraw.Draw(panel).text((3, 3), label, fill=(0, 0, 0), font=_font(12))
    return panel


def pool_figure(name: str, layer: torch.nn.Module, x: torch.Tensor, tile: int = 180) -> Image.Image:
    """The picture of what layer ``name`` keeps of its input ``x (1, C, T, H, W)``: for the channel that varies
    most, at the middle frame, the input, SoftPool's weights ``exp(x)/sum exp(x)`` in each window, and
    the outputs of SoftPool, max and average pooling over the same windows (shared colour scale)."""
    kernel, stride, padding = window_geometry(layer, x)
    channel = strongest_channel(x)
    single = x[:, channel:channel + 1].float()
    weights = pool_weights(single, kernel)[0, 0]
    outputs = pool_outputs(single, kernel, stride, padding)
    middle = single.shape[2] // 2
    out_middle = min(middle // stride[0], outputs.soft.shape[2] - 1)
    plane = single[0, 0, middle].numpy()
    low, high = float(plane.min()), float(plane.max())
    panels = [_panel(plane, "input x", tile, low, high),
              _panel(weights[middle].numpy(), "exp(x) / sum exp(x)", tile, 0.0, float(weights[middle].max())),
              *(_panel(getattr(outputs, kind)[0, 0, out_middle].numpy(), f"{kind} pool", tile, low, high)
                for kind in ("soft", "max", "avg"))]
    header = 40
    figure = Image.new("RGB", (tile * len(panels), header + tile + 20), (255, 255, 255))
    draw = ImageDraw.Draw(figure)
    draw.text((6, 4), f"{name}: kernel {kernel}, stride {stride}; channel {channel}, frame {middle} of {single.shape[2]}",
              fill=(0, 0, 0), font=_font(13))
    draw.text((6, 21), "pool outputs share the input's colour scale; weights sum to 1 in each window",
              fill=(90, 90, 90), font=_font(11))
    for column, panel in enumerate(panels):
        figure.paste(panel, (column * tile, header))
    return figure


def choose_pool_layer(model: torch.nn.Module, name: Optional[str]) -> tuple[str, torch.nn.Module]:
    """The SoftPool layer ``name`` (qualified module name), by default the model's first windowed one (else its
    first global one); ``ConfigError``
    naming the choices when there is none of that name."""
    layers = soft_pool_layers(model)
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no SoftPool layer (model.pool is not soft?)")
    if name is None:
        windowed = [(key, layer) for key, layer in layers.items() if not isinstance(layer, GlobalPool3d)]
        return (windowed or list(layers.items()))[0]
    if name not in layers:
        raise ConfigError(f"--pool-layer {name!r} is not a SoftPool layer of the model; its SoftPool layers: "
                          f"{', '.join(layers)}")
    return name, layers[name]


@dataclass
class Explanation:
    """One clip explained: its ``frames`` uint8 ``(T, H, W, 3)``, the Grad-CAM ``cam (T, H, W)`` in ``[0, 1]``
    of class ``class_index``, the clip's ``probabilities (K,)`` and its normalized ``inputs (1, C, T, H, W)``."""

    frames: np.ndarray
    cam: np.ndarray
    class_index: int
    probabilities: np.ndarray
    inputs: torch.Tensor


def explain_clip(recognizer: Recognizer, video: str | os.PathLike, class_index: Optional[int] = None) -> Explanation:
    """The Grad-CAM of ``video``'s centre view (class ``class_index``, default its top-1), upsampled to the clip."""
    clips = builders.build_test_clips(recognizer.cfg, [video], recognizer.classes, 1, 1)
    clip = clips.test_view(OpenVideo(video), 0)
    inputs = recognizer.normalizer(clip[None].to(recognizer.device))
    cam, logits = grad_cam(recognizer.model, inputs, class_index)
    maps = upsample_cam(cam, tuple(clip.shape[1:]))[0].cpu().numpy()
    chosen = int(logits.argmax()) if class_index is None else class_index
    return Explanation(clip.permute(1, 2, 3, 0).cpu().numpy(), maps, chosen,
                       logits.float().softmax(dim=1)[0].cpu().numpy(), inputs)


def explain_video(recognizer: Recognizer, video: str | os.PathLike, out: Path, top_k: int = 3,
                  class_name: Optional[str] = None, pool_layer: Optional[str] = None) -> list[Path]:
    """Write ``<stem>-gradcam.mp4``, ``<stem>-gradcam.png`` and ``<stem>-softpool.png`` of ``video`` under ``out``."""
    class_index = None
    if class_name is not None:
        if class_name not in recognizer.classes:
            raise ConfigError(f"--class {class_name!r} is not one of the checkpoint's classes")
        class_index = recognizer.classes.index(class_name)
    name, layer = choose_pool_layer(recognizer.model, pool_layer)
    explained = explain_clip(recognizer, video, class_index)
    probabilities, classes = explained.probabilities, recognizer.classes
    order = np.argsort(-probabilities, kind="stable")[:top_k]
    title = (f"Grad-CAM of {classes[explained.class_index]}   |   "
             + ", ".join(f"{classes[i]} {probabilities[i]:.2f}" for i in order))
    stem = Path(video).stem
    out.mkdir(parents=True, exist_ok=True)
    fps = OpenVideo(video).info.fps / max(1, int(recognizer.cfg.data.sampling_rate))
    written = [write_heat_video(out / f"{stem}-gradcam.mp4", explained.frames, explained.cam, max(fps, 1.0)),
               out / f"{stem}-gradcam.png", out / f"{stem}-softpool.png"]
    contact_sheet(explained.frames, explained.cam, title).save(written[1])
    pool_figure(name, layer, layer_input(recognizer.model, layer, explained.inputs).cpu()).save(written[2])
    return written


def run_explain(checkpoint: str, inputs: Sequence[str], out: str, *, top_k: int = 3, class_name: Optional[str] = None,
                pool_layer: Optional[str] = None, device: Optional[str] = None) -> int:
    """``softpool3d-explain``: :func:`explain_video` for every video named; 1 when some could not be decoded."""
    recognizer = Recognizer.from_checkpoint(checkpoint, device)
    failed = 0
    for video in collect_videos(inputs):
        try:
            written = explain_video(recognizer, video.path, Path(out), top_k, class_name, pool_layer)
        except VideoReadError as error:
            logger.warning("cannot explain %s: %s", video.path, error)
            failed += 1
            continue
        logger.info("%s: %s", video.path, ", ".join(str(path) for path in written))
    return 1 if failed else 0
