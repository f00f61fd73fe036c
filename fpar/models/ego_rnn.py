"""Ego-RNN (Sudhakaran & Lanz, BMVC 2018) and the report's variants built on it.

    frames (B, T, 3, H, W) ── ResNet trunk, all B·T frames in one batch ──> conv5 (BN+ReLU), conv5_nobn
        │                                            (optional: representation flow after conv3, T -> T-1 steps)
        ├── CAM: softmax over positions of W_fc[c*]·conv5, c* = argmax of the trunk's own fc ──> attn (B·T, 1, h, w)
        │        attended = conv5_nobn · attn          (model.cam=false: conv5_nobn goes straight on)
        ├── ConvLSTM(512) over the T steps from a zero state ──> cell state c_T ──> avg pool ──> dropout ──> linear
        ├── MS head (training only) on the un-attended conv3 / conv4 / conv5 features of every frame
        └── static-dynamic discriminator (training only): the same ConvLSTM on the clip and on one of its
            frames repeated T times ──> avg pool ──> dropout ──> linear(2)

Deliberate choices (reference-spec §1, §4, §5, §6):
* frames go through the trunk as one (B·T)-batch instead of a Python loop over T (same result, faster; a frozen
  trunk takes them ``train.frozen_chunk`` frames at a time, for the CPU's caches);
* without CAM the ConvLSTM reads the no-BN features (ga1i13o / rm-wu / Erosinho), not the BN+ReLU ones;
* the pooled feature is the cell state c_T, as in the original code (not h_T);
* the discriminator's static clip is one augmented frame repeated T times; because the trunk works frame by
  frame with frozen (eval-mode) BatchNorm, its features are that frame's features repeated, so they are taken
  from the dynamic pass instead of running the trunk again. When ``disc_train_conv5`` is false its loss reaches
  only the ConvLSTM and the discriminator (the features are detached), as in the report's "N" rows;
* parameters frozen by the stage (``requires_grad=False``) record no graph, so frozen layers keep no activations.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from ..data.manifest import Vocabulary
from ..errors import FparError
from ..registry import ExportPlan, FeatureCachePlan, ModelSpec, register_model_spec
from .backbone import ResNetTrunk, build_trunk, resolve_backbone_classes
from .heads import ActionHead, MotionSegmentationHead, StaticDynamicHead, make_classifier
from .layers.attention import cam_attention
from .layers.conv_lstm import ConvLSTMCell
from .layers.rep_flow import RepresentationFlow
from .outputs import LogitsOnly, LossTerm, ModelOutput

# --------------------------------------------------------------------------------------------------------------
# Config block: model.ego_rnn.*


@dataclass
class MSConfig:
    """Self-supervised motion-segmentation branch (SparNet): ``model.ego_rnn.ms.*``."""

    enabled: bool = False
    layer: Literal["conv3", "conv4", "conv5"] = "conv5"  # 28x28 / 14x14 / 7x7 at 224 px
    task: Literal["cls", "reg"] = "cls"  # cls: 2-way per-pixel cross-entropy | reg: per-pixel squared error
    target: Literal["bw", "grid"] = "bw"  # bw: plain (nearest) downsampling | grid: block mean
    head: Literal["fc", "conv"] = "fc"  # fc: flatten + linear as in the report | conv: per-pixel 1x1 conv
    hidden: int = 100
    dropout: float = 0.0
    weight: float = 1.0


@dataclass
class DiscConfig:
    """Static-dynamic discriminator on the pooled ConvLSTM state: ``model.ego_rnn.disc.*``."""

    enabled: bool = False
    alpha: float = 1.0
    train_conv5: bool = False  # True: its loss also updates layer4 convs (report Figure 24 row 1)


@dataclass
class RepFlowConfig:
    """Representation-flow layer after conv3: ``model.ego_rnn.repflow.*``."""

    enabled: bool = False
    bottleneck: int = 32
    n_iter: int = 10
    learn: bool = True
    lr_mult: float = 1.0  # the layer's LR = optim.lr x lr_mult (Piergiovanni & Ryoo: 0.01)


@dataclass
class EgoRNNConfig:
    """``model.ego_rnn.*`` (in fpar 0.1.0 these were ``model.cam``, ``model.mem_size``, ``model.ms`` ...: still read
    as aliases). The shared keys (backbone, pretrained, dropout, heads) stay under ``model.``."""

    cam: bool = True
    mem_size: int = 512
    ms: MSConfig = field(default_factory=MSConfig)
    disc: DiscConfig = field(default_factory=DiscConfig)
    repflow: RepFlowConfig = field(default_factory=RepFlowConfig)

    def validate(self, cfg) -> None:
        for key, value, low in (
            ("mem_size", self.mem_size, 1),
            ("ms.hidden", self.ms.hidden, 1),
            ("repflow.n_iter", self.repflow.n_iter, 1),
        ):
            if value < low:
                raise FparError(f"config key 'model.ego_rnn.{key}' must be at least {low}, got {value}")
        if not 0 <= self.ms.dropout < 1:
            raise FparError(f"config key 'model.ego_rnn.ms.dropout' must be in [0, 1), got {self.ms.dropout}")
        if cfg.model.name == "ego_rnn" and self.repflow.enabled and cfg.data.frames < 2:
            raise FparError("the representation-flow layer needs data.frames >= 2 (it works on consecutive pairs)")


MS_STRIDE = {"conv3": 8, "conv4": 16, "conv5": 32}


def feature_size(input_size: int, stride: int) -> int:
    """Side of a ResNet feature map: every stride-2 stage maps s to ceil(s / 2) (224 -> 28/14/7, 112 -> 14/7/4)."""
    s = input_size
    while stride > 1:
        s, stride = (s + 1) // 2, stride // 2
    return s


class EgoRNN(nn.Module):
    """Ego-RNN with optional MS head, static-dynamic discriminator and representation-flow layer.

    Args:
        backbone: the ResNet trunk (keeps its fc: the CAM reads its weight).
        num_classes: action classes (builds an `ActionHead` when ``classifier`` is None).
        mem_size: ConvLSTM hidden channels (512 in the paper).
        dropout: before the classifier (0.7).
        cam: use CAM spatial attention.
        ms_head: a `MotionSegmentationHead` reading ``ms_layer`` features, or None.
        disc: a `StaticDynamicHead` (Linear(mem_size, 2)), or None.
        repflow: a `RepresentationFlow` over conv3 features, or None.
        classifier: a head factory ``in_features -> head`` (`fpar.models.heads.make_classifier`), called with
            mem_size where the original built its Linear, so that the random init of every layer is unchanged;
            default an `ActionHead` over ``num_classes``.
    """

    def __init__(
        self,
        *,
        backbone: ResNetTrunk,
        num_classes: int,
        mem_size: int = 512,
        dropout: float = 0.7,
        cam: bool = True,
        ms_head: MotionSegmentationHead | None = None,
        ms_layer: str = "conv5",
        disc: StaticDynamicHead | None = None,
        disc_train_conv5: bool = False,
        repflow: RepresentationFlow | None = None,
        classifier: Callable[[int], nn.Module] | None = None,
        repflow_lr_mult: float = 1.0,
    ):
        super().__init__()
        if disc is not None and repflow is not None:
            raise FparError(
                "the static-dynamic discriminator and the representation-flow layer cannot be combined (a repeated "
                "frame has no flow, but the discriminator's static clip reuses the dynamic pass's features)"
            )
        if ms_head is not None and repflow is not None:
            raise FparError(
                "the MS head and the representation-flow layer cannot be combined (T-1 flow steps vs T maps)"
            )
        self.backbone = backbone
        self.cam = cam
        self.num_classes = num_classes
        self.mem_size = mem_size
        self.lstm = ConvLSTMCell(backbone.num_features, mem_size, 3)
        self.dropout = nn.Dropout(dropout)
        self.classifier = classifier(mem_size) if classifier is not None else ActionHead(mem_size, num_classes)
        self.ms_head = ms_head
        self.ms_layer = ms_layer
        self.disc = disc
        self.disc_train_conv5 = disc_train_conv5
        self.repflow = repflow
        self.repflow_lr_mult = repflow_lr_mult
        self.num_features = mem_size

    def param_groups(self, base_lr: float) -> list[dict]:
        """Optimizer groups the model asks for: the representation-flow layer at ``base_lr x lr_mult``
        (Piergiovanni & Ryoo train it at 0.01x)."""
        if self.repflow is None or self.repflow_lr_mult == 1.0:
            return []
        return [{"pattern": r"^repflow\.", "lr": base_lr * self.repflow_lr_mult}]

    # ---------------------------------------------------------------------------------------------- pieces
    def frame_features(self, rgb: Tensor) -> tuple[dict[str, Tensor], int]:
        """Trunk features of every frame: (B, T, 3, H, W) -> dict of (B·T', C, h, w) tensors and T'.

        T' = T, or T - 1 with the representation-flow layer (one flow feature per consecutive pair).
        """
        b, t, c, h, w = rgb.shape
        x = rgb.reshape(b * t, c, h, w)  # (B*T, 3, H, W)
        if self.repflow is None:
            return self.backbone.forward_features(x), t
        f3 = self.backbone.forward_to(x, "conv3")  # (B*T, C3, h3, w3)
        _, c3, h3, w3 = f3.shape
        f3 = f3.view(b, t, c3, h3, w3).permute(0, 2, 1, 3, 4)  # (B, C3, T, h3, w3)
        f3 = self.repflow(f3)  # (B, C3, T-1, h3, w3)
        t = t - 1
        f3 = f3.permute(0, 2, 1, 3, 4).reshape(b * t, c3, h3, w3)  # (B*(T-1), C3, h3, w3)
        return {"conv3": f3, **self.backbone.forward_from(f3, "conv3")}, t

    def attend(self, feats: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        """(B·T, C, h, w) features for the ConvLSTM and the attention map (B·T, 1, h, w) or None."""
        if not self.cam:
            return feats["conv5_nobn"], None
        fc = self.backbone.fc
        attended, attn, _ = cam_attention(feats["conv5"], feats["conv5_nobn"], fc.weight, fc.bias)
        return attended, attn

    def recurrent(self, seq: Tensor) -> Tensor:
        """Run the ConvLSTM over (N, T, C, h, w) from a zero state; returns the pooled cell state (N, mem)."""
        _, c = self.lstm(seq)  # the whole sequence (N, T, C, h, w) -> c_T
        return c.mean(dim=(2, 3))  # (N, mem): average pool of c_T

    # ---------------------------------------------------------------------------------------------- forward
    def forward(self, rgb: Tensor, *, static_idx: Tensor | None = None, with_ms: bool | None = None) -> ModelOutput:
        """rgb (B, T, 3, H, W). ``static_idx`` (B,) int enables the discriminator outputs (training);
        ``with_ms`` forces the MS head on/off (default: on in training mode)."""
        if rgb.dim() != 5:
            raise ValueError(f"expected rgb of shape (B, T, 3, H, W), got {tuple(rgb.shape)}")
        b = rgb.shape[0]
        feats, t = self.frame_features(rgb)
        attended, attn = self.attend(feats)  # (B*T, C, h, w)
        _, c, h, w = attended.shape
        seq = attended.view(b, t, c, h, w)  # (B, T, C, h, w)
        with_ms = self.ms_head is not None and (self.training if with_ms is None else with_ms)
        out = self.from_sequence(seq, static_idx=static_idx, ms_features=feats[self.ms_layer] if with_ms else None)
        if attn is not None:
            out.attn = attn.view(b, t, h, w)  # (B, T, h, w)
        return out

    def from_sequence(
        self, seq: Tensor, *, static_idx: Tensor | None = None, ms_features: Tensor | None = None
    ) -> ModelOutput:
        """Everything after the trunk and the attention: (B, T, C, h, w) attended features -> outputs. The cached
        path (`data.feature_cache`) starts here. ``ms_features`` (B·T, C', s, s) feed the MS head."""
        b, t, c, h, w = seq.shape
        pooled = self.recurrent(seq)  # (B, mem)
        out = ModelOutput(**self.classifier.outputs(self.dropout(pooled)), features=pooled)
        if ms_features is not None:
            m = self.ms_head(ms_features)  # (B*T, K, s, s)
            out.ms = m.view(b, t, *m.shape[1:])  # (B, T, K, s, s)
        if self.disc is not None and static_idx is not None:
            dyn = seq if self.disc_train_conv5 else seq.detach()
            idx = static_idx.clamp(max=t - 1).to(seq.device)
            static = dyn[torch.arange(b, device=seq.device), idx]  # (B, C, h, w): one frame of each clip
            static = static.unsqueeze(1).expand(b, t, c, h, w)  # (B, T, C, h, w): repeated T times
            both = torch.cat([dyn, static])  # (2B, T, C, h, w): dynamic first
            out.disc_logits = self.disc(self.dropout(self.recurrent(both)))  # (2B, 2)
        return out

    def losses(self, out: ModelOutput, batch: dict) -> dict[str, LossTerm]:
        """The classifier's terms, then the MS and discriminator terms when they ran (training)."""
        terms = dict(self.classifier.losses(out, batch))
        if out.ms is not None:
            terms["ms"] = self.ms_head.loss(out.ms, batch["mmaps"])
        if out.disc_logits is not None:
            terms["disc"] = self.disc.loss(out.disc_logits)
        return terms


def make_static_clip(rgb: Tensor, static_idx: Tensor) -> Tensor:
    """The discriminator's static input: frame ``static_idx[b]`` of each clip repeated T times.
    (B, T, 3, H, W) -> (B, T, 3, H, W). `EgoRNN` uses the equivalent feature-level shortcut."""
    b, t = rgb.shape[:2]
    frames = rgb[torch.arange(b), static_idx]  # (B, 3, H, W)
    return frames.unsqueeze(1).expand(-1, t, -1, -1, -1).contiguous()


def build_ego_rnn(
    *,
    backbone: ResNetTrunk,
    num_classes: int,
    input_size: int = 224,
    mem_size: int = 512,
    dropout: float = 0.7,
    cam: bool = True,
    ms: MSConfig | None = None,
    disc: DiscConfig | None = None,
    repflow: RepFlowConfig | None = None,
    classifier: Callable[[int], nn.Module] | None = None,
) -> EgoRNN:
    ms_head = None
    ms_layer = "conv5"
    if ms is not None and ms.enabled:
        ms_layer = ms.layer
        size = feature_size(input_size, MS_STRIDE[ms.layer])
        ms_head = MotionSegmentationHead(
            backbone.feature_channels[ms.layer],
            size,
            task=ms.task,
            hidden=ms.hidden,
            head=ms.head,
            dropout=ms.dropout,
            target=ms.target,
            weight=ms.weight,
        )
    disc_head = StaticDynamicHead(mem_size, disc.alpha) if disc is not None and disc.enabled else None
    rf = None
    if repflow is not None and repflow.enabled:
        rf = RepresentationFlow(
            backbone.feature_channels["conv3"],
            bottleneck=repflow.bottleneck,
            n_iter=repflow.n_iter,
            learn_kernels=repflow.learn,
            learn_params=repflow.learn,
        )
    return EgoRNN(
        backbone=backbone,
        num_classes=num_classes,
        mem_size=mem_size,
        dropout=dropout,
        cam=cam,
        ms_head=ms_head,
        ms_layer=ms_layer,
        disc=disc_head,
        disc_train_conv5=bool(disc is not None and disc.train_conv5),
        repflow=rf,
        classifier=classifier,
        repflow_lr_mult=repflow.lr_mult if repflow is not None else 1.0,
    )


# --------------------------------------------------------------------------------------------------------------
# Spec: how the engine, export, predict and cam use Ego-RNN


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
    classifier: Callable[[int], nn.Module] | None = None,
) -> EgoRNN:
    """Ego-RNN by keyword: ResNet + CAM attention + ConvLSTM (+ optional MS head, discriminator, rep-flow)."""
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
        classifier=classifier,
    )


def _build(ctx) -> EgoRNN:
    cfg, b = ctx.cfg, ctx.block
    m = cfg.model
    m.backbone_classes = resolve_backbone_classes(m)  # resolved value saved with the run
    vocab: Vocabulary = ctx.vocab
    return ego_rnn(
        num_classes=len(vocab.actions),
        backbone=m.backbone,
        pretrained=m.pretrained,
        backbone_classes=m.backbone_classes,
        input_size=cfg.data.input_size,
        cam=b.cam,
        mem_size=b.mem_size,
        dropout=m.dropout,
        ms=b.ms,
        disc=b.disc,
        repflow=b.repflow,
        classifier=lambda d: make_classifier(d, vocab, m.heads),
    )


def _inputs(cfg, train: bool) -> tuple[str, ...]:
    return ("rgb", "mmaps") if train and cfg.model.ego_rnn.ms.enabled else ("rgb",)


def _forward(model: EgoRNN, batch: dict, train: bool) -> ModelOutput:
    static_idx = batch.get("static_idx") if (train and model.disc is not None) else None
    return model(batch["rgb"], static_idx=static_idx, with_ms=train and model.ms_head is not None)


def _cache_prefix(model: EgoRNN, frames: Tensor) -> Tensor:
    """(N, 3, H, W) frames -> (N, C, h, w) attended conv5 features (CAM from the trunk's own frozen fc)."""
    return model.attend(model.backbone.forward_features(frames))[0]


def _cache_forward(model: EgoRNN, feats: Tensor, batch: dict, train: bool) -> ModelOutput:
    static_idx = batch.get("static_idx") if (train and model.disc is not None) else None
    return model.from_sequence(feats, static_idx=static_idx)


def _cache_prefix_conv4(model: EgoRNN, frames: Tensor) -> Tensor:
    """(N, 3, H, W) frames -> (N, C4, h4, w4) layer3 outputs: the prefix stage 2 leaves frozen (stem to layer3)."""
    return model.backbone.forward_to(frames, "conv4")


def _cache_forward_conv4(model: EgoRNN, feats: Tensor, batch: dict, train: bool) -> ModelOutput:
    """(B, T, C4, h4, w4) layer3 maps -> layer4, the CAM with the live fc, then the conv5 cut's forward."""
    b, t = feats.shape[:2]
    rest = model.backbone.forward_from(feats.flatten(0, 1), "conv4")  # layer4 and fc on the (B*T, C4, h4, w4) maps
    attended, _ = model.attend(rest)  # (B*T, C, h, w)
    return _cache_forward(model, attended.view(b, t, *attended.shape[1:]), batch, train)


def _eval_cache_refusal(cfg) -> str | None:
    """Evaluation runs neither the MS head nor the discriminator: only rep-flow stops a per-frame prefix there."""
    if cfg.model.ego_rnn.repflow.enabled:
        return "the representation-flow layer mixes consecutive frames inside the trunk"
    return None


def _cache_refusal(cfg) -> str | None:
    why = _eval_cache_refusal(cfg)
    if why is None and cfg.model.ego_rnn.ms.enabled:
        why = "the MS head reads the trunk's conv features of every training clip, which the cache does not keep"
    return why


def _export(model: EgoRNN, cfg, frames: int | None) -> ExportPlan:
    t = int(frames) if frames is not None else cfg.data.frames
    min_t = 2 if model.repflow is not None else 1
    if t < min_t:
        raise FparError(f"frames={t}: this Ego-RNN needs at least {min_t} frame(s) per clip")
    m = copy.deepcopy(model).eval()
    m.ms_head = None  # training-only heads: dropping them keeps their weights out of the exported file
    m.disc = None
    size = cfg.data.input_size
    return ExportPlan(
        module=LogitsOnly(m).eval(),
        input_name="clip",
        shape=[1, t, 3, size, size],
        layout="(batch, T, 3, S, S): T RGB frames (R, G, B channels), (x / 255 - rgb_mean) / rgb_std",
        preprocessing={"frames": t, "flow_stack": None, "flow": None},
    )


def _attention(model: EgoRNN) -> str | None:
    return None if model.cam else "it was trained with model.ego_rnn.cam=false: it has no attention map to show"


def _no_gradient(cfg) -> tuple[str, ...]:
    """The fc's bias enters only the CAM's argmax; without the CAM the fc's logits feed nothing at all."""
    return (r"^backbone\.fc\.bias$",) + (() if cfg.model.ego_rnn.cam else (r"^backbone\.fc\.weight$",))


def _aux_maps(model: EgoRNN, out: ModelOutput, batch: dict, cfg) -> dict:
    """MS predicted (probability of motion, or the regressed value) and its target, per frame, for `fpar cam`."""
    if model.ms_head is None or out.ms is None or "mmaps" not in batch:
        return {}
    pred = out.ms[0]  # (T, K, s, s)
    pm = pred.softmax(1)[:, 1] if pred.shape[1] == 2 else pred[:, 0]  # (T, s, s)
    gt = model.ms_head.targets(batch["mmaps"])[0].float()  # (T, s, s)
    return {"MS predicted": pm.numpy(), "MS ground truth": gt.numpy()}


SPEC = register_model_spec(
    ModelSpec(
        name="ego_rnn",
        build=_build,
        inputs=_inputs,
        forward=_forward,
        config=EgoRNNConfig,
        aliases={k: k for k in ("cam", "mem_size", "ms", "disc", "repflow")},
        export=_export,
        attention=_attention,
        aux_maps=_aux_maps,
        factory=ego_rnn,
        optional_weights=("ms_head.", "disc."),  # a checkpoint may predate its MS / discriminator heads
        feature_cache=(  # stage 1: the whole frozen trunk; stage 2 (layer4 trained): the trunk up to layer3
            FeatureCachePlan(
                prefix=_cache_prefix,
                params=(r"^backbone\.",),
                forward=_cache_forward,
                refusal=_cache_refusal,
                eval_refusal=_eval_cache_refusal,
                name="conv5",
            ),
            FeatureCachePlan(
                prefix=_cache_prefix_conv4,
                params=(r"^backbone\.(conv1|bn1|layer1|layer2|layer3)\.",),
                forward=_cache_forward_conv4,
                refusal=_cache_refusal,
                eval_refusal=_eval_cache_refusal,
                name="conv4",
            ),
        ),
        stages={
            "stage1": (r"^lstm\.", r"^classifier\."),
            "stage2": (
                r"^lstm\.",
                r"^classifier\.",
                r"^backbone\.layer4\.\d+\.conv[12]\.weight$",
                r"^backbone\.fc\.weight$",
            ),
        },
        compile=("backbone", "lstm"),  # the per-frame trunk and the ConvLSTM cell (used by the cached path too)
        no_gradient=_no_gradient,
        description="Ego-RNN: ResNet + CAM attention + ConvLSTM; MS branch, static-dynamic discriminator, rep-flow",
        defaults="configs/ego_rnn_stage1.yaml, configs/ego_rnn_stage2.yaml",
    )
)
