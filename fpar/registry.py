"""Name-based model registry shared by the CLI, configs and tests."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .errors import FparError

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    from . import models  # noqa: F401  (registers the builders)

    return sorted(_MODELS)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model by name, e.g. ``create_model("ego_rnn", num_classes=61, pretrained="none")``."""
    names = list_models()
    if name not in _MODELS:
        raise FparError(f"unknown model '{name}'; choose one of {', '.join(names)}")
    return _MODELS[name](**kwargs)
