"""--runtime onnx: softpool3d-predict in onnxruntime gives eager's probabilities within 1e-4, from a given
.onnx file or from the checkpoint exported once into the cache (reused, not exported again); and
softpool3d-export --dynamic writes a graph that serves other clip lengths and crops than traced."""
import json
import logging

import numpy as np
import pytest
import torch
from log_records import recorded_logs

from softpool3d.datasets import DEMO_CLASSES
from softpool3d.engine import cli
from softpool3d.engine.inference import export
from softpool3d.engine.inference.predict import Recognizer, collect_videos
from softpool3d.engine.inference.runtime import OnnxModel, onnx_cache_dir

onnxruntime = pytest.importorskip("onnxruntime")

CLASSES = list(DEMO_CLASSES)


@pytest.fixture(scope="module")
def checkpoint(make_checkpoint):
    return make_checkpoint("r3d_18", CLASSES, "model.width=4")


@pytest.fixture(scope="module")
def dynamic_export(checkpoint, tmp_path_factory):
    """``softpool3d-export --dynamic`` of the checkpoint, once for the module: the .onnx file and the messages
    the export logged (exporting takes seconds)."""
    path = tmp_path_factory.mktemp("onnx") / "dynamic.onnx"
    with recorded_logs(export.__name__) as records:
        assert cli.export_main([str(checkpoint), "--format", "onnx", "--dynamic", "--out", str(path)]) == 0
    return path, [message for _, message in records]


@pytest.fixture(scope="module")
def dynamic_onnx(dynamic_export):
    return dynamic_export[0]


def test_export_refuses_dynamic_pt2_as_a_user_error(checkpoint, tmp_path, caplog):
    assert cli.export_main([str(checkpoint), "--format", "pt2", "--dynamic", "--out", str(tmp_path / "m.pt2")]) == 2
    assert any("--dynamic is for --format onnx" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_dynamic_export_serves_other_clip_lengths_and_crops(checkpoint, dynamic_onnx):
    recognizer = Recognizer.from_checkpoint(checkpoint, "cpu")
    session = onnxruntime.InferenceSession(str(dynamic_onnx), providers=["CPUExecutionProvider"])
    shapes = [input.shape for input in session.get_inputs()]
    assert all(isinstance(size, str) for size in shapes[0][2:]), shapes
    for batch, frames, height, width in ((1, 6, 48, 48), (3, 12, 40, 56), (2, 4, 32, 32)):
        clips = torch.randn(batch, 3, frames, height, width, generator=torch.Generator().manual_seed(frames))
        exported = session.run(["logits"], {"clips": clips.numpy()})[0]
        with torch.no_grad():
            reference = recognizer.model(clips).numpy()
        assert np.abs(exported - reference).max() / np.abs(reference).max() < 1e-4, (frames, height, width)


@pytest.mark.slow
def test_dynamic_export_logs_its_check_at_two_lengths_and_two_crops(dynamic_export):
    checked = [message for message in dynamic_export[1] if "onnxruntime vs PyTorch at" in message]
    assert [m.split(" at ")[1].split(":")[0] for m in checked] == [
        "4 frames of 32x32", "4 frames of 64x64", "8 frames of 32x32", "8 frames of 64x64"]
    assert all("top-1 agrees" in m for m in checked)


def probabilities(predictions):
    return np.stack([p.probabilities for p in predictions])


@pytest.mark.slow
def test_onnx_runtime_gives_eagers_probabilities_within_1e_4(checkpoint, dynamic_onnx, demo_root, tmp_path):
    videos = collect_videos(sorted(demo_root.rglob("*.mp4"))[:4])
    eager = Recognizer.from_checkpoint(checkpoint, "cpu").predict_videos(videos, window=0.32, stride=0.32)
    onnx = Recognizer.from_checkpoint(checkpoint, "cpu", runtime="onnx", onnx=dynamic_onnx)
    assert isinstance(onnx.runner, OnnxModel)
    session, runs = onnx.runner.session, []

    class CountingSession:
        def run(self, *args, **kwargs):
            runs.append(args)
            return session.run(*args, **kwargs)

    onnx.runner.session = CountingSession()
    fast = onnx.predict_videos(videos, window=0.32, stride=0.32)
    assert len(runs) >= 1, "onnxruntime never ran"
    assert np.abs(probabilities(fast) - probabilities(eager)).max() < 1e-4
    for a, b in zip(fast, eager):
        assert len(a.windows) == len(b.windows) == 2
        assert np.abs(np.stack([w.probabilities for w in a.windows]) -
                      np.stack([w.probabilities for w in b.windows])).max() < 1e-4
    out = tmp_path / "onnx.json"
    assert cli.predict_main([str(checkpoint), *[str(v.path) for v in videos], "--runtime", "onnx", "--onnx",
                             str(dynamic_onnx), "--out", str(out), "--top-k", "3", "--workers", "0"]) == 0
    for entry, reference in zip(json.loads(out.read_text())["videos"], eager):
        assert [t["label"] for t in entry["top_k"]] == [t["label"] for t in reference.top_k(CLASSES, 3)]


@pytest.mark.slow
def test_checkpoint_is_exported_once_into_the_cache_then_reused(checkpoint, demo_root, monkeypatch):
    video = sorted(demo_root.rglob("*.mp4"))[0]
    first = Recognizer.from_checkpoint(checkpoint, "cpu", runtime="onnx")
    cached = list(onnx_cache_dir().glob("*.onnx"))
    assert [first.runner.path] == cached and first.runner.metadata["dynamic_clip_size"] == "true"

    def no_second_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(export, "export_onnx", no_second_export)
    second = Recognizer.from_checkpoint(checkpoint, "cpu", runtime="onnx")
    assert second.runner.path == first.runner.path
    eager = Recognizer.from_checkpoint(checkpoint, "cpu")
    np.testing.assert_allclose(second.predict_videos(collect_videos([video]))[0].probabilities,
                               eager.predict_videos(collect_videos([video]))[0].probabilities, atol=1e-4)


@pytest.mark.slow
def test_features_need_the_eager_runtime(checkpoint, dynamic_onnx, demo_root, tmp_path, caplog):
    video = sorted(demo_root.rglob("*.mp4"))[0]
    assert cli.predict_main([str(checkpoint), str(video), "--runtime", "onnx", "--onnx", str(dynamic_onnx),
                             "--features", str(tmp_path / "f")]) == 2
    assert any("--runtime eager" in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
