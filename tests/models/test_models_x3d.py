"""X3D: equivalence with pytorchvideo's create_x3d, pool swapping, published size."""
import pytest
import torch
from softpool3d.models import build_model, load_pretrained
from softpool3d.models.x3d import PooledSqueezeExcitation, SqueezeExcitation, create_x3d


@pytest.mark.parametrize("name", ["x3d_s", "x3d_m"])
def test_avg_pool_matches_pytorchvideo_logits(name):
    torch.manual_seed(0)
    # pytorchvideo's head pools with a fixed window sized from the clip; build it for the test clip.
    reference = create_x3d(input_clip_length=4, input_crop_size=64, model_num_class=11, head_activation=None).eval()
    ours = build_model(name, 11, pool="avg").eval()
    report = load_pretrained(ours, reference.state_dict())
    assert not report.missing_keys and not report.unexpected_keys and not report.skipped_head
    x = torch.randn(2, 3, 4, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=1e-5)


def test_x3d_l_state_dict_matches_pytorchvideo():
    reference = create_x3d(input_clip_length=16, input_crop_size=312, depth_factor=5.0)
    ours = build_model("x3d_l", 400, pool="soft")
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}


def test_every_squeeze_excitation_pools_with_the_chosen_kind():
    model = build_model("x3d_xs", 5, pool="max")
    assert not any(isinstance(m, SqueezeExcitation) for m in model.modules())
    se = [m for m in model.modules() if isinstance(m, PooledSqueezeExcitation)]
    assert len(se) == 2 + 3 + 6 + 4  # every other block of stage depths [3, 5, 11, 7]
    torch.manual_seed(0)
    x = torch.randn(2, se[0].block[0].in_channels, 3, 5, 5)
    with torch.no_grad():
        expected = x * se[0].block(x.amax(dim=(2, 3, 4), keepdim=True))
        torch.testing.assert_close(se[0](x), expected)
    assert model.blocks[5].pool.pool.pool == "max"


def test_soft_head_pool_is_softpool_over_the_whole_map():
    torch.manual_seed(0)
    model = build_model("x3d_xs", 5, pool="soft").eval()
    head = model.blocks[5].pool
    x = torch.randn(1, 432, 2, 3, 3).relu()
    flat = x.double().flatten(2)
    expected = (flat.softmax(-1) * flat).sum(-1)
    torch.testing.assert_close(head.pool(x).double().flatten(1), expected, rtol=1e-5, atol=1e-6)
