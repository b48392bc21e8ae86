"""The command lines: every user error is one ``ERROR`` line naming the file, key or value, exit code 2;
a traceback only with --debug; tools/test.py writes under the run directory (or --out)."""
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from log_records import recorded_logs

from softpool3d.engine import cli
from softpool3d.engine.processes import amp

REPO = Path(__file__).resolve().parents[2]


def tiny(demo_root, output_dir, name="run", *extra):
    """A run of a width-4 r3d_18 on 4-frame 32x32 clips: 1 epoch of 2 steps, 1 test view per video."""
    return [
        f"output_dir={output_dir}", f"name={name}", f"data.root={demo_root}", "data.make_demo=false",
        "data.num_frames=4", "data.crop_size=32", "data.train_scale=[32,40]", "data.test_scale=32",
        "data.batch_size=4", "data.test_batch_size=8", "data.num_workers=0", "data.num_clips=1", "data.num_crops=1",
        "data.val_split=test", "model.width=4", "optim.name=sgd", "optim.lr=0.05", "train.device=cpu",
        "train.epochs=1", "train.limit_steps_per_epoch=2", "train.val_every=1", "train.num_threads=1", *extra,
    ]


def errors(caplog):
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]


def expect_user_error(caplog, code, *needles):
    """Exit code 2 and exactly one ERROR record, on one line, holding every needle."""
    assert code == 2
    messages = errors(caplog)
    assert len(messages) == 1, messages
    assert "\n" not in messages[0]
    for needle in needles:
        assert needle in messages[0], (needle, messages[0])


@pytest.fixture(scope="module")
def trained(demo_root, tmp_path_factory):
    """A finished tiny run (checkpoints, test predictions)."""
    output = tmp_path_factory.mktemp("trained")
    assert cli.train_main(tiny(demo_root, output, "run", "train.val_every=100")) == 0
    return output / "run"


@pytest.mark.parametrize("override,needles", [
    ("model.name=resnet9000", ["model.name='resnet9000'", "is not one of", "r3d_18"]),
    ("data.train_scale=128", ["data.train_scale", "list of two ints"]),
    ("data.test_batch_size=0", ["data.test_batch_size=0", ">= 1"]),
    ("data.num_clips=0", ["data.num_clips=0"]),
    ("train.label_smoothing=2.0", ["train.label_smoothing=2.0", "[0, 1)"]),
    ("data.crop_size=-5", ["data.crop_size=-5"]),
    ("data.max_bad_fraction=1.5", ["data.max_bad_fraction=1.5"]),
    ("data.root=/nonexistent/videos", ["data.root=/nonexistent/videos", "not found"]),
    ("data.batch_size=1000", ["data.batch_size=1000", "training clips"]),
])
def test_bad_value_is_one_error_line_exit_2(demo_root, tmp_path, caplog, override, needles):
    code = cli.train_main(tiny(demo_root, tmp_path, "run", override))
    expect_user_error(caplog, code, *needles)
    assert not list((tmp_path / "run").rglob("*.pt"))


def test_range_errors_come_before_data_or_model_are_built(demo_root, tmp_path, caplog, monkeypatch):
    from softpool3d.engine import builders

    def refuse(*args, **kwargs):
        raise AssertionError("built data or a model before checking the config")

    monkeypatch.setattr(builders, "build_dataset", refuse)
    monkeypatch.setattr(builders, "build_model", refuse)
    monkeypatch.setattr(builders, "prepare_data", refuse)
    for override in ("data.test_batch_size=0", "data.num_clips=0", "train.label_smoothing=2.0", "data.crop_size=-5"):
        caplog.clear()
        expect_user_error(caplog, cli.train_main(tiny(demo_root, tmp_path, "run", override)), override)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA device")
def test_cuda_device_without_gpu(demo_root, tmp_path, caplog):
    expect_user_error(caplog, cli.train_main(tiny(demo_root, tmp_path, "run", "train.device=cuda")),
                      "train.device=cuda", "no CUDA device")


def test_malformed_annotation_line_names_file_and_line(demo_root, tmp_path, caplog):
    table = tmp_path / "train.csv"
    table.write_text("MoveUp/v_MoveUp_g01_c01.mp4,MoveUp\nthis line has no label\n")
    code = cli.train_main(tiny(demo_root, tmp_path, "run", "data.dataset=custom", f"data.annotations={table}"))
    expect_user_error(caplog, code, f"{table}:2")


def test_missing_class_index_names_every_place_searched(demo_root, tmp_path, caplog):
    root = tmp_path / "ucf"
    shutil.copytree(demo_root, root)
    (root / "classInd.txt").unlink()
    code = cli.train_main(tiny(root, tmp_path, "run"))
    expect_user_error(caplog, code, "classInd.txt", str(root), str(root / "ucfTrainTestlist"))


def test_checkpoint_of_another_width_says_what_it_holds(trained, caplog):
    code = cli.test_main([str(trained / "checkpoints" / "last.pt"), "model.width=8"])
    expect_user_error(caplog, code, "last.pt", "model.name=r3d_18 model.width=4")


def test_test_py_writes_beside_the_runs_predictions_not_over_them(trained, tmp_path, caplog):
    own = (trained / "test" / "predictions.json").read_bytes()
    assert cli.test_main([str(trained / "checkpoints" / "last.pt")]) == 0
    assert (trained / "test" / "predictions.json").read_bytes() == own
    written = (trained / "test-last" / "predictions.csv").read_text().splitlines()
    assert written[0].split(",")[:2] == ["video_index", "video"]
    assert len(written) == 1 + 16 and all(Path(row.split(",")[1]).is_file() for row in written[1:])
    loose = tmp_path / "x.pt"
    shutil.copy(trained / "checkpoints" / "last.pt", loose)
    caplog.clear()
    expect_user_error(caplog, cli.test_main([str(loose)]), "x.pt", "--out")
    assert cli.test_main([str(loose), "--out", str(tmp_path / "mine")]) == 0
    assert (tmp_path / "mine" / "predictions.json").is_file()
    assert not (tmp_path.parent / "test").exists()


@pytest.mark.slow
def test_subprocess_exit_code_and_debug_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(REPO / "tools" / "train.py"), "data.crop_size=-5", f"output_dir={tmp_path}"]
    plain = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 2, plain.stderr
    lines = [line for line in (plain.stdout + plain.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and " ERROR " in lines[0] and "data.crop_size=-5" in lines[0]
    debug = subprocess.run(command + ["--debug"], env=env, capture_output=True, text=True, timeout=120)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr


@pytest.fixture(scope="module")
def bad_root(demo_root, tmp_path_factory):
    """The demo set with its first test video corrupt and its second empty: returns (root, bad paths)."""
    root = tmp_path_factory.mktemp("bad") / "data"
    shutil.copytree(demo_root, root)
    lines = (root / "testlist01.txt").read_text().split()
    corrupt, empty = root / lines[0], root / lines[1]
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypisom" + b"\x17" * 900)
    empty.write_bytes(b"")
    return root, [str(corrupt), str(empty)]


@pytest.fixture(scope="module")
def bad_run(bad_root, tmp_path_factory):
    """Training with validation on the test list (2 of 16 videos bad), then its test; logs kept. The CPU
    probe says "no native bf16" on every machine, so ``train.amp=auto`` trains in float32."""
    root, _ = bad_root
    output = tmp_path_factory.mktemp("badrun")
    with recorded_logs() as messages, pytest.MonkeyPatch.context() as patch:
        patch.setattr(amp, "cpu_has_native_bf16", lambda: False)
        code = cli.train_main(tiny(root, output, "run", "data.max_bad_fraction=0.2", "data.num_workers=2",
                                   "train.amp=auto"))
    return code, output / "run", messages


def test_bad_val_and_test_videos_are_reported_once_and_left_out(bad_root, bad_run):
    _, bad = bad_root
    code, run, messages = bad_run
    assert code == 0
    for path in bad:
        naming = [text for level, text in messages if path in text]
        assert len(naming) == 1 and "left out of the metrics" in naming[0], naming
    assert any("val (split 'test'" in text and "(14 of 16 videos)" in text for _, text in messages)
    assert any("test (split 'test')" in text and "14 of 16 videos" in text for _, text in messages)
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["test_videos"], metrics["test_total_videos"]) == (14, 16)
    assert sorted(metrics["test_left_out"]) == sorted(bad)
    rows = (run / "test" / "predictions.csv").read_text().splitlines()[1:]
    assert len(rows) == 14 and not {row.split(",")[1] for row in rows} & set(bad)


def test_start_up_summary_comes_before_the_first_step(bad_run):
    _, _, messages = bad_run
    texts = [text for _, text in messages]
    summary = next(i for i, text in enumerate(texts) if text.startswith("run run:"))
    first_validation = next(i for i, text in enumerate(texts) if text.startswith("epoch 1:"))
    assert summary < first_validation
    lines = texts[summary].splitlines()
    assert "train (split 'train'): 24 videos, 8 classes, 0 missing" in lines[1] and "minus the carved val" in lines[1]
    assert "val (split 'test', the test split" in lines[2] and "16 videos, 8 classes" in lines[2]
    assert "test (split 'test'): 16 videos, 8 classes" in lines[3]
    assert "model r3d_18 width 4, pool soft" in lines[4] and "M params" in lines[4] and "GMACs per clip 4x32x32" in lines[4]
    assert "device cpu, precision float32 (train.amp=auto: float32, since this CPU has no native bf16" in lines[5]
    assert "world size 1, data.num_workers 2" in lines[6]
    assert "1 epochs x 2 steps of 4 videos" in lines[7]


def _summary_and_bf16_warnings(caplog):
    """The device/precision line of the start-up summary, and every warning that names bf16."""
    summary = next(record.getMessage() for record in caplog.records if record.getMessage().startswith("run run:"))
    warnings = [record.getMessage() for record in caplog.records
                if record.levelno == logging.WARNING and "bf16" in record.getMessage()]
    return summary.splitlines()[5], warnings


def test_explicit_bf16_on_a_cpu_without_native_bf16_warns_once(demo_root, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level(logging.INFO):
        assert cli.train_main(tiny(demo_root, tmp_path, "run", "train.amp=bf16", "train.limit_steps_per_epoch=1",
                                   "train.val_every=100", "train.test_after_train=false")) == 0
    line, warnings = _summary_and_bf16_warnings(caplog)
    assert len(warnings) == 1 and "20-40x slower than float32" in warnings[0]
    assert "device cpu, precision bf16 (train.amp=bf16)" in line


def test_amp_auto_on_a_cpu_with_native_bf16_trains_in_bf16_without_a_warning(demo_root, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: True)
    with caplog.at_level(logging.INFO):
        assert cli.train_main(tiny(demo_root, tmp_path, "run", "train.amp=auto", "train.limit_steps_per_epoch=1",
                                   "train.val_every=100", "train.test_after_train=false")) == 0
    line, warnings = _summary_and_bf16_warnings(caplog)
    assert warnings == []
    assert "device cpu, precision bf16 (train.amp=auto: this CPU has native bf16 (AMX or AVX512-BF16))" in line


def test_test_py_on_bad_videos_names_them_and_covers_the_rest(bad_root, bad_run, caplog):
    _, bad = bad_root
    _, run, _ = bad_run
    with caplog.at_level(logging.INFO):
        assert cli.test_main([str(run / "checkpoints" / "last.pt")]) == 0
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and all(path in warnings[0] for path in bad)
    assert "14 of 16 videos" in caplog.text
    summary = json.loads((run / "test-last" / "predictions.json").read_text())
    assert (summary["num_videos"], summary["total_videos"], sorted(summary["left_out"])) == (14, 16, sorted(bad))


def test_more_bad_videos_than_the_fraction_stop_naming_them(bad_root, bad_run, caplog):
    _, bad = bad_root
    _, run, _ = bad_run
    code = cli.test_main([str(run / "checkpoints" / "last.pt"), "data.max_bad_fraction=0.1", "--out",
                          str(run / "strict")])
    expect_user_error(caplog, code, "2 of 16 videos", "data.max_bad_fraction=0.1", *bad)


@pytest.mark.slow
def test_two_process_test_py_on_bad_videos(bad_root, bad_run, tmp_path):
    _, bad = bad_root
    _, run, _ = bad_run
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(REPO / "tools" / "test.py"), str(run / "checkpoints" / "last.pt"), "--out",
                           str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for path in bad:
        assert done.stdout.count(path) == 1, done.stdout
    two = json.loads((tmp_path / "two" / "predictions.json").read_text())
    assert (two["num_videos"], two["total_videos"], sorted(two["left_out"])) == (14, 16, sorted(bad))
    one = json.loads((run / "test" / "predictions.json").read_text())  # the 1-process test at the end of training
    assert [row["video"] for row in two["predictions"]] == [row["video"] for row in one["predictions"]]
    assert [row["prediction"] for row in two["predictions"]] == [row["prediction"] for row in one["predictions"]]
