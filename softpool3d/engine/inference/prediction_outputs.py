"""What a prediction is and how it is written: a video's (and its windows') probabilities and
features, as a table on stdout, a ``.json`` / ``.jsonl`` / ``.csv`` file, or ``.npy`` feature files."""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from softpool3d.datasets.atomic import atomic_writer
from softpool3d.engine.config import ConfigError

OUTPUT_FORMATS = (".json", ".jsonl", ".csv")


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
