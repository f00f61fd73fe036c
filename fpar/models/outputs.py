"""What every model returns: named outputs of a forward pass, and the loss terms its heads compute."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from torch import Tensor, nn


@dataclass
class ModelOutput:
    """Named outputs of a forward pass (no positional tuples).

    Attributes:
        logits: (B, num_classes) action scores.
        features: (B, D) the pooled representation the classifier reads (Ego-RNN: avg-pooled ConvLSTM cell
            state; flow ResNet: pooled conv5 before dropout). The two-stream model concatenates these.
        attn: (B, T, h, w) attention maps (sum to 1 per frame): Ego-RNN's CAM, with ``cam`` only.
        ms: (B, T, K, s, s) motion-segmentation head output (K = 2 for classification, 1 for regression);
            only computed in training mode or when asked for.
        disc_logits: (2B, 2) static-dynamic discriminator scores, the B dynamic clips first, then the B static
            clips; training only.
        verb_logits, noun_logits: (B, verbs) and (B, nouns) with ``model.heads=verb_noun``.
    """

    logits: Tensor
    features: Tensor | None = None
    attn: Tensor | None = None
    ms: Tensor | None = None
    disc_logits: Tensor | None = None
    verb_logits: Tensor | None = None
    noun_logits: Tensor | None = None

    def float(self) -> ModelOutput:
        """Every tensor in float32 (losses and metrics are computed in float32 under bf16 autocast)."""
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None and v.is_floating_point():
                setattr(self, f.name, v.float())
        return self


@dataclass
class LossTerm:
    """One loss a head computed: ``value`` (a scalar tensor), the ``weight`` it enters the total with (from the
    config, e.g. ``model.ego_rnn.ms.weight``), and ``metrics`` to log beside it (floats, e.g. ``ms_acc``)."""

    value: Tensor
    weight: float = 1.0
    metrics: dict[str, float] = field(default_factory=dict)


class LogitsOnly(nn.Module):
    """The inference path of a model for export: one input tensor -> its logits (B, classes), nothing else."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x).logits
