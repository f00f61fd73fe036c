"""Typed experiment configuration.

A run is described by one :class:`ExperimentConfig`: dataclasses whose fields mirror the constructor arguments of
the data pipeline, model, optimiser, scheduler and training loop. YAML files in ``configs/`` only override the
defaults below; ``key=value`` overrides use the same dotted names (``optim.lr=1e-4``, ``init.from=runs/stage1``).
The fully resolved config is written as ``config.yaml`` into every run folder.

``model`` and ``data`` also hold the *blocks* that plug-ins register (`fpar.registry`): a model family's keys are
``model.<family>.*`` (``model.ego_rnn.cam``), a reader's are ``data.<format>.*`` (``data.gtea61.test_subjects``).
Keys of fpar 0.1.0 (``model.cam``, ``model.ms.layer``, ``data.train_subjects``, ``data.layout``) are aliases that the
specs declare; `canonical_key` gives the current spelling, and every entry point (YAML, ``key=value``, grids,
attributes, old run folders) accepts both.

``init.from`` is spelt ``from`` in YAML and on the command line but is the field ``from_`` here, because ``from``
is a Python keyword.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import FparError
from .registry import DEFAULT_MODEL

# --------------------------------------------------------------------------------------------------------------
# Schema


class _Blocks:
    """Mix-in for the sections that hold plug-in blocks: ``model.<family>.*`` and ``data.<reader>.*``.

    The blocks are the config dataclasses that model files and reader files register with their specs
    (`fpar.registry`); they are created on first access (``cfg.model.ego_rnn``) and behave like ordinary sections
    everywhere in this module (keys, overrides, YAML, validation).
    """

    _section = ""  # "model" or "data": the dotted prefix of this section

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "blocks":
            raise AttributeError(name)
        blocks = self.__dict__.setdefault("blocks", {})
        if name not in blocks:
            types = block_types(type(self))
            if name not in types:
                owner, leaf = self._alias(name)
                if owner is None:
                    raise AttributeError(f"{type(self).__name__} has no key {name!r}")
                return getattr(owner, leaf)
            blocks[name] = types[name]()
        return blocks[name]

    def __setattr__(self, name: str, value: Any) -> None:
        if name in {f.name for f in dataclasses.fields(self)} or name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        owner, leaf = self._alias(name)
        if owner is None:
            raise AttributeError(f"{type(self).__name__} has no key {name!r}; run `fpar config --keys`")
        setattr(owner, leaf, value)

    def _alias(self, name: str) -> tuple[Any, str]:
        """An fpar 0.1.0 attribute (``cfg.model.cam``) -> (the block that holds it now, its name there)."""
        old = f"{self._section}.{name}"
        new = canonical_key(old)
        if new == old:
            return None, name
        *path, leaf = new.split(".")[1:]
        owner = self
        for part in path:
            owner = getattr(owner, part)
        return owner, leaf


@dataclass
class DataConfig(_Blocks):
    _section = "data"
    root: str = "fpar-demo/data"
    # Which reader turns the root into a manifest: auto (detected, and said in the log) or a registered format
    # (`fpar formats`); the reader's own keys (split choice, folder names) are data.<format>.*
    format: str = "auto"
    # Epoch selection: "test" selects the best epoch on the test split, as the report and Ego-RNN did;
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
    # Frozen-trunk stages (stage 1): a folder where each clip draw's trunk features are kept and read back (exact;
    # fpar/engine/feature_cache.py). "": no cache. float16 halves the size and is approximate.
    feature_cache: str = ""
    feature_cache_dtype: Literal["float32", "float16"] = "float32"
    # K > 0 limits each training video to a fixed pool of K of its 40 crop/flip draws (fpar.data.transforms.
    # draw_pool), each shown once per block of K epochs: a feature cache is then full after K epochs (faster), but it
    # is another augmentation than the original's (fewer distinct crops). 0: every draw, as the original. Clip
    # training only: backbone pretraining (fpar/engine/pretrain.py) keeps every draw.
    draw_pool: int = 0
    # A decoded-frame cache built by `fpar data cache ROOT --out DIR` (fpar/data/frame_cache.py): RGB frames read
    # memory-mapped instead of decoded; the clips are the same. "": decode the frames.
    frame_cache: str = ""


@dataclass
class ModelConfig(_Blocks):
    """Keys every family shares; a family's own keys are ``model.<family>.*`` (its spec's config dataclass)."""

    _section = "model"
    name: str = DEFAULT_MODEL  # a registered family (`fpar models`)
    backbone: str = "resnet34"
    pretrained: str = "imagenet"  # imagenet | none | path to a torchvision-format state dict
    backbone_classes: int = 0  # classes of the trunk's own fc (CAM); 0: from the pretrained file, else 1000
    dropout: float = 0.7
    # action: one classifier over the dataset's actions; verb_noun: a verb and a noun classifier (the dataset's
    # vocabulary must have verbs and nouns), action scores = log p(verb) + log p(noun) of each action's pair
    heads: str = "action"


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
    # Empty: the family's first stage (its spec's ``stages``, e.g. Ego-RNN's ['^lstm\.', '^classifier\.']), written
    # back into the run's config.yaml.
    trainable: list[str] = field(default_factory=list)
    # Regexes over module names whose BatchNorm layers run in train mode (default: none, BN stays frozen).
    bn_train: list[str] = field(default_factory=list)
    amp: bool = False
    deterministic: bool = False
    device: str = "auto"
    eval_every: int = 1
    # Memory (MiB) for the evaluation clips' features of a frozen prefix (stage 1: the whole trunk with the CAM;
    # stage 2: up to layer3), kept from one epoch's evaluation to the next: later evaluations skip the trunk and
    # decode nothing, with the same values bit for bit (fpar.engine.feature_cache.EvalMemo). 0 turns it off.
    eval_memo_mb: int = 1024
    max_batches: int = 0  # >0 limits batches per epoch (smoke tests)
    grad_clip: float = 0.0
    progress: bool = True
    # The metric that picks the best epoch (best.pt): auto = action_top1 with model.heads=verb_noun (EPIC's
    # headline figure), top1 otherwise; or any metric key of the run (mean_class_acc, verb_top1, ...)
    select_metric: str = "auto"
    # Several processes (torchrun): SyncBatchNorm for the BatchNorm layers that train (bn_train), GPUs only
    sync_bn: bool = False
    # Several processes: allow trainable parameters that some steps do not use (DDP's find_unused_parameters). On by
    # itself where the stage trains parameters its family says never get a gradient (LSTA's coupling_fc, Ego-RNN's
    # fc without the CAM: `fpar.registry.ModelSpec.no_gradient`); true turns it on for any model.
    ddp_find_unused: bool = False
    # Activation checkpointing of the per-frame trunk: keep its inputs and outputs, recompute the rest in backward
    # (memory for 25 frames; about a third more compute when the trunk trains). No effect on frozen trunks.
    checkpoint: bool = False
    # Frames per trunk call where a trunk records nothing for backward (frozen, eval-mode BN): stage 1's whole
    # trunk, stage 2's stem to layer3, evaluation. Chunks keep each layer's maps in the CPU's caches: ResNet-34's
    # forward on 128 frames at 224 px was 1.23x faster 8 at a time than all at once on 2 cores (16: 1.17x; one at a
    # time, as the 2018 code: 0.83x; benchmarks/bench_trunk_chunk.py). Same values up to float rounding (bit-equal
    # there). 0: the whole batch at once. CPU only: on a GPU the batch goes through whole, since B·T/8 small calls
    # would leave it waiting on kernel launches (not measured: no GPU was lent).
    frozen_chunk: int = 8
    # Convolution weights (4-D) in channels_last memory format, so the convs run NHWC (oneDNN on CPU, cuDNN on GPU):
    # a stage-2 step 1.57x at 112 px, 1.03x at 224 px on a 2-core CPU (benchmarks/bench_stage2.py). Same values up to
    # float rounding.
    channels_last: bool = True
    # Denormal floats (below 1.18e-38) read and written as zero on the CPU while training (FTZ/DAZ, as GPU kernels
    # mostly do), on every thread of torch's pool (fpar.utils.flush_denormal): the ConvLSTM's backward over T frames
    # reaches such magnitudes, and x86 computes on them through a slow path (a demo stage-1 epoch 23 s -> 15 s on 2
    # cores, its backward 4.4x faster). Larger values are computed as before.
    flush_denormal: bool = True
    # torch.compile (inductor) of the model's hot submodules (its spec's ``compile``: Ego-RNN's trunk and ConvLSTM
    # cell), in place: same parameter names and checkpoints. The first steps of each shape are slower (compiling;
    # minutes on CPU); values equal eager mode up to float rounding. CPU needs a C++ compiler (g++).
    compile: bool = False


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
# Plug-in blocks and key aliases

# Renamed keys of fpar 0.1.0 that are not a plug-in's: old spelling -> new
_BUILTIN_ALIASES = {"data.layout": "data.format"}


def block_types(cls: type) -> dict[str, type]:
    """The registered blocks of a section class: model families' and readers' config dataclasses, by key."""
    from .registry import model_specs, reader_specs

    if cls is ModelConfig:
        return {n: s.config for n, s in model_specs().items() if s.config is not None}
    if cls is DataConfig:
        out: dict[str, type] = {}
        for s in reader_specs().values():
            if s.config is not None:
                out.setdefault(s.block or s.name, s.config)
        return out
    return {}


def _aliases() -> dict[str, str]:
    from .registry import model_specs, reader_specs

    out = dict(_BUILTIN_ALIASES)
    for n, s in model_specs().items():
        for old, new in s.aliases.items():
            out.setdefault(f"model.{old}", f"model.{n}.{new}")
    for n, s in reader_specs().items():
        for old, new in s.aliases.items():
            out.setdefault(f"data.{old}", f"data.{s.block or n}.{new}")
    return out


def alias_keys() -> list[str]:
    """Every fpar 0.1.0 spelling that still works (leaves and sections), e.g. ``model.ms.task``."""
    out = []
    current = valid_keys()
    for old, new in _aliases().items():
        out += [old + k[len(new) :] for k in current if k == new or k.startswith(new + ".")]
    return out


def canonical_key(dotted: str) -> str:
    """The current spelling of a dotted key: ``model.ms.layer`` -> ``model.ego_rnn.ms.layer`` (fpar 0.1.0 keys are
    aliases of the blocks that own them now), ``data.layout`` -> ``data.format``; other keys are returned as is."""
    parts = dotted.split(".")
    aliases = _aliases()
    for i in range(len(parts), 0, -1):
        head = ".".join(parts[:i])
        if head in aliases:
            return ".".join([aliases[head], *parts[i:]])
    return dotted


def run_reference_keys() -> set[str]:
    """Keys whose value names another run (``init.from`` and every stream slot of a multi-stream family): they may
    differ between two runs of one grid point (a sweep's own folders) without making them different runs."""
    from .registry import model_specs

    keys = {"init.from"}
    for n, s in model_specs().items():
        keys |= {f"model.{n}.{slot.key}" for slot in s.streams.values()}
    return keys


def _fields(cls: type) -> list[tuple[str, Any]]:
    """(name, type) of a section's keys: its dataclass fields, then its registered blocks."""
    hints = get_type_hints(cls)
    out = [(f.name, hints[f.name]) for f in dataclasses.fields(cls)]
    return out + sorted(block_types(cls).items())


def _canonical_tree(d: dict[str, Any]) -> dict[str, Any]:
    """A nested YAML mapping with every key in its current spelling (so files of either spelling merge right)."""
    out: dict[str, Any] = {}
    for key, value in _flatten(d):
        node = out
        parts = canonical_key(key).split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise FparError(f"config key '{key}' sets a section and one of its keys at once")
        node[parts[-1]] = value
    return out


# --------------------------------------------------------------------------------------------------------------
# Conversion between dataclasses and plain dicts (YAML)

_RENAMES = {"from": "from_"}  # YAML / CLI spelling -> field name
_RENAMES_BACK = {v: k for k, v in _RENAMES.items()}


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain nested dicts and lists, with YAML spellings (``init.from``)."""
    out: dict[str, Any] = {}
    for name, _ in _fields(type(cfg)):
        v = getattr(cfg, name)
        key = _RENAMES_BACK.get(name, name)
        out[key] = to_dict(v) if dataclasses.is_dataclass(v) else _plain(v)
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def valid_keys(cls: type = ExperimentConfig, prefix: str = "") -> list[str]:
    """Every dotted key of the schema (leaves only), with YAML spellings, plug-in blocks included."""
    keys = []
    for fname, t in _fields(cls):
        name = _RENAMES_BACK.get(fname, fname)
        if dataclasses.is_dataclass(t):
            keys += valid_keys(t, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def _unknown_key(key: str, source: str) -> FparError:
    pool = valid_keys() + alias_keys()  # suggest in the spelling the user wrote (current or fpar 0.1.0)
    close = difflib.get_close_matches(key, pool, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else "; run `fpar config --keys` to list them"
    return FparError(f"unknown config key '{key}' in {source}{hint}")


def _coerce(value: Any, t: Any, key: str, source: str) -> Any:
    """Check and convert ``value`` to the annotated type ``t``."""
    origin = get_origin(t)
    args = get_args(t)
    if t is Any:
        return value
    if origin is Literal:
        choices = [str(a) for a in args]
        if str(value) not in choices:
            raise FparError(f"config key '{key}' in {source} is {value!r}; choose one of {', '.join(choices)}")
        return str(value)
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
        if value is None:  # YAML's ~ / null: "None" would pass as a folder or a name
            raise FparError(f"config key '{key}' in {source} expects a string and has no value (null); give one")
        return str(value)
    return value


def _apply(cfg: Any, dotted: str, value: Any, source: str) -> None:
    """Set one dotted key (any spelling); errors name the key as it was written."""
    shown = dotted
    parts = canonical_key(dotted).split(".")
    obj = cfg
    for i, part in enumerate(parts):
        name = _RENAMES.get(part, part)
        types = dict(_fields(type(obj))) if dataclasses.is_dataclass(obj) else {}
        if name not in types:
            raise _unknown_key(shown, source)
        t = types[name]
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(t):
                if not isinstance(value, dict):
                    raise FparError(f"config key '{shown}' in {source} is a section; set its keys, e.g. {shown}.x=")
                for k, v in value.items():
                    _apply(cfg, f"{shown}.{k}", v, source)
            else:
                setattr(obj, name, _coerce(value, t, shown, source))
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

    ``${key}`` interpolations (OmegaConf) are resolved once everything is merged, the overrides included, so
    ``out: runs/${name}`` with ``name=x`` gives ``runs/x``. Keys may use their fpar 0.1.0 spellings (aliases).
    """
    cfg = ExperimentConfig()
    chain = _extends_chain(Path(path)) if path is not None else []
    for p in chain:  # an unknown key is reported against the file that wrote it
        _check_keys(_read_yaml(p), str(p))
    cli: dict[str, Any] = {}
    for text in overrides:
        key, value = parse_override(text)
        _apply(ExperimentConfig(), key, value, "the command line")  # type and key errors name the command line
        node = cli
        parts = canonical_key(key).split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    layers = [to_dict(cfg), *(_canonical_tree(_read_yaml(p)) for p in chain), cli]
    for layer, source in zip(layers[1:], [*map(str, chain), "the command line"]):
        _check_containers(layer, layers[0], source)
    try:
        merged = OmegaConf.to_container(OmegaConf.merge(*(OmegaConf.create(x) for x in layers)), resolve=True)
    except OmegaConfBaseException as e:
        where = f"config file {path}" if path is not None else "the command line"
        raise FparError(f"{where}: {str(e).splitlines()[0]}") from None
    cfg = from_dict(merged, str(path) if path is not None else "the command line", cfg)
    validate(cfg)
    return cfg


def _check_containers(layer: Any, default: Any, source: str, prefix: str = "") -> None:
    """A mapping where the schema has a list (``optim.groups: {a: 1}``) or the reverse cannot merge: name the key."""
    if not isinstance(layer, dict) or not isinstance(default, dict):
        return
    for k, v in layer.items():
        if k not in default:
            continue  # unknown keys are reported elsewhere, with a suggestion
        want = default[k]
        key = f"{prefix}{k}"
        if isinstance(want, list) and isinstance(v, dict) or isinstance(want, dict) and isinstance(v, list):
            kind = "a list" if isinstance(want, list) else "a mapping"
            raise FparError(f"config key '{key}' in {source} must be {kind}, got {v!r}")
        _check_containers(v, want, source, f"{key}.")


def _check_keys(d: dict[str, Any], source: str) -> None:
    known = set(valid_keys())
    for written, _ in _flatten(d):
        key = canonical_key(written)
        if key not in known and not any(k.startswith(key + ".") for k in known):
            raise _unknown_key(written, source)  # named as the file spells it


def read_yaml_mapping(path: Path, what: str = "config file", example: str = "configs/ego_rnn_stage1.yaml") -> dict:
    """A YAML file that must hold a mapping, with one-line errors for a missing file, bad syntax or another type."""
    if path.is_dir():
        raise FparError(f"{what} {path} is a folder; give a YAML file such as {example}{_run_hint(path)}")
    if not path.is_file():
        raise FparError(f"{what} {path} not found; give a YAML file such as {example}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except UnicodeDecodeError:
        raise FparError(f"{what} {path} is not a text file; give a YAML file such as {example}") from None
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise FparError(f"{what} {path} is not valid YAML{where}; fix the syntax") from None
    if not isinstance(data, dict):
        raise FparError(f"{what} {path} must hold a mapping of keys, got {type(data).__name__}")
    return data


def _run_hint(path: Path) -> str:
    """For a run folder given where a config goes: what was probably meant."""
    if (path / "config.yaml").is_file():
        return f" (a run folder: `fpar train --resume {path}` continues it, {path / 'config.yaml'} is its config)"
    return ""


def _read_yaml(path: Path) -> dict[str, Any]:
    data = read_yaml_mapping(path)
    data.pop("extends", None)
    return data


def flat_dict(d: dict[str, Any]) -> dict[str, Any]:
    """Nested config dict -> {dotted key: value} in current spellings (``optim.groups`` stays one value); a config
    saved by fpar 0.1.0 gives the same keys as a new one."""
    return {canonical_key(k): v for k, v in _flatten(d)}


def _extends_chain(path: Path, seen: tuple[Path, ...] = ()) -> list[Path]:
    """``extends: other.yaml`` (relative to the file) lets a recipe build on another one."""
    if path in seen:
        raise FparError(f"config file {path} extends itself in a cycle")
    if path.is_dir():
        raise FparError(
            f"config file {path} is a folder; give a YAML file such as configs/ego_rnn_stage1.yaml{_run_hint(path)}"
        )
    if not path.is_file():
        raise FparError(f"config file {path} not found; give a YAML file such as configs/ego_rnn_stage1.yaml")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError):
        return [path]  # _read_yaml reports it
    parent = raw.get("extends") if isinstance(raw, dict) else None
    if parent is not None and not isinstance(parent, str):
        raise FparError(f"{path}: 'extends' is {parent!r}; give one recipe file, e.g. extends: ego_rnn_stage1.yaml")
    if parent:
        return _extends_chain((path.parent / parent).resolve(), (*seen, path)) + [path]
    return [path]


# The distinct crop/flip draws of a training clip: fpar.data.transforms.DRAWS (4 scales x 5 positions x 2 flips). Kept
# here as a number because config sits below data in the layers; tests/test_config.py checks that the two agree.
TRAIN_DRAWS = 40
NAME = re.compile(r"[A-Za-z0-9_.-]+")  # what a run's, grid's or stage's name (a folder name) may hold

_CHOICES = {
    "data.select_on": ("test", "val"),
    "data.sampling": ("seed", "egornn"),
    "model.backbone": ("resnet18", "resnet34", "resnet50"),
    "model.heads": ("action", "verb_noun"),
    "optim.name": ("adam", "sgd"),
    "sched.name": ("multistep", "step", "none"),
    "init.checkpoint": ("best", "last"),
}


def validate(cfg: ExperimentConfig) -> None:
    """Choices and ranges of the shared keys, then each block's own ``validate(cfg)`` (model families, readers)."""
    from .registry import model_spec, reader_spec

    model_spec(cfg.model.name)  # an unknown family is named with the registered ones
    if cfg.data.format != "auto":
        reader_spec(cfg.data.format)
    d = dict(_flatten(to_dict(cfg)))
    for key, choices in _CHOICES.items():
        if d[key] not in choices:
            raise FparError(f"config key '{key}' is {d[key]!r}; choose one of {', '.join(choices)}")
    if not cfg.data.root.strip():
        raise FparError("data.root is empty; give the dataset's folder, e.g. data.root=data/GTEA61")
    if cfg.data.frames < 1 or cfg.data.flow_stack < 1:
        raise FparError("data.frames and data.flow_stack must be at least 1")
    if cfg.data.input_size < 32:
        raise FparError(f"data.input_size must be at least 32 (got {cfg.data.input_size}); the paper uses 224")
    if cfg.data.scale_size < cfg.data.input_size:
        raise FparError("data.scale_size must be at least data.input_size")
    if not 0 <= cfg.data.draw_pool <= TRAIN_DRAWS:
        raise FparError(
            f"config key 'data.draw_pool' must be in 0..{TRAIN_DRAWS} (0: all {TRAIN_DRAWS} crop/flip draws), "
            f"got {cfg.data.draw_pool}"
        )
    at_least = {
        "train.epochs": (cfg.train.epochs, 1),
        "train.batch_size": (cfg.train.batch_size, 1),
        "train.eval_batch_size": (cfg.train.eval_batch_size, 1),
        "train.eval_every": (cfg.train.eval_every, 1),
        "train.eval_memo_mb": (cfg.train.eval_memo_mb, 0),
        "train.max_batches": (cfg.train.max_batches, 0),
        "train.frozen_chunk": (cfg.train.frozen_chunk, 0),
        "data.num_workers": (cfg.data.num_workers, 0),
        "seed": (cfg.seed, 0),
        "data.flow_stacks_test": (cfg.data.flow_stacks_test, 1),
        "optim.lr": (cfg.optim.lr, 0.0),
        "optim.weight_decay": (cfg.optim.weight_decay, 0.0),
    }
    for key, (value, low) in at_least.items():
        if value < low:
            raise FparError(f"config key '{key}' must be at least {low}, got {value}")
    for key in ("optim.lr", "optim.weight_decay"):  # a command line's "inf" / "nan" parse as floats
        if not math.isfinite(d[key]):
            raise FparError(f"config key '{key}' must be finite, got {d[key]}")
    parts = cfg.name.split("/")  # a sweep's trials are named <grid>/<trial>
    if not all(NAME.fullmatch(x) and set(x) != {"."} for x in parts):
        raise FparError(
            f"config key 'name' is {cfg.name!r}: a run's name (its folder under runs/) may hold letters, digits, "
            "'_', '-', '.' and '/' between them only; give the folder itself with out=PATH"
        )
    if not 0 <= cfg.model.dropout < 1:
        raise FparError(f"config key 'model.dropout' must be in [0, 1), got {cfg.model.dropout}")
    if not (cfg.train.device in ("auto", "cpu") or cfg.train.device.startswith(("cuda", "mps"))):
        raise FparError(f"train.device is {cfg.train.device!r}; use auto, cpu, cuda or cuda:N")
    for g in cfg.optim.groups:
        if not isinstance(g, dict) or not isinstance(g.get("lr"), (int, float)) or "pattern" not in g:
            raise FparError(f"each optim.groups entry is {{pattern: REGEX, lr: NUMBER}}, got {g!r}")
        if isinstance(g["lr"], bool) or not (math.isfinite(g["lr"]) and g["lr"] >= 0):
            raise FparError(f"optim.groups entry {g!r}: its lr must be a finite number, at least 0")
    # the schedule multiplies the rate: a negative or infinite factor would train with such a rate
    if not (math.isfinite(cfg.sched.gamma) and cfg.sched.gamma >= 0):
        raise FparError(f"config key 'sched.gamma' must be a finite number, at least 0, got {cfg.sched.gamma}")
    if cfg.sched.step_size < 1:
        raise FparError(f"config key 'sched.step_size' must be at least 1, got {cfg.sched.step_size}")
    if any(m < 1 for m in cfg.sched.milestones) or sorted(set(cfg.sched.milestones)) != list(cfg.sched.milestones):
        raise FparError(
            f"config key 'sched.milestones' must be increasing epochs of at least 1, got {cfg.sched.milestones}"
        )
    if not 0 <= cfg.optim.momentum < 1:
        raise FparError(f"config key 'optim.momentum' must be in [0, 1), got {cfg.optim.momentum}")
    if not 0 < cfg.data.val_fraction < 1:
        raise FparError("data.val_fraction must be between 0 and 1")
    metric = cfg.train.select_metric
    if metric != "auto" and not re.fullmatch(
        r"top[15]|mean_class_acc|(verb|noun)_acc|((unseen|tail)_)?(verb|noun|action)_top[15]|[a-z0-9]+_top1", metric
    ):
        raise FparError(
            f"train.select_metric={metric} is not a metric fpar computes; use auto, top1, top5, mean_class_acc, "
            "verb_top1, noun_top1, action_top1, action_top5, ..."
        )
    if metric.startswith(("verb_top", "noun_top", "action_top")) and cfg.model.heads != "verb_noun":
        raise FparError(f"train.select_metric={metric} needs verb and noun heads: set model.heads=verb_noun")
    for section in (cfg.model, cfg.data):
        for name in block_types(type(section)):
            block = getattr(section, name)
            if hasattr(block, "validate"):
                block.validate(cfg)  # a block checks its own keys (ranges, keys it needs from the rest)


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    from .utils import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def dump(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def get(cfg: ExperimentConfig, dotted: str) -> Any:
    obj: Any = cfg
    for part in canonical_key(dotted).split("."):
        obj = getattr(obj, _RENAMES.get(part, part))
    return obj


def set_value(cfg: ExperimentConfig, dotted: str, value: Any, source: str = "a sweep") -> None:
    _apply(cfg, dotted, value, source)
