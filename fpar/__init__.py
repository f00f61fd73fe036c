"""fpar: first-person (egocentric) action recognition in PyTorch.

Model families (Ego-RNN with its CAM attention, motion-segmentation branch, static-dynamic discriminator and
representation-flow layer; flow_resnet34; the joint two-stream model; LSTA, its flow stream and its cross-modal
two-stream) and dataset readers (GTEA61 in its two layouts, EGTEA Gaze+, EPIC-KITCHENS-100) are plug-ins registered
in `fpar.registry`; a new one is one file (see README, "Contributing").
"""

from __future__ import annotations

from typing import Any

from .registry import list_models, list_readers, model_spec  # noqa: E402
from .version import __version__


def create_model(name: str, **kwargs: Any):
    """Build a registered model family (``name``: one of `list_models`) by keyword arguments, for scripts and
    notebooks, e.g. ``create_model(name, num_classes=61, pretrained="none", mem_size=256)`` (README, "Python API").

    A family with a keyword constructor (Ego-RNN, flow_resnet, two-stream: its spec's ``factory``) takes that
    constructor's arguments. Any other (LSTA, the LSTA flow stream, plug-ins) is built from its config, as
    `fpar train` builds it: ``num_classes=N`` or ``classes=[names]`` gives the classes, and each other keyword ``k``
    sets the first of ``model.<name>.k``, ``model.k``, ``data.k`` that exists (``mem_size``, ``backbone``,
    ``pretrained``, ``input_size``, ``flow_stack``; `fpar config --keys` lists them), type-checked as an override is.
    A family built from trained streams (``lsta_two_stream``) takes their run folders the same way
    (``rgb_run=..., flow_run=...``). Bad arguments raise `fpar.errors.FparError` with a one-line message.
    """
    spec = model_spec(name)
    if spec.factory is not None:
        return spec.factory(**kwargs)
    from .config import ExperimentConfig, set_value, valid_keys, validate
    from .data.manifest import Vocabulary
    from .engine.build import build_model
    from .errors import FparError

    where = f"create_model('{name}')"
    classes, num_classes = kwargs.pop("classes", None), kwargs.pop("num_classes", None)
    if (classes is None) == (num_classes is None):
        raise FparError(f"{where} needs the classes: num_classes=N or classes=[names], one of them")
    if classes is None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise FparError(f"{where}: num_classes must be a positive integer, got {num_classes!r}")
        classes = [f"class_{k}" for k in range(num_classes)]
    cfg = ExperimentConfig()
    set_value(cfg, "model.name", name, where)
    keys = set(valid_keys())
    for k, v in kwargs.items():
        key = next((f"{s}.{k}" for s in (f"model.{name}", "model", "data") if f"{s}.{k}" in keys), None)
        if key is None:
            raise FparError(
                f"{where}: no config key model.{name}.{k}, model.{k} or data.{k}; `fpar config --keys` lists them"
            )
        set_value(cfg, key, v, where)
    validate(cfg)
    return build_model(cfg, Vocabulary([str(c) for c in classes]))[0]


def load_run(path: str, which: str = "best"):
    """Load a trained model from a run folder or checkpoint for inference.

    Returns ``(model, info)`` with the model in eval mode and ``info`` holding ``classes``, ``config`` (dict),
    ``input_size``, ``normalisation`` and ``vocabulary``. `fpar.engine.run.open_run` gives the same as an object.
    """
    from .engine.run import open_run

    run = open_run(path, which)
    return run.model, run.info()


__all__ = ["__version__", "create_model", "list_models", "list_readers", "load_run"]
