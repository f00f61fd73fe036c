"""Two-stream Ego-RNN with joint training (reference-spec §3).

    RGB clip  ── Ego-RNN (trained stage-2 run) ──> pooled ConvLSTM cell state (512) ─┐
                                                                                      ├─ concat (flow first, 1024)
    flow stack ── flow_resnet34 (trained flow run) ──> pooled conv5 (512) ────────────┘     -> Dropout(0.5) -> Linear

The per-stream classifiers are kept (their weights come with the runs) but not used by the fused output.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .ego_rnn import EgoRNN
from .flow_resnet import FlowResNet
from .outputs import ModelOutput


class TwoStream(nn.Module):
    def __init__(self, *, rgb: EgoRNN, flow: FlowResNet, num_classes: int, dropout: float = 0.5):
        super().__init__()
        if rgb.num_classes != flow.num_classes:
            raise ValueError(f"expected streams with the same classes, got {rgb.num_classes} and {flow.num_classes}")
        self.rgb = rgb
        self.flow = flow
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(flow.num_features + rgb.num_features, num_classes)
        self.num_classes = num_classes

    def fuse(self, flow_feats: Tensor, rgb_feats: Tensor) -> Tensor:
        """(B, 512) flow and (B, 512) RGB features -> (B, classes)."""
        return self.classifier(self.dropout(torch.cat([flow_feats, rgb_feats], dim=1)))  # (B, 1024) -> (B, classes)

    def forward(self, rgb: Tensor, flow: Tensor) -> ModelOutput:
        r = self.rgb(rgb, with_ms=False)
        f = self.flow(flow)
        return ModelOutput(logits=self.fuse(f.features, r.features), features=None, attn=r.attn)


def late_fusion(rgb_logits: Tensor, flow_logits: Tensor, weight: float = 0.5) -> Tensor:
    """The untrained score-averaging baseline: weight * flow + (1 - weight) * rgb logits."""
    return weight * flow_logits + (1.0 - weight) * rgb_logits
