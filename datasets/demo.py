"""A small synthetic action set, written as real H.264 mp4 files in UCF-101 layout.

Eight classes of motion, each over a noisy background with random colours, sizes, speeds and
start positions: a shape moving up, down or sideways (left or right), a bar rotating (either
way), a disc growing or shrinking, a shape fading in or out. Three pairs differ only in the
direction of time, so a model must read motion, not appearance. Every class is unchanged by a
horizontal flip, so the usual flip augmentation keeps labels right. Seeded, so the same
arguments give the same files.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Union

import av
import numpy as np

logger = logging.getLogger(__name__)

DEMO_CLASSES = ("MoveUp", "MoveDown", "MoveSideways", "Rotate", "Grow", "Shrink", "FadeIn", "FadeOut")

_COMPLETE = ".complete"


def write_video(
    path: Union[str, Path], frames: np.ndarray, fps: int = 25, codec: str = "libx264", keyframe_interval: int = 250
) -> None:
    """Encode uint8 frames ``(T, H, W, 3)`` (RGB, even H and W) to ``path`` with PyAV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.gop_size = keyframe_interval
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "veryfast"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def _shape_mask(kind: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, size: float, angle: float) -> np.ndarray:
    if kind == "disc":
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= size**2
    if kind == "square":
        return (np.abs(yy - cy) <= size) & (np.abs(xx - cx) <= size)
    dy, dx = math.sin(angle), math.cos(angle)
    along = np.clip((yy - cy) * dy + (xx - cx) * dx, -size, size)
    return (yy - cy - along * dy) ** 2 + (xx - cx - along * dx) ** 2 <= (size / 4) ** 2


_MOVES = {"MoveUp": [(-1, 0)], "MoveDown": [(1, 0)], "MoveSideways": [(0, -1), (0, 1)]}


def _start_along(direction: int, size: int, margin: float, travel: float, rng: np.random.Generator) -> float:
    """A start coordinate from which moving ``travel`` pixels in ``direction`` stays in frame."""
    if direction > 0:
        return rng.uniform(margin, size - margin - travel)
    if direction < 0:
        return rng.uniform(margin + travel, size - margin)
    return rng.uniform(margin, size - margin)


def _distractor_tracks(count: int, num_frames: int, size: int, rng: np.random.Generator) -> list[list[tuple]]:
    """``count`` nuisance shapes, each a list of ``(kind, (cy, cx), extent, angle, colour)`` per frame: a
    disc or square of about the actors' sizes and colours drifting in a random direction (wrapping around)."""
    tracks = []
    for _ in range(count):
        kind, extent = str(rng.choice(["disc", "square"])), size * rng.uniform(0.06, 0.12)
        colour = rng.integers(120, 256, 3).astype(np.float32)
        start, heading = rng.uniform(0, size, 2), rng.uniform(0, 2 * math.pi)
        velocity = size * rng.uniform(0.01, 0.04) * np.array([math.sin(heading), math.cos(heading)])
        tracks.append([(kind, tuple((start + velocity * t) % size), extent, 0.0, colour) for t in range(num_frames)])
    return tracks


def render_action(action: str, num_frames: int, size: int, rng: np.random.Generator, noise: float = 12.0,
                  distractors: int = 0) -> np.ndarray:
    """Frames ``(T, size, size, 3)`` uint8 of one random instance of ``action``.

    ``noise``: standard deviation of the per-pixel Gaussian noise of every frame. ``distractors``:
    that many nuisance shapes drifting in random directions behind the actor (motion that is not
    the action). The defaults draw exactly what the demo set always drew.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    background = rng.integers(0, 90, 3).astype(np.float32)
    colour = rng.integers(150, 256, 3).astype(np.float32)
    centre = rng.uniform(size * 0.4, size * 0.6, 2)
    if action in _MOVES:
        kind, extent = str(rng.choice(["disc", "square"])), size * rng.uniform(0.08, 0.14)
        travel = size * rng.uniform(0.35, 0.5)
        dy, dx = _MOVES[action][rng.integers(len(_MOVES[action]))]
        start = np.array([_start_along(d, size, extent + 1, travel, rng) for d in (dy, dx)])
        positions = [start + np.array([dy, dx]) * travel * t / (num_frames - 1) for t in range(num_frames)]
        shapes = [(kind, p, extent, 0.0) for p in positions]
    elif action == "Rotate":
        spin = rng.uniform(0.12, 0.2) * rng.choice([-1, 1])
        angle, extent = rng.uniform(0, math.pi), size * rng.uniform(0.2, 0.3)
        shapes = [("bar", centre, extent, angle + spin * t) for t in range(num_frames)]
    elif action in ("Grow", "Shrink"):
        small, large = size * rng.uniform(0.05, 0.08), size * rng.uniform(0.25, 0.32)
        first, last = (small, large) if action == "Grow" else (large, small)
        shapes = [("disc", centre, first + (last - first) * t / (num_frames - 1), 0.0) for t in range(num_frames)]
    else:
        kind, extent = str(rng.choice(["disc", "square"])), size * rng.uniform(0.15, 0.25)
        shapes = [(kind, centre, extent, 0.0)] * num_frames
    ramp = np.linspace(0.0, 1.0, num_frames) if action == "FadeIn" else np.linspace(1.0, 0.0, num_frames)
    tracks = _distractor_tracks(distractors, num_frames, size, rng)
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for t, (kind, (cy, cx), extent, angle) in enumerate(shapes):
        image = background + rng.normal(0, noise, (size, size, 3)).astype(np.float32)
        for track in tracks:
            d_kind, (dy, dx), d_extent, d_angle, d_colour = track[t]
            image[_shape_mask(d_kind, yy, xx, dy, dx, d_extent, d_angle)] = d_colour
        opacity = ramp[t] if action.startswith("Fade") else 1.0
        mask = _shape_mask(kind, yy, xx, cy, cx, extent, angle)
        image[mask] = opacity * colour + (1 - opacity) * image[mask]
        frames[t] = np.clip(image, 0, 255).astype(np.uint8)
    return frames


def make_demo_dataset(
    root: Union[str, Path],
    *,
    seed: int = 0,
    videos_per_class: int = 24,
    test_per_class: int = 8,
    num_frames: int = 16,
    size: int = 64,
    fps: int = 25,
    noise: float = 12.0,
    distractors: int = 0,
) -> Path:
    """Write the demo set under ``root`` in UCF-101 layout and return ``root``.

    ``root/classInd.txt``, ``root/trainlist01.txt``, ``root/testlist01.txt`` and videos
    ``root/<Class>/v_<Class>_gXX_cYY.mp4`` (group XX = one instance; the last
    ``test_per_class`` groups of each class form the test list). ``noise`` and ``distractors``
    make it harder (see :func:`render_action`). Does nothing if ``root`` already holds a
    complete set.
    """
    root = Path(root)
    if (root / _COMPLETE).is_file():
        return root
    if not 0 < test_per_class < videos_per_class:
        raise ValueError(f"test_per_class must be in 1..{videos_per_class - 1}, got {test_per_class}")
    rng = np.random.default_rng(seed)
    train_lines, test_lines = [], []
    for label, action in enumerate(DEMO_CLASSES, 1):
        for group in range(1, videos_per_class + 1):
            relative = f"{action}/v_{action}_g{group:02d}_c01.mp4"
            write_video(root / relative, render_action(action, num_frames, size, rng, noise, distractors), fps)
            if group <= videos_per_class - test_per_class:
                train_lines.append(f"{relative} {label}")
            else:
                test_lines.append(relative)
    (root / "classInd.txt").write_text("".join(f"{i} {a}\n" for i, a in enumerate(DEMO_CLASSES, 1)))
    (root / "trainlist01.txt").write_text("\n".join(train_lines) + "\n")
    (root / "testlist01.txt").write_text("\n".join(test_lines) + "\n")
    (root / _COMPLETE).touch()
    logger.info("wrote the demo set (%d videos) to %s", len(train_lines) + len(test_lines), root)
    return root
