"""Clip-level classification metrics (top-1/top-5, mean class accuracy, verb/noun accuracy, confusion)."""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.classification import multiclass_confusion_matrix


def classification_metrics(
    logits: torch.Tensor, labels: torch.Tensor, classes: list[str], subset: list[str] | None = None
) -> dict:
    """All metrics in percent, as the report prints them.

    Args:
        logits: (N, C) scores; labels: (N,) class ids; classes: names (``verb_noun``).
        subset: class names whose videos also get a separate top-1 (``pair_top1``: the motion-only pairs).
    Mean class accuracy averages the recall of the classes present in ``labels``.
    """
    n, c = logits.shape
    pred = logits.argmax(1)
    conf = multiclass_confusion_matrix(pred, labels, num_classes=c).numpy()  # rows: true, cols: predicted
    k = min(5, c)
    topk = logits.topk(k, dim=1).indices
    top5 = (topk == labels[:, None]).any(1).float().mean().item() * 100
    support = conf.sum(1)
    present = support > 0
    per_class = np.where(present, np.diag(conf) / np.maximum(support, 1), np.nan)
    verbs = np.array([x.split("_", 1)[0] for x in classes])
    nouns = np.array([x.split("_", 1)[1] if "_" in x else x for x in classes])
    p, y = pred.numpy(), labels.numpy()
    out = {
        "top1": float((p == y).mean() * 100) if n else 0.0,
        "top5": float(top5) if n else 0.0,
        "mean_class_acc": float(np.nanmean(per_class) * 100) if present.any() else 0.0,
        "verb_acc": float((verbs[p] == verbs[y]).mean() * 100) if n else 0.0,
        "noun_acc": float((nouns[p] == nouns[y]).mean() * 100) if n else 0.0,
        "videos": int(n),
        "confusion": conf.tolist(),
    }
    if subset:
        ids = [classes.index(s) for s in subset if s in classes]
        mask = np.isin(y, ids)
        if mask.any():
            out["pair_top1"] = float((p[mask] == y[mask]).mean() * 100)
            out["pair_videos"] = int(mask.sum())
    return out
