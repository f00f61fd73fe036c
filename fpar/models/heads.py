"""Heads, each owning its task: the action classifier (or verb + noun classifiers), the motion-segmentation head
(SparNet) with its target maps, and the static-dynamic discriminator. Every head computes its own loss as a
:class:`~fpar.models.outputs.LossTerm`; a model's ``losses(out, batch)`` collects them and the trainer sums them
with their weights.

The classifier heads subclass ``nn.Linear`` (or hold two), so their weights keep the names the original code used
(``classifier.weight``), and trainable-parameter patterns, weight transfer and old checkpoints are unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.manifest import Vocabulary
from ..data.transforms import downsample_mmaps
from ..errors import FparError
from .outputs import LossTerm, ModelOutput

# --------------------------------------------------------------------------------------------------------------
# Classifier heads: features (B, D) -> {"logits": (B, actions), ...}


class ActionHead(nn.Linear):
    """One linear classifier over the actions; cross-entropy on ``batch["label"]``."""

    def outputs(self, x: Tensor) -> dict[str, Tensor]:
        return {"logits": self(x)}  # (B, actions)

    def losses(self, out: ModelOutput, batch: dict) -> dict[str, LossTerm]:
        return {"action": LossTerm(F.cross_entropy(out.logits, batch["label"]))}


class VerbNounHead(nn.Module):
    """A verb and a noun classifier (EPIC-KITCHENS-style heads), for any dataset whose vocabulary has verbs and nouns.

    The action scores are ``log p(verb) + log p(noun)`` of each action's (verb, noun) pair, so every action metric
    (top-1, mean class accuracy, confusion) works unchanged; the loss is CE(verb) + CE(noun).
    """

    def __init__(self, in_features: int, vocab: Vocabulary):
        super().__init__()
        if not vocab.has_verb_noun:
            raise FparError(
                "model.heads=verb_noun needs a dataset whose vocabulary has verbs and nouns; this one has actions "
                "only: use model.heads=action"
            )
        self.verb = nn.Linear(in_features, len(vocab.verbs))
        self.noun = nn.Linear(in_features, len(vocab.nouns))
        self.register_buffer("action_verb", torch.tensor(vocab.action_verb, dtype=torch.long), persistent=False)
        self.register_buffer("action_noun", torch.tensor(vocab.action_noun, dtype=torch.long), persistent=False)

    def outputs(self, x: Tensor) -> dict[str, Tensor]:
        v, n = self.verb(x), self.noun(x)  # (B, verbs), (B, nouns)
        logits = v.log_softmax(1)[:, self.action_verb] + n.log_softmax(1)[:, self.action_noun]  # (B, actions)
        return {"logits": logits, "verb_logits": v, "noun_logits": n}

    def forward(self, x: Tensor) -> Tensor:
        return self.outputs(x)["logits"]

    def losses(self, out: ModelOutput, batch: dict) -> dict[str, LossTerm]:
        return {
            "verb": LossTerm(F.cross_entropy(out.verb_logits, batch["verb"])),
            "noun": LossTerm(F.cross_entropy(out.noun_logits, batch["noun"])),
        }


HEADS = ("action", "verb_noun")


def make_classifier(in_features: int, vocab: Vocabulary, kind: str = "action") -> nn.Module:
    """The classifier head of ``model.heads``: ``action`` or ``verb_noun``."""
    if kind == "action":
        return ActionHead(in_features, len(vocab.actions))
    if kind == "verb_noun":
        return VerbNounHead(in_features, vocab)
    raise FparError(f"model.heads is {kind!r}; choose one of {', '.join(HEADS)}")


# --------------------------------------------------------------------------------------------------------------
# Motion segmentation


class MotionSegmentationHead(nn.Module):
    """Per-frame motion-segmentation head (reference-spec §4).

    ``fc`` head (the report's): ReLU -> Conv1x1(C -> hidden) -> ReLU -> Dropout -> flatten -> Linear(hidden s² -> K s²)
    ``conv`` head (per pixel):  ReLU -> Conv1x1(C -> hidden) -> ReLU -> Dropout -> Conv1x1(hidden -> K)

    K = 2 (moving / static logits, classification) or 1 (regression). The first ReLU is a no-op on conv5 (post-ReLU)
    features and matters on the no-BN ones; the ReLU after the 1x1 conv keeps the head from being a purely linear
    map (Erosinho's placement). At 28x28 the ``fc`` head's Linear has 100·784 x 2·784 = 123 M weights, which is why the
    ``conv`` head (about 13 k weights, one shared classifier per pixel, no spatial mixing) is offered.

    The head owns its targets (``target``: ``bw`` plain downsampling or ``grid`` block mean of the binary maps) and
    its loss, entered into the total with ``weight``.

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
        target: str = "bw",
        weight: float = 1.0,
    ):
        super().__init__()
        if task not in ("cls", "reg"):
            raise ValueError(f"expected task 'cls' or 'reg', got {task!r}")
        if head not in ("fc", "conv"):
            raise ValueError(f"expected head 'fc' or 'conv', got {head!r}")
        if target not in ("bw", "grid"):
            raise ValueError(f"expected target 'bw' or 'grid', got {target!r}")
        self.size, self.task, self.head_type, self.target, self.weight = size, task, head, target, weight
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

    def targets(self, mmaps: Tensor) -> Tensor:
        """(B, T, S, S) binary maps -> (B, T, s, s) targets of this head (see `ms_targets`)."""
        return ms_targets(mmaps, self.size, self.target, self.task)

    def loss(self, pred: Tensor, mmaps: Tensor) -> LossTerm:
        """pred (B, T, K, s, s) against the maps (B, T, S, S); metric ``ms_acc`` (%) or ``ms_mae``."""
        value, metric = ms_loss(pred, self.targets(mmaps).to(pred.device), self.task)
        return LossTerm(value, self.weight, {"ms_acc" if self.task == "cls" else "ms_mae": metric})


def ms_targets(mmaps: Tensor, size: int, target: str, task: str) -> Tensor:
    """(B, T, S, S) binary maps -> (B, T, s, s) targets: ids {0, 1} (long) for ``cls``, grey in [0, 1] for ``reg``.

    ``bw`` keeps each block's centre pixel; ``grid`` takes the block mean, rounded for classification.
    """
    t = downsample_mmaps(mmaps, size, target)
    return t.round().long() if task == "cls" else t


def ms_loss(pred: Tensor, target: Tensor, task: str) -> tuple[Tensor, float]:
    """The report's normalisation: summed over the s*s pixels of a map, averaged over frames and batch.

    Args:
        pred: (B, T, K, s, s) head output (K=2 logits, or K=1 regression values).
        target: (B, T, s, s) from `ms_targets`.
    Returns:
        (loss, metric): metric is the per-pixel accuracy in % (cls) or mean absolute error (reg).
    """
    b, t, k, s, _ = pred.shape
    n_maps = b * t
    if task == "cls":
        logits = pred.reshape(n_maps, k, s, s)  # (B*T, 2, s, s)
        tgt = target.reshape(n_maps, s, s)
        loss = F.cross_entropy(logits, tgt, reduction="sum") / n_maps
        metric = (logits.argmax(1) == tgt).float().mean().item() * 100
    else:
        p = pred.reshape(n_maps, s, s)  # (B*T, s, s)
        tgt = target.reshape(n_maps, s, s).to(p.dtype)
        loss = ((p - tgt) ** 2).sum() / n_maps
        metric = (p - tgt).abs().mean().item()
    return loss, metric


# --------------------------------------------------------------------------------------------------------------
# Static-dynamic discriminator


class StaticDynamicHead(nn.Linear):
    """Linear(D, 2) telling a clip (label 0) from one of its frames repeated (label 1); its loss enters with
    weight ``alpha``."""

    def __init__(self, in_features: int, alpha: float = 1.0):
        super().__init__(in_features, 2)
        self.alpha = alpha

    def loss(self, disc_logits: Tensor) -> LossTerm:
        b = disc_logits.shape[0] // 2
        truth = torch.cat([torch.zeros(b), torch.ones(b)]).to(disc_logits.device)
        acc = (disc_logits.argmax(1) == truth).float().mean().item() * 100
        return LossTerm(disc_loss(disc_logits), self.alpha, {"disc_acc": acc})


def disc_loss(disc_logits: Tensor) -> Tensor:
    """(2B, 2) scores, dynamic clips first (label 0), static clips second (label 1): CE(dyn) + CE(static)."""
    b = disc_logits.shape[0] // 2
    dyn = F.cross_entropy(disc_logits[:b], torch.zeros(b, dtype=torch.long, device=disc_logits.device))
    stat = F.cross_entropy(disc_logits[b:], torch.ones(b, dtype=torch.long, device=disc_logits.device))
    return dyn + stat


def total_loss(terms: dict[str, LossTerm]) -> tuple[Tensor, dict[str, float]]:
    """Σ weight · value over a model's loss terms, in their order, with ``<name>_loss`` and each metric for logging."""
    loss = None
    parts: dict[str, float] = {}
    for name, t in terms.items():
        loss = t.weight * t.value if loss is None else loss + t.weight * t.value
        parts[f"{name}_loss"] = t.value.item()
        parts.update(t.metrics)
    if loss is None:
        raise ValueError("the model returned no loss term")
    return loss, parts
