"""Plug-in registries: model families and dataset readers, each described by a spec, found by name.

A model family is one file under ``fpar/models/`` that calls :func:`register_model_spec` with a :class:`ModelSpec`;
a dataset reader is one file under ``fpar/data/readers/`` that calls :func:`register_reader` with a
:class:`ReaderSpec`. Both folders are scanned on first use, so adding a file is all it takes. Packages outside fpar
register through entry points (``[project.entry-points."fpar.models"]`` / ``"fpar.readers"``: each entry names a
module that registers on import), and ``FPAR_PLUGINS=mod1,mod2`` imports modules by name, so a plug-in is there in
every new process (workers, sweeps, ``torchrun``).

Everything outside a model's own file asks its spec (what it reads, how it is built, what it exports, whether it has
attention maps) and never tests a model's name; likewise for readers.

This module sits below ``data`` and ``models`` (it imports neither): discovery imports the plug-in modules by name,
at run time, and they register themselves.
"""

from __future__ import annotations

import difflib
import importlib
import os
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import FparError

# --------------------------------------------------------------------------------------------------------------
# Specs


@dataclass(frozen=True)
class StreamSlot:
    """A trained single-stream run that a multi-stream model is built from.

    ``key`` names the field of the family's config block that holds the run folder (``model.two_stream.rgb_run``);
    ``inputs`` is what that stream must read (a run of a model whose ``inputs`` differ is refused); ``families``, when
    given, the only families the model can use there (it reaches into their parts, e.g. a cell's gates).
    """

    key: str
    inputs: tuple[str, ...]
    families: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExportPlan:
    """What `fpar export` writes for a model: a module mapping one input tensor to logits, and how to feed it.

    ``module`` takes a tensor of ``shape`` (batch first; the batch axis is kept dynamic) and returns (B, classes);
    ``layout`` says in words what the input holds; ``preprocessing`` goes into the JSON sidecar as is.
    """

    module: Any
    input_name: str
    shape: list[int]
    layout: str
    preprocessing: dict[str, Any] = field(default_factory=dict)


@dataclass
class BuildContext:
    """What a family's ``build`` gets: the run's resolved ``cfg`` (an ExperimentConfig), its own config ``block``
    (``cfg.model.<family>``, None without one), the dataset's ``vocab`` (a Vocabulary: actions, verbs, nouns) and,
    for multi-stream families, the built ``streams`` by slot name."""

    cfg: Any
    block: Any
    vocab: Any
    streams: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FeatureCachePlan:
    """How a family's frozen per-frame prefix can be cached (``data.feature_cache``; `fpar.engine.feature_cache`).

    Attributes:
        prefix: ``prefix(model, frames) -> Tensor``: (N, 3, H, W) frames -> (N, ...) features, each frame's from that
            frame alone (no mixing across frames, eval-mode BatchNorm, no dropout).
        params: regexes of the parameters the prefix reads; a stage that trains any of them cannot use the cache.
        forward: ``forward(model, features, batch, train) -> ModelOutput`` from (B, T, ...) features.
        refusal: ``refusal(cfg) -> str | None``: why this configuration cannot use the cache (None: it can).
        eval_refusal: the same for evaluation alone (`fpar.engine.feature_cache.EvalMemo`), where training-only
            heads do not run; None: ``refusal``.
        name: where the prefix ends (``"conv5"``, ``"conv4"``): part of the cache's fingerprint, and what the log says.

    A family may give several plans, deepest cut first (`ModelSpec.feature_cache`): a run uses the first whose
    parameters it does not train, so stage 1 caches the whole frozen trunk and stage 2, which trains layer4, the
    trunk up to layer3.
    """

    prefix: Callable[..., Any]
    params: tuple[str, ...]
    forward: Callable[..., Any]
    refusal: Callable[..., str | None] | None = None
    name: str = "trunk"
    eval_refusal: Callable[..., str | None] | None = None


@dataclass(frozen=True)
class ModelSpec:
    """How the rest of fpar uses a model family. Only ``name``, ``build``, ``inputs`` and ``forward`` are required.

    Attributes:
        name: the value of ``model.name``.
        build: ``build(ctx: BuildContext) -> nn.Module``; the module's ``losses(out, batch)`` returns its loss terms.
        inputs: ``inputs(cfg, train) -> tuple`` of modalities the data loader provides (``"rgb"``, ``"flow"``,
            ``"mmaps"``); evaluation asks with ``train=False``.
        forward: ``forward(model, batch, train) -> ModelOutput`` from a batch dict of tensors.
        config: a dataclass whose fields are the family's keys ``model.<name>.*`` (None: no own keys).
        aliases: old top-level ``model.X`` keys that now live in the block: ``{"cam": "cam"}`` reads ``model.cam``
            as ``model.<name>.cam`` (fpar 0.1.0 configs and checkpoints keep opening).
        streams: named trained runs the model is built from (two-stream); the engine opens them and passes the
            built modules to ``build`` as ``ctx.streams``.
        configure: ``configure(cfg, stream_cfgs)``: adjust the run's config to its streams before building (e.g. the
            flow stack length of the flow run); may be None.
        export: ``export(model, cfg, frames) -> ExportPlan``; None when the family cannot be exported, with
            ``export_refusal(cfg)`` saying why in one line.
        attention: ``attention(model) -> str | None``: None when ``forward`` fills ``ModelOutput.attn`` in eval
            mode, else the reason in words (for ``--cam``). None: the family has no attention maps.
        aux_maps: ``aux_maps(model, out, batch, cfg) -> {column title: (T, s, s) array in [0, 1]}``: extra per-frame
            pictures for `fpar cam` (motion-segmentation predictions and targets); may be None.
        description: one line for `fpar models`.
        defaults: the recipe that trains it (``configs/...``), for documentation.
        stages: named ``train.trainable`` pattern lists; the first is used when a config leaves it empty.
        optional_weights: state-dict prefixes a checkpoint of the family may lack (its training-only heads).
        compile: the submodules (dotted names) ``train.compile=true`` compiles with ``torch.compile``, where the time
            goes (Ego-RNN: its trunk and its ConvLSTM cell, so that the feature-cache path gains too); empty: the
            whole model.
        no_gradient: ``no_gradient(cfg) -> tuple`` of regexes: the parameters a stage may train that never get a
            gradient under this config (they only enter an argmax, or a head the config turns off). The optimizer
            leaves them as they are; under several processes they make the engine turn DistributedDataParallel's
            ``find_unused_parameters`` on, which DDP otherwise refuses them without. None: there are none.
    """

    name: str
    build: Callable[..., Any]
    inputs: Callable[..., tuple[str, ...]]
    forward: Callable[..., Any]
    config: type | None = None
    aliases: dict[str, str] = field(default_factory=dict)
    streams: dict[str, StreamSlot] = field(default_factory=dict)
    configure: Callable[..., None] | None = None
    export: Callable[..., ExportPlan] | None = None
    export_refusal: Callable[..., str] | None = None
    attention: Callable[..., str | None] | None = None
    aux_maps: Callable[..., dict] | None = None
    description: str = ""
    defaults: str = ""
    stages: dict[str, tuple[str, ...]] = field(default_factory=lambda: {"all": (".",)})
    optional_weights: tuple[str, ...] = ()  # state-dict prefixes a checkpoint may lack (heads added after it)
    factory: Callable[..., Any] | None = None  # create_model(name, **kwargs): keyword construction for scripts
    # its frozen prefix can be cached: one plan, or several with the deepest cut first (stage 1, stage 2)
    feature_cache: FeatureCachePlan | tuple[FeatureCachePlan, ...] | None = None
    compile: tuple[str, ...] = ()  # train.compile: these submodules (empty: the whole model)
    no_gradient: Callable[..., tuple[str, ...]] | None = None  # trainable yet never given a gradient (DDP)


@dataclass(frozen=True)
class ReaderSpec:
    """How fpar reads one dataset format into a :class:`~fpar.data.manifest.Manifest`.

    Attributes:
        name: the value of ``data.format``.
        read: ``read(root, block, data_cfg) -> Manifest`` (raises FparError for an unusable root).
        detect: ``detect(root, data_cfg) -> bool``: whether ``root`` looks like this format (``data.format=auto``;
            ``data_cfg`` may be None).
        split: ``split(manifest, block) -> (train indices, test indices)``, the format's named split as configured.
        config: a dataclass whose fields are the reader's keys ``data.<name>.*``; None when it has none.
        aliases: old top-level ``data.X`` keys that live in the block now (``data.train_subjects``).
        folds: ``folds(manifest, block) -> [{dotted key: value}]``: the overrides of each cross-validation fold
            (leave-one-subject-out for GTEA61); None when the format has no folds.
        describe_split: ``describe_split(block) -> str``: the split in words, for logs and reports.
        vocabulary_from_classes: rebuild a vocabulary from class names alone (checkpoints of fpar 0.1.0).
        block: the key of its config block, when several readers share one (default: ``name``).
    """

    name: str
    read: Callable[..., Any]
    detect: Callable[..., bool]
    split: Callable[..., tuple[list[int], list[int]]]
    config: type | None = None
    aliases: dict[str, str] = field(default_factory=dict)
    folds: Callable[..., list[dict[str, Any]]] | None = None
    describe_split: Callable[..., str] | None = None
    vocabulary_from_classes: Callable[[list[str]], Any] | None = None
    block: str | None = None  # the config block's key when readers share one (both GTEA61 layouts: gtea61)
    description: str = ""


# --------------------------------------------------------------------------------------------------------------
# Registration and discovery

_MODELS: dict[str, tuple[ModelSpec, str]] = {}  # name -> (spec, module that registered it)
_READERS: dict[str, tuple[ReaderSpec, str]] = {}
_DISCOVERED = False

_BUILTIN_PACKAGES = ("fpar.models", "fpar.data.readers")
DEFAULT_MODEL = "ego_rnn"  # model.name when a config does not say (the report's model)
ENTRY_POINT_GROUPS = ("fpar.models", "fpar.readers")


def _register(table: dict, spec, module: str, what: str):
    """A second registration of a name replaces the first only when it comes from the same module (a re-import);
    from another module it is an error (two plug-ins would silently shadow each other)."""
    old = table.get(spec.name)
    if old is not None and old[1] != module:
        raise FparError(f"{what} '{spec.name}' is registered twice ({old[1]} and {module}); rename one of them")
    table[spec.name] = (spec, module)
    return spec


def _caller_module() -> str:
    import sys

    return str(sys._getframe(2).f_globals.get("__name__", "?"))  # the module whose import registers the spec


def register_model_spec(spec: ModelSpec) -> ModelSpec:
    """Register a model family (called when its file is imported)."""
    return _register(_MODELS, spec, _caller_module(), "model")


def register_reader(spec: ReaderSpec) -> ReaderSpec:
    """Register a dataset reader (called when its file is imported)."""
    return _register(_READERS, spec, _caller_module(), "dataset format")


def _import_plugin(module: str, origin: str) -> None:
    try:
        importlib.import_module(module)
    except FparError:
        raise
    except Exception as e:  # a broken plug-in must not take fpar down with a traceback
        raise FparError(f"plug-in module {module!r} ({origin}) failed to import: {type(e).__name__}: {e}") from None


def discover() -> None:
    """Import every built-in model and reader file, the entry points and ``FPAR_PLUGINS`` (once per process)."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True  # set first: plug-in modules may call back into the registry while importing
    try:
        for pkg_name in _BUILTIN_PACKAGES:
            pkg = importlib.import_module(pkg_name)
            for info in pkgutil.iter_modules(pkg.__path__):
                if not info.name.startswith("_"):
                    _import_plugin(f"{pkg_name}.{info.name}", "built in")
        from importlib.metadata import entry_points

        for group in ENTRY_POINT_GROUPS:
            for ep in entry_points(group=group):
                _import_plugin(ep.value.split(":")[0], f"entry point {group}:{ep.name}")
        for mod in filter(None, (m.strip() for m in os.environ.get("FPAR_PLUGINS", "").split(","))):
            _import_plugin(mod, "FPAR_PLUGINS")
    except BaseException:
        _DISCOVERED = False  # a failed plug-in: the next call tries again instead of using half a registry
        raise


def _lookup(table: dict, name: str, what: str, key: str):
    discover()
    if name not in table:
        close = difflib.get_close_matches(name, list(table), n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise FparError(
            f"unknown {what} '{name}' ({key}); {hint}choose one of {', '.join(sorted(table))} (a plug-in must be "
            "installed or named in FPAR_PLUGINS)"
        )
    return table[name][0]


def model_spec(name: str) -> ModelSpec:
    return _lookup(_MODELS, name, "model", "model.name")


def reader_spec(name: str) -> ReaderSpec:
    return _lookup(_READERS, name, "dataset format", "data.format")


def model_specs() -> dict[str, ModelSpec]:
    discover()
    return {name: spec for name, (spec, _) in sorted(_MODELS.items())}


def reader_specs() -> dict[str, ReaderSpec]:
    discover()
    return {name: spec for name, (spec, _) in sorted(_READERS.items())}


def list_models() -> list[str]:
    return list(model_specs())


def list_readers() -> list[str]:
    return list(reader_specs())
