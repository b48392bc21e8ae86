"""softpool3d-explain: Grad-CAM equals ReLU(sum_c alpha_c A_c) computed by hand (features hooked on the
last stage during the plain forward, gradients by autograd) for models of each family; on a video whose
motion is confined to a box, the CAM of a motion-driven model puts most of its mass inside the box;
SoftPool's pictured weights are the softmax of each window and give the op's output; the command
writes the heat-map video, the contact sheet and the pool picture."""
import logging

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from softpool3d import soft_pool3d
from softpool3d.datasets import DEMO_CLASSES, write_video
from softpool3d.engine import cli
from softpool3d.engine.config import load_config
from softpool3d.engine.inference.explain import cam_mass_inside, grad_cam, pool_weights
from softpool3d.engine.inference.explain_command import explain_clip
from softpool3d.engine.inference.predict import Recognizer
from softpool3d.models import build_model
from softpool3d.models.pooling import GlobalPool3d

LAST_STAGES = [("r3d_18", {"width": 4}, "layer4"), ("x3d_xs", {}, "blocks.4"),
               ("torchvision.r2plus1d_18", {}, "layer4")]


@pytest.mark.parametrize("name, kwargs, stage", LAST_STAGES, ids=[m[0] for m in LAST_STAGES])
def test_grad_cam_is_relu_of_gradient_weighted_last_stage_features(name, kwargs, stage):
    torch.manual_seed(0)
    model = build_model(name, num_classes=5, pool="soft", **kwargs).eval()
    clips = torch.randn(2, 3, 4, 32, 32)
    cam, logits = grad_cam(model, clips, class_index=3)
    hooked = []
    handle = model.get_submodule(stage).register_forward_hook(lambda _, __, output: hooked.append(output))
    by_hand_logits = model(clips)
    handle.remove()
    features = hooked[0]
    (gradients,) = torch.autograd.grad(by_hand_logits[:, 3].sum(), features)
    expected = torch.relu((gradients.mean(dim=(2, 3, 4))[:, :, None, None, None] * features).sum(dim=1))
    assert cam.shape == expected.shape == (2, *features.shape[2:])
    torch.testing.assert_close(logits, by_hand_logits.detach())
    torch.testing.assert_close(cam, expected.detach(), rtol=1e-4, atol=1e-6)
    assert float(expected.detach().max()) > 0


class MotionNet(torch.nn.Module):
    """A model whose 'moving' logit is SoftPool of the frame-to-frame change: its response is driven by motion."""

    def __init__(self):
        super().__init__()
        self.pool = GlobalPool3d("soft")
        self.fc = torch.nn.Linear(1, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0], [-1.0]]))
            self.fc.bias.zero_()

    def forward_features(self, x):
        motion = (x[:, :, 1:] - x[:, :, :-1]).abs().sum(dim=1, keepdim=True)
        return F.avg_pool3d(motion, (1, 4, 4))

    def forward_head(self, features):
        return self.fc(self.pool(features).flatten(1))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


BOX = (8, 32, 32, 60)  # top, left, bottom, right


def box_video(path, frames=16):
    """64x64 frames: a fixed textured background, a 10x10 block moving inside BOX only."""
    rng = np.random.default_rng(3)
    background = rng.integers(0, 160, (64, 64, 3), dtype=np.uint8)
    video = np.repeat(background[None], frames, axis=0)
    top, left, bottom, right = BOX
    for index in range(frames):
        y = top + (3 * index) % (bottom - top - 10)
        x = left + (5 * index) % (right - left - 10)
        video[index, y:y + 10, x:x + 10] = (250, 250, 250)
    write_video(path, video, fps=25, keyframe_interval=4)


def test_cam_of_a_motion_driven_model_falls_inside_the_moving_box(tmp_path):
    video = tmp_path / "box.mp4"
    box_video(video)
    cfg = load_config(None, ["data.num_frames=8", "data.sampling_rate=2", "data.crop_size=64", "data.test_scale=64",
                             "data.train_scale=[64,72]", "train.device=cpu"])
    recognizer = Recognizer(MotionNet(), cfg, ["moving", "still"], torch.device("cpu"))
    explained = explain_clip(recognizer, video, class_index=0)
    assert explained.cam.shape == (8, 64, 64)
    top, left, bottom, right = BOX
    area = (bottom - top) * (right - left) / 64 ** 2
    inside = cam_mass_inside(explained.cam, BOX)
    assert inside > 0.7 > 4 * area, (inside, area)


def test_pictured_softpool_weights_are_each_windows_softmax_and_give_the_ops_output():
    x = torch.randn(1, 2, 4, 6, 7, dtype=torch.float64) * 3
    kernel = (2, 3, 3)
    weights = pool_weights(x, kernel)
    windows = x[..., :6, :6].reshape(1, 2, 2, 2, 2, 3, 2, 3).permute(0, 1, 2, 4, 6, 3, 5, 7).reshape(1, 2, 2, 2, 2, 18)
    expected = torch.exp(windows) / torch.exp(windows).sum(-1, keepdim=True)
    got = weights[..., :6, :6].reshape(1, 2, 2, 2, 2, 3, 2, 3).permute(0, 1, 2, 4, 6, 3, 5, 7).reshape(1, 2, 2, 2, 2, 18)
    torch.testing.assert_close(got, expected)
    tail = weights[..., :6, 6:].reshape(1, 2, 2, 2, 2, 3, 1).sum(dim=(3, 5, 6))
    torch.testing.assert_close(tail, torch.ones_like(tail))
    kept = (got * windows).sum(-1)
    torch.testing.assert_close(kept.float(), soft_pool3d(x.float(), kernel)[..., :2], rtol=1e-5, atol=1e-5)


def test_explain_command_writes_heat_video_contact_sheet_and_pool_picture(make_checkpoint, tmp_path, caplog):
    checkpoint = make_checkpoint("r3d_18", list(DEMO_CLASSES), "model.width=4")
    video = tmp_path / "in" / "box.mp4"
    box_video(video)
    out = tmp_path / "explained"
    assert cli.explain_main([str(checkpoint), str(video), "--out", str(out), "--pool-layer", "pool"]) == 0
    with av.open(str(out / "box-gradcam.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 4
    sheet = Image.open(out / "box-gradcam.png")
    assert sheet.width == 4 * 160
    pool = Image.open(out / "box-softpool.png")
    assert pool.width == 5 * 180
    assert cli.explain_main([str(checkpoint), str(video), "--out", str(out), "--pool-layer", "nope"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "'nope'" in errors[-1] and "its SoftPool layers: pool" in errors[-1]
