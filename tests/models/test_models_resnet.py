"""3D-ResNet / R(2+1)D: equivalence with torchvision, width knob, stem pooling."""
import pytest
import torch
import torchvision

from softpool3d.models import build_model


@pytest.mark.parametrize("name", ["r3d_18", "r2plus1d_18"])
def test_avg_pool_config_matches_torchvision_logits(name):
    torch.manual_seed(0)
    reference = getattr(torchvision.models.video, name)(num_classes=7).eval()
    ours = build_model(name, 7, pool="avg").eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 8, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["r3d_18", "r2plus1d_18"])
def test_state_dict_keys_match_torchvision(name):
    reference = getattr(torchvision.models.video, name)()
    ours = build_model(name, 400, pool="soft", stem_pool=True, dropout=0.5)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}


def test_width_scales_stage_channels():
    model = build_model("r3d_18", 5, pool="soft", width=16)
    assert model.stem[0].out_channels == 16
    assert [stage[-1].conv2[0].out_channels for stage in model.stages()] == [16, 32, 64, 128]
    assert model.fc.in_features == 128
    assert model(torch.randn(2, 3, 8, 32, 32)).shape == (2, 5)


def test_soft_head_is_softpool_of_last_features():
    torch.manual_seed(0)
    model = build_model("r3d_18", 3, pool="soft", width=8).eval()
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        features = model.forward_features(x).double().flatten(2)
        pooled = (features.softmax(-1) * features).sum(-1)
        expected = torch.nn.functional.linear(pooled, model.fc.weight.double(), model.fc.bias.double())
        torch.testing.assert_close(model(x).double(), expected, rtol=1e-4, atol=1e-5)


_STEM_POOLS = {
    "max": lambda x: torch.nn.functional.max_pool3d(x, (1, 3, 3), (1, 2, 2), (0, 1, 1)),
    "avg": lambda x: torch.nn.functional.avg_pool3d(x, (1, 3, 3), (1, 2, 2), (0, 1, 1), count_include_pad=False),
}


@pytest.mark.parametrize("pool", sorted(_STEM_POOLS))
def test_stem_pool_halves_the_stem_output(pool):
    model = build_model("r3d_18", 3, pool=pool, width=8, stem_pool=True).eval()
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        stem = model.stem(x)
        expected = _STEM_POOLS[pool](stem)
        torch.testing.assert_close(model.stem_pool(stem), expected)
    assert expected.shape[-2:] == (8, 8)


def test_unknown_pool_and_model_are_named():
    with pytest.raises(ValueError, match="'median'"):
        build_model("r3d_18", 3, pool="median")
    with pytest.raises(ValueError, match="'r3d_9'"):
        build_model("r3d_9", 3)
