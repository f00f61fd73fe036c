"""Class-activation-map (CAM) spatial attention of Ego-RNN (reference-spec §1.2).

For every frame the backbone's own ImageNet classifier picks a "winning" class c* (argmax of its 1000 logits; not a
GTEA class). The CAM of that class over the final feature map, softmaxed over the h*w positions, is the attention map.

Why the attention multiplies the *no-BN* features: the original code (``objectAttentionModelConvLSTM.py`` with the
``noBN`` ResNet) computes the CAM from ``feature_conv`` (the normal block output, relu(bn2(c) + x)), because that is
what the ImageNet ``fc`` was trained on, so the class weights only make sense on it; but it multiplies the map into
``feature_convNBN`` (c + x, no bn2, no ReLU), and that is what the ConvLSTM sees. We keep this split to be faithful:
swapping in the BN features changes the ConvLSTM input (non-negative, batch-normalised scale instead of the signed raw
residual sum) and so the reported numbers. The reference gives no reason beyond the code itself.

Gradients: the argmax is not differentiable, so the logits are computed without autograd. ``fc_weight`` gets a
gradient through the selected CAM rows (so training ``fc`` in stage 2 changes the attention); ``fc_bias`` only enters
the argmax and gets none. ``features_bn`` gets a gradient through the CAM, ``features_nobn`` through the product.
The class rows are gathered with `select_rows`, so that ``fc_weight``'s gradient is the same bit for bit from run to
run.

`class_activation_map` is the raw CAM (winning class, row gather, dot product at every position) that both Ego-RNN's
`cam_attention` (which softmaxes it) and LSTA's attention prior (which uses it raw, ``lsta.py``) start from.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def select_rows(weight: Tensor, index: Tensor) -> Tensor:
    """``weight[index]`` for a (K, C) weight and (N,) int64 index -> (N, C), with a reproducible gradient.

    Why not ``weight[index]``: the backward of advanced indexing is ``index_put_(accumulate=True)``, which on a
    multi-threaded CPU adds the rows of a class picked by several frames with parallel atomic adds, in a different
    order each run, so the weight's gradient differs by ~1e-6 between two identical runs (seen on stage 2's
    ``backbone.fc.weight``: every other gradient was equal bit for bit). ``index_select``'s backward is
    ``index_add_``, serial over the index, so the sum has one order. The forward is the same copy either way.
    On CUDA ``index_add_`` adds with atomics as well: there, runs repeat bit for bit with ``train.deterministic=true``
    (PyTorch's deterministic algorithms), not by default.
    """
    return weight.index_select(0, index)


def class_activation_map(
    features_bn: Tensor, fc_weight: Tensor, fc_bias: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Raw (un-normalised) CAM of each sample's winning ImageNet class: the part Ego-RNN and LSTA share.

    Args:
        features_bn: (B, C, h, w) BN+ReLU features of the last block (what the fc classifies).
        fc_weight: (K, C) classifier weight (ImageNet fc: K = 1000). Read at call time, so training it matters.
        fc_bias: (K,) or None; used only to pick the winning class.

    Returns:
        cam: (B, 1, h, w) = fc_weight[winning] . features_bn at every position; differentiable w.r.t. both.
        winning_class: (B,) int64, argmax of avgpool(features_bn) @ fc_weight.T + fc_bias (first index on ties).
    """
    if features_bn.dim() != 4:
        raise ValueError(f"features_bn must be (B, C, h, w), got {tuple(features_bn.shape)}")
    b, c, h, w = features_bn.shape
    if fc_weight.dim() != 2 or fc_weight.shape[1] != c:
        raise ValueError(f"fc_weight must be (K, {c}), got {tuple(fc_weight.shape)}")

    with torch.no_grad():  # only the argmax of these logits is used, and it has no gradient
        logits = F.linear(features_bn.mean(dim=(2, 3)), fc_weight, fc_bias)  # (B, K)
        winning = logits.argmax(dim=1)  # (B,)

    class_w = select_rows(fc_weight, winning)  # (B, C): differentiable w.r.t. fc_weight
    cam = torch.bmm(class_w.unsqueeze(1), features_bn.reshape(b, c, h * w))  # (B, 1, h*w)
    return cam.view(b, 1, h, w), winning


def cam_attention(
    features_bn: Tensor, features_nobn: Tensor, fc_weight: Tensor, fc_bias: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """CAM attention for one frame of a batch: `class_activation_map` softmaxed over positions, times the no-BN
    features.

    Args:
        features_bn: (B, C, h, w) BN+ReLU features of the last block (what the fc classifies).
        features_nobn: (B, C, h, w) no-BN features of the same block (what gets attended).
        fc_weight: (K, C) classifier weight (ImageNet fc: K = 1000). Read at call time, so training it matters.
        fc_bias: (K,) or None; used only to pick the winning class.

    Returns:
        attended: (B, C, h, w) = features_nobn * attn (broadcast over channels).
        attn_map: (B, 1, h, w), non-negative, sums to 1 over the h*w positions of each sample.
        winning_class: (B,) int64, argmax of avgpool(features_bn) @ fc_weight.T + fc_bias (first index on ties).
    """
    if features_bn.dim() != 4 or features_bn.shape != features_nobn.shape:
        raise ValueError(
            f"features_bn and features_nobn must both be (B, C, h, w) of the same shape, "
            f"got {tuple(features_bn.shape)} and {tuple(features_nobn.shape)}"
        )
    cam, winning = class_activation_map(features_bn, fc_weight, fc_bias)  # (B, 1, h, w), (B,)
    attn = F.softmax(cam.flatten(1), dim=1).view_as(cam)  # (B, 1, h, w): probability over the h*w positions
    attended = features_nobn * attn  # (B, C, h, w)
    return attended, attn, winning


class CAMAttention(nn.Module):
    """Module wrapper of `cam_attention` that reads the classifier's parameters at call time.

    ``forward(features_bn, features_nobn, fc)`` with ``fc`` the backbone's ``nn.Linear`` classifier; returns
    ``(attended, attn_map, winning_class)``. Holds no parameters of its own (so the fc is not registered twice).
    """

    def forward(self, features_bn: Tensor, features_nobn: Tensor, fc: nn.Linear) -> tuple[Tensor, Tensor, Tensor]:
        return cam_attention(features_bn, features_nobn, fc.weight, fc.bias)
