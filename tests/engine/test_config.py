"""Config schema: every shipped YAML loads, mistakes and out-of-range values fail at load naming the
key and the file; train.amp=auto follows the hardware."""
import re
from pathlib import Path

import pytest
import torch

from softpool3d.engine.builders import build_model
from softpool3d.engine.config import _RANGES, DEFAULT_CONFIG, ConfigError, load_config, save_config
from softpool3d.engine.processes import amp
from softpool3d.models import list_models

CONFIGS = sorted(path for path in (Path(__file__).resolve().parents[2] / "configs").rglob("*.yaml")
                 if "_base_" not in path.parts)


def test_shipped_configs_are_found():
    names = {str(path.relative_to(DEFAULT_CONFIG.parent)) for path in CONFIGS}
    assert "demo.yaml" in names
    for dataset in ("kinetics700", "ucf101", "hmdb51"):
        for model in ("x3d_s", "x3d_m", "r3d_34", "srtg_r3d_34", "srtg_r3d_50"):
            assert f"{dataset}/{model}_soft.yaml" in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(DEFAULT_CONFIG.parent)))
def test_every_config_loads_and_builds_its_model(path):
    cfg = load_config(path)
    assert cfg.model.name in list_models()
    assert cfg.model.pool == "soft"
    with torch.device("meta"):  # structure only, no memory
        model = build_model(cfg, num_classes=7)
    assert any(p.shape[0] == 7 for p in model.parameters() if p.ndim == 2)


def test_mistyped_key_in_file_fails_naming_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "optim.lrr" in str(info.value) and str(path) in str(info.value)


def test_wrongly_typed_value_fails_naming_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: many\n")
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(path)


def test_overrides_apply_and_mistyped_override_fails():
    cfg = load_config(None, ["optim.lr=0.5", "model.name=x3d_s", "data.train_scale=[70,90]"])
    assert cfg.optim.lr == 0.5 and cfg.model.name == "x3d_s" and list(cfg.data.train_scale) == [70, 90]
    with pytest.raises(ConfigError, match="train.epoch"):
        load_config(None, ["train.epoch=3"])
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(None, ["train.epochs"])


def test_bad_choice_names_key_and_value():
    with pytest.raises(ConfigError, match="model.pool='mean'"):
        load_config(None, ["model.pool=mean"])


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_saved_config_reloads_identically(tmp_path):
    cfg = load_config(None, ["optim.lr=0.25"])
    save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(tmp_path / "run" / "config.yaml") == cfg


BAD_VALUES = {
    "data.num_frames": 0, "data.sampling_rate": 0, "data.crop_size": -5, "data.test_scale": 0,
    "data.num_clips": 0, "data.num_crops": 2, "data.batch_size": 0, "data.test_batch_size": 0,
    "data.num_workers": -1, "data.max_bad_fraction": 1.5, "data.repeat_aug": 0, "model.dropout": 1.0, "model.freeze_stages": -1,
    "optim.lr": 0.0, "optim.momentum": 1.0, "optim.weight_decay": -0.1, "optim.warmup_epochs": -1.0,
    "optim.warmup_start_factor": 0.0, "optim.min_lr": -1.0, "train.epochs": 0, "train.limit_steps_per_epoch": -1,
    "train.num_threads": -1, "train.label_smoothing": 2.0, "train.grad_clip": -1.0, "train.accumulate": 0,
    "train.val_every": 0, "train.checkpoint_every_steps": -1, "train.max_consecutive_skips": 0,
    "train.dist_timeout_s": 0, "train.stall_warn_s": -0.5, "train.mixup_alpha": -0.1, "train.cutmix_alpha": -1.0, "train.mix_prob": 1.5,
    "train.ema_decay": 1.0, "train.precise_bn_batches": -1, "data.rand_augment_n": -1, "data.rand_augment_m": 31,
    "data.random_erasing": 1.5,
}


def test_fold_is_checked_against_the_folds_its_dataset_declares():
    with pytest.raises(ConfigError, match=r"data.fold=4 must be one of 1, 2, 3 \(the folds of ucf101\)"):
        load_config(None, ["data.fold=4"])
    with pytest.raises(ConfigError, match=r"data.fold=0 must be one of 1, 2, 3 \(the folds of hmdb51\)"):
        load_config(None, ["data.dataset=hmdb51", "data.fold=0"])
    assert load_config(None, ["data.dataset=kinetics700", "data.fold=4"]).data.fold == 4  # one split: ignored


def test_clip_size_and_normalisation_default_to_the_models_record():
    """As timm's resolve_data_config: unset, they are the model's; stated, the recipe's."""
    from softpool3d import models

    for name in ("x3d_m", "torchvision.s3d", "r3d_18"):
        info = models.model_info(name)
        cfg = load_config("ucf101/x3d_s_soft", [f"model.name={name}", "data.train_scale=[320,320]",
                                                "data.test_scale=320"])
        assert (cfg.data.num_frames, cfg.data.crop_size, cfg.data.crop_size) == info.clip_size
        assert (tuple(cfg.data.mean), tuple(cfg.data.std)) == (info.mean, info.std)
    cfg = load_config("ucf101/x3d_s_soft", ["data.crop_size=128", "data.mean=[0.5,0.5,0.5]"])
    assert (cfg.data.num_frames, cfg.data.crop_size, list(cfg.data.mean)) == (13, 128, [0.5, 0.5, 0.5])


def test_every_range_checked_key_has_a_failing_case():
    assert set(BAD_VALUES) == set(_RANGES)


@pytest.mark.parametrize("key,value", sorted(BAD_VALUES.items()))
def test_out_of_range_value_fails_at_load_naming_key_and_value(key, value):
    with pytest.raises(ConfigError, match=f"{re.escape(key)}={re.escape(str(value))} must"):
        load_config(None, [f"{key}={value}"])


@pytest.mark.parametrize("override,message", [
    ("data.train_scale=128", "data.train_scale must be a list of two ints"),
    ("data.train_scale=[128]", "data.train_scale=[128] must be a list of two ints"),
    ("data.train_scale=[160,128]", "data.crop_size"),
    ("data.test_scale=32", "data.test_scale=32 must be >= data.crop_size"),
    ("data.std=[1,0,1]", "data.std"),
    ("optim.lr=nan", "optim.lr=nan"),
    ("optim.betas=[0.9,1.5]", "optim.betas"),
    ("model.name=resnet9000", "model.name='resnet9000' is not one of"),
    ("model.width=0", "model.width=0"),
    ("data.val_split=validation", "data.val_split='validation' is not one of train, val, test"),
    ("data.sampler=weighted", "data.sampler='weighted' is not one of uniform, class_balanced"),
])
def test_structured_values_fail_with_what_is_expected(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override])


def test_recipes_choose_their_precision_automatically():
    for path in CONFIGS:
        assert load_config(path).train.amp in ("auto", "none"), path


def test_amp_auto_follows_the_hardware(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: False)
    assert amp.resolve_amp("auto", cpu)[0] == "none"
    assert "no native bf16" in amp.resolve_amp("auto", cpu)[1]
    assert "20-40x slower" in amp.slow_bf16_warning("bf16", cpu)
    assert amp.slow_bf16_warning("none", cpu) is None and amp.resolve_amp("bf16", cpu)[0] == "bf16"
    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: True)
    assert amp.resolve_amp("auto", cpu)[0] == "bf16" and amp.slow_bf16_warning("bf16", cpu) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert amp.resolve_amp("auto", gpu)[0] == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert amp.resolve_amp("auto", gpu)[0] == "none"
    assert amp.resolve_amp("fp16", gpu)[0] == "fp16"


def test_native_bf16_probe_agrees_with_cpuinfo_flags():
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").is_file() else None
    if flags is None:
        pytest.skip("no /proc/cpuinfo")
    amp.cpu_has_native_bf16.cache_clear()
    assert amp.cpu_has_native_bf16() == bool({"amx_bf16", "avx512_bf16"} & flags)
