"""Losses: action cross-entropy, motion segmentation (SparNet), static-dynamic discriminator."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import ModelConfig
from ..data.transforms import downsample_mmaps
from ..models.outputs import ModelOutput


def ms_targets(mmaps: torch.Tensor, size: int, target: str, task: str) -> torch.Tensor:
    """(B, T, S, S) binary maps -> (B, T, s, s) targets: ids {0, 1} (long) for ``cls``, grey in [0, 1] for ``reg``.

    ``bw`` keeps each block's centre pixel; ``grid`` takes the block mean, rounded for classification.
    """
    t = downsample_mmaps(mmaps, size, target)
    return t.round().long() if task == "cls" else t


def ms_loss(pred: torch.Tensor, target: torch.Tensor, task: str) -> tuple[torch.Tensor, float]:
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


def disc_loss(disc_logits: torch.Tensor) -> torch.Tensor:
    """(2B, 2) scores, dynamic clips first (label 0), static clips second (label 1): CE(dyn) + CE(static)."""
    b = disc_logits.shape[0] // 2
    dyn = F.cross_entropy(disc_logits[:b], torch.zeros(b, dtype=torch.long, device=disc_logits.device))
    stat = F.cross_entropy(disc_logits[b:], torch.ones(b, dtype=torch.long, device=disc_logits.device))
    return dyn + stat


def total_loss(out: ModelOutput, batch: dict, model_cfg: ModelConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """L = L_action + w_ms * L_ms + alpha * L_disc, with the parts for logging."""
    labels = batch["label"]
    loss = F.cross_entropy(out.logits, labels)
    parts = {"action_loss": loss.item()}
    if out.ms is not None:
        s = out.ms.shape[-1]
        tgt = ms_targets(batch["mmaps"], s, model_cfg.ms.target, model_cfg.ms.task).to(out.ms.device)
        lm, metric = ms_loss(out.ms, tgt, model_cfg.ms.task)
        loss = loss + model_cfg.ms.weight * lm
        parts["ms_loss"] = lm.item()
        parts["ms_acc" if model_cfg.ms.task == "cls" else "ms_mae"] = metric
    if out.disc_logits is not None:
        ld = disc_loss(out.disc_logits)
        loss = loss + model_cfg.disc.alpha * ld
        parts["disc_loss"] = ld.item()
        b = out.disc_logits.shape[0] // 2
        truth = torch.cat([torch.zeros(b), torch.ones(b)]).to(out.disc_logits.device)
        parts["disc_acc"] = (out.disc_logits.argmax(1) == truth).float().mean().item() * 100
    return loss, parts
