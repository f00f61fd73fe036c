"""What every model returns."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class ModelOutput:
    """Named outputs of a forward pass (no positional tuples).

    Attributes:
        logits: (B, num_classes) action scores.
        features: (B, D) the pooled representation the classifier reads (Ego-RNN: avg-pooled ConvLSTM cell
            state; flow ResNet: pooled conv5 before dropout). The two-stream model concatenates these.
        attn: (B, T, h, w) CAM attention maps (sum to 1 per frame), Ego-RNN with ``cam`` only.
        ms: (B, T, K, s, s) motion-segmentation head output (K = 2 for classification, 1 for regression);
            only computed in training mode or when asked for.
        disc_logits: (2B, 2) static-dynamic discriminator scores, the B dynamic clips first, then the B static
            clips; training only.
    """

    logits: Tensor
    features: Tensor | None = None
    attn: Tensor | None = None
    ms: Tensor | None = None
    disc_logits: Tensor | None = None
