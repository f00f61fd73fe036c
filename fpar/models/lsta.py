"""LSTA: long short-term attention (Sudhakaran, Escalera & Lanz, CVPR 2019), the RGB model, its flow stream and the
two-stream model with cross-modal fusion that its authors never released (lsta.md §4).

    frames (B, T, 3, H, W) ── ResNet trunk, all B·T frames in one batch ──> conv5 (BN+ReLU), conv5_nobn = x_t
        ├── CAM prior: W_fc[k]·conv5, k = argmax of the trunk's own fc (raw, no softmax) ──> cam_t (B·T, 1, h, w)
        └── LSTA cell over the T steps (`fpar.models.layers.lsta_cell`): attention recurrence on cam_t, attention
            pooling of x_t, memory with output pooling ──> c_T ──> avg pool ──> dropout 0.7 ──> head

    flow stream (``lsta_flow``): one stack of L warp flows centred on each sampled RGB frame (B, T, 2L, H, W)
        ──> flow ResNet (2L-channel conv1) per step ──> conv5 f_t ──> ConvLSTM(mem) ──> c_T ──> pool ──> head

    two-stream (``lsta_two_stream``), cross-modal fusion, every step t:
        RGB cell memory gates (i, f, c̃)  +=  conv3x3(f_t)          (the original cell's x_flow_i/f/c hook)
        flow ConvLSTM gates (i, f, c̃, o) +=  conv3x3(x_t)          (``rgb_features=attended``: x̄_t instead)
        [pooled c_T of RGB ; pooled c_T of flow] ──> dropout 0.5 ──> head

Choices where the paper is unclear (lsta.md §4, marked [P?] there), each a config key:
* the flow stack of step t is centred on RGB frame t (``data.flow_stack`` flows, the flow-stream default of the
  paper: 5); the flow stream is recurrent (a ConvLSTM over the steps), as the paper's cross-modal fusion needs per-step
  recurrent gates on both sides;
* what the RGB side gives the flow side: the raw layer4 features x_t (the paper's "layer4 features"; default) or the
  attended x̄_t (``model.lsta_two_stream.rgb_features=attended``);
* the fusion convs start at zero (``zero_init_fusion``): the two-stream model starts as the two pre-trained streams
  side by side, and the convs learn from there (their weights still get gradients, since their inputs are non-zero);
* joint classification: the two pooled memories concatenated, dropout, one head (Ego-RNN's two-stream recipe).

The late-fusion baseline of the issue (both pooled features concatenated, no cross-modal terms) is the ``two_stream``
family with an LSTA run as its RGB stream: it takes any RGB stream.

Deliberate differences from the original code (lsta.md §6): the output gate's h-conv is sized mem -> mem (the original
declares it with the input channel count and swaps the names, `LSTACell`); training data are shuffled (the original
passes no ``shuffle``); label ids come from one sorted vocabulary over every subject (the reader's); the coupling
term ``coupling_fc`` never receives a gradient (it is used only inside an argmax) and is asserted so by the tests.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ..errors import FparError
from ..registry import ExportPlan, ModelSpec, StreamSlot, register_model_spec
from .backbone import ResNetTrunk, build_trunk, resolve_backbone_classes
from .heads import ActionHead, make_classifier
from .layers.attention import class_activation_map
from .layers.conv_lstm import ConvLSTMCell
from .layers.lsta_cell import LSTACell
from .outputs import LogitsOnly, LossTerm, ModelOutput

# --------------------------------------------------------------------------------------------------------------
# RGB


class LSTA(nn.Module):
    """LSTA on RGB clips (B, T, 3, H, W).

    Args:
        backbone: the ResNet trunk (keeps its fc: the CAM prior reads its weight).
        num_classes: action classes (for the default `ActionHead`).
        mem_size: memory channels (512); out_pool_size: classes of the output pooling (100).
        dropout: before the classifier (0.7).
        classifier: a head factory ``in_features -> head`` (`fpar.models.heads.make_classifier`).
    """

    def __init__(
        self,
        *,
        backbone: ResNetTrunk,
        num_classes: int,
        mem_size: int = 512,
        out_pool_size: int = 100,
        dropout: float = 0.7,
        classifier: Callable[[int], nn.Module] | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.cell = LSTACell(backbone.num_features, mem_size, out_pool_size)
        self.dropout = nn.Dropout(dropout)
        self.classifier = classifier(mem_size) if classifier is not None else ActionHead(mem_size, num_classes)
        self.num_classes = num_classes
        self.mem_size = mem_size
        self.num_features = mem_size
        self.cam = True  # attention maps in every forward (ModelOutput.attn)

    def frame_features(self, rgb: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, 3, H, W) -> x (B, T, C, h, w) no-BN conv5 features and cam (B, T, 1, h, w) raw CAM priors."""
        b, t = rgb.shape[:2]
        feats = self.backbone.forward_features(rgb.flatten(0, 1))  # (B*T, 3, H, W) in
        conv5, x = feats["conv5"], feats["conv5_nobn"]  # (B*T, C, h, w) each
        _, c, h, w = conv5.shape
        fc = self.backbone.fc
        cam, _ = class_activation_map(conv5, fc.weight, fc.bias)  # (B*T, 1, h, w); fc.bias only picks the class
        return x.view(b, t, c, h, w), cam.view(b, t, 1, h, w)

    def forward(self, rgb: Tensor, *, with_ms: bool | None = None) -> ModelOutput:
        """rgb (B, T, 3, H, W) -> logits, features (B, mem) pooled c_T, attn (B, T, h, w) the maps u_t.
        ``with_ms`` is accepted for two-stream callers and ignored (LSTA has no motion-segmentation head)."""
        if rgb.dim() != 5:
            raise ValueError(f"expected rgb of shape (B, T, 3, H, W), got {tuple(rgb.shape)}")
        x, cam = self.frame_features(rgb)
        state, maps = None, []
        for i in range(x.shape[1]):
            _, u, state = self.cell(x[:, i], cam[:, i], state)
            maps.append(u[:, 0])  # (B, h, w)
        pooled = state[2].mean(dim=(2, 3))  # (B, mem): average pool of c_T (the memory, not h_T)
        out = ModelOutput(**self.classifier.outputs(self.dropout(pooled)), features=pooled)
        out.attn = torch.stack(maps, 1)  # (B, T, h, w)
        return out

    def losses(self, out: ModelOutput, batch: dict) -> dict[str, LossTerm]:
        return self.classifier.losses(out, batch)


# --------------------------------------------------------------------------------------------------------------
# Flow stream


class LSTAFlow(nn.Module):
    """The recurrent flow stream: flow ResNet per step, ConvLSTM over the steps, pooled c_T, dropout, head.

    Input (B, T, 2L, H, W): T stacks of L warp flows (x0, y0, x1, y1, ...), stack t centred on RGB frame t.
    """

    def __init__(
        self,
        *,
        backbone: ResNetTrunk,
        num_classes: int,
        mem_size: int = 512,
        dropout: float = 0.7,
        classifier: Callable[[int], nn.Module] | None = None,
    ):
        super().__init__()
        backbone.fc = nn.Identity()  # the ImageNet fc means nothing on flow
        self.backbone = backbone
        self.stack_channels = backbone.in_chans
        self.lstm = ConvLSTMCell(backbone.num_features, mem_size, 3)
        self.dropout = nn.Dropout(dropout)
        self.classifier = classifier(mem_size) if classifier is not None else ActionHead(mem_size, num_classes)
        self.num_classes = num_classes
        self.mem_size = mem_size
        self.num_features = mem_size

    def step_features(self, flow: Tensor) -> Tensor:
        """(B, T, 2L, H, W) -> (B, T, C, h, w) conv5 features of every stack."""
        if flow.dim() != 5 or flow.shape[2] != self.stack_channels:
            raise ValueError(f"expected flow of shape (B, T, {self.stack_channels}, H, W), got {tuple(flow.shape)}")
        b, t = flow.shape[:2]
        f = self.backbone.forward_features(flow.flatten(0, 1))["conv5"]  # (B*T, C, h, w)
        return f.view(b, t, *f.shape[1:])

    def forward(self, flow: Tensor) -> ModelOutput:
        f = self.step_features(flow)
        _, c = self.lstm(f)  # the whole sequence (B, T, C, h, w) -> c_T
        pooled = c.mean(dim=(2, 3))  # (B, mem): average pool of c_T
        return ModelOutput(**self.classifier.outputs(self.dropout(pooled)), features=pooled)

    def losses(self, out: ModelOutput, batch: dict) -> dict[str, LossTerm]:
        return self.classifier.losses(out, batch)


# --------------------------------------------------------------------------------------------------------------
# Two-stream with cross-modal fusion


class LSTATwoStream(nn.Module):
    """Cross-modal fusion of a trained `LSTA` and a trained `LSTAFlow` (see the module docstring).

    ``flow_to_rgb``: conv3x3(C_flow -> 3·mem_rgb) into the RGB cell's memory gates i, f, c̃;
    ``rgb_to_flow``: conv3x3(C_rgb -> 4·mem_flow) into the flow ConvLSTM's gates i, f, c̃, o.
    """

    def __init__(
        self,
        *,
        rgb: LSTA,
        flow: LSTAFlow,
        num_classes: int,
        dropout: float = 0.5,
        rgb_features: str = "raw",
        zero_init_fusion: bool = True,
        classifier: Callable[[int], nn.Module] | None = None,
    ):
        super().__init__()
        if rgb_features not in ("raw", "attended"):
            raise ValueError(f"expected rgb_features 'raw' or 'attended', got {rgb_features!r}")
        self.rgb, self.flow = rgb, flow
        c_rgb, c_flow = rgb.backbone.num_features, flow.backbone.num_features
        self.flow_to_rgb = nn.Conv2d(c_flow, 3 * rgb.mem_size, 3, padding=1)
        self.rgb_to_flow = nn.Conv2d(c_rgb, 4 * flow.mem_size, 3, padding=1)
        if zero_init_fusion:
            for conv in (self.flow_to_rgb, self.rgb_to_flow):
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)
        self.rgb_features = rgb_features
        self.dropout = nn.Dropout(dropout)
        d = rgb.mem_size + flow.mem_size
        self.classifier = classifier(d) if classifier is not None else ActionHead(d, num_classes)
        self.num_classes = num_classes
        self.cam = True

    def forward(self, rgb: Tensor, flow: Tensor) -> ModelOutput:
        """rgb (B, T, 3, H, W), flow (B, T, 2L, H, W) -> logits, attn (B, T, h, w) of the RGB cell."""
        x, cam = self.rgb.frame_features(rgb)  # (B, T, C, h, w), (B, T, 1, h, w)
        f = self.flow.step_features(flow)  # (B, T, C, h, w)
        if x.shape[1] != f.shape[1] or x.shape[-2:] != f.shape[-2:]:
            raise ValueError(f"RGB steps {tuple(x.shape)} and flow steps {tuple(f.shape)} must match")
        s_rgb = s_flow = None
        maps = []
        for i in range(x.shape[1]):
            x_bar, u, s_rgb = self.rgb.cell(x[:, i], cam[:, i], s_rgb, flow=self.flow_to_rgb(f[:, i]))
            to_flow = x_bar if self.rgb_features == "attended" else x[:, i]
            s_flow = self.flow.lstm(f[:, i], s_flow, extra=self.rgb_to_flow(to_flow))
            maps.append(u[:, 0])
        pooled = torch.cat([s_rgb[2].mean(dim=(2, 3)), s_flow[1].mean(dim=(2, 3))], dim=1)  # (B, mem_r + mem_f)
        out = ModelOutput(**self.classifier.outputs(self.dropout(pooled)), features=pooled)
        out.attn = torch.stack(maps, 1)  # (B, T, h, w)
        return out

    def losses(self, out: ModelOutput, batch: dict) -> dict[str, LossTerm]:
        return self.classifier.losses(out, batch)


# --------------------------------------------------------------------------------------------------------------
# Weights of the original code (github:swathikirans/LSTA, attentionModel(num_classes, mem_size=512, c_cam_classes=100))

_ATT = {g: i for i, g in enumerate(("i", "f", "a", "o"))}  # fused order of conv_s / conv_cam
_MEM = {g: i for i, g in enumerate(("i", "f", "c"))}  # fused order of conv_x / conv_h


def _original_slots(mem: int) -> list[tuple[str, str, slice | None]]:
    """(original name, fpar name, rows of the fused fpar tensor or None) for every LSTA-cell and classifier tensor."""
    out: list[tuple[str, str, slice | None]] = []
    for g, i in _ATT.items():
        out += [
            (f"lsta_cell.conv_{g}_s.weight", "cell.conv_s.weight", slice(i, i + 1)),
            (f"lsta_cell.conv_{g}_s.bias", "cell.conv_s.bias", slice(i, i + 1)),
            (f"lsta_cell.conv_{g}_cam.weight", "cell.conv_cam.weight", slice(i, i + 1)),
        ]
    for g, i in _MEM.items():
        rows = slice(i * mem, (i + 1) * mem)
        out += [
            (f"lsta_cell.conv_{g}_x.weight", "cell.conv_x.weight", rows),
            (f"lsta_cell.conv_{g}_x.bias", "cell.conv_x.bias", rows),
            (f"lsta_cell.conv_{g}_c.weight", "cell.conv_h.weight", rows),
        ]
    out += [
        ("lsta_cell.conv_o_x.weight", "cell.conv_o_h.weight", None),  # the original applies conv_o_x to h
        ("lsta_cell.conv_o_x.bias", "cell.conv_o_h.bias", None),
        ("lsta_cell.conv_o_c.weight", "cell.conv_o_c.weight", None),
        ("lsta_cell.c_classifier.weight", "cell.c_classifier.weight", None),
        ("lsta_cell.coupling_fc.weight", "cell.coupling_fc.weight", None),
        ("classifier.1.weight", "classifier.weight", None),  # nn.Sequential(dropout, fc): fc registered twice
        ("classifier.1.bias", "classifier.bias", None),
    ]
    return out


def from_original(sd: dict[str, Tensor], mem_size: int = 512) -> dict[str, Tensor]:
    """An original ``attentionModel`` state dict -> fpar's `LSTA` state dict (every tensor mapped, none dropped).

    ``resNet.*`` -> ``backbone.*`` (the same torchvision names); the eight attention and six memory gate convs are
    stacked into the fused convs (orders i, f, ã, o and i, f, c̃); ``fc.*`` is the same module as ``classifier.1.*``
    (the original registers its fc twice): both its tensors are checked to be equal.
    """
    out = {"backbone." + k[len("resNet.") :]: v for k, v in sd.items() if k.startswith("resNet.")}
    fused: dict[str, list[tuple[slice, Tensor]]] = {}
    for old, new, rows in _original_slots(mem_size):
        if old not in sd:
            raise FparError(f"the original LSTA state dict has no {old}; is it attentionModel(mem_size={mem_size})?")
        if rows is None:
            out[new] = sd[old]
        else:
            fused.setdefault(new, []).append((rows, sd[old]))
    for new, parts in fused.items():
        out[new] = torch.cat([t for _, t in sorted(parts, key=lambda p: p[0].start)], 0)
    for t in ("weight", "bias"):
        if f"fc.{t}" in sd and not torch.equal(sd[f"fc.{t}"], sd[f"classifier.1.{t}"]):
            raise FparError(f"fc.{t} and classifier.1.{t} differ: not a state dict of the original attentionModel")
    known = {o for o, _, _ in _original_slots(mem_size)} | {"fc.weight", "fc.bias"}
    left = [k for k in sd if not k.startswith("resNet.") and k not in known]
    if left:
        raise FparError(f"unmapped tensors in the original LSTA state dict: {left[:5]}")
    return out


def to_original(sd: dict[str, Tensor], mem_size: int = 512) -> dict[str, Tensor]:
    """fpar's `LSTA` state dict -> the original ``attentionModel`` names (``fc.*`` and ``classifier.1.*`` both)."""
    out = {"resNet." + k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")}
    for old, new, rows in _original_slots(mem_size):
        out[old] = sd[new] if rows is None else sd[new][rows]
    out["fc.weight"], out["fc.bias"] = out["classifier.1.weight"], out["classifier.1.bias"]
    return out


# --------------------------------------------------------------------------------------------------------------
# Config blocks and specs


@dataclass
class LSTAConfig:
    """``model.lsta.*``: the RGB model."""

    mem_size: int = 512
    out_pool_size: int = 100  # classes of the output pooling (the original's --outPoolSize)

    def validate(self, cfg) -> None:
        for key in ("mem_size", "out_pool_size"):
            if getattr(self, key) < 1:
                raise FparError(f"config key 'model.lsta.{key}' must be at least 1, got {getattr(self, key)}")


@dataclass
class LSTAFlowConfig:
    """``model.lsta_flow.*``: the recurrent flow stream (a stack of ``data.flow_stack`` flows per RGB frame)."""

    mem_size: int = 512

    def validate(self, cfg) -> None:
        if self.mem_size < 1:
            raise FparError(f"config key 'model.lsta_flow.mem_size' must be at least 1, got {self.mem_size}")


@dataclass
class LSTATwoStreamConfig:
    """``model.lsta_two_stream.*``: cross-modal fusion of a trained LSTA run and a trained lsta_flow run."""

    rgb_run: str | None = None
    flow_run: str | None = None
    fusion_dropout: float = 0.5
    rgb_features: Literal["raw", "attended"] = "raw"  # what the RGB side feeds the flow gates: x_t or x̄_t
    zero_init_fusion: bool = True  # start as the two pre-trained streams side by side

    def validate(self, cfg) -> None:
        if not 0 <= self.fusion_dropout < 1:
            raise FparError(f"model.lsta_two_stream.fusion_dropout must be in [0, 1), got {self.fusion_dropout}")


def _trunk(cfg, in_chans: int = 3) -> ResNetTrunk:
    m = cfg.model
    if in_chans == 3:
        m.backbone_classes = resolve_backbone_classes(m)  # the CAM prior reads the trunk's fc
        return build_trunk(m.backbone, pretrained=m.pretrained, num_classes=m.backbone_classes)
    return build_trunk(m.backbone, pretrained=m.pretrained, in_chans=in_chans)


def _head(ctx) -> Callable[[int], nn.Module]:
    return lambda d: make_classifier(d, ctx.vocab, ctx.cfg.model.heads)


def _build_rgb(ctx) -> LSTA:
    b = ctx.block
    return LSTA(
        backbone=_trunk(ctx.cfg),
        num_classes=len(ctx.vocab.actions),
        mem_size=b.mem_size,
        out_pool_size=b.out_pool_size,
        dropout=ctx.cfg.model.dropout,
        classifier=_head(ctx),
    )


def _build_flow(ctx) -> LSTAFlow:
    return LSTAFlow(
        backbone=_trunk(ctx.cfg, in_chans=2 * ctx.cfg.data.flow_stack),
        num_classes=len(ctx.vocab.actions),
        mem_size=ctx.block.mem_size,
        dropout=ctx.cfg.model.dropout,
        classifier=_head(ctx),
    )


def _build_two_stream(ctx) -> LSTATwoStream:
    b = ctx.block
    if not isinstance(ctx.streams["rgb"], LSTA) or not isinstance(ctx.streams["flow"], LSTAFlow):
        raise FparError("lsta_two_stream takes an lsta run (model.lsta_two_stream.rgb_run) and an lsta_flow run")
    return LSTATwoStream(
        rgb=ctx.streams["rgb"],
        flow=ctx.streams["flow"],
        num_classes=len(ctx.vocab.actions),
        dropout=b.fusion_dropout,
        rgb_features=b.rgb_features,
        zero_init_fusion=b.zero_init_fusion,
        classifier=_head(ctx),
    )


def _configure_two_stream(cfg, stream_cfgs: dict) -> None:
    """The flow stack length is the flow run's (its first convolution is fixed to it); the clip length is this
    run's ``data.frames`` for both streams (neither stream's weights depend on it)."""
    cfg.data.flow_stack = stream_cfgs["flow"].data.flow_stack


def _export_rgb(model: LSTA, cfg, frames: int | None) -> ExportPlan:
    t = int(frames) if frames is not None else cfg.data.frames
    if t < 1:
        raise FparError(f"frames={t}: LSTA needs at least one frame per clip")
    size = cfg.data.input_size
    return ExportPlan(
        module=LogitsOnly(copy.deepcopy(model).eval()).eval(),
        input_name="clip",
        shape=[1, t, 3, size, size],
        layout="(batch, T, 3, S, S): T RGB frames (R, G, B channels), (x / 255 - rgb_mean) / rgb_std",
        preprocessing={"frames": t, "flow_stack": None, "flow": None},
    )


def _refuse(cfg) -> str:
    return (
        "exporting the recurrent flow stream and the cross-modal two-stream model is not supported (their input is a "
        "stack of warp flows per frame, computed by OpenCV outside the network); export the LSTA RGB run, or run "
        "them in PyTorch with `fpar predict`"
    )


STAGE1 = [r"^cell\.", r"^classifier\."]
STAGE2 = [*STAGE1, r"^backbone\.layer4\.\d+\.conv[12]\.weight$", r"^backbone\.fc\.weight$"]
TWO_STREAM = (
    r"^classifier\.",
    r"^flow_to_rgb\.",
    r"^rgb_to_flow\.",
    r"^rgb\.cell\.",
    r"^flow\.lstm\.",
    r"^rgb\.backbone\.layer4\.\d+\.conv[12]\.weight$",
    r"^rgb\.backbone\.fc\.weight$",
    r"^flow\.backbone\.layer4\.",
)
NO_GRADIENT = re.compile(r"(^|\.)cell\.coupling_fc\.weight$|(^|\.)backbone\.fc\.bias$")  # only inside an argmax


def _no_gradient(cfg) -> tuple[str, ...]:
    return (NO_GRADIENT.pattern,)


register_model_spec(
    ModelSpec(
        name="lsta",
        build=_build_rgb,
        inputs=lambda cfg, train: ("rgb",),
        forward=lambda model, batch, train: model(batch["rgb"]),
        config=LSTAConfig,
        export=_export_rgb,
        attention=lambda model: None,
        stages={"stage1": tuple(STAGE1), "stage2": tuple(STAGE2)},
        compile=("backbone", "cell"),
        no_gradient=_no_gradient,
        description="LSTA: CAM prior + attention recurrence + memory with output pooling (RGB)",
        defaults="configs/lsta_stage1.yaml, configs/lsta_stage2.yaml",
    )
)
register_model_spec(
    ModelSpec(
        name="lsta_flow",
        build=_build_flow,
        inputs=lambda cfg, train: ("flow_seq",),
        forward=lambda model, batch, train: model(batch["flow_seq"]),
        config=LSTAFlowConfig,
        export_refusal=_refuse,
        attention=lambda model: "it is a flow stream: it has no attention map",
        compile=("backbone", "lstm"),
        description="LSTA's flow stream: flow ResNet on a stack per RGB frame + ConvLSTM (recurrent)",
        defaults="configs/lsta_flow.yaml",
    )
)
register_model_spec(
    ModelSpec(
        name="lsta_two_stream",
        build=_build_two_stream,
        inputs=lambda cfg, train: ("rgb", "flow_seq"),
        forward=lambda model, batch, train: model(batch["rgb"], batch["flow_seq"]),
        config=LSTATwoStreamConfig,
        streams={
            "rgb": StreamSlot("rgb_run", ("rgb",), families=("lsta",)),
            "flow": StreamSlot("flow_run", ("flow_seq",), families=("lsta_flow",)),
        },
        configure=_configure_two_stream,
        export_refusal=_refuse,
        attention=lambda model: None,
        stages={"joint": TWO_STREAM},
        compile=("rgb.backbone", "flow.backbone", "rgb.cell", "flow.lstm"),
        no_gradient=_no_gradient,  # its RGB stream's
        description="LSTA two-stream: cross-modal fusion of the RGB cell and the flow ConvLSTM at every step",
        defaults="configs/lsta_two_stream.yaml",
    )
)
