"""Typed experiment configuration.

A run is described by one :class:`ExperimentConfig`: dataclasses whose fields mirror the constructor arguments of
the data pipeline, model, optimiser, scheduler and training loop. YAML files in ``configs/`` only override the
defaults below; ``key=value`` overrides use the same dotted names (``optim.lr=1e-4``, ``init.from=runs/stage1``).
The fully resolved config is written as ``config.yaml`` into every run folder.

``init.from`` is spelt ``from`` in YAML and on the command line but is the field ``from_`` here, because ``from``
is a Python keyword.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import FparError

# --------------------------------------------------------------------------------------------------------------
# Schema


@dataclass
class DataConfig:
    root: str = "fpar-demo/data"
    layout: str = "auto"  # auto | gtea61 (course layout) | egornn (original Ego-RNN layout)
    frames_dir: str = "processed_frames2"  # some GTEA61 copies call it processed_frames
    train_subjects: list[str] = field(default_factory=lambda: ["S1", "S3", "S4"])
    test_subjects: list[str] = field(default_factory=lambda: ["S2"])
    # Epoch selection: "test" selects the best epoch on the test subjects, as the report and Ego-RNN did;
    # "val" holds val_fraction of the training videos out (stratified by class) and selects on them.
    select_on: str = "test"
    val_fraction: float = 0.15
    frames: int = 7  # T, RGB frames per clip
    flow_stack: int = 5  # L, consecutive flow frames per stack
    flow_stacks_test: int = 1  # evenly spaced stacks averaged at test time (the paper's flow stream used 5)
    input_size: int = 224
    scale_size: int = 256  # shorter side before cropping
    num_workers: int = 0
    sampling: str = "seed"  # seed: floor(k*N/T); egornn: floor(linspace(1, N, T, endpoint=False)) on 1-based names


@dataclass
class MSConfig:
    """Self-supervised motion-segmentation branch (SparNet)."""

    enabled: bool = False
    layer: str = "conv5"  # conv3 (28x28 at 224) | conv4 (14x14) | conv5 (7x7)
    task: str = "cls"  # cls: 2-way per-pixel cross-entropy | reg: per-pixel squared error
    target: str = "bw"  # bw: plain (nearest) downsampling | grid: block mean
    head: str = "fc"  # fc: flatten + linear as in the report | conv: per-pixel 1x1 conv (small at 28x28)
    hidden: int = 100
    dropout: float = 0.0
    weight: float = 1.0


@dataclass
class DiscConfig:
    """Static-dynamic discriminator on the pooled ConvLSTM state."""

    enabled: bool = False
    alpha: float = 1.0
    train_conv5: bool = False  # True: its loss also updates layer4 convs (report Figure 24 row 1)


@dataclass
class RepFlowConfig:
    enabled: bool = False
    bottleneck: int = 32
    n_iter: int = 10
    learn: bool = True
    lr_mult: float = 1.0


@dataclass
class ModelConfig:
    name: str = "ego_rnn"  # ego_rnn | flow_resnet | two_stream
    backbone: str = "resnet34"
    pretrained: str = "imagenet"  # imagenet | none | path to a torchvision-format state dict
    backbone_classes: int = 0  # classes of the trunk's own fc (CAM); 0: from the pretrained file, else 1000
    cam: bool = True
    mem_size: int = 512
    dropout: float = 0.7
    ms: MSConfig = field(default_factory=MSConfig)
    disc: DiscConfig = field(default_factory=DiscConfig)
    repflow: RepFlowConfig = field(default_factory=RepFlowConfig)
    rgb_run: str | None = None  # two-stream: trained RGB (stage-2) run or checkpoint
    flow_run: str | None = None  # two-stream: trained flow run or checkpoint
    fusion_dropout: float = 0.5


@dataclass
class InitConfig:
    from_: str | None = None  # run folder or checkpoint whose weights start this run (stage 1 -> stage 2)
    checkpoint: str = "best"  # best | last


@dataclass
class OptimConfig:
    name: str = "adam"  # adam | sgd
    lr: float = 1e-3
    weight_decay: float = 4e-5
    momentum: float = 0.9
    eps: float = 1e-4  # Adam eps of the original Ego-RNN code
    # Per-group learning rates: a list of {pattern: REGEX, lr: float}; the first matching pattern wins,
    # parameters matching none use optim.lr (two-stream: the flow stream's layer4 at 1e-4).
    groups: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class SchedConfig:
    name: str = "multistep"  # multistep | step | none
    milestones: list[int] = field(default_factory=lambda: [25, 75, 150])
    gamma: float = 0.1
    step_size: int = 1


@dataclass
class TrainConfig:
    epochs: int = 200
    batch_size: int = 32
    eval_batch_size: int = 32
    # Regexes over parameter names; a parameter is trained when any matches (stages are data, not code).
    trainable: list[str] = field(default_factory=lambda: [r"^lstm\.", r"^classifier\."])
    # Regexes over module names whose BatchNorm layers run in train mode (default: none, BN stays frozen).
    bn_train: list[str] = field(default_factory=list)
    amp: bool = False
    deterministic: bool = False
    device: str = "auto"
    eval_every: int = 1
    max_batches: int = 0  # >0 limits batches per epoch (smoke tests)
    grad_clip: float = 0.0
    progress: bool = True


@dataclass
class ExperimentConfig:
    name: str = "run"
    seed: int = 0
    out: str | None = None  # run folder; default runs/<name>
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    init: InitConfig = field(default_factory=InitConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# --------------------------------------------------------------------------------------------------------------
# Conversion between dataclasses and plain dicts (YAML)

_RENAMES = {"from": "from_"}  # YAML / CLI spelling -> field name
_RENAMES_BACK = {v: k for k, v in _RENAMES.items()}


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain nested dicts and lists, with YAML spellings (``init.from``)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        key = _RENAMES_BACK.get(f.name, f.name)
        out[key] = to_dict(v) if dataclasses.is_dataclass(v) else _plain(v)
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def valid_keys(cls: type = ExperimentConfig, prefix: str = "") -> list[str]:
    """Every dotted key of the schema (leaves only), with YAML spellings."""
    keys = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = _RENAMES_BACK.get(f.name, f.name)
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            keys += valid_keys(t, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def _unknown_key(key: str, source: str) -> FparError:
    close = difflib.get_close_matches(key, valid_keys(), n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else "; run `fpar config --keys` to list them"
    return FparError(f"unknown config key '{key}' in {source}{hint}")


def _coerce(value: Any, t: Any, key: str, source: str) -> Any:
    """Check and convert ``value`` to the annotated type ``t``."""
    origin = get_origin(t)
    args = get_args(t)
    if t is Any:
        return value
    if origin is not None and type(None) in args:  # X | None
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(value, inner, key, source)
    if origin is list:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value] if not isinstance(value, str) else yaml.safe_load(value)
            value = value if isinstance(value, list) else [value]
        if not isinstance(value, list):
            raise FparError(f"config key '{key}' in {source} expects a list, got {value!r}")
        return [_coerce(v, args[0], key, source) for v in value] if args else value
    if origin is dict:
        if not isinstance(value, dict):
            raise FparError(f"config key '{key}' in {source} expects a mapping, got {value!r}")
        return value
    if t is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        if not isinstance(value, bool):
            raise FparError(f"config key '{key}' in {source} expects true or false, got {value!r}")
        return value
    if isinstance(value, float) and not math.isfinite(value):
        raise FparError(f"config key '{key}' in {source} must be finite, got {value!r}")
    if t is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise FparError(f"config key '{key}' in {source} expects an integer, got {value!r}")
        return int(value)
    if t is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise FparError(f"config key '{key}' in {source} expects a number, got {value!r}")
        return float(value)
    if t is str:
        if isinstance(value, (dict, list)):
            raise FparError(f"config key '{key}' in {source} expects a string, got {value!r}")
        return str(value)
    return value


def _apply(cfg: Any, dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    obj = cfg
    for i, part in enumerate(parts):
        name = _RENAMES.get(part, part)
        if not dataclasses.is_dataclass(obj) or name not in {f.name for f in dataclasses.fields(obj)}:
            raise _unknown_key(dotted, source)
        if i == len(parts) - 1:
            t = get_type_hints(type(obj))[name]
            if dataclasses.is_dataclass(t):
                if not isinstance(value, dict):
                    raise FparError(f"config key '{dotted}' in {source} is a section; set its keys, e.g. {dotted}.x=")
                for k, v in value.items():
                    _apply(cfg, f"{dotted}.{k}", v, source)
            else:
                setattr(obj, name, _coerce(value, t, dotted, source))
        else:
            obj = getattr(obj, name)


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        sub = _RENAMES.get(str(k), str(k))
        if isinstance(v, dict) and not key.endswith(".groups") and sub != "groups":
            items += _flatten(v, key + ".")
        else:
            items.append((key, v))
    return items


def from_dict(d: dict[str, Any], source: str = "config", base: ExperimentConfig | None = None) -> ExperimentConfig:
    cfg = base if base is not None else ExperimentConfig()
    for key, value in _flatten(d):
        _apply(cfg, key, value, source)
    return cfg


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as YAML (``1e-4`` -> float, ``[25,75]`` -> list, ``null`` -> None)."""
    if "=" not in text:
        raise FparError(f"override '{text}' is not key=value; e.g. optim.lr=1e-4")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # YAML 1.1 reads 1e-4 (no dot) as a string; accept it as a number
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") and value.strip() else value
        except ValueError:
            pass
    return key, value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Defaults, then the YAML file (and the files it ``extends``), then ``key=value`` overrides.

    ``${key}`` interpolations (OmegaConf) are resolved against the merged defaults and files.
    """
    cfg = ExperimentConfig()
    if path is not None:
        chain = _extends_chain(Path(path))
        layers = [OmegaConf.create(to_dict(cfg))] + [OmegaConf.create(_read_yaml(p)) for p in chain]
        try:
            merged = OmegaConf.to_container(OmegaConf.merge(*layers), resolve=True)
        except OmegaConfBaseException as e:
            raise FparError(f"config file {path}: {str(e).splitlines()[0]}") from None
        for p in chain:  # an unknown key is reported against the file that wrote it
            _check_keys(_read_yaml(p), str(p))
        cfg = from_dict(merged, str(path), cfg)
    for text in overrides:
        key, value = parse_override(text)
        _apply(cfg, key, value, "the command line")
    validate(cfg)
    return cfg


def _check_keys(d: dict[str, Any], source: str) -> None:
    known = set(valid_keys())
    for key, _ in _flatten(d):
        if key not in known and not any(k.startswith(key + ".") for k in known):
            raise _unknown_key(key, source)


def read_yaml_mapping(path: Path, what: str = "config file", example: str = "configs/ego_rnn_stage1.yaml") -> dict:
    """A YAML file that must hold a mapping, with one-line errors for a missing file, bad syntax or another type."""
    if not path.is_file():
        raise FparError(f"{what} {path} not found; give a YAML file such as {example}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise FparError(f"{what} {path} is not valid YAML{where}; fix the syntax") from None
    if not isinstance(data, dict):
        raise FparError(f"{what} {path} must hold a mapping of keys, got {type(data).__name__}")
    return data


def _read_yaml(path: Path) -> dict[str, Any]:
    data = read_yaml_mapping(path)
    data.pop("extends", None)
    return data


def flat_dict(d: dict[str, Any]) -> dict[str, Any]:
    """Nested config dict -> {dotted key: value} (``optim.groups`` stays one value)."""
    return dict(_flatten(d))


def _extends_chain(path: Path, seen: tuple[Path, ...] = ()) -> list[Path]:
    """``extends: other.yaml`` (relative to the file) lets a recipe build on another one."""
    if path in seen:
        raise FparError(f"config file {path} extends itself in a cycle")
    if not path.is_file():
        raise FparError(f"config file {path} not found; give a YAML file such as configs/ego_rnn_stage1.yaml")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return [path]  # _read_yaml reports it
    parent = raw.get("extends") if isinstance(raw, dict) else None
    if parent:
        return _extends_chain((path.parent / parent).resolve(), (*seen, path)) + [path]
    return [path]


_CHOICES = {
    "data.layout": ("auto", "gtea61", "egornn"),
    "data.select_on": ("test", "val"),
    "data.sampling": ("seed", "egornn"),
    "model.name": ("ego_rnn", "flow_resnet", "two_stream"),
    "model.backbone": ("resnet18", "resnet34", "resnet50"),
    "model.ms.layer": ("conv3", "conv4", "conv5"),
    "model.ms.task": ("cls", "reg"),
    "model.ms.target": ("bw", "grid"),
    "model.ms.head": ("fc", "conv"),
    "optim.name": ("adam", "sgd"),
    "sched.name": ("multistep", "step", "none"),
    "init.checkpoint": ("best", "last"),
}


def validate(cfg: ExperimentConfig) -> None:
    d = dict(_flatten(to_dict(cfg)))
    for key, choices in _CHOICES.items():
        if d[key] not in choices:
            raise FparError(f"config key '{key}' is {d[key]!r}; choose one of {', '.join(choices)}")
    if cfg.data.frames < 1 or cfg.data.flow_stack < 1:
        raise FparError("data.frames and data.flow_stack must be at least 1")
    if cfg.data.input_size < 32:
        raise FparError(f"data.input_size must be at least 32 (got {cfg.data.input_size}); the paper uses 224")
    if cfg.data.scale_size < cfg.data.input_size:
        raise FparError("data.scale_size must be at least data.input_size")
    at_least = {
        "train.epochs": (cfg.train.epochs, 1),
        "train.batch_size": (cfg.train.batch_size, 1),
        "train.eval_batch_size": (cfg.train.eval_batch_size, 1),
        "train.eval_every": (cfg.train.eval_every, 1),
        "train.max_batches": (cfg.train.max_batches, 0),
        "data.num_workers": (cfg.data.num_workers, 0),
        "seed": (cfg.seed, 0),
        "model.mem_size": (cfg.model.mem_size, 1),
        "data.flow_stacks_test": (cfg.data.flow_stacks_test, 1),
        "optim.lr": (cfg.optim.lr, 0.0),
        "optim.weight_decay": (cfg.optim.weight_decay, 0.0),
        "model.ms.hidden": (cfg.model.ms.hidden, 1),
        "model.repflow.n_iter": (cfg.model.repflow.n_iter, 1),
    }
    for key, (value, low) in at_least.items():
        if value < low:
            raise FparError(f"config key '{key}' must be at least {low}, got {value}")
    for key, p in (
        ("model.dropout", cfg.model.dropout),
        ("model.fusion_dropout", cfg.model.fusion_dropout),
        ("model.ms.dropout", cfg.model.ms.dropout),
    ):
        if not 0 <= p < 1:
            raise FparError(f"config key '{key}' must be in [0, 1), got {p}")
    if not (cfg.train.device in ("auto", "cpu") or cfg.train.device.startswith(("cuda", "mps"))):
        raise FparError(f"train.device is {cfg.train.device!r}; use auto, cpu, cuda or cuda:N")
    if cfg.model.repflow.enabled and cfg.data.frames < 2:
        raise FparError("the representation-flow layer needs data.frames >= 2 (it works on consecutive pairs)")
    for g in cfg.optim.groups:
        if not isinstance(g, dict) or not isinstance(g.get("lr"), (int, float)) or "pattern" not in g:
            raise FparError(f"each optim.groups entry is {{pattern: REGEX, lr: NUMBER}}, got {g!r}")
    if not 0 < cfg.data.val_fraction < 1:
        raise FparError("data.val_fraction must be between 0 and 1")


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    from .utils import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def dump(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def get(cfg: ExperimentConfig, dotted: str) -> Any:
    obj: Any = cfg
    for part in dotted.split("."):
        obj = getattr(obj, _RENAMES.get(part, part))
    return obj


def set_value(cfg: ExperimentConfig, dotted: str, value: Any, source: str = "a sweep") -> None:
    _apply(cfg, dotted, value, source)
