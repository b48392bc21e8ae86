"""The clip transforms against torchvision's own ops: a training clip is torchvision's resized_crop of the
drawn region then its flip (bit for bit), close to resizing the whole frame then cropping (the picture the
draws describe, up to a source pixel of rounding), the same from a list of decoded frames as from their
stack; a test view is torchvision's resize then crop, bit for bit."""
import pytest
import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from softpool3d.datasets import transforms
from softpool3d.datasets.rand_augment import VideoRandAugment
from softpool3d.datasets.transforms import TrainTransform

CROP, SCALE = 40, (46, 57)


def _smooth_frames(frames: int, height: int, width: int, seed: int, feature: int = 6) -> torch.Tensor:
    """uint8 ``(T, H, W, 3)`` frames with detail about ``feature`` pixels wide (bicubic-smoothed noise)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(frames, 3, height // feature, width // feature, generator=generator) * 255
    fine = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    return fine.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def _draws(seed: int, height: int, width: int) -> tuple[float, int, int, bool, torch.Generator]:
    """The scale factor, top, left (on the scaled frame) and flip that TrainTransform documents, drawn
    here from the same seed in its order (short side, top, left, flip), and the generator after them."""
    generator = torch.Generator().manual_seed(seed)
    factor = (SCALE[0] + int(torch.randint(SCALE[1] - SCALE[0] + 1, (), generator=generator))) / min(height, width)
    scaled = max(round(height * factor), CROP), max(round(width * factor), CROP)
    top = int(torch.randint(scaled[0] - CROP + 1, (), generator=generator))
    left = int(torch.randint(scaled[1] - CROP + 1, (), generator=generator))
    return factor, top, left, bool(torch.randint(2, (), generator=generator)), generator


@pytest.mark.parametrize("rand_augment_n", [0, 2])
@pytest.mark.parametrize("height, width", [(46, 82), (51, 51), (70, 46)])
def test_train_clip_is_torchvision_resized_crop_then_flip(height, width, rand_augment_n):
    """With RandAugment on, its operations (drawn after the flip) see the flipped frames."""
    frames = torch.randint(0, 256, (5, height, width, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    transform = TrainTransform(CROP, SCALE, rand_augment_n=rand_augment_n)
    flips = set()
    for seed in range(16):
        factor, top, left, flip, generator = _draws(seed, height, width)
        side_h, side_w = min(round(CROP / factor), height), min(round(CROP / factor), width)
        video = TF.resized_crop(tv_tensors.Video(frames.permute(0, 3, 1, 2)), min(round(top / factor), height - side_h),
                                min(round(left / factor), width - side_w), side_h, side_w, [CROP, CROP], antialias=True)
        video = TF.horizontal_flip(video) if flip else video
        expected = VideoRandAugment(rand_augment_n, 9)(video, generator).permute(1, 0, 2, 3)
        clip = transform(frames, torch.Generator().manual_seed(seed))
        assert clip.shape == (3, 5, CROP, CROP) and clip.dtype == torch.uint8 and clip.is_contiguous()
        assert torch.equal(clip, expected), f"seed {seed}"
        flips.add(flip)
    assert flips == {True, False}


def test_train_clip_is_the_scaled_frame_cropped_within_a_source_pixel():
    """The region is cut from the source and resized alone; torchvision resizing the whole frame to the
    drawn size and cropping there gives the same picture but for the rounding of the region to source
    pixels (mean difference under 3 levels on frames with 24-pixel detail; a misplaced or unflipped crop
    differs by tens of levels)."""
    height, width = 182, 324
    frames = _smooth_frames(4, height, width, seed=3, feature=24)
    transform = TrainTransform(160, (182, 228))
    for seed in range(8):
        generator = torch.Generator().manual_seed(seed)
        factor = (182 + int(torch.randint(228 - 182 + 1, (), generator=generator))) / height
        size = [max(round(height * factor), 160), max(round(width * factor), 160)]
        top = int(torch.randint(size[0] - 160 + 1, (), generator=generator))
        left = int(torch.randint(size[1] - 160 + 1, (), generator=generator))
        flip = bool(torch.randint(2, (), generator=generator))
        scaled = TF.resize(tv_tensors.Video(frames.permute(0, 3, 1, 2)), size, antialias=True)
        expected = TF.crop(scaled, top, left, 160, 160)
        expected = (TF.horizontal_flip(expected) if flip else expected).permute(1, 0, 2, 3)
        clip = transform(frames, torch.Generator().manual_seed(seed))
        error = (clip.float() - expected.float()).abs().mean()
        assert error < 3.0, f"seed {seed}: mean difference {error:.2f} levels"


@pytest.mark.parametrize("rand_augment_n", [0, 2])
def test_a_list_of_frames_gives_the_clip_of_their_stack(rand_augment_n):
    """ShardDataset hands TrainTransform decode_jpeg's frames one tensor each ((H, W, 3) views of their own
    buffers, repeats sharing one); the clip equals the one cut from the stacked (T, H, W, 3) tensor."""
    buffers = [torch.randint(0, 256, (3, 50, 90), dtype=torch.uint8).permute(1, 2, 0).contiguous() for _ in range(3)]
    frames = [buffers[i] for i in (0, 1, 1, 2)]
    transform = TrainTransform(CROP, SCALE, rand_augment_n=rand_augment_n)
    for seed in range(12):
        from_list = transform(frames, torch.Generator().manual_seed(seed))
        from_stack = transform(torch.stack(frames), torch.Generator().manual_seed(seed))
        assert torch.equal(from_list, from_stack), f"seed {seed}"


@pytest.mark.parametrize("num_crops", [1, 3])
def test_test_view_is_torchvision_resize_then_crop(num_crops):
    frames = torch.randint(0, 256, (4, 48, 80, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    transform = transforms.TestTransform(CROP, 44, num_crops)
    resized = v2.Resize(44, antialias=True)(tv_tensors.Video(frames.permute(0, 3, 1, 2)))
    lefts = [(resized.shape[-1] - CROP) // 2] if num_crops == 1 else [0, (resized.shape[-1] - CROP) // 2, resized.shape[-1] - CROP]
    for crop_index, left in enumerate(lefts):
        expected = TF.crop(resized, (resized.shape[-2] - CROP) // 2, left, CROP, CROP).permute(1, 0, 2, 3)
        clip = transform(frames, crop_index)
        assert clip.is_contiguous() and torch.equal(clip, expected), f"crop {crop_index}"
