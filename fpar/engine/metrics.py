"""Clip-level classification metrics, from torchmetrics: top-1/top-5, mean class accuracy, confusion, verb / noun /
action accuracies as EPIC-KITCHENS scores them, and named subsets and groups.

All figures are percentages. Mean class accuracy is the mean recall over the classes **present in the labels**
(torchmetrics' own ``macro`` average also counts absent classes as 0, which would lower GTEA61's figures whenever a
test subject lacks a class).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics.functional.classification import multiclass_confusion_matrix, multiclass_stat_scores

from ..data.manifest import Vocabulary

CONFUSION_MAX_CLASSES = 400  # EPIC's ~4 k (verb, noun) pairs would make a 16 M-cell matrix every epoch: not kept
EPIC_RANK_TOP = 100  # EPIC ranks actions among the products of its top-100 verbs and top-100 nouns


# torchmetrics counts (true positives, support); the ratios are taken here in float64, so that figures equal the
# exact fractions (torchmetrics divides in float32: 16.666667163 instead of 16.666666667 for 1 of 6).


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Percent of rows whose label is among the ``k`` best scores (k is capped at the number of classes)."""
    n, c = scores.shape
    if n == 0:
        return 0.0
    tp, _fp, _tn, _fn, support = multiclass_stat_scores(
        scores, labels, num_classes=c, top_k=min(k, c), average="micro"
    ).tolist()
    return tp / support * 100


def mean_class_accuracy(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Mean recall over the classes present in ``labels`` (percent)."""
    if len(labels) == 0:
        return 0.0
    stats = multiclass_stat_scores(pred, labels, num_classes=num_classes, average="none")  # (C, 5)
    tp, support = stats[:, 0].double(), stats[:, 4].double()
    present = support > 0
    return float(np.mean((tp[present] / support[present]).numpy())) * 100


def epic_action_ranks(verb_scores: torch.Tensor, noun_scores: torch.Tensor, k: int = 5) -> tuple[torch.Tensor, ...]:
    """The ``k`` best (verb, noun) pairs of each row, ranked by ``softmax(verb) * softmax(noun)`` among the top-100
    verbs and top-100 nouns (EPIC-KITCHENS' action scoring). Returns (verbs (N, k), nouns (N, k))."""
    pv, pn = verb_scores.float().softmax(1), noun_scores.float().softmax(1)
    kv, kn = min(EPIC_RANK_TOP, pv.shape[1]), min(EPIC_RANK_TOP, pn.shape[1])
    sv, iv = pv.topk(kv, 1)  # (N, kv)
    sn, in_ = pn.topk(kn, 1)  # (N, kn)
    prod = (sv[:, :, None] * sn[:, None, :]).reshape(len(pv), kv * kn)  # (N, kv*kn): every pair's score
    best = prod.topk(min(k, kv * kn), 1).indices  # (N, k)
    return iv.gather(1, best // kn), in_.gather(1, best % kn)


def classification_metrics(
    logits: torch.Tensor,
    labels: torch.Tensor,
    vocab: Vocabulary | list[str],
    *,
    verb_logits: torch.Tensor | None = None,
    noun_logits: torch.Tensor | None = None,
    verb_labels: torch.Tensor | None = None,
    noun_labels: torch.Tensor | None = None,
    groups: dict[str, Sequence[bool]] | None = None,
) -> dict:
    """Every metric of a format, in percent.

    Args:
        logits: (N, C) action scores; labels: (N,) action ids.
        vocab: the dataset's vocabulary. With verbs and nouns but no verb/noun scores (an action head),
            ``verb_acc`` / ``noun_acc`` say whether the verb / noun of the predicted action is right. Each named subset
            (GTEA61's ``pair``: the motion-only pairs) gets ``<name>_top1`` and ``<name>_videos``.
        verb_logits, noun_logits, verb_labels, noun_labels: verb and noun scores and targets (``model.heads=
            verb_noun``): adds ``verb_top1/5``, ``noun_top1/5`` and ``action_top1/5``, where an action is right only
            when both its verb and its noun are, ranked as EPIC-KITCHENS does (`epic_action_ranks`).
        groups: ``{metric name: (N,) mask}`` of group metrics (EPIC's ``unseen_action_top1``, ``tail_verb_top1``):
            the part before ``_top1`` ends in ``verb``, ``noun`` or ``action``, which says what is scored.
    """
    if isinstance(vocab, list):
        vocab = Vocabulary(list(vocab))
    n, c = logits.shape
    pred = logits.argmax(1)
    out = {
        "top1": topk_accuracy(logits, labels, 1),
        "top5": topk_accuracy(logits, labels, 5),
        "mean_class_acc": mean_class_accuracy(pred, labels, c),
    }
    p, y = pred.numpy(), labels.numpy()
    right: dict[str, np.ndarray] = {"action": p == y}  # per sample: what each kind of group metric counts
    if verb_logits is not None and noun_logits is not None and verb_labels is not None and noun_labels is not None:
        for name, scores, target in (("verb", verb_logits, verb_labels), ("noun", noun_logits, noun_labels)):
            out[f"{name}_top1"] = topk_accuracy(scores.float(), target, 1)
            out[f"{name}_top5"] = topk_accuracy(scores.float(), target, 5)
            right[name] = (scores.argmax(1) == target).numpy()
        if n:
            rv, rn = epic_action_ranks(verb_logits, noun_logits, 5)
            hit = (rv == verb_labels[:, None]) & (rn == noun_labels[:, None])  # (N, 5): both right at that rank
            out["action_top1"] = float(hit[:, 0].double().mean()) * 100  # float64, like the other figures
            out["action_top5"] = float(hit.any(1).double().mean()) * 100
            right["action"] = hit[:, 0].numpy()
        else:
            out["action_top1"] = out["action_top5"] = 0.0
    elif vocab.has_verb_noun:
        verbs, nouns = np.asarray(vocab.action_verb), np.asarray(vocab.action_noun)
        right["verb"], right["noun"] = verbs[p] == verbs[y], nouns[p] == nouns[y]
        out["verb_acc"] = float(right["verb"].mean() * 100) if n else 0.0
        out["noun_acc"] = float(right["noun"].mean() * 100) if n else 0.0
    out["videos"] = int(n)
    out["confusion"] = (
        multiclass_confusion_matrix(pred, labels, num_classes=c).tolist() if c <= CONFUSION_MAX_CLASSES else None
    )  # rows: true, columns: predicted
    for name, subset in vocab.subsets.items():
        ids = [vocab.actions.index(s) for s in subset if s in vocab.actions]
        mask = np.isin(y, ids)
        if mask.any():
            out[f"{name}_top1"] = float((p[mask] == y[mask]).mean() * 100)
            out[f"{name}_videos"] = int(mask.sum())
    for name, mask in (groups or {}).items():
        mask = np.asarray(mask, bool)
        kind = name.removesuffix("_top1").rsplit("_", 1)[-1]
        if mask.any() and kind in right:
            out[name] = float(right[kind][mask].mean() * 100)
            out[name.removesuffix("_top1") + "_videos"] = int(mask.sum())
    return out


def group_masks(manifest, indices: Sequence[int]) -> dict[str, list[bool]]:
    """The group metrics of the segments ``indices`` of a manifest (each record's ``meta["metrics"]``, set by its
    reader) as masks over ``indices``."""
    names: list[str] = []
    for i in indices:
        for g in manifest.videos[i].meta.get("metrics", ()):
            if g not in names:
                names.append(g)
    return {g: [g in manifest.videos[i].meta.get("metrics", ()) for i in indices] for g in names}
