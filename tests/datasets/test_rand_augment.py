"""Video RandAugment: on a still video every frame stays identical to the others; each operation is
the one torchvision applies to a single frame; draws come from the clip's generator alone (same
seed, same clip; the global RNG untouched); n=0 leaves TrainTransform's clips as they were."""
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from softpool3d.datasets.rand_augment import OPERATIONS, VideoRandAugment
from softpool3d.datasets.transforms import TrainTransform


def _still_video(frames=6):
    torch.manual_seed(0)
    frame = torch.randint(0, 256, (1, 3, 24, 32), dtype=torch.uint8)
    return tv_tensors.Video(frame.expand(frames, -1, -1, -1).clone())


@pytest.mark.parametrize("seed", range(12))
def test_still_video_frames_stay_identical(seed):
    augment = VideoRandAugment(3, 15)
    out = augment(_still_video(), torch.Generator().manual_seed(seed))
    assert out.shape == (6, 3, 24, 32) and out.dtype == torch.uint8
    assert all(torch.equal(out[0], frame) for frame in out[1:])


def test_every_operation_treats_each_frame_as_torchvision_treats_one_image():
    video = _still_video()
    for name, op in OPERATIONS.items():
        magnitude = float(op.magnitudes(24, 32)[20])
        out = op.apply(video, magnitude)
        assert all(torch.equal(out[0], frame) for frame in out[1:]), name
        single = op.apply(tv_tensors.Image(video[0]), magnitude)  # torchvision's image kernel on one frame
        assert torch.equal(out[0], single), name


def test_draws_come_from_the_given_generator_only():
    video = tv_tensors.Video(torch.randint(0, 256, (4, 3, 24, 32), dtype=torch.uint8))
    augment = VideoRandAugment(2, 9)
    state = torch.get_rng_state()
    first = augment(video, torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, augment(video, torch.Generator().manual_seed(3)))
    draws = {tuple(augment.draw(24, 32, torch.Generator().manual_seed(seed))) for seed in range(30)}
    assert len(draws) > 20 and all(len(d) == 2 for d in draws)


def test_zero_ops_leave_train_transform_clips_unchanged():
    frames = torch.randint(0, 256, (4, 40, 48, 3), dtype=torch.uint8)
    plain = TrainTransform(32, (32, 40))
    augmented = TrainTransform(32, (32, 40), rand_augment_n=2, rand_augment_m=9)
    off = TrainTransform(32, (32, 40), rand_augment_n=0, rand_augment_m=30)
    clips = [t(frames, torch.Generator().manual_seed(1)) for t in (plain, off, augmented)]
    assert torch.equal(clips[0], clips[1]) and not torch.equal(clips[0], clips[2])
