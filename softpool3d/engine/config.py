"""The run configuration: a structured OmegaConf schema, YAML files and ``key=value`` overrides.

``load_config(path, overrides)`` merges a recipe (``configs/<dataset>/<recipe>.yaml``) into the
schema below; a key the schema lacks, a value of the wrong type or out of range, or an unknown
name raises :class:`ConfigError` naming the key, the value and the file (or the override), before
any data or model is built. A recipe names its bases in a ``defaults:`` list of paths relative to
itself; they are merged in order, bases of bases first, and the file's own keys last (see
:func:`config_layers`). Model, pool, dataset and optimizer names are checked against the
registries of ``softpool3d.models``, ``softpool3d.datasets`` and ``softpool3d.engine.training.optim``.
``check_runnable`` adds the checks that depend on this machine (paths that must exist, a CUDA
device). ``save_config`` writes the resolved config into the run directory.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional, Sequence, Union

import torch

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from softpool3d import datasets, models
from softpool3d.engine.training.optim import OPTIMIZERS
import softpool3d


def _config_dir() -> Path:
    """The shipped configs: ``softpool3d/configs`` in an installed package (package data), else the
    source checkout's top-level ``configs/`` beside the ``softpool3d/`` folder."""
    package = Path(softpool3d.__file__).resolve().parent
    installed = package / "configs"
    return installed if installed.is_dir() else package.parent / "configs"


CONFIG_DIR = _config_dir()
DEFAULT_CONFIG = CONFIG_DIR / "demo.yaml"
BASES_KEY = "defaults"
"""The key of a config file that lists its bases (paths relative to the file)."""


@dataclass
class DataConfig:
    """Which videos, and how clips are cut from them (arguments of ``build_dataset``).

    ``make_demo`` generates the synthetic demo set into ``root`` first. ``format``: ``video`` (video
    files under ``root``) or ``shards`` (JPEG frame shards written by ``tools/prepare_videos.py
    --format shards``; ``root`` is their folder or an ``http(s)://`` or fsspec URL, and the shards'
    own annotation lists serve the splits). ``batch_size`` is per
    process. Validation uses one centre view per video (clip accuracy); the test uses
    ``num_clips x num_crops`` views. A val/test video that cannot be decoded is left out of
    the metrics; more than ``max_bad_fraction`` of them stops the run, naming the files.
    ``repeat_aug=k`` decodes each training video once and trains on ``k`` independently sampled
    and augmented clips of it: a step carries ``batch_size x k`` clips of ``batch_size`` videos,
    and an epoch still sees each video once.
    Datasets without a val list (UCF-101, HMDB-51, custom data without one) get ``val`` carved
    out of the training list: ``val_fraction`` of its groups, drawn with ``val_seed``; ``train``
    is then the rest.
    Augmentation for small sets (all off by default): ``rand_augment_n`` RandAugment ops of
    magnitude ``rand_augment_m`` (0-30, torchvision's scale) drawn once per clip and applied to
    every frame alike (:mod:`softpool3d.datasets.rand_augment`); ``random_erasing``: the
    probability that a training clip gets one box erased through all its frames
    (:mod:`softpool3d.engine.training.switches.erasing`). ``sampler``: ``uniform`` (each training video once an
    epoch) or ``class_balanced`` (videos drawn with replacement, each class equally often;
    :mod:`softpool3d.engine.processes.sampler`).
    ``num_frames``, ``crop_size``, ``mean`` and ``std`` left unset (null) are the model's own
    (:func:`softpool3d.models.model_info`: its clip size ``(T, H, W)`` and the normalisation its
    weights expect), as timm's ``resolve_data_config`` does; a recipe states them only to differ.
    """

    dataset: str = "ucf101"
    root: str = "data/demo"
    format: str = "video"
    annotations: Optional[str] = None
    fold: int = 1
    make_demo: bool = False
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    val_fraction: float = 0.1
    val_seed: int = 0
    num_frames: Optional[int] = None
    sampling_rate: int = 2
    crop_size: Optional[int] = None
    train_scale: List[int] = field(default_factory=lambda: [128, 160])
    test_scale: int = 128
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None
    num_clips: int = 10
    num_crops: int = 3
    batch_size: int = 8
    test_batch_size: int = 8
    num_workers: int = 4
    max_bad_fraction: float = 0.05
    repeat_aug: int = 1
    rand_augment_n: int = 0
    rand_augment_m: int = 9
    random_erasing: float = 0.0
    sampler: str = "uniform"


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

    ``amp``: auto | none | bf16 | fp16 (with a grad scaler); ``auto`` is bf16 on GPUs and CPUs
    with native bf16 (compute capability >= 8.0; AMX, AVX512-BF16), float32 otherwise (see ``amp.resolve_amp``). ``grad_clip``: max gradient norm (0: off).
    ``accumulate``: micro-batches per optimizer step. ``checkpoint_every_steps``: also write
    ``last`` mid-epoch (0: at epoch ends only). ``nonfinite``: stop | skip a step whose loss or
    gradient is NaN/inf. ``limit_steps_per_epoch``: cap on steps per epoch (0: whole epoch).
    ``deterministic``: ``torch.use_deterministic_algorithms``, cuDNN autotuning off and
    ``CUBLAS_WORKSPACE_CONFIG`` set; on CUDA it refuses ``model.pool=avg`` models with a windowed
    ``nn.AvgPool3d`` (no deterministic CUDA backward; :mod:`softpool3d.engine.processes.backends`); without it
    ``cudnn.benchmark`` is on. ``channels_last``: model and clips in ``torch.channels_last_3d``.
    ``device``: auto (CUDA when there is a GPU) | cpu | cuda. ``num_threads``: CPU threads of
    each process (0: torch's default; torchrun sets 1). ``max_consecutive_skips``: with
    ``nonfinite=skip``, this many non-finite steps in a row stop the run. ``dist_timeout_s``: how
    long a collective waits for a peer before failing (under torchrun). ``stall_warn_s``: every
    rank logs a rank whose phase (waiting for data, forward and backward, all-reduce, checkpoint,
    validation) has not changed for this long, naming it (0: off; :mod:`softpool3d.engine.processes.stall_watch`).

    Switches for small sets (all off by default; see :mod:`softpool3d.engine.training.switches`):
    ``mixup_alpha`` / ``cutmix_alpha``: Beta(alpha, alpha) mixing of a batch with its reverse
    and soft-target cross-entropy (0: off; both on: one of the two per batch, evenly), applied
    to a batch with probability ``mix_prob``. ``ema_decay``: keep an exponential moving average
    of the weights and BatchNorm buffers, updated every optimizer step, used for validation,
    the test, ``best.pt`` and export (0: off). ``precise_bn_batches``: before each validation
    and the test, recompute the BatchNorm statistics over that many training batches (0: off).
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
    max_consecutive_skips: int = 3
    dist_timeout_s: int = 600
    stall_warn_s: float = 60.0
    seed: int = 0
    deterministic: bool = False
    channels_last: bool = False
    test_after_train: bool = True
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    ema_decay: float = 0.0
    precise_bn_batches: int = 0


@dataclass
class DebugConfig:
    """Fault injection and consistency checks used by the tests, installed as step callbacks
    (:func:`softpool3d.engine.training.callbacks.debug_callbacks`).

    ``kill_at_step``: after that optimizer step, SIGKILL rank ``kill_rank`` (-1: every rank); only
    on a job's first attempt, not after a torchrun restart. ``signal_at_step``: after that step,
    rank ``signal_rank`` (-1: every rank) sends itself ``signal`` (TERM, INT or USR1), or its whole
    process group (DataLoader workers and fork server too, as SLURM and a terminal do) with
    ``signal_group``; first attempt only. ``stall_at_step``: after that step, rank ``stall_rank``
    sleeps ``stall_s`` seconds before fetching its next batch (a rank stuck in video loading).
    """

    kill_at_step: int = -1
    kill_rank: int = -1
    signal_at_step: int = -1
    signal_rank: int = -1
    signal: str = "TERM"
    signal_group: bool = False
    stall_at_step: int = -1
    stall_rank: int = 1
    stall_s: float = 0.0
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


def _choices() -> dict[str, tuple[str, ...]]:
    """The allowed values of each name-valued key. Model, pool, optimizer and dataset names are read
    from their registries when a config is checked, so a model registered after import is accepted."""
    splits = tuple(datasets.SPLITS)
    return {
        "model.name": tuple(models.list_models()),
        "model.pool": tuple(models.POOL_KINDS),
        "optim.name": tuple(OPTIMIZERS),
        "data.dataset": tuple(datasets.DATASET_NAMES),
        "data.train_split": splits,
        "data.val_split": splits,
        "data.test_split": splits,
        "train.amp": ("auto", "none", "bf16", "fp16"),
        "train.nonfinite": ("stop", "skip"),
        "train.device": ("auto", "cpu", "cuda"),
        "debug.signal": ("TERM", "INT", "USR1"),
        "data.sampler": ("uniform", "class_balanced"),
        "data.format": ("video", "shards"),
    }


def _merge(base: DictConfig, other: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None)
        if key in _LISTS:
            raise ConfigError(f"{source}: {key} must be a list of {_LISTS[key][1]}") from None
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"{source}: bad key {key!r}: {message}") from None


def _at_least(low: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda value: value >= low), f"must be >= {low:g}"


def _in_range(low: float, high: float, high_open: bool = False) -> tuple[Callable[[Any], bool], str]:
    if high_open:
        return (lambda value: low <= value < high), f"must be in [{low:g}, {high:g})"
    return (lambda value: low <= value <= high), f"must be in [{low:g}, {high:g}]"


_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "data.num_frames": _at_least(1),
    "data.sampling_rate": _at_least(1),
    "data.crop_size": _at_least(1),
    "data.test_scale": _at_least(1),
    "data.num_clips": _at_least(1),
    "data.num_crops": ((lambda value: value in datasets.NUM_CROPS),
                       f"must be one of {', '.join(map(str, datasets.NUM_CROPS))}"),
    "data.batch_size": _at_least(1),
    "data.test_batch_size": _at_least(1),
    "data.num_workers": _at_least(0),
    "data.max_bad_fraction": _in_range(0, 1),
    "data.repeat_aug": _at_least(1),
    "data.rand_augment_n": _at_least(0),
    "data.rand_augment_m": _in_range(0, 30),
    "data.random_erasing": _in_range(0, 1),
    "model.dropout": _in_range(0, 1, high_open=True),
    "model.freeze_stages": _at_least(0),
    "optim.lr": ((lambda value: value > 0), "must be > 0"),
    "optim.momentum": _in_range(0, 1, high_open=True),
    "optim.weight_decay": _at_least(0),
    "optim.warmup_epochs": _at_least(0),
    "optim.warmup_start_factor": ((lambda value: 0 < value <= 1), "must be in (0, 1]"),
    "optim.min_lr": _at_least(0),
    "train.epochs": _at_least(1),
    "train.limit_steps_per_epoch": _at_least(0),
    "train.num_threads": _at_least(0),
    "train.label_smoothing": _in_range(0, 1, high_open=True),
    "train.grad_clip": _at_least(0),
    "train.accumulate": _at_least(1),
    "train.val_every": _at_least(1),
    "train.checkpoint_every_steps": _at_least(0),
    "train.max_consecutive_skips": _at_least(1),
    "train.dist_timeout_s": _at_least(1),
    "train.stall_warn_s": _at_least(0),
    "train.mixup_alpha": _at_least(0),
    "train.cutmix_alpha": _at_least(0),
    "train.mix_prob": _in_range(0, 1),
    "train.ema_decay": _in_range(0, 1, high_open=True),
    "train.precise_bn_batches": _at_least(0),
}
"""Allowed values of every numeric key: ``key -> (test, what the test asks for)``."""

_LISTS = {
    "data.train_scale": (2, "two ints [low, high], e.g. [128, 160]"),
    "data.mean": (3, "three floats (R, G, B), e.g. [0.45, 0.45, 0.45]"),
    "data.std": (3, "three floats (R, G, B), e.g. [0.225, 0.225, 0.225]"),
    "optim.betas": (2, "two floats, e.g. [0.9, 0.999]"),
}
"""List-valued keys: ``key -> (length, what is expected)``."""


def _check_choices(cfg: DictConfig, source: str) -> None:
    """Check every name-valued key of ``cfg`` against :func:`_choices`; raise :class:`ConfigError` naming
    key, value and ``source``."""
    for key, choices in _choices().items():
        value = OmegaConf.select(cfg, key)
        if value not in choices:
            raise ConfigError(f"{source}: {key}={value!r} is not one of {', '.join(choices)}")


def _check(cfg: DictConfig, source: str) -> None:
    """Range-check every value of ``cfg`` (names checked, model defaults filled); raise
    :class:`ConfigError` naming key, value and ``source``."""
    for key, (length, expected) in _LISTS.items():
        value = list(OmegaConf.select(cfg, key))
        if len(value) != length:
            raise ConfigError(f"{source}: {key}={value} must be a list of {expected}")
    for key, (test, rule) in _RANGES.items():
        value = OmegaConf.select(cfg, key)
        if (isinstance(value, float) and not math.isfinite(value)) or not test(value):
            raise ConfigError(f"{source}: {key}={value} {rule}")
    data = cfg.data
    folds = datasets.dataset_format(data.dataset).folds if data.dataset in datasets.list_datasets() else None
    if folds is not None and data.fold not in folds:
        raise ConfigError(f"{source}: data.fold={data.fold} must be one of {', '.join(map(str, folds))} "
                          f"(the folds of {data.dataset})")
    low, high = data.train_scale
    if not data.crop_size <= low <= high:
        raise ConfigError(f"{source}: data.train_scale={[low, high]} must satisfy data.crop_size ({data.crop_size}) "
                          f"<= low <= high")
    if data.test_scale < data.crop_size:
        raise ConfigError(f"{source}: data.test_scale={data.test_scale} must be >= data.crop_size ({data.crop_size})")
    if not all(math.isfinite(s) and s > 0 for s in data.std) or not all(math.isfinite(m) for m in data.mean):
        raise ConfigError(f"{source}: data.mean={list(data.mean)} must be finite and data.std={list(data.std)} "
                          f"finite and > 0")
    if not all(0 <= beta < 1 for beta in cfg.optim.betas):
        raise ConfigError(f"{source}: optim.betas={list(cfg.optim.betas)} must each be in [0, 1)")
    if cfg.model.width is not None and cfg.model.width < 1:
        raise ConfigError(f"{source}: model.width={cfg.model.width} must be >= 1 (or null for the model's default)")
    if not cfg.name or "/" in cfg.name:
        raise ConfigError(f"{source}: name={cfg.name!r} must be a non-empty folder name (no '/')")


def check_runnable(cfg: DictConfig, training: bool = True) -> None:
    """Checks that depend on this machine, made before any data or model is built: the dataset
    folder, ``data.annotations``, ``model.pretrained`` and a ``resume`` path exist, and
    ``train.device=cuda`` has a CUDA device. Raises :class:`ConfigError` naming the key and value.
    ``training=False`` (evaluating a checkpoint, which holds the weights) skips the weight sources."""
    remote = cfg.data.format == "shards" and "://" in cfg.data.root
    if not cfg.data.make_demo and not remote and not Path(cfg.data.root).is_dir():
        raise ConfigError(f"data.root={cfg.data.root}: dataset folder not found (absolute: {Path(cfg.data.root).resolve()})")
    for key in ("data.annotations", "model.pretrained") if training else ("data.annotations",):
        value = OmegaConf.select(cfg, key)
        if value and not Path(value).expanduser().exists():
            raise ConfigError(f"{key}={value}: no such file or folder")
    if training and cfg.resume not in ("", "auto") and not Path(cfg.resume).is_file():
        raise ConfigError(f"resume={cfg.resume}: no such checkpoint file (use resume=auto for the run's last.pt)")
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda, but torch finds no CUDA device here (torch "
                          f"{torch.__version__}, CUDA build {torch.version.cuda}); use train.device=cpu or auto")


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
    source = source if not overrides else f"{source} with overrides {' '.join(overrides)}"
    _check_choices(cfg, source)
    _resolve_model_defaults(cfg)
    _check(cfg, source)
    return cfg


def _resolve_model_defaults(cfg: DictConfig) -> None:
    """Fill the unset ``data.num_frames``, ``data.crop_size``, ``data.mean`` and ``data.std`` from
    the record of ``model.name`` (a known name: :func:`_check` tests it first)."""
    info = models.model_info(cfg.model.name)
    data = cfg.data
    defaults = {"num_frames": info.clip_size[0], "crop_size": info.clip_size[1], "mean": list(info.mean),
                "std": list(info.std)}
    for key, value in defaults.items():
        if data[key] is None:
            data[key] = value


def find_config(path: Union[str, os.PathLike]) -> Path:
    """The config file ``path``: a file that exists is used as given; otherwise ``path`` is looked up
    among the shipped configs, e.g. ``ucf101/x3d_s_soft.yaml``, ``ucf101/x3d_s_soft`` or ``demo``."""
    given = Path(path)
    if given.is_file():
        return given
    for candidate in (CONFIG_DIR / given, CONFIG_DIR / f"{given}.yaml"):
        if not given.is_absolute() and candidate.is_file():
            return candidate
    raise ConfigError(f"config file {path} does not exist, here or among the shipped configs in {CONFIG_DIR} "
                      f"(e.g. demo, ucf101/x3d_s_soft.yaml)")


def _read_yaml(path: Path) -> DictConfig:
    try:
        loaded = OmegaConf.load(path)
    except Exception as error:  # yaml.YAMLError and OmegaConf's own errors
        raise ConfigError(f"{path}: cannot parse YAML: {error}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: a config file must be a mapping of keys, not a {type(loaded).__name__}")
    return loaded


def config_layers(path: Union[str, os.PathLike], _chain: tuple[Path, ...] = ()) -> list[tuple[Path, DictConfig]]:
    """The files that make up config ``path`` in merge order, each with its own keys (its
    ``defaults:`` list removed): the bases of each base first, then the bases in the order the
    ``defaults:`` list names them, then ``path`` itself. A missing base or a cycle raises
    :class:`ConfigError` naming the file that refers to it."""
    path = Path(path).resolve()
    if path in _chain:
        cycle = " -> ".join(str(link) for link in _chain[_chain.index(path):] + (path,))
        raise ConfigError(f"{_chain[-1]}: base cycle: {cycle}")
    own = _read_yaml(path)
    bases = own.pop(BASES_KEY, [])
    if not isinstance(bases, (list, ListConfig)) or not all(isinstance(base, str) for base in bases):
        raise ConfigError(f"{path}: {BASES_KEY} must be a list of config file paths relative to this file, "
                          f"got {bases!r}")
    layers: list[tuple[Path, DictConfig]] = []
    for base in bases:
        base_path = path.parent / base
        if not base_path.is_file():
            raise ConfigError(f"{path}: base {base!r} does not exist (looked for {base_path.resolve()})")
        layers.extend(config_layers(base_path, _chain + (path,)))
    layers.append((path, own))
    return layers


def load_config(path: Union[str, os.PathLike, None] = None, overrides: Sequence[str] = ()) -> DictConfig:
    """Read config ``path`` (default: the demo; see :func:`find_config`) with its bases into the schema
    and apply ``key=value`` overrides."""
    path = find_config(path) if path is not None else DEFAULT_CONFIG
    cfg = OmegaConf.structured(Config)
    for layer_path, own in config_layers(path):
        cfg = _merge(cfg, own, str(layer_path))
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
