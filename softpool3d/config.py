"""The run configuration: a structured OmegaConf schema, YAML files and ``key=value`` overrides.

``load_config(path, overrides)`` merges ``configs/*.yaml`` into the schema below; a key the
schema lacks or a value of the wrong type raises :class:`ConfigError` naming the key and the
file (or the override). ``save_config`` writes the resolved config into the run directory.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Union

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"


@dataclass
class DataConfig:
    """Which videos, and how clips are cut from them (arguments of ``build_dataset``).

    ``make_demo`` generates the synthetic demo set into ``root`` first. ``batch_size`` is per
    process. Validation uses one centre view per video (clip accuracy); the test uses
    ``num_clips x num_crops`` views. Datasets without a val list (UCF-101, HMDB-51, custom
    data without one) get ``val`` carved out of the training list: ``val_fraction`` of its
    groups, drawn with ``val_seed``; ``train`` is then the rest.
    """

    dataset: str = "ucf101"
    root: str = "data/demo"
    annotations: Optional[str] = None
    fold: int = 1
    make_demo: bool = False
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    val_fraction: float = 0.1
    val_seed: int = 0
    num_frames: int = 16
    sampling_rate: int = 2
    crop_size: int = 112
    train_scale: List[int] = field(default_factory=lambda: [128, 160])
    test_scale: int = 128
    mean: List[float] = field(default_factory=lambda: [0.45, 0.45, 0.45])
    std: List[float] = field(default_factory=lambda: [0.225, 0.225, 0.225])
    num_clips: int = 10
    num_crops: int = 3
    batch_size: int = 8
    test_batch_size: int = 8
    num_workers: int = 4


@dataclass
class ModelConfig:
    """Arguments of ``build_model``; ``pretrained`` and ``freeze_stages`` for fine-tuning."""

    name: str = "r3d_18"
    pool: str = "soft"
    width: Optional[int] = None
    dropout: float = 0.0
    pretrained: Optional[str] = None
    freeze_stages: int = 0


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule (cosine after a linear warm-up, stepped per update)."""

    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.0
    warmup_start_factor: float = 0.01
    min_lr: float = 0.0


@dataclass
class TrainConfig:
    """The training loop.

    ``amp``: none | bf16 | fp16 (with a grad scaler). ``grad_clip``: max gradient norm (0: off).
    ``accumulate``: micro-batches per optimizer step. ``checkpoint_every_steps``: also write
    ``last`` mid-epoch (0: at epoch ends only). ``nonfinite``: stop | skip a step whose loss or
    gradient is NaN/inf. ``limit_steps_per_epoch``: cap on steps per epoch (0: whole epoch).
    ``deterministic``: ``torch.use_deterministic_algorithms``. ``num_threads``: CPU threads of
    each process (0: torch's default; torchrun sets 1).
    """

    epochs: int = 10
    limit_steps_per_epoch: int = 0
    device: str = "auto"
    num_threads: int = 0
    amp: str = "none"
    label_smoothing: float = 0.0
    grad_clip: float = 0.0
    accumulate: int = 1
    val_every: int = 1
    checkpoint_every_steps: int = 0
    nonfinite: str = "stop"
    seed: int = 0
    deterministic: bool = False
    test_after_train: bool = True


@dataclass
class DebugConfig:
    """Fault injection and consistency checks used by the tests."""

    kill_at_step: int = -1
    step_checksums: bool = False


@dataclass
class Config:
    """A whole run: ``run_dir = output_dir / name``; ``resume`` is ``""``, ``"auto"`` or a path."""

    name: str = "demo"
    output_dir: str = "runs"
    resume: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)


class ConfigError(ValueError):
    """A config file or override does not fit the schema."""


_CHOICES = {
    "model.pool": ("soft", "max", "avg"),
    "optim.name": ("sgd", "adamw"),
    "train.amp": ("none", "bf16", "fp16"),
    "train.nonfinite": ("stop", "skip"),
    "train.device": ("auto", "cpu", "cuda"),
    "data.dataset": ("kinetics700", "ucf101", "hmdb51", "custom"),
}


def _merge(base: DictConfig, other: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None)
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"{source}: bad key {key!r}: {message}") from None


def _check(cfg: DictConfig, source: str) -> None:
    for key, choices in _CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in choices:
            raise ConfigError(f"{source}: {key}={value!r} is not one of {', '.join(choices)}")
    for key in ("train.epochs", "train.accumulate", "train.val_every", "data.batch_size", "data.num_frames"):
        if OmegaConf.select(cfg, key) < 1:
            raise ConfigError(f"{source}: {key} must be >= 1, got {OmegaConf.select(cfg, key)}")


def from_container(container: Mapping[str, Any], overrides: Sequence[str] = (), source: str = "config") -> DictConfig:
    """Build a checked config from a plain dict (e.g. the one stored in a checkpoint) plus overrides."""
    cfg = _merge(OmegaConf.structured(Config), container, source)
    return _apply_overrides(cfg, overrides, source)


def _apply_overrides(cfg: DictConfig, overrides: Sequence[str], source: str) -> DictConfig:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"command-line override {item!r} is not of the form key=value")
        try:
            dotlist = OmegaConf.from_dotlist([item])
        except OmegaConfBaseException as error:
            raise ConfigError(f"command-line override {item!r}: {error}") from None
        cfg = _merge(cfg, dotlist, f"command-line override {item!r}")
    _check(cfg, source if not overrides else f"{source} with overrides {' '.join(overrides)}")
    return cfg


def load_config(path: Union[str, os.PathLike, None] = None, overrides: Sequence[str] = ()) -> DictConfig:
    """Read YAML ``path`` (default ``configs/demo.yaml``) into the schema and apply ``key=value`` overrides."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        loaded = OmegaConf.load(path)
    except Exception as error:  # yaml.YAMLError and OmegaConf's own errors
        raise ConfigError(f"{path}: cannot parse YAML: {error}") from None
    cfg = _merge(OmegaConf.structured(Config), loaded, str(path))
    return _apply_overrides(cfg, overrides, str(path))


def run_dir(cfg: DictConfig) -> Path:
    """The run's directory: ``output_dir / name``."""
    return Path(cfg.output_dir) / cfg.name


def save_config(cfg: DictConfig, path: Union[str, os.PathLike]) -> None:
    """Write the resolved config as YAML."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(OmegaConf.to_yaml(cfg, resolve=True))


def to_container(cfg: DictConfig) -> dict:
    """The resolved config as plain Python types (for checkpoints)."""
    return OmegaConf.to_container(cfg, resolve=True)
