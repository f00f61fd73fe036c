"""flow_resnet34: the temporal stream of Ego-RNN (reference-spec §2).

A ResNet whose conv1 takes 2L stacked warp-flow channels (x0, y0, x1, y1, ...; L = 5 in the paper), ImageNet-
initialised by averaging the RGB conv1 filters over their input channels and repeating them 2L times
(`adapt_input_conv`). After conv5: average pool -> 512-d features -> Dropout(0.5) -> Linear. Several stacks of one
video (B, K, 2L, H, W) are scored separately and their logits averaged (the paper's 5-stack test).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from torch import Tensor, nn

from ..registry import ExportPlan, ModelSpec, register_model_spec
from .backbone import ResNetTrunk, build_trunk
from .heads import ActionHead, make_classifier
from .outputs import LogitsOnly, LossTerm, ModelOutput


class FlowResNet(nn.Module):
    """Args: ``backbone`` (a trunk with 2L input channels), ``num_classes``, ``dropout`` before the classifier, and
    ``classifier``, a head factory ``in_features -> head`` (default: an `ActionHead` over ``num_classes``)."""

    def __init__(
        self,
        *,
        backbone: ResNetTrunk,
        num_classes: int,
        dropout: float = 0.5,
        classifier: Callable[[int], nn.Module] | None = None,
    ):
        super().__init__()
        # The ImageNet fc is not used by the flow stream: the classifier is fc_action.
        backbone.fc = nn.Identity()
        self.backbone = backbone
        self.stack_channels = backbone.in_chans
        self.dropout = nn.Dropout(dropout)
        d = backbone.num_features
        self.fc_action = classifier(d) if classifier is not None else ActionHead(d, num_classes)
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
        heads = self.fc_action.outputs(self.dropout(feats))  # {"logits": (B*K, classes), ...}
        if multi:
            heads = {k: v.view(b, -1, v.shape[-1]).mean(1) for k, v in heads.items()}  # (B, classes): mean over K
            feats = feats.view(b, -1, feats.shape[-1]).mean(1)  # (B, 512)
        return ModelOutput(**heads, features=feats)

    def losses(self, out: ModelOutput, batch: dict) -> dict[str, LossTerm]:
        return self.fc_action.losses(out, batch)


# --------------------------------------------------------------------------------------------------------------
# Spec


def flow_resnet(
    *,
    num_classes: int,
    backbone: str = "resnet34",
    pretrained: str | None = None,
    stack: int = 5,
    dropout: float = 0.5,
    classifier: Callable[[int], nn.Module] | None = None,
) -> FlowResNet:
    """flow_resnet34 on ``stack`` stacked x/y warp-flow frames (2·stack input channels)."""
    trunk = build_trunk(backbone, pretrained=pretrained, in_chans=2 * stack)
    return FlowResNet(backbone=trunk, num_classes=num_classes, dropout=dropout, classifier=classifier)


def _build(ctx) -> FlowResNet:
    m = ctx.cfg.model
    trunk = build_trunk(m.backbone, pretrained=m.pretrained, in_chans=2 * ctx.cfg.data.flow_stack)
    return FlowResNet(
        backbone=trunk,
        num_classes=len(ctx.vocab.actions),
        dropout=m.dropout,
        classifier=lambda d: make_classifier(d, ctx.vocab, m.heads),
    )


def _export(model: FlowResNet, cfg, frames: int | None) -> ExportPlan:
    from ..errors import FparError

    if frames is not None:
        raise FparError(
            f"frames={frames} applies to Ego-RNN models only: a flow model's input is one stack of "
            f"{cfg.data.flow_stack} flows, fixed by its first convolution"
        )
    size = cfg.data.input_size
    return ExportPlan(
        module=LogitsOnly(copy.deepcopy(model).eval()).eval(),
        input_name="flow",
        shape=[1, model.stack_channels, size, size],
        layout=(
            "(batch, 2L, S, S): L warp flows, channels x0, y0, x1, y1, ...; each flow image is 8-bit grey "
            "v = round(128 + 255 * f / 40) (f in px, bound 20), fed as (v / 255 - flow_mean) / flow_std"
        ),
        preprocessing={
            "frames": None,
            "flow_stack": cfg.data.flow_stack,
            "flow": "warp flow (camera homography removed) from frame k to k+1, centred stack, bound 20 px",
        },
    )


SPEC = register_model_spec(
    ModelSpec(
        name="flow_resnet",
        build=_build,
        inputs=lambda cfg, train: ("flow",),
        forward=lambda model, batch, train: model(batch["flow"]),
        export=_export,
        attention=lambda model: "it is a flow model: it has no CAM attention map (--cam works with Ego-RNN runs)",
        factory=flow_resnet,
        description="flow_resnet34: ResNet on L stacked warp flows (the temporal stream of Ego-RNN)",
        defaults="configs/flow_resnet34.yaml",
    )
)
