"""Videos written again with their prediction drawn on every frame (``softpool3d-predict --render``)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from softpool3d.engine.inference.prediction_outputs import Prediction


def _label_at(prediction: Prediction, classes: Sequence[str], seconds: float) -> str:
    """The caption at ``seconds``: the video's top class, or the window's whose centre is nearest."""
    probabilities = prediction.probabilities
    if prediction.windows:
        nearest = min(prediction.windows, key=lambda w: abs((w.start + w.end) / 2 - seconds))
        probabilities = nearest.probabilities
    best = prediction.top_k(classes, 1, probabilities)[0]
    return f"{best['label']} {best['score']:.2f}"


def draw_caption(image, text: str) -> None:
    """Draw ``text`` white on black in the top-left corner of the PIL ``image`` (in place), at a size
    that follows the image's height."""
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default(size=max(10, image.height // 18))
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((4, 4), text, font=font)
    draw.rectangle((0, 0, right + 4, bottom + 4), fill=(0, 0, 0))
    draw.text((4, 4), text, fill=(255, 255, 255), font=font)


def _frames_with_captions(container, prediction: Prediction, classes: Sequence[str]) -> Iterator[np.ndarray]:
    stream = container.streams.video[0]
    fps = float(stream.average_rate or stream.guessed_rate or 25)
    for index, frame in enumerate(container.decode(stream)):
        image = frame.to_image()
        draw_caption(image, _label_at(prediction, classes, index / fps))
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
