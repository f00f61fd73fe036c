"""fpar: first-person (egocentric) action recognition in PyTorch.

Model families (Ego-RNN with its CAM attention, motion-segmentation branch, static-dynamic discriminator and
representation-flow layer; flow_resnet34; the joint two-stream model) and dataset readers (GTEA61 in its two layouts)
are plug-ins registered in `fpar.registry`; a new one is one file (see README, "Contributing").
"""

from __future__ import annotations

from .registry import create_model, list_models, list_readers  # noqa: E402
from .version import __version__


def load_run(path: str, which: str = "best"):
    """Load a trained model from a run folder or checkpoint for inference.

    Returns ``(model, info)`` with the model in eval mode and ``info`` holding ``classes``, ``config`` (dict),
    ``input_size``, ``normalisation`` and ``vocabulary``. `fpar.engine.run.open_run` gives the same as an object.
    """
    from .engine.run import open_run

    run = open_run(path, which)
    return run.model, run.info()


__all__ = ["__version__", "create_model", "list_models", "list_readers", "load_run"]
