"""Config schema: every shipped YAML loads, mistakes fail naming the key and the file."""
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from softpool3d.builders import build_model

from softpool3d.config import ConfigError, DEFAULT_CONFIG, load_config, save_config
from softpool3d.models import list_models

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").rglob("*.yaml"))


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
    # Every key written in the file is a key of the schema with the file's value.
    raw = OmegaConf.to_container(OmegaConf.load(path))
    for section, values in raw.items():
        if isinstance(values, dict):
            for key, value in values.items():
                assert OmegaConf.to_container(cfg)[section][key] == value, f"{path}: {section}.{key}"


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
    cfg = load_config(None, ["optim.lr=0.5", "model.name=x3d_s", "data.train_scale=[10,20]"])
    assert cfg.optim.lr == 0.5 and cfg.model.name == "x3d_s" and list(cfg.data.train_scale) == [10, 20]
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
