"""Recipes compose: each names its bases and states only what differs, and resolves to exactly the
values it had before recipes composed (tests/fixtures/resolved_configs, written with the loader of
that time from the then self-contained files; since then, custom/r3d_18_finetune normalises as the
torchvision weights it fine-tunes were trained, no longer with X3D's 0.45/0.225). Bases resolve
relative to the file; a missing base or a cycle names the file. Names are looked up in the shipped
configs from any folder, and the allowed names come from the registries."""
import json
import re
from pathlib import Path

import pytest
import torchvision
from omegaconf import OmegaConf

from softpool3d import datasets, models
from softpool3d.engine.config import CONFIG_DIR, DEFAULT_CONFIG, ConfigError, config_layers, find_config, load_config
from softpool3d.engine.training.optim import OPTIMIZERS

REPO = Path(__file__).resolve().parents[2]
SNAPSHOTS = Path(__file__).resolve().parents[1] / "fixtures" / "resolved_configs"
ALL_FILES = sorted((REPO / "configs").rglob("*.yaml"))
RECIPES = [path for path in ALL_FILES if "_base_" not in path.relative_to(REPO / "configs").parts]


def snapshot_name(recipe: Path) -> str:
    return "_".join(recipe.relative_to(REPO / "configs").with_suffix("").parts)


def leaves(node: dict, prefix: str = "") -> dict:
    """``{"data.crop_size": 112, ...}`` for a nested dict."""
    flat = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(leaves(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_every_recipe_has_a_snapshot_and_every_snapshot_a_recipe():
    assert {snapshot_name(path) for path in RECIPES} == {path.stem for path in SNAPSHOTS.glob("*.json")}


@pytest.mark.parametrize("recipe", RECIPES, ids=snapshot_name)
def test_recipe_resolves_to_its_values_before_recipes_composed(recipe):
    resolved = OmegaConf.to_container(load_config(recipe), resolve=True)
    assert resolved == json.loads((SNAPSHOTS / f"{snapshot_name(recipe)}.json").read_text())


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda path: str(path.relative_to(REPO / "configs")))
def test_no_config_file_repeats_a_value_its_bases_set(path):
    *bases, (_, own) = config_layers(path)
    inherited = leaves(OmegaConf.to_container(OmegaConf.merge({}, *(layer for _, layer in bases))))
    repeated = {key: value for key, value in leaves(OmegaConf.to_container(own)).items()
                if key in inherited and inherited[key] == value}
    assert not repeated, f"{path} repeats what its bases set: {repeated}"


@pytest.mark.parametrize("recipe", RECIPES, ids=snapshot_name)
def test_every_recipe_is_a_delta_on_bases(recipe):
    assert len(config_layers(recipe)) > 1, f"{recipe} names no base"


@pytest.mark.parametrize("model", ["r3d_34", "srtg_r3d_34", "srtg_r3d_50", "x3d_s", "x3d_m"])
def test_ucf101_and_hmdb51_recipes_differ_only_in_their_dataset_base(model):
    def lines(dataset):
        text = (REPO / "configs" / dataset / f"{model}_soft.yaml").read_text()
        return [line for line in text.splitlines() if not line.startswith("#")]

    differing = [(a, b) for a, b in zip(lines("ucf101"), lines("hmdb51")) if a != b]
    assert len(lines("ucf101")) == len(lines("hmdb51"))
    assert differing == [("  - ../_base_/datasets/ucf101.yaml", "  - ../_base_/datasets/hmdb51.yaml")]


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_bases_merge_in_order_and_the_file_has_the_last_word(tmp_path):
    write(tmp_path, "bases/clip.yaml", "data:\n  num_frames: 4\n  crop_size: 32\n  test_scale: 40\n")
    write(tmp_path, "bases/longer.yaml", "defaults: [clip.yaml]\ndata:\n  num_frames: 8\n  sampling_rate: 3\n")
    recipe = write(tmp_path, "recipes/run.yaml",
                   "defaults:\n  - ../bases/longer.yaml\n  - ../bases/clip.yaml\ndata:\n  sampling_rate: 5\n")
    cfg = load_config(recipe)
    # longer (8 frames) comes first, clip (4 frames) after it; the file's own sampling_rate last.
    assert (cfg.data.num_frames, cfg.data.crop_size, cfg.data.test_scale, cfg.data.sampling_rate) == (4, 32, 40, 5)
    assert [path.name for path, _ in config_layers(recipe)] == ["clip.yaml", "longer.yaml", "clip.yaml", "run.yaml"]


def test_missing_base_names_the_file_that_refers_to_it(tmp_path):
    recipe = write(tmp_path, "run.yaml", "defaults: [bases/nowhere.yaml]\n")
    with pytest.raises(ConfigError, match=re.escape(f"{recipe}: base 'bases/nowhere.yaml' does not exist")):
        load_config(recipe)


def test_base_cycle_names_the_files(tmp_path):
    write(tmp_path, "a.yaml", "defaults: [b.yaml]\n")
    write(tmp_path, "b.yaml", "defaults: [a.yaml]\n")
    recipe = write(tmp_path, "run.yaml", "defaults: [a.yaml]\n")
    with pytest.raises(ConfigError, match="base cycle") as info:
        load_config(recipe)
    assert f"{tmp_path / 'a.yaml'} -> {tmp_path / 'b.yaml'} -> {tmp_path / 'a.yaml'}" in str(info.value)
    assert str(recipe) not in str(info.value).split("base cycle")[1]


@pytest.mark.parametrize("text", ["defaults: base.yaml\n", "defaults: [1]\n"])
def test_defaults_must_be_a_list_of_paths(tmp_path, text):
    recipe = write(tmp_path, "run.yaml", text)
    with pytest.raises(ConfigError, match=re.escape(f"{recipe}: defaults must be a list")):
        load_config(recipe)


def test_a_bad_value_in_a_base_names_the_base(tmp_path):
    base = write(tmp_path, "base.yaml", "train:\n  epochs: many\n")
    recipe = write(tmp_path, "run.yaml", "defaults: [base.yaml]\n")
    with pytest.raises(ConfigError, match=re.escape(f"{base}: bad key 'train.epochs'")):
        load_config(recipe)


def test_shipped_configs_are_found_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_config("ucf101/x3d_s_soft.yaml") == CONFIG_DIR / "ucf101" / "x3d_s_soft.yaml"
    assert find_config("ucf101/x3d_s_soft") == CONFIG_DIR / "ucf101" / "x3d_s_soft.yaml"
    assert load_config("demo") == load_config(None) == load_config(DEFAULT_CONFIG)
    assert load_config("hmdb51/x3d_s_soft").name == "hmdb51_x3d_s"
    with pytest.raises(ConfigError, match="nope/x3d_s_soft.yaml does not exist, here or among the shipped configs"):
        load_config("nope/x3d_s_soft.yaml")


def test_a_file_that_exists_wins_over_a_shipped_config_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "ucf101/x3d_s_soft.yaml", "name: mine\n")
    assert load_config("ucf101/x3d_s_soft.yaml").name == "mine"


def test_allowed_names_are_the_registries(monkeypatch):
    """A name registered after import is accepted; every registered name is."""
    monkeypatch.setitem(OPTIMIZERS, "lion", OPTIMIZERS["sgd"])
    assert load_config(None, ["optim.name=lion"]).optim.name == "lion"
    monkeypatch.setattr(datasets, "DATASET_NAMES", (*datasets.DATASET_NAMES, "something_v2"))
    assert load_config(None, ["data.dataset=something_v2"]).data.dataset == "something_v2"
    for pool in models.POOL_KINDS:
        assert load_config(None, [f"model.pool={pool}"]).model.pool == pool
    for name in models.list_models():
        assert load_config(None, [f"model.name={name}"]).model.name == name
    registered = models.list_models()
    monkeypatch.setattr(models, "list_models", lambda: [*registered, "new_net"])
    record = models.model_info("r3d_18")  # a registered model comes with its record (register_model(info))
    monkeypatch.setattr(models, "model_info", lambda name: record)
    assert load_config(None, ["model.name=new_net"]).model.name == "new_net"


def test_finetune_recipe_uses_an_ema_and_mixup_or_cutmix():
    cfg = load_config("custom/r3d_18_finetune.yaml")
    assert 0 < cfg.train.ema_decay < 1
    assert cfg.train.mixup_alpha > 0 or cfg.train.cutmix_alpha > 0
    assert cfg.train.mix_prob > 0


@pytest.mark.parametrize("recipe", [path for path in RECIPES if path.parent.name == "custom"], ids=snapshot_name)
def test_finetune_recipes_normalise_as_the_torchvision_weights_they_start_from_were_trained(recipe):
    cfg = load_config(recipe)
    preset = torchvision.models.get_model_weights(cfg.model.name.removeprefix("torchvision.")).DEFAULT.transforms()
    assert (list(cfg.data.mean), list(cfg.data.std)) == (list(preset.mean), list(preset.std))


@pytest.mark.parametrize("recipe", [path for path in RECIPES if path.parent.name != "custom"], ids=snapshot_name)
def test_other_recipes_leave_the_small_set_switches_off(recipe):
    cfg = load_config(recipe)
    assert (cfg.train.ema_decay, cfg.train.mixup_alpha, cfg.train.cutmix_alpha, cfg.train.precise_bn_batches) == (0, 0, 0, 0)
    assert (cfg.data.rand_augment_n, cfg.data.random_erasing, cfg.data.sampler) == (0, 0, "uniform")
