"""Every registered model: forward/backward per pool kind, channels_last_3d, weights, freezing, size
(torch.compile: test_models_compile.py)."""
import pytest
import torch
import torchvision
from torch import nn

from softpool3d import SoftPool3d
from softpool3d.benchmarks.models import same_weight_models, time_train_step
from softpool3d.models import build_model, freeze_stages, list_models, load_pretrained, model_info
from softpool3d.models.complexity import count_complexity
from softpool3d.models.pooling import POOL_KINDS, GlobalPool3d
from softpool3d.models.weights import FrozenBatchNorm3d

NAMES = [
    "r3d_18", "r3d_34", "r3d_50", "r3d_101", "r3d_152", "r2plus1d_18", "r2plus1d_34",
    "x3d_xs", "x3d_s", "x3d_m", "x3d_l", "srtg_r3d_34", "srtg_r3d_50", "srtg_r3d_101", "srtg_r2plus1d_34",
]  # fmt: skip


def _tiny(name, pool="soft", **kw):
    """The model at a CPU-test size: ResNets at width 8 (X3D has no width knob)."""
    if not name.startswith("x3d"):
        kw.setdefault("width", 8)
    return build_model(name, 5, pool=pool, **kw)


def test_every_required_name_is_registered():
    assert set(NAMES) <= set(list_models())


@pytest.mark.parametrize("pool", ["soft", "max", "avg"])
@pytest.mark.parametrize("name", NAMES)
def test_forward_backward(name, pool):
    torch.manual_seed(0)
    model = _tiny(name, pool)
    x = torch.randn(2, 3, 4, 32, 32, requires_grad=True)
    logits = model(x)
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    logits.logsumexp(-1).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_channels_last_3d_matches_contiguous(name):
    torch.manual_seed(0)
    model = _tiny(name).eval()
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        expected = model(x)
        model.to(memory_format=torch.channels_last_3d)
        got = model(x.contiguous(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    model.train()
    model(x.contiguous(memory_format=torch.channels_last_3d)).sum().backward()


def test_load_torchvision_weights_skips_a_head_of_another_class_count(tmp_path):
    reference = torchvision.models.video.r3d_18()
    path = tmp_path / "r3d_18.pth"
    torch.save(reference.state_dict(), path)
    model = build_model("r3d_18", 7, pool="soft")
    report = load_pretrained(model, path)
    assert report.skipped_head_keys == ["fc.weight", "fc.bias"]
    assert not report.missing_keys and not report.unexpected_keys
    torch.testing.assert_close(model.layer4[1].conv2[0].weight, reference.layer4[1].conv2[0].weight)


def test_load_our_checkpoint_and_a_pytorchvideo_checkpoint(tmp_path):
    torch.manual_seed(0)
    source = _tiny("r3d_18")
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 3}, path)
    target = _tiny("r3d_18")
    report = load_pretrained(target, path)
    assert not (report.missing_keys or report.unexpected_keys or report.skipped_head)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    x3d_source, x3d_target = build_model("x3d_xs", 400), build_model("x3d_xs", 400)
    report = load_pretrained(x3d_target, {"model_state": x3d_source.state_dict(), "epoch": 300})
    assert not (report.missing_keys or report.unexpected_keys)
    torch.testing.assert_close(x3d_target.blocks[5].proj.weight, x3d_source.blocks[5].proj.weight)


def test_load_rejects_a_backbone_shape_mismatch_naming_the_key():
    state = _tiny("r3d_18", width=16).state_dict()
    with pytest.raises(ValueError, match="'stem.0.weight'"):
        load_pretrained(_tiny("r3d_18", width=8), state)


def test_load_names_an_unreadable_file(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="broken.pt"):
        load_pretrained(_tiny("r3d_18"), path)


@pytest.mark.parametrize("name", ["r3d_18", "x3d_xs", "srtg_r3d_34"])
def test_freeze_stages_freezes_stem_and_first_stages(name):
    model = _tiny(name)
    freeze_stages(model, 2)
    groups = model.stem_and_stages()
    frozen = {id(p) for group in groups[:2] for module in group for p in module.parameters()}
    assert frozen and all(not p.requires_grad for group in groups[:2] for m in group for p in m.parameters())
    assert all(p.requires_grad for p in model.parameters() if id(p) not in frozen)
    model.train()
    frozen_bns = [m for group in groups[:2] for module in group for m in module.modules() if isinstance(m, FrozenBatchNorm3d)]
    assert frozen_bns and all(not bn.training for bn in frozen_bns)
    before = frozen_bns[0].running_mean.clone()
    model(torch.randn(2, 3, 4, 32, 32)).sum().backward()
    assert torch.equal(frozen_bns[0].running_mean, before)
    assert model.state_dict().keys() == _tiny(name).state_dict().keys()


@pytest.mark.parametrize("name", ["r3d_18", "r2plus1d_18", "x3d_s", "x3d_l"])
def test_params_and_macs_match_published_figures(name):
    result = count_complexity(name)
    info = model_info(name)
    assert result.clip_size == info.clip_size
    assert result.params / 1e6 == pytest.approx(info.params_m, rel=0.01)
    assert result.macs / 1e9 == pytest.approx(info.gmacs, rel=0.01)


def test_srtg_complexity_counts_every_parameter_of_the_built_model():
    """Counting runs SRTG's gated LSTM on the meta device, where autocast does not exist."""
    result = count_complexity("srtg_r3d_34")
    built = build_model("srtg_r3d_34", 400)
    assert result.params == sum(p.numel() for p in built.parameters())
    assert result.macs > 0


def _pool_kind(module):
    """The kind of ``module`` if it is a pooling layer (switched by ``pool`` or not), else None."""
    if isinstance(module, GlobalPool3d):
        return module.pool
    if isinstance(module, SoftPool3d):
        return "soft"
    if isinstance(module, (nn.MaxPool3d, nn.AdaptiveMaxPool3d)):
        return "max"
    if isinstance(module, (nn.AvgPool3d, nn.AdaptiveAvgPool3d)):
        return "avg"
    return None


@pytest.mark.parametrize("name, kw", [("r3d_18", {"width": 8, "stem_pool": True}), ("x3d_xs", {}),
                                      ("srtg_r3d_34", {"width": 8})])
def test_speed_benchmark_compares_pool_kinds_on_the_same_weights(name, kw):
    """The speed benchmark's models (one per pool kind) hold equal tensors under equal names, have
    the same modules, and differ in their pooling layers only."""
    models = same_weight_models(name, POOL_KINDS, **kw)
    assert list(models) == list(POOL_KINDS)
    reference = models["soft"].state_dict()
    structure = [(path, "pool" if _pool_kind(module) else type(module)) for path, module in models["soft"].named_modules()]
    for pool, model in models.items():
        layers = [(path, _pool_kind(module) or type(module)) for path, module in model.named_modules()]
        assert {kind for _, kind in layers if isinstance(kind, str)} == {pool}
        assert [(path, "pool" if isinstance(kind, str) else kind) for path, kind in layers] == structure
        state = model.state_dict()
        assert state.keys() == reference.keys()
        assert all(torch.equal(state[key], reference[key]) for key in reference), pool


def test_speed_benchmark_runs_one_round_per_repeat_for_every_pool_kind():
    """A smoke run of the speed benchmark; its timings are reported by the benchmark, not checked here."""
    timing = time_train_step("r3d_18", (2, 32, 32), batch=2, repeats=2, width=4)
    assert {pool: len(rounds) for pool, rounds in timing.rounds.items()} == {pool: 2 for pool in POOL_KINDS}
