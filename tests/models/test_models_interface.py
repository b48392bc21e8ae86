"""Every registered model: its ModelInfo record and the common interface (forward_features,
forward_head, get_classifier, reset_classifier), checked against torchvision's and pytorchvideo's
published records."""
import functools

import pytest
import torch
import torchvision
from pytorchvideo.models.hub.x3d import checkpoint_paths as pytorchvideo_x3d_checkpoints
from torch import nn

from softpool3d.models import (
    NOT_PUBLISHED, ModelInfo, build_model, list_models, load_pretrained, model_info, register_model,
)

TORCHVISION_WEIGHTS = {
    "r3d_18": torchvision.models.video.R3D_18_Weights.KINETICS400_V1,
    "r2plus1d_18": torchvision.models.video.R2Plus1D_18_Weights.KINETICS400_V1,
}


def _tiny(name, num_classes=5, **kw):
    """The model at a CPU-test size: ResNets at width 4 (X3D and torchvision's networks have no
    width knob), in eval mode. The interface does not depend on the pool kind; avg pooling keeps
    these tests fast, max pooling for torchvision's networks (torch's avg_pool3d rejects S3D's
    padded 3x3x3 windows over 2 frames)."""
    pool = "max" if name.startswith("torchvision.") else "avg"
    if not name.startswith(("x3d", "torchvision.")):
        kw.setdefault("width", 4)
    torch.manual_seed(0)
    return build_model(name, num_classes, pool=pool, **kw).eval()


def _clip_size(name):
    """2x16x16, or the smallest clip torchvision's weights record for its network (S3D 14x224x224,
    MViT 16x224x224)."""
    if not name.startswith("torchvision."):
        return (2, 16, 16)
    meta = torchvision.models.get_model_weights(name.partition(".")[2]).DEFAULT.meta
    return (max(2, meta.get("min_temporal_size", 1)), *(max(16, size) for size in meta["min_size"]))


def _clip(name, batch):
    return torch.randn(batch, 3, *_clip_size(name))


INTERFACE_NAMES = [pytest.param(name, marks=pytest.mark.slow)
                   if name.startswith("torchvision.") and name != "torchvision.r3d_18" else name
                   for name in list_models()]
"""Every model; torchvision's at full width, slow but for r3d_18 (seconds to tens of seconds each)."""


def _published_rounding(figure: float) -> float:
    """Half a unit of the last digit the figure is published with (3.79 -> 0.005)."""
    decimals = len(repr(figure).partition(".")[2])
    return 0.5 * 10**-decimals


@functools.cache
def _features_and_logits(name):
    """``forward_features`` and ``forward`` of :func:`_tiny`'s model on a batch of 2 clips, computed
    once per model: the tests below share them (a full-size torchvision network takes seconds)."""
    model = _tiny(name)
    x = _clip(name, 2)
    with torch.no_grad():
        return model.forward_features(x), model(x)


@pytest.mark.parametrize("name", INTERFACE_NAMES)
def test_forward_is_forward_head_of_forward_features(name):
    features, logits = _features_and_logits(name)
    # MViT's features are tokens (N, 1 + T'H'W', C), every other model's (N, C, T', H', W')
    assert features.dim() == (3 if "mvit" in name else 5) and features.shape[0] == 2
    with torch.no_grad():
        assert torch.equal(_tiny(name).forward_head(features), logits)
    assert logits.shape == (2, 5)


@pytest.mark.parametrize("name", INTERFACE_NAMES)
def test_get_classifier_is_the_module_named_in_the_record_and_produces_the_logits(name):
    """The logits are ``forward_head`` of the features (the test above), so the head on the shared
    features stands for the whole network."""
    model = _tiny(name)
    classifier = model.get_classifier()
    assert isinstance(classifier, nn.Linear)
    assert dict(model.named_modules())[model_info(name).classifier] is classifier
    bias = torch.arange(5, dtype=torch.float32)
    with torch.no_grad():
        classifier.weight.zero_()
        classifier.bias.copy_(bias)
        logits = model.forward_head(_features_and_logits(name)[0])
    assert torch.equal(logits, bias.expand(2, 5))


@pytest.mark.parametrize("name", INTERFACE_NAMES)
def test_reset_classifier_changes_the_class_count_and_keeps_the_backbone(name):
    model = _tiny(name)
    head = model_info(name).classifier + "."
    before = {k: v.clone() for k, v in model.state_dict().items()}
    old = model.get_classifier()
    model.reset_classifier(7)
    new = model.get_classifier()
    assert new is not old and new.out_features == 7 and new.in_features == old.in_features
    assert torch.equal(new.bias, torch.zeros(7)) and 0 < new.weight.std() < 0.02
    after = model.state_dict()
    assert {k for k in after if not k.startswith(head)} == {k for k in before if not k.startswith(head)}
    assert all(torch.equal(after[k], v) for k, v in before.items() if not k.startswith(head))
    with torch.no_grad():
        assert model.forward_head(_features_and_logits(name)[0]).shape == (2, 7)


def test_reset_classifier_keeps_device_and_dtype_and_rejects_a_bad_class_count():
    model = _tiny("r3d_18").double()
    model.reset_classifier(3)
    assert model.get_classifier().weight.dtype == torch.float64
    with pytest.raises(ValueError, match="num_classes must be a positive int, got 0"):
        model.reset_classifier(0)


@pytest.mark.parametrize("name", [name for name in list_models() if model_info(name).params_m is not None])
def test_published_params_match_the_counted_parameters(name):
    info = model_info(name)
    with torch.device("meta"):
        model = build_model(name, 400)
    counted = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(counted - info.params_m) <= _published_rounding(info.params_m) + 1e-9, (counted, info.params_m)
    assert info.params_source != NOT_PUBLISHED and info.gmacs is not None and info.gmacs_source != NOT_PUBLISHED


@pytest.mark.parametrize("name", sorted(TORCHVISION_WEIGHTS))
def test_torchvision_backed_records_equal_torchvision_weights(name):
    weights, info = TORCHVISION_WEIGHTS[name], model_info(name)
    assert info.weights_url == weights.url
    assert str(weights) in info.weights
    assert info.params_m * 1e6 == pytest.approx(weights.meta["num_params"], abs=0.5)
    assert info.gmacs == weights.meta["_ops"]
    transform = weights.transforms()
    assert list(info.mean) == list(transform.mean) and list(info.std) == list(transform.std)
    assert list(info.clip_size[1:]) == list(transform.crop_size)


@pytest.mark.parametrize("name", [name for name in list_models() if name.startswith("x3d")])
def test_x3d_records_name_pytorchvideo_checkpoints(name):
    assert model_info(name).weights_url == pytorchvideo_x3d_checkpoints[name]


def test_records_without_weights_or_figures_say_so():
    for name in list_models():
        info = model_info(name)
        assert (info.weights_url is None) == (info.weights == "none published"), name
        assert (info.params_m is None) == (info.params_source == NOT_PUBLISHED), name
        assert (info.gmacs is None) == (info.gmacs_source == NOT_PUBLISHED), name
    assert model_info("srtg_r3d_34").weights_url is None and model_info("r3d_34").params_m is None


def test_model_info_names_an_unknown_model_and_register_model_takes_a_record():
    with pytest.raises(ValueError, match="unknown model 'r3d_19'"):
        model_info("r3d_19")
    with pytest.raises(TypeError, match="ModelInfo"):
        register_model((16, 112, 112))
    assert isinstance(model_info("x3d_s"), ModelInfo)
    with pytest.raises(AttributeError):
        model_info("x3d_s").clip_size = (1, 1, 1)


@pytest.mark.parametrize("name", ["r3d_18", "x3d_xs", "srtg_r3d_34"])
def test_load_pretrained_of_another_class_count_resets_the_classifier_it_names(name):
    source = _tiny(name, num_classes=9).state_dict()
    model = _tiny(name, num_classes=4)
    torch.nn.init.constant_(model.get_classifier().weight, 1.0)
    report = load_pretrained(model, source)
    head = model_info(name).classifier + "."
    assert report.skipped_head_keys == [head + "weight", head + "bias"]
    classifier = model.get_classifier()
    assert classifier.out_features == 4 and 0 < classifier.weight.std() < 0.02
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.items() if not k.startswith(head))


def test_load_pretrained_needs_the_interface():
    plain = nn.Sequential(nn.Conv3d(3, 4, 1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(TypeError, match="get_classifier"):
        load_pretrained(plain, plain.state_dict())
