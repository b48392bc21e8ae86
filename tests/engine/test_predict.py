"""softpool3d-predict and the Recognizer: bad files named and the others predicted, top-k from the
checkpoint's classes against the model run on PyAV-decoded frames and against softpool3d-test's own
probabilities, windows covering a long video in order, features and rendered videos."""
import csv
import json
import logging
import shutil

import av
import numpy as np
import pytest
import torch

from softpool3d.datasets import DEMO_CLASSES, write_video
from softpool3d.datasets import transforms
from softpool3d.datasets.sampling import uniform_clips
from softpool3d.engine import cli
from softpool3d.engine.inference.predict import Recognizer
from softpool3d.engine.inference.video_inputs import collect_videos
from softpool3d.engine.inference.windows import window_spans

CLASSES = list(DEMO_CLASSES)


@pytest.fixture(scope="module")
def checkpoint(make_checkpoint, demo_root, tmp_path_factory):
    return make_checkpoint("r3d_18", CLASSES, "model.width=4", f"data.root={demo_root}", "data.make_demo=false",
                           f"output_dir={tmp_path_factory.mktemp('runs')}")


@pytest.fixture(scope="module")
def inputs(demo_root, tmp_path_factory):
    """Two good videos, one in a subfolder, a truncated one and an empty one."""
    folder = tmp_path_factory.mktemp("inputs")
    good = sorted(demo_root.rglob("*.mp4"))[:3]
    shutil.copy(good[0], folder / "a.mp4")
    shutil.copy(good[1], folder / "b.mp4")
    (folder / "nested").mkdir()
    shutil.copy(good[2], folder / "nested" / "c.mp4")
    (folder / "corrupt.mp4").write_bytes(good[0].read_bytes()[:2000])
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "notes.txt").write_text("not a video")
    return folder


def normalized(views, data):
    """uint8 views ``(N, C, T, H, W)`` -> ``(x / 255 - mean) / std`` per channel, by the formula."""
    mean = torch.tensor(list(data.mean)).view(1, 3, 1, 1, 1)
    std = torch.tensor(list(data.std)).view(1, 3, 1, 1, 1)
    return (views.float() / 255 - mean) / std


def pyav_probabilities(recognizer, path):
    """Mean softmax over the config's views, from every frame decoded by PyAV and the test transform."""
    with av.open(str(path)) as container:
        frames = torch.from_numpy(np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]))
    data = recognizer.cfg.data
    transform = transforms.TestTransform(data.crop_size, data.test_scale, data.num_crops)
    views = [transform(frames[indices], crop) for indices in uniform_clips(len(frames), data.num_frames,
                                                                          data.sampling_rate, data.num_clips)
             for crop in range(data.num_crops)]
    with torch.no_grad():
        return recognizer.model(normalized(torch.stack(views), data)).softmax(1).mean(0).double().numpy()


def test_folder_with_bad_files_exits_1_naming_them_and_predicts_the_rest(checkpoint, inputs, tmp_path, caplog, capsys):
    out = tmp_path / "predictions.json"
    with caplog.at_level(logging.WARNING):
        code = cli.predict_main([str(checkpoint), str(inputs), "--out", str(out), "--top-k", "3", "--workers", "2"])
    assert code == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for bad in ("corrupt.mp4", "empty.mp4"):
        assert sum(bad in message and "\n" not in message for message in warnings) >= 1, warnings
    result = json.loads(out.read_text())
    assert result["classes"] == CLASSES and result["checkpoint"] == str(checkpoint)
    videos = {entry["video"]: entry for entry in result["videos"]}
    assert sorted(videos) == sorted(str(inputs / name) for name in
                                    ("a.mp4", "b.mp4", "nested/c.mp4", "corrupt.mp4", "empty.mp4"))
    assert set(videos[str(inputs / "corrupt.mp4")]) == {"video", "error"}
    assert set(videos[str(inputs / "empty.mp4")]) == {"video", "error"}
    assert "empty (0 bytes)" in videos[str(inputs / "empty.mp4")]["error"]
    recognizer = Recognizer.from_checkpoint(checkpoint, "cpu")
    for name in ("a.mp4", "b.mp4", "nested/c.mp4"):
        entry = videos[str(inputs / name)]
        assert entry["views"] == 2 and entry["duration"] == pytest.approx(16 / 25)
        scores = [item["score"] for item in entry["top_k"]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)
        reference = pyav_probabilities(recognizer, inputs / name)
        assert [item["label"] for item in entry["top_k"]] == [CLASSES[i] for i in np.argsort(-reference)[:3]]
        np.testing.assert_allclose(scores, np.sort(reference)[::-1][:3], atol=2e-6)
    table = capsys.readouterr().out
    assert "nested/c.mp4" in table and "corrupt.mp4" in table


def test_predict_gives_softpool3d_tests_probabilities(checkpoint, demo_root, tmp_path):
    """One preprocessing path: the test split's top-1 scores of softpool3d-test, from softpool3d-predict."""
    assert cli.test_main([str(checkpoint), "--out", str(tmp_path / "test")]) == 0
    rows = json.loads((tmp_path / "test" / "predictions.json").read_text())["predictions"]
    videos = [row["video"] for row in rows]
    out = tmp_path / "predict.jsonl"
    assert cli.predict_main([str(checkpoint), *videos, "--out", str(out), "--top-k", "1", "--workers", "0"]) == 0
    predicted = [json.loads(line) for line in out.read_text().splitlines()]
    assert [entry["video"] for entry in predicted] == videos
    for row, entry in zip(rows, predicted):
        assert entry["top_k"][0]["label"] == row["prediction"]
        assert entry["top_k"][0]["score"] == pytest.approx(row["score"], abs=2e-6)


def test_ten_second_video_has_nine_ordered_windows_averaged_into_the_video(checkpoint, tmp_path):
    video = tmp_path / "long" / "ten.mp4"
    frames = np.random.default_rng(0).integers(0, 256, (250, 32, 64, 3), dtype=np.uint8)
    write_video(video, frames, fps=25)
    out, features = tmp_path / "windows.json", tmp_path / "features"
    assert cli.predict_main([str(checkpoint), str(tmp_path / "long"), "--window", "2", "--stride", "1",
                             "--top-k", str(len(CLASSES)), "--out", str(out), "--features", str(features),
                             "--workers", "0"]) == 0
    entry = json.loads(out.read_text())["videos"][0]
    windows = entry["windows"]
    assert [(w["start"], w["end"]) for w in windows] == [(float(s), float(s + 2)) for s in range(9)]
    assert entry["duration"] == pytest.approx(10.0) and entry["views"] == 9 * 2
    mean = {label: np.mean([next(t["score"] for t in w["top_k"] if t["label"] == label) for w in windows])
            for label in CLASSES}
    for item in entry["top_k"]:
        assert item["score"] == pytest.approx(mean[item["label"]], abs=1e-5)
    stored = np.load(features / "ten.npy")
    recognizer = Recognizer.from_checkpoint(checkpoint, "cpu")
    assert stored.shape == (9, recognizer.model.get_classifier().in_features)
    np.testing.assert_allclose(stored, recognizer.features(video, window=2, stride=1), rtol=1e-5, atol=1e-6)


def test_features_are_the_pooled_backbone_output_averaged_over_views(checkpoint, inputs):
    recognizer = Recognizer.from_checkpoint(checkpoint, "cpu")
    video = inputs / "a.mp4"
    clips = recognizer.predict_videos(collect_videos([video]), features=True)[0]
    assert clips.features.shape == (recognizer.model.get_classifier().in_features,)
    data = recognizer.cfg.data
    with av.open(str(video)) as container:
        frames = torch.from_numpy(np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]))
    transform = transforms.TestTransform(data.crop_size, data.test_scale)
    views = torch.stack([transform(frames[i]) for i in uniform_clips(len(frames), data.num_frames,
                                                                     data.sampling_rate, data.num_clips)])
    model = recognizer.model
    with torch.no_grad():
        reference = model.pool(model.forward_features(normalized(views, data))).flatten(1).mean(0).numpy()
    np.testing.assert_allclose(clips.features, reference, rtol=1e-5, atol=1e-6)


def test_render_draws_the_prediction_on_every_frame(checkpoint, inputs, tmp_path):
    assert cli.predict_main([str(checkpoint), str(inputs / "nested"), "--render", str(tmp_path / "seen"),
                             "--workers", "0"]) == 0
    with av.open(str(tmp_path / "seen" / "c.mp4")) as rendered, av.open(str(inputs / "nested" / "c.mp4")) as source:
        drawn = np.stack([f.to_ndarray(format="rgb24") for f in rendered.decode(video=0)]).astype(int)
        plain = np.stack([f.to_ndarray(format="rgb24") for f in source.decode(video=0)]).astype(int)
    assert drawn.shape == plain.shape
    corner, rest = (slice(None), slice(0, 6), slice(0, 20)), (slice(None), slice(-16, None), slice(-16, None))
    assert (np.abs(drawn[corner] - plain[corner]).mean(axis=(1, 2, 3)) > 20).all()  # the caption's box
    assert np.abs(drawn[rest] - plain[rest]).mean() < 8  # re-encoding noise only


@pytest.mark.parametrize("duration,window,stride,count,last", [
    (10.0, 2.0, 1.0, 9, (8.0, 10.0)), (10.0, 3.0, 2.0, 5, (7.0, 10.0)), (1.5, 2.0, 1.0, 1, (0.0, 1.5)),
    (4.0, 2.0, 2.0, 2, (2.0, 4.0)),
])
def test_windows_cover_the_video_in_order(duration, window, stride, count, last):
    spans = window_spans(duration, window, stride)
    assert len(spans) == count and spans[-1] == last and spans[0][0] == 0.0
    assert all(a[0] < b[0] for a, b in zip(spans, spans[1:]))


def errors(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_user_errors_are_one_error_line_and_exit_2(checkpoint, inputs, tmp_path, caplog):
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(checkpoint.read_bytes()[:-100])
    (tmp_path / "nothing").mkdir()
    cases = [([str(tmp_path / "missing.pt"), str(inputs)], "missing.pt"),
             ([str(damaged), str(inputs)], "damaged.pt"),
             ([str(checkpoint), str(tmp_path / "nothing")], "holds no video files")]
    for argv, needle in cases:
        caplog.clear()
        assert cli.predict_main(argv) == 2
        assert len(errors(caplog)) == 1 and needle in errors(caplog)[0], errors(caplog)


def test_csv_from_a_video_list_has_each_videos_labels_and_scores_in_rank_order(checkpoint, inputs, tmp_path,
                                                                                 monkeypatch):
    """``@list.txt``: one input a line, relative to the list's folder (not the working directory),
    blank and ``#`` lines skipped; the CSV has a row per video with ``label_k``/``score_k`` the k-th
    class and probability of the model run on PyAV-decoded frames."""
    folder = tmp_path / "listed"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(inputs / "a.mp4", folder / "a.mp4")
    shutil.copy(inputs / "nested" / "c.mp4", folder / "sub" / "c.mp4")
    (folder / "videos.txt").write_text("# two of the demo videos\nsub/c.mp4\n\na.mp4\n")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "predictions.csv"
    assert cli.predict_main([str(checkpoint), f"@{folder / 'videos.txt'}", "--out", str(out), "--top-k", "2",
                             "--workers", "0"]) == 0
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["video"] for row in rows] == [str(folder / "sub" / "c.mp4"), str(folder / "a.mp4")]
    recognizer = Recognizer.from_checkpoint(checkpoint, "cpu")
    for row in rows:
        reference = pyav_probabilities(recognizer, row["video"])
        ranked = np.argsort(-reference)[:2]
        assert [row["label_1"], row["label_2"]] == [CLASSES[i] for i in ranked]
        np.testing.assert_allclose([float(row["score_1"]), float(row["score_2"])], reference[ranked], atol=2e-6)
        assert row["views"] == "2" and float(row["duration"]) == pytest.approx(16 / 25)
        assert row["start"] == row["end"] == row["error"] == ""


def test_stride_without_window_is_a_user_error(checkpoint, inputs, caplog):
    assert cli.predict_main([str(checkpoint), str(inputs / "a.mp4"), "--stride", "1", "--workers", "0"]) == 2
    assert len(errors(caplog)) == 1 and "--stride needs --window" in errors(caplog)[0], errors(caplog)


def test_one_video_is_decoded_in_this_process_and_several_by_workers(checkpoint, inputs, monkeypatch):
    """Starting workers costs more than decoding one video: with ``--workers 2`` one video starts no
    worker and no fork server; two videos start the server before the model loads, 2 workers to probe
    them and 1 for their one batch of 4 views (no more workers than batches)."""
    from softpool3d.engine.inference import predict, predict_command

    workers, servers, real_loader = [], [], predict.run_loader
    monkeypatch.setattr(predict, "run_loader", lambda dataset, sampler, batch_size, num_workers, device:
                        workers.append(num_workers) or real_loader(dataset, sampler, batch_size, num_workers, device))
    monkeypatch.setattr(predict_command, "start_worker_server", lambda: servers.append("started"))
    assert cli.predict_main([str(checkpoint), str(inputs / "a.mp4"), "--workers", "2"]) == 0
    assert workers == [0, 0] and servers == []
    workers.clear()
    assert cli.predict_main([str(checkpoint), str(inputs / "a.mp4"), str(inputs / "b.mp4"), "--workers", "2"]) == 0
    assert workers == [2, 1] and servers == ["started"]
