"""Two-stream Ego-RNN with joint training (reference-spec §3).

    RGB clip  ── RGB stream (trained stage-2 run) ──> pooled features (512) ────────┐
                                                                                     ├─ concat (flow first, 1024)
    flow stack ── flow stream (trained flow run) ──> pooled conv5 (512) ─────────────┘     -> Dropout(0.5) -> head

The streams are built modules passed in (the engine opens their runs): any family whose spec reads ``("rgb",)``
(Ego-RNN) and any that reads ``("flow",)`` (flow_resnet), each returning ``features``. The per-stream
classifiers are kept (their weights come with the runs) but not used by the fused output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import FparError
from ..registry import ModelSpec, StreamSlot, register_model_spec
from .heads import ActionHead, make_classifier
from .outputs import LossTerm, ModelOutput


class TwoStream(nn.Module):
    """Args: ``rgb`` and ``flow`` streams (modules returning `ModelOutput` with ``features``), ``num_classes``,
    ``dropout`` before the fusion head, ``classifier``: a head factory ``in_features -> head`` over the concatenated
    features (default an `ActionHead`)."""

    def __init__(self, *, rgb: nn.Module, flow: nn.Module, num_classes: int, dropout: float = 0.5, classifier=None):
        super().__init__()
        if rgb.num_classes != flow.num_classes:
            raise ValueError(f"expected streams with the same classes, got {rgb.num_classes} and {flow.num_classes}")
        self.rgb = rgb
        self.flow = flow
        self.dropout = nn.Dropout(dropout)
        d = flow.num_features + rgb.num_features
        self.classifier = classifier(d) if classifier is not None else ActionHead(d, num_classes)
        self.num_classes = num_classes

    def fused_outputs(self, flow_feats: Tensor, rgb_feats: Tensor) -> dict[str, Tensor]:
        """(B, 512) flow and (B, 512) RGB features -> the head's outputs ({"logits": (B, classes), ...})."""
        return self.classifier.outputs(self.dropout(torch.cat([flow_feats, rgb_feats], dim=1)))  # (B, 1024) in

    def fuse(self, flow_feats: Tensor, rgb_feats: Tensor) -> Tensor:
        """(B, 512) flow and (B, 512) RGB features -> (B, classes) logits."""
        return self.fused_outputs(flow_feats, rgb_feats)["logits"]

    def forward(self, rgb: Tensor, flow: Tensor) -> ModelOutput:
        r = self.rgb(rgb, with_ms=False)
        f = self.flow(flow)
        return ModelOutput(**self.fused_outputs(f.features, r.features), features=None, attn=r.attn)

    def losses(self, out: ModelOutput, batch: dict) -> dict[str, LossTerm]:
        return self.classifier.losses(out, batch)


def late_fusion(rgb_logits: Tensor, flow_logits: Tensor, weight: float = 0.5) -> Tensor:
    """The untrained score-averaging baseline: weight * flow + (1 - weight) * rgb logits."""
    return weight * flow_logits + (1.0 - weight) * rgb_logits


# --------------------------------------------------------------------------------------------------------------
# Spec


@dataclass
class TwoStreamConfig:
    """``model.two_stream.*`` (``model.rgb_run`` / ``model.flow_run`` / ``model.fusion_dropout`` in fpar 0.1.0)."""

    rgb_run: str | None = None  # trained RGB (stage-2) run or checkpoint
    flow_run: str | None = None  # trained flow run or checkpoint
    fusion_dropout: float = 0.5

    def validate(self, cfg) -> None:
        if not 0 <= self.fusion_dropout < 1:
            raise FparError(
                f"config key 'model.two_stream.fusion_dropout' must be in [0, 1), got {self.fusion_dropout}"
            )


def two_stream(*, rgb: nn.Module, flow: nn.Module, num_classes: int, dropout: float = 0.5) -> TwoStream:
    """Joint two-stream model from two built (usually trained) streams."""
    return TwoStream(rgb=rgb, flow=flow, num_classes=num_classes, dropout=dropout)


def _build(ctx) -> TwoStream:
    return TwoStream(
        rgb=ctx.streams["rgb"],
        flow=ctx.streams["flow"],
        num_classes=len(ctx.vocab.actions),
        dropout=ctx.block.fusion_dropout,
        classifier=lambda d: make_classifier(d, ctx.vocab, ctx.cfg.model.heads),
    )


def _configure(cfg, stream_cfgs: dict) -> None:
    """The flow stack length is the flow run's (its first convolution is fixed to it)."""
    cfg.data.flow_stack = stream_cfgs["flow"].data.flow_stack


def _refusal(cfg) -> str:
    b = cfg.model.two_stream
    return (
        "exporting a two-stream model is not supported, because an export here is one input tensor -> logits with "
        "one preprocessing recipe, and this model needs two inputs (a T-frame RGB clip and a warp-flow stack with its "
        f"own sampling and normalisation, computed by OpenCV outside the network); export its streams separately "
        f"(model.two_stream.rgb_run={b.rgb_run}, model.two_stream.flow_run={b.flow_run}) and average their logits "
        "(late fusion), or run it in PyTorch with `fpar predict`"
    )


def _attention(model: TwoStream) -> str | None:
    has_cam = getattr(model.rgb, "cam", False)  # the RGB stream fills ModelOutput.attn when it has a CAM
    return None if has_cam else "its RGB stream has no attention map (trained with model.ego_rnn.cam=false)"


SPEC = register_model_spec(
    ModelSpec(
        name="two_stream",
        build=_build,
        inputs=lambda cfg, train: ("rgb", "flow"),
        forward=lambda model, batch, train: model(batch["rgb"], batch["flow"]),
        config=TwoStreamConfig,
        aliases={"rgb_run": "rgb_run", "flow_run": "flow_run", "fusion_dropout": "fusion_dropout"},
        streams={"rgb": StreamSlot("rgb_run", ("rgb",)), "flow": StreamSlot("flow_run", ("flow",))},
        configure=_configure,
        export_refusal=_refusal,
        attention=_attention,
        factory=two_stream,
        stages={
            "joint": (
                r"^classifier\.",
                r"^rgb\.lstm\.",
                r"^rgb\.backbone\.layer4\.\d+\.conv[12]\.weight$",
                r"^rgb\.backbone\.fc\.weight$",
                r"^flow\.backbone\.layer4\.",
            )
        },
        description="two-stream: a trained RGB run and a trained flow run, features concatenated, trained jointly",
        defaults="configs/two_stream.yaml",
    )
)
