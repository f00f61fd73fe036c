"""flow_resnet34: the temporal stream of Ego-RNN (reference-spec §2).

A ResNet whose conv1 takes 2L stacked warp-flow channels (x0, y0, x1, y1, ...; L = 5 in the paper), ImageNet-
initialised by averaging the RGB conv1 filters over their input channels and repeating them 2L times
(`adapt_input_conv`). After conv5: average pool -> 512-d features -> Dropout(0.5) -> Linear. Several stacks of one
video (B, K, 2L, H, W) are scored separately and their logits averaged (the paper's 5-stack test).
"""

from __future__ import annotations

from torch import Tensor, nn

from .backbone import ResNetTrunk
from .outputs import ModelOutput


class FlowResNet(nn.Module):
    def __init__(self, *, backbone: ResNetTrunk, num_classes: int, dropout: float = 0.5):
        super().__init__()
        # The ImageNet fc is not used by the flow stream: the classifier is fc_action.
        backbone.fc = nn.Identity()
        self.backbone = backbone
        self.stack_channels = backbone.in_chans
        self.dropout = nn.Dropout(dropout)
        self.fc_action = nn.Linear(backbone.num_features, num_classes)
        self.num_classes = num_classes
        self.num_features = backbone.num_features

    def forward(self, flow: Tensor) -> ModelOutput:
        """flow (B, 2L, H, W) or (B, K, 2L, H, W) -> logits (B, classes) (averaged over K), features (B, 512)."""
        multi = flow.dim() == 5
        if flow.dim() not in (4, 5) or flow.shape[-3] != self.stack_channels:
            raise ValueError(f"expected flow of shape (B, [K,] {self.stack_channels}, H, W), got {tuple(flow.shape)}")
        b = flow.shape[0]
        x = flow.flatten(0, 1) if multi else flow  # (B*K, 2L, H, W)
        conv5 = self.backbone.forward_features(x)["conv5"]  # (B*K, 512, h, w)
        feats = conv5.mean(dim=(2, 3))  # (B*K, 512), before dropout (the two-stream model reads these)
        logits = self.fc_action(self.dropout(feats))
        if multi:
            logits = logits.view(b, -1, logits.shape[-1]).mean(1)  # (B, classes)
            feats = feats.view(b, -1, feats.shape[-1]).mean(1)  # (B, 512)
        return ModelOutput(logits=logits, features=feats)
