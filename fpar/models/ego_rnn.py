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
* frames go through the trunk as one (B·T)-batch instead of a Python loop over T (same result, faster);
* without CAM the ConvLSTM reads the no-BN features (ga1i13o / rm-wu / Erosinho), not the BN+ReLU ones;
* the pooled feature is the cell state c_T, as in the original code (not h_T);
* the discriminator's static clip is one augmented frame repeated T times; because the trunk works frame by
  frame with frozen (eval-mode) BatchNorm, its features are that frame's features repeated, so they are taken
  from the dynamic pass instead of running the trunk again. When ``disc_train_conv5`` is false its loss reaches
  only the ConvLSTM and the discriminator (the features are detached), as in the report's "N" rows;
* parameters frozen by the stage (``requires_grad=False``) record no graph, so frozen layers keep no activations.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import DiscConfig, MSConfig, RepFlowConfig
from ..errors import FparError
from .backbone import ResNetTrunk
from .heads import MotionSegmentationHead
from .layers.attention import cam_attention
from .layers.conv_lstm import ConvLSTMCell
from .layers.rep_flow import RepresentationFlow
from .outputs import ModelOutput

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
        num_classes: action classes.
        mem_size: ConvLSTM hidden channels (512 in the paper).
        dropout: before the classifier (0.7).
        cam: use CAM spatial attention.
        ms_head: a `MotionSegmentationHead` reading ``ms_layer`` features, or None.
        disc: a Linear(mem_size, 2) static-dynamic head, or None.
        repflow: a `RepresentationFlow` over conv3 features, or None.
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
        disc: nn.Linear | None = None,
        disc_train_conv5: bool = False,
        repflow: RepresentationFlow | None = None,
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
        self.classifier = nn.Linear(mem_size, num_classes)
        self.ms_head = ms_head
        self.ms_layer = ms_layer
        self.disc = disc
        self.disc_train_conv5 = disc_train_conv5
        self.repflow = repflow
        self.num_features = mem_size

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
        state = None
        for i in range(seq.shape[1]):
            state = self.lstm(seq[:, i], state)
        return state[1].mean(dim=(2, 3))  # (N, mem): average pool of c_T

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
        pooled = self.recurrent(seq)  # (B, mem)
        out = ModelOutput(logits=self.classifier(self.dropout(pooled)), features=pooled)
        if attn is not None:
            out.attn = attn.view(b, t, h, w)  # (B, T, h, w)
        if self.ms_head is not None and (self.training if with_ms is None else with_ms):
            m = self.ms_head(feats[self.ms_layer])  # (B*T, K, s, s)
            out.ms = m.view(b, t, *m.shape[1:])  # (B, T, K, s, s)
        if self.disc is not None and static_idx is not None:
            dyn = seq if self.disc_train_conv5 else seq.detach()
            idx = static_idx.clamp(max=t - 1).to(seq.device)
            static = dyn[torch.arange(b, device=seq.device), idx]  # (B, C, h, w): one frame of each clip
            static = static.unsqueeze(1).expand(b, t, c, h, w)  # (B, T, C, h, w): repeated T times
            both = torch.cat([dyn, static])  # (2B, T, C, h, w): dynamic first
            out.disc_logits = self.disc(self.dropout(self.recurrent(both)))  # (2B, 2)
        return out


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
) -> EgoRNN:
    ms_head = None
    ms_layer = "conv5"
    if ms is not None and ms.enabled:
        ms_layer = ms.layer
        size = feature_size(input_size, MS_STRIDE[ms.layer])
        ms_head = MotionSegmentationHead(
            backbone.feature_channels[ms.layer], size, task=ms.task, hidden=ms.hidden, head=ms.head, dropout=ms.dropout
        )
    disc_head = nn.Linear(mem_size, 2) if disc is not None and disc.enabled else None
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
    )
