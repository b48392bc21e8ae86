"""Device-side normalization: what reaches the model is what the workers' float path gave, and
evaluation runs the model on the normalized clips."""
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from softpool3d.datasets import build_dataset
from softpool3d.engine.evaluation.evaluate import forward_views
from softpool3d.engine.inputs import ClipNormalizer, model_inputs

CLIP = dict(num_frames=4, sampling_rate=2, crop_size=48, train_scale=(48, 56), test_scale=48)
MEAN, STD = (0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989)
CPU = torch.device("cpu")


def _worker_float_path(clip: torch.Tensor) -> torch.Tensor:
    """The transforms' last step before clips became uint8: torchvision's ``ToDtype`` + ``Normalize``
    on the ``(T, C, H, W)`` video, then ``(C, T, H, W)``."""
    normalize = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(MEAN), list(STD))])
    video = tv_tensors.Video(clip.permute(1, 0, 2, 3))
    return normalize(video).as_subclass(torch.Tensor).permute(1, 0, 2, 3)


@pytest.mark.parametrize("split, train", [("train", True), ("test", False)])
def test_device_normalization_equals_the_workers_float_path(demo_root, split, train):
    dataset = build_dataset("ucf101", demo_root, split, train=train, **CLIP)
    clips = torch.stack([dataset[i][0] for i in range(3)])
    assert clips.dtype == torch.uint8
    normalized = model_inputs(clips, CPU, ClipNormalizer(MEAN, STD))
    old = torch.stack([_worker_float_path(clip) for clip in clips])
    assert normalized.dtype == torch.float32 and torch.equal(normalized, old)
    reference = (clips.double() / 255 - torch.tensor(MEAN, dtype=torch.float64).view(3, 1, 1, 1)) \
        / torch.tensor(STD, dtype=torch.float64).view(3, 1, 1, 1)
    torch.testing.assert_close(normalized.double(), reference, rtol=0, atol=1e-6)


class _Recorder(torch.nn.Module):
    def forward(self, x):
        self.seen = x
        return x.flatten(1)[:, :5]


def test_forward_views_gives_the_model_normalized_clips():
    clips = torch.randint(0, 256, (2, 3, 4, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    model = _Recorder()
    logits = forward_views(model, clips, CPU, "none", ClipNormalizer(MEAN, STD))
    assert model.seen.dtype == torch.float32
    assert torch.equal(model.seen, torch.stack([_worker_float_path(clip) for clip in clips]))
    assert torch.equal(logits, model.seen.flatten(1)[:, :5])


def test_floating_clips_pass_unchanged_and_other_inputs_are_refused():
    normalizer = ClipNormalizer(MEAN, STD)
    already = torch.randn(2, 3, 4, 8, 8)
    assert normalizer(already) is already
    with pytest.raises(TypeError, match="int16"):
        normalizer(torch.zeros(2, 3, 4, 8, 8, dtype=torch.int16))
    with pytest.raises(ValueError, match=r"\(2, 4, 4, 8, 8\)"):
        normalizer(torch.zeros(2, 4, 4, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="std"):
        ClipNormalizer(MEAN, (0.2, 0.0, 0.2))
