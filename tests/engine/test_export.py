"""softpool3d-export: ONNX in standard ops only, with the checkpoint's classes and input facts in its
metadata, matching PyTorch in onnxruntime (also at inputs scaled by 30, where only a per-window
max shift stays finite) at another batch size than traced; the .pt2 program in a fresh process; an
export whose logits differ from PyTorch's beyond the tolerance exits 1, naming the difference."""
import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch

from softpool3d.engine import cli
from softpool3d.engine.inference import export
from softpool3d.engine.inference.export import check_pt2, example_clips
from softpool3d.engine.inference.predict import Recognizer

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

CLASSES = [f"action {i}" for i in range(5)]
MODELS = [("r3d_18", "model.width=4"), ("x3d_xs", "model.width=null"),
          ("r2plus1d_18", "model.width=4")]


def relative_difference(exported, reference):
    return float(np.abs(exported - reference).max() / np.abs(reference).max())


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS, ids=[m[0] for m in MODELS])
def test_onnx_has_standard_ops_metadata_and_the_models_logits(model, make_checkpoint, tmp_path, caplog):
    checkpoint = make_checkpoint(*model[:1], CLASSES, *model[1:])
    path = tmp_path / "model.onnx"
    with caplog.at_level(logging.INFO):
        assert cli.export_main([str(checkpoint), "--format", "onnx", "--out", str(path)]) == 0
    assert any("max relative logit difference" in r.getMessage() and "top-1 agrees" in r.getMessage()
               for r in caplog.records)
    proto = onnx.load(str(path))
    assert {node.domain for node in proto.graph.node} <= {"", "ai.onnx"}
    assert all(opset.domain in ("", "ai.onnx") for opset in proto.opset_import)
    props = {p.key: p.value for p in proto.metadata_props}
    recognizer = Recognizer.from_checkpoint(checkpoint, "cpu")
    data = recognizer.cfg.data
    assert json.loads(props["classes"]) == CLASSES
    assert json.loads(props["mean"]) == pytest.approx(list(data.mean))
    assert json.loads(props["std"]) == pytest.approx(list(data.std))
    assert (int(props["num_frames"]), int(props["sampling_rate"]), int(props["crop_size"])) == (
        data.num_frames, data.sampling_rate, data.crop_size)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, scale in ((1, 1.0), (5, 1.0), (3, 30.0)):
        clips = example_clips(recognizer, batch, scale, seed=7)
        exported = session.run(None, {"clips": clips.numpy()})[0]
        with torch.no_grad():
            reference = recognizer.model(clips).numpy()
        assert exported.shape == (batch, len(CLASSES)) and np.isfinite(exported).all()
        assert relative_difference(exported, reference) < 1e-4, (batch, scale)
        assert (exported.argmax(1) == reference.argmax(1)).all()


@pytest.mark.slow
def test_pt2_program_in_a_fresh_process_gives_the_checkpoints_logits(make_checkpoint, tmp_path):
    checkpoint = make_checkpoint("r3d_18", CLASSES, "model.width=4")
    path = tmp_path / "model.pt2"
    assert cli.export_main([str(checkpoint), "--format", "pt2", "--out", str(path)]) == 0
    recognizer = Recognizer.from_checkpoint(checkpoint, "cpu")
    clips = example_clips(recognizer, 4, seed=3)
    torch.save(clips, tmp_path / "clips.pt")
    with torch.no_grad():
        reference = recognizer.model(clips).numpy()
    code = ("import sys, numpy, torch, softpool3d\n"
            f"program = torch.export.load({str(path)!r})\n"
            f"clips = torch.load({str(tmp_path / 'clips.pt')!r})\n"
            f"numpy.save({str(tmp_path / 'logits.npy')!r}, program.module()(clips).detach().numpy())\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    logits = np.load(tmp_path / "logits.npy")
    assert logits.shape == reference.shape
    assert relative_difference(logits, reference) < 1e-5


def test_unknown_format_and_missing_checkpoint_are_user_errors(tmp_path, caplog):
    assert cli.export_main([str(tmp_path / "none.pt"), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(messages) == 1 and "none.pt" in messages[0]


def test_export_differing_from_pytorch_beyond_the_tolerance_exits_1_naming_the_difference(
        make_checkpoint, tmp_path, caplog, monkeypatch):
    """The PyTorch model is changed after writing the program (class 0's bias + 1), so the exported logits
    differ from the model's by exactly 1 in column 0: relative difference 1 / max |logits|."""
    checkpoint = make_checkpoint("r3d_18", CLASSES, "model.width=4")
    path = tmp_path / "model.pt2"
    seen = {}

    def check_after_changing_the_model(recognizer, program_path, clips):
        classifier = [m for m in recognizer.model.modules() if isinstance(m, torch.nn.Linear)][-1]
        with torch.no_grad():
            classifier.bias[0] += 1.0
            seen["logits"] = recognizer.model(clips).numpy()
        return check_pt2(recognizer, program_path, clips)

    monkeypatch.setattr(export, "check_pt2", check_after_changing_the_model)
    with caplog.at_level(logging.INFO):
        assert cli.export_main([str(checkpoint), "--format", "pt2", "--out", str(path)]) == 1
    expected = 1.0 / np.abs(seen["logits"]).max()
    assert expected > export.TOLERANCE
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and str(path) in errors[0] and "tolerance 1e-04" in errors[0], errors
    logged = float(errors[0].split("difference ")[1].split(",")[0])
    assert logged == pytest.approx(expected, rel=1e-2)
