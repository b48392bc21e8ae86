"""torchvision's video networks by name: records from torchvision's weights, hub weight files loaded
into them (S3D's convolution classifier included), the same logits as torchvision's network with
the same weights and pools, the pool-replacement report, and an S3D SoftPool training step."""
import pytest
import torch
import torchvision
from torchvision.models import get_model_weights

import softpool3d
from softpool3d.models import build_model, freeze_stages, list_models, load_pretrained, model_info
from softpool3d.models.complexity import count_complexity

BUILDERS = ["r3d_18", "mc3_18", "r2plus1d_18", "s3d", "mvit_v1_b", "mvit_v2_s", "swin3d_t", "swin3d_s", "swin3d_b"]


def test_torchvision_video_builders_are_registered():
    assert {f"torchvision.{builder}" for builder in BUILDERS} <= set(list_models())


@pytest.mark.parametrize("builder", BUILDERS)
def test_records_come_from_torchvision_weights_and_gmacs_match(builder):
    weights, info = get_model_weights(builder).DEFAULT, model_info(f"torchvision.{builder}")
    assert info.weights_url == weights.url and str(weights) in info.weights
    assert info.params_m * 1e6 == pytest.approx(weights.meta["num_params"], abs=0.5)
    transform = weights.transforms()
    assert list(info.mean) == list(transform.mean) and list(info.std) == list(transform.std)
    assert list(info.clip_size[1:]) == list(transform.crop_size)
    complexity = count_complexity(f"torchvision.{builder}")
    assert complexity.macs / 1e9 == pytest.approx(weights.meta["_ops"], rel=0.01)


def _hub_file(tmp_path, builder, **kw):
    """A weight file as torchvision's hub serves them (a plain state dict) of a fresh network."""
    torch.manual_seed(0)
    reference = getattr(torchvision.models.video, builder)(**kw).eval()
    path = tmp_path / f"{builder}.pth"
    torch.save(reference.state_dict(), path)
    return reference, path


@pytest.mark.parametrize("builder, clip", [
    ("r3d_18", (2, 3, 4, 32, 32)),
    pytest.param("swin3d_t", (1, 3, 4, 32, 32), marks=pytest.mark.slow),
    pytest.param("s3d", (1, 3, 14, 224, 224), marks=pytest.mark.slow),
])
def test_hub_weights_give_torchvision_logits_with_the_same_pools(tmp_path, builder, clip):
    reference, path = _hub_file(tmp_path, builder)
    model = build_model(f"torchvision.{builder}", 400, pool="soft").eval()
    report = load_pretrained(model, path)
    assert not (report.missing_keys or report.unexpected_keys or report.skipped_head_keys)
    assert list(model.state_dict()) == list(reference.state_dict())
    assert len(softpool3d.replace_pooling(reference).replaced) == len(model.pool_replacement.replaced)
    x = torch.randn(clip)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-5)


def test_s3d_hub_weights_into_another_class_count_reset_the_classifier(tmp_path):
    reference, path = _hub_file(tmp_path, "s3d")
    model = build_model("torchvision.s3d", 5, pool="soft")
    report = load_pretrained(model, path)
    assert report.skipped_head_keys == ["classifier.1.weight", "classifier.1.bias"]
    assert not (report.missing_keys or report.unexpected_keys)
    classifier = model.get_classifier()
    assert classifier.out_features == 5 and 0 < classifier.weight.std() < 0.02
    torch.testing.assert_close(model.features[15].branch0[0].weight, reference.features[15].branch0[0].weight)


def test_the_model_carries_its_pool_replacement_report():
    soft = build_model("torchvision.s3d", 5, pool="soft").pool_replacement
    assert len(soft.replaced) == 14 and soft.left == [] and soft.pool == "soft"
    assert sum(isinstance(m, softpool3d.SoftPool3d) for m in build_model("torchvision.s3d", 5).modules()) == 14
    kept = build_model("torchvision.s3d", 5, pool="max").pool_replacement
    assert [entry.name for entry in kept.replaced] == ["avgpool"]
    mvit = build_model("torchvision.mvit_v2_s", 5).pool_replacement
    assert [entry.name for entry in mvit.replaced] == ["blocks.1.pool_skip.pool", "blocks.3.pool_skip.pool",
                                                       "blocks.14.pool_skip.pool"]


@pytest.mark.parametrize("name", ["torchvision.s3d", "torchvision.mvit_v2_s", "torchvision.swin3d_t"])
def test_freeze_stages_groups_cover_the_backbone(name):
    model = build_model(name, 5)
    groups = model.stem_and_stages()
    frozen = {id(p) for group in groups for module in group for p in module.parameters()}
    head = {id(p) for p in model.get_classifier().parameters()}
    assert len(groups) >= 4 and not frozen & head
    freeze_stages(model, len(groups))
    assert {id(p) for p in model.parameters() if p.requires_grad} == {id(p) for p in model.parameters()} - frozen


@pytest.mark.slow
def test_s3d_with_softpool_trains_a_step_on_a_full_size_batch():
    torch.manual_seed(0)
    model = build_model("torchvision.s3d", 5, pool="soft").train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(2, 3, 16, 224, 224)
    logits = model(x)
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.tensor([1, 3])).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.features[0][0][0].weight.grad.abs().sum() > 0
    before = model.get_classifier().weight.clone()
    optimizer.step()
    assert not torch.equal(model.get_classifier().weight, before)
