"""Auxiliary heads: motion segmentation (SparNet) and the static-dynamic discriminator."""

from __future__ import annotations

from torch import Tensor, nn


class MotionSegmentationHead(nn.Module):
    """Per-frame motion-segmentation head (reference-spec §4).

    ``fc`` head (the report's): ReLU -> Conv1x1(C -> hidden) -> ReLU -> Dropout -> flatten -> Linear(hidden s² -> K s²)
    ``conv`` head (per pixel):  ReLU -> Conv1x1(C -> hidden) -> ReLU -> Dropout -> Conv1x1(hidden -> K)

    K = 2 (moving / static logits, classification) or 1 (regression). The first ReLU is a no-op on conv5 (post-ReLU)
    features and matters on the no-BN ones; the ReLU after the 1x1 conv keeps the head from being a purely linear
    map (Erosinho's placement). At 28x28 the ``fc`` head's Linear has 100·784 x 2·784 = 123 M weights, which is why the
    ``conv`` head (about 13 k weights, one shared classifier per pixel, no spatial mixing) is offered.

    Input (N, C, s, s) -> output (N, K, s, s).
    """

    def __init__(
        self,
        in_channels: int,
        size: int,
        *,
        task: str = "cls",
        hidden: int = 100,
        head: str = "fc",
        dropout: float = 0.0,
    ):
        super().__init__()
        if task not in ("cls", "reg"):
            raise ValueError(f"expected task 'cls' or 'reg', got {task!r}")
        if head not in ("fc", "conv"):
            raise ValueError(f"expected head 'fc' or 'conv', got {head!r}")
        self.size, self.task, self.head_type = size, task, head
        self.out_channels = 2 if task == "cls" else 1
        self.reduce = nn.Conv2d(in_channels, hidden, kernel_size=1)
        self.dropout = nn.Dropout(dropout)
        if head == "fc":
            self.classifier = nn.Linear(hidden * size * size, self.out_channels * size * size)
        else:
            self.classifier = nn.Conv2d(hidden, self.out_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        if h != self.size or w != self.size:
            raise ValueError(f"expected ({self.size}x{self.size}) features, got {h}x{w}")
        y = self.dropout(self.reduce(x.relu()).relu())  # (N, hidden, s, s)
        if self.head_type == "conv":
            return self.classifier(y)  # (N, K, s, s)
        y = self.classifier(y.flatten(1))  # (N, K*s*s)
        return y.view(n, self.out_channels, self.size, self.size)  # (N, K, s, s)
