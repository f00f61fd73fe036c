"""From a config to a model (its spec's ``build``), and from a batch to the model's outputs (its spec's
``forward``). Nothing here knows a model family: every question goes to `fpar.registry.model_spec`."""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

import torch
from torch import nn

from ..config import ExperimentConfig, to_dict
from ..data.manifest import Vocabulary
from ..errors import FparError
from ..models.outputs import ModelOutput
from ..registry import BuildContext, ModelSpec, model_spec

logger = logging.getLogger(__name__)


def spec_of(cfg: ExperimentConfig) -> ModelSpec:
    return model_spec(cfg.model.name)


def block_of(cfg: ExperimentConfig) -> Any:
    """The family's own config block ``model.<family>`` (None when it has no keys)."""
    spec = spec_of(cfg)
    return getattr(cfg.model, spec.name) if spec.config is not None else None


def modalities(cfg: ExperimentConfig, *, train: bool = True) -> tuple[str, ...]:
    """What the data loader must provide for this model (training, or evaluation with ``train=False``)."""
    return tuple(spec_of(cfg).inputs(cfg, train))


def resolve_trainable(cfg: ExperimentConfig) -> list[str]:
    """``train.trainable``, or the family's first stage when it is empty (written back: the run saves it)."""
    if not cfg.train.trainable:
        cfg.train.trainable = list(next(iter(spec_of(cfg).stages.values()), (".",)))
    return cfg.train.trainable


def forward_batch(model: nn.Module, cfg: ExperimentConfig, batch: dict, *, train: bool) -> ModelOutput:
    return spec_of(cfg).forward(model, batch, train)


def build_model(
    cfg: ExperimentConfig, vocab: Vocabulary, *, streams: dict[str, nn.Module] | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model a config describes. Returns (model, extra) where ``extra`` holds what a checkpoint needs to
    rebuild it (the stream configs of a multi-stream model). Writes resolved values back into ``cfg``.

    A multi-stream family gets its streams as built modules: from ``streams`` when given (rebuilding a checkpoint),
    else by opening the trained runs its config names (`open_run`), checked against the slot's inputs and this
    dataset's classes.
    """
    if isinstance(vocab, list):  # a plain class list (scripts of fpar 0.1.0)
        vocab = Vocabulary(list(vocab))
    spec = spec_of(cfg)
    block = block_of(cfg)
    extra: dict[str, Any] = {}
    if spec.streams and streams is None:
        from .run import open_run

        streams, stream_cfgs = {}, {}
        for slot_name, slot in spec.streams.items():
            key = f"model.{spec.name}.{slot.key}"
            run = getattr(block, slot.key)
            if not run:
                wanted = ", ".join(f"model.{spec.name}.{s.key}=RUN" for s in spec.streams.values())
                raise FparError(f"the {spec.name} model needs {wanted} (trained runs of its streams); {key} is unset")
            r = open_run(run, key=key, inputs=slot.inputs, vocab=vocab)
            if slot.families and r.spec.name not in slot.families:
                raise FparError(
                    f"{key}={run} is a run of '{r.spec.name}'; the {spec.name} model takes a run of "
                    f"{' or '.join(slot.families)} there"
                )
            streams[slot_name], stream_cfgs[slot_name] = r.model.train(), r.cfg
        if spec.configure is not None:
            before = to_dict(cfg)
            spec.configure(cfg, stream_cfgs)
            if to_dict(cfg) != before:
                logger.warning("%s: config adjusted to its streams (e.g. data.flow_stack of the flow run)", spec.name)
        extra["streams"] = {n: to_dict(c) for n, c in stream_cfgs.items()}
    model = spec.build(BuildContext(cfg=cfg, block=block, vocab=vocab, streams=streams or {}))
    return model, extra


def to_channels_last(model: nn.Module) -> nn.Module:
    """Every 4-D parameter and buffer of ``model`` (conv weights) in channels_last memory format, in place; the
    convolutions then produce channels_last maps from ordinary inputs. 5-D weights (Conv3d) stay as they are
    (``Module.to(memory_format=...)`` would refuse them)."""
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.dim() == 4 and not t.is_contiguous(memory_format=torch.channels_last):
                t.data = t.data.contiguous(memory_format=torch.channels_last)
    return model


def compile_model(model: nn.Module, spec) -> list[str]:
    """``train.compile``: ``torch.compile`` the submodules ``spec.compile`` names (the whole model when it names
    none) in place, with ``nn.Module.compile``: parameter names, state dicts and checkpoints stay as they are.
    Returns the names compiled ("" for the whole model). Raises FparError where it cannot run."""
    if not hasattr(nn.Module, "compile"):
        raise FparError(f"train.compile=true needs torch >= 2.2 (nn.Module.compile); this is {torch.__version__}")
    if not any(p.is_cuda for p in model.parameters()):  # inductor writes C++ for the CPU
        cxx = os.environ.get("CXX", "g++")
        if shutil.which(cxx) is None:
            raise FparError(
                f"train.compile=true on the CPU needs a C++ compiler ({cxx} not found): install g++ "
                "(apt-get install g++) or set train.compile=false"
            )
    names = list(spec.compile) or [""]
    for name in names:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise FparError(
                f"train.compile: the {spec.name} model has no submodule {name!r} (named in its spec's compile)"
            ) from None
        module.compile()
    return names
