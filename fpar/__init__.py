"""fpar: first-person (egocentric) action recognition in PyTorch.

Ego-RNN (ResNet-34 + CAM attention + ConvLSTM), the flow_resnet34 temporal stream and the joint two-stream model,
the self-supervised motion-segmentation branch, the static-dynamic discriminator and the representation-flow layer,
on GTEA61-style data (or the synthetic stand-in that `fpar data synth` writes).
"""

from __future__ import annotations

__version__ = "0.1.0"

from .registry import create_model, list_models  # noqa: E402


def load_run(path: str, which: str = "best"):
    """Load a trained model from a run folder or checkpoint for inference.

    Returns ``(model, info)`` with the model in eval mode and ``info`` holding ``classes``, ``config`` (dict),
    ``input_size`` and ``normalisation``.
    """
    from .engine.build import model_from_checkpoint
    from .engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path, which)
    model = model_from_checkpoint(ckpt).eval()
    info = {k: ckpt.get(k) for k in ("classes", "config", "input_size", "normalisation", "epoch", "metrics", "path")}
    return model, info


__all__ = ["__version__", "create_model", "list_models", "load_run"]
