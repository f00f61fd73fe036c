"""Model families, registered by name (see `fpar.registry`)."""

from __future__ import annotations

from ..config import DiscConfig, MSConfig, RepFlowConfig
from ..registry import register_model
from .backbone import build_trunk
from .ego_rnn import EgoRNN, build_ego_rnn
from .flow_resnet import FlowResNet
from .outputs import ModelOutput
from .two_stream import TwoStream

__all__ = ["EgoRNN", "FlowResNet", "TwoStream", "ModelOutput", "ego_rnn", "flow_resnet", "two_stream"]


@register_model
def ego_rnn(
    *,
    num_classes: int,
    backbone: str = "resnet34",
    pretrained: str | None = None,
    backbone_classes: int = 1000,
    input_size: int = 224,
    cam: bool = True,
    mem_size: int = 512,
    dropout: float = 0.7,
    ms: MSConfig | None = None,
    disc: DiscConfig | None = None,
    repflow: RepFlowConfig | None = None,
) -> EgoRNN:
    """Ego-RNN: ResNet + CAM attention + ConvLSTM (+ optional MS head, discriminator, representation flow)."""
    trunk = build_trunk(backbone, pretrained=pretrained, num_classes=backbone_classes)
    return build_ego_rnn(
        backbone=trunk,
        num_classes=num_classes,
        input_size=input_size,
        mem_size=mem_size,
        dropout=dropout,
        cam=cam,
        ms=ms,
        disc=disc,
        repflow=repflow,
    )


@register_model
def flow_resnet(
    *, num_classes: int, backbone: str = "resnet34", pretrained: str | None = None, stack: int = 5, dropout: float = 0.5
) -> FlowResNet:
    """flow_resnet34 on ``stack`` stacked x/y warp-flow frames (2·stack input channels)."""
    trunk = build_trunk(backbone, pretrained=pretrained, in_chans=2 * stack)
    return FlowResNet(backbone=trunk, num_classes=num_classes, dropout=dropout)


@register_model
def two_stream(*, rgb: EgoRNN, flow: FlowResNet, num_classes: int, dropout: float = 0.5) -> TwoStream:
    """Joint two-stream model from two built (usually trained) streams."""
    return TwoStream(rgb=rgb, flow=flow, num_classes=num_classes, dropout=dropout)
