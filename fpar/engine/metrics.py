"""Clip-level classification metrics (top-1/top-5, mean class accuracy, verb/noun accuracy, subsets, confusion)."""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.classification import multiclass_confusion_matrix

from ..data.manifest import Vocabulary


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, vocab: Vocabulary | list[str]) -> dict:
    """All metrics in percent, as the report prints them.

    Args:
        logits: (N, C) action scores; labels: (N,) action ids.
        vocab: the dataset's vocabulary. ``verb_acc`` / ``noun_acc`` (the verb / noun of the predicted action is
            right) are computed when it has verbs and nouns; each named subset (GTEA61's ``pair``: the motion-only
            pairs) gets ``<name>_top1`` and ``<name>_videos`` over the videos of its classes.
    Mean class accuracy averages the recall of the classes present in ``labels``.
    """
    if isinstance(vocab, list):
        vocab = Vocabulary(list(vocab))
    n, c = logits.shape
    pred = logits.argmax(1)
    conf = multiclass_confusion_matrix(pred, labels, num_classes=c).numpy()  # rows: true, cols: predicted
    k = min(5, c)
    topk = logits.topk(k, dim=1).indices
    top5 = (topk == labels[:, None]).any(1).float().mean().item() * 100
    support = conf.sum(1)
    present = support > 0
    per_class = np.where(present, np.diag(conf) / np.maximum(support, 1), np.nan)
    p, y = pred.numpy(), labels.numpy()
    out = {
        "top1": float((p == y).mean() * 100) if n else 0.0,
        "top5": float(top5) if n else 0.0,
        "mean_class_acc": float(np.nanmean(per_class) * 100) if present.any() else 0.0,
    }
    if vocab.has_verb_noun:
        verbs, nouns = np.asarray(vocab.action_verb), np.asarray(vocab.action_noun)
        out["verb_acc"] = float((verbs[p] == verbs[y]).mean() * 100) if n else 0.0
        out["noun_acc"] = float((nouns[p] == nouns[y]).mean() * 100) if n else 0.0
    out["videos"] = int(n)
    out["confusion"] = conf.tolist()
    for name, subset in vocab.subsets.items():
        ids = [vocab.actions.index(s) for s in subset if s in vocab.actions]
        mask = np.isin(y, ids)
        if mask.any():
            out[f"{name}_top1"] = float((p[mask] == y[mask]).mean() * 100)
            out[f"{name}_videos"] = int(mask.sum())
    return out
