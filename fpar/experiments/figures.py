"""Figures of the report as PNG files (matplotlib, Agg canvas; no pyplot state, no display needed).

With ``fpar.video.timeline`` (the long-video timeline), the only module of fpar that imports matplotlib;
``fpar.experiments.report`` calls it.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..errors import FparError

PHASE_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
MAX_PHASES = 10  # more LR phases than this (StepLR every epoch): no phase colours


def _new(w: float, h: float, ncols: int = 1) -> tuple[Figure, Any]:
    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols)
    return fig, axes


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, format="png")
    os.replace(tmp, p)
    return p


def _series(history: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in history:
        v = r.get(key)
        if v is not None and isinstance(v, (int, float)) and math.isfinite(v):
            xs.append(int(r["epoch"]))
            ys.append(float(v))
    return xs, ys


def epoch_curves(
    series: dict[str, list[list[dict[str, Any]]]],
    key: str,
    out: str | os.PathLike,
    *,
    ylabel: str,
    title: str = "",
) -> Path | None:
    """One line per point: ``key`` per epoch, the mean over the point's runs at each epoch (Figures 8 and 9).

    Args:
        series: point label -> the metrics.jsonl rows of each of its runs.
        key: a metrics.jsonl column, e.g. ``val_top1`` or ``val_loss``.
    Returns:
        The PNG path, or None when no run has the column.
    """
    lines = []
    for label, histories in series.items():
        per_epoch: dict[int, list[float]] = {}
        for h in histories:
            for x, y in zip(*_series(h, key)):
                per_epoch.setdefault(x, []).append(y)
        if per_epoch:
            xs = sorted(per_epoch)
            lines.append((label, xs, [float(np.mean(per_epoch[x])) for x in xs], len(histories)))
    if not lines:
        return None
    fig, ax = _new(8, 4.5)
    for label, xs, ys, n in lines:
        ax.plot(xs, ys, marker="o" if len(xs) < 4 else None, lw=1.4, label=label + (f" (mean of {n})" if n > 1 else ""))
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(f"{title}: {ylabel} per epoch", fontsize=10)
    ax.grid(alpha=0.3)
    if len(lines) <= 16:
        ax.legend(fontsize=7, loc="best")
    return _save(fig, out)


def lr_phases(history: list[dict[str, Any]]) -> list[tuple[int, int, float]]:
    """(first epoch, last epoch, lr) of each run of equal learning rates."""
    phases: list[tuple[int, int, float]] = []
    for r in history:
        e, lr = int(r["epoch"]), r.get("lr")
        if lr is None:
            continue
        if phases and math.isclose(phases[-1][2], lr, rel_tol=1e-9):
            phases[-1] = (phases[-1][0], e, lr)
        else:
            phases.append((e, e, float(lr)))
    return phases


def run_curves(history: list[dict[str, Any]], out: str | os.PathLike, *, title: str = "") -> Path | None:
    """Figure 16: train and validation accuracy (left) and loss (right) of one run, each LR phase in its own
    colour, the LR steps marked by vertical grey lines."""
    if not history:
        return None
    phases = lr_phases(history)
    coloured = 1 < len(phases) <= MAX_PHASES
    fig, (ax_acc, ax_loss) = _new(12, 4.2, ncols=2)
    for ax, keys, name in (
        (ax_acc, ("train_top1", "val_top1"), "accuracy (%)"),
        (ax_loss, ("train_loss", "val_loss"), "loss"),
    ):
        for key, style in zip(keys, ("-", "--")):
            xs, ys = _series(history, key)
            if not xs:
                continue
            kind = "train" if key.startswith("train") else "val"
            if not coloured:
                ax.plot(xs, ys, style, color=PHASE_COLOURS[0], lw=1.3, label=kind)
                continue
            for i, (a, b, _lr) in enumerate(phases):
                # each phase's segment starts at the previous phase's last point, so the line stays continuous
                seg = [(x, y) for x, y in zip(xs, ys) if (a - 1 if i else a) <= x <= b]
                if seg:
                    sx, sy = zip(*seg)
                    ax.plot(sx, sy, style, color=PHASE_COLOURS[i % len(PHASE_COLOURS)], lw=1.3)
        if coloured:
            for a, _b, _lr in phases[1:]:
                ax.axvline(a - 0.5, color="grey", lw=0.8, alpha=0.8)
            ax.set_xticks(sorted({1, *(a - 1 for a, _, _ in phases[1:]), int(history[-1]["epoch"])}))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    handles = [
        ax_acc.plot([], [], "-", color="k", label="train")[0],
        ax_acc.plot([], [], "--", color="k", label="validation")[0],
    ]
    if coloured:
        handles += [
            ax_acc.plot([], [], "-", lw=4, color=PHASE_COLOURS[i % len(PHASE_COLOURS)], label=f"lr {lr:.0e}")[0]
            for i, (_, _, lr) in enumerate(phases)
        ]
    ax_acc.legend(handles=handles, fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, out)


def aux_loss_curves(history: list[dict[str, Any]], out: str | os.PathLike, *, title: str = "") -> Path | None:
    """Figure 19: the motion-segmentation loss per epoch (with its pixel accuracy or error, and the
    static-dynamic discriminator's loss when the run has them). None when the run has no MS loss."""
    xs, ys = _series(history, "train_ms_loss")
    if not xs:
        return None
    fig, ax = _new(7, 4)
    ax.plot(xs, ys, "-", color=PHASE_COLOURS[1], marker="o" if len(xs) < 4 else None, label="MS loss (train)")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("MS loss")
    ax.grid(alpha=0.3)
    handles = ax.get_lines()[:]
    for key, label in (("train_ms_acc", "MS pixel accuracy (%)"), ("train_ms_mae", "MS mean abs. error")):
        mx, my = _series(history, key)
        if mx:
            ax2 = ax.twinx()
            handles += ax2.plot(mx, my, ":", color=PHASE_COLOURS[0], marker="s" if len(mx) < 4 else None, label=label)
            ax2.set_ylabel(label)
            break
    dx, dy = _series(history, "train_disc_loss")
    if dx:
        handles += ax.plot(dx, dy, "--", color=PHASE_COLOURS[2], label="discriminator loss (train)")
    ax.legend(handles=handles, fontsize=7, loc="best")
    ax.set_title((title + ": " if title else "") + "motion-segmentation loss per epoch", fontsize=10)
    return _save(fig, out)


def read_confusion(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """``confusion.csv`` as written by the trainer: (class names, (C, C) counts, rows = true class)."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if len(rows) < 2:
        raise FparError(f"{path} holds no confusion matrix")
    classes = rows[0][1:]
    m = np.array([[int(x) for x in r[1:]] for r in rows[1:]], dtype=np.int64)
    if m.shape != (len(classes), len(classes)):
        raise FparError(f"{path} is not a square confusion matrix")
    return classes, m


def confusion_figure(path: str | os.PathLike, out: str | os.PathLike, title: str = "") -> Path | None:
    """The best epoch's confusion matrix, rows normalised to the fraction of each true class."""
    classes, m = read_confusion(path)
    n = len(classes)
    frac = m / np.maximum(m.sum(1, keepdims=True), 1)
    side = min(max(5.0, 0.16 * n + 3), 16)
    fig, ax = _new(side, side * 0.9)
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    fs = 7 if n <= 20 else 5 if n <= 64 else 3
    ax.set_xticks(range(n), classes, rotation=90, fontsize=fs)
    ax.set_yticks(range(n), classes, fontsize=fs)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if m[i, j]:
                    ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=6,
                            color="white" if frac[i, j] > 0.5 else "black")  # fmt: skip
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    acc = 100 * np.trace(m) / max(m.sum(), 1)
    ax.set_title((title + ": " if title else "") + f"confusion matrix ({acc:.1f}% of {m.sum()} videos)", fontsize=9)
    return _save(fig, out)


def mmap_downsampling_figure(
    mmap: str | os.PathLike | np.ndarray,
    out: str | os.PathLike,
    *,
    input_size: int = 224,
    scale_size: int = 256,
    sizes: tuple[int, ...] = (7, 14, 28),
) -> Path:
    """Figure 20: a motion map cropped to ``input_size`` (test transform: scale the shorter side to
    ``scale_size``, centre crop), beside its plain (``bw``: the pixel at each block's centre) and grid (block
    mean, grey) downsamplings to each size in ``sizes``.

    Args:
        mmap: a motion-map PNG (thresholded at 127 as the data pipeline does) or an (H, W) array (non-zero = moving).
    """
    from ..data.imageio import read_mmap
    from ..data.transforms import CropParams, downsample_mmaps, transform_mmaps

    if isinstance(mmap, np.ndarray):
        if mmap.ndim != 2:
            raise FparError(f"a motion map must be a 2-D array, got shape {mmap.shape}")
        binary = (mmap > (127 if mmap.dtype == np.uint8 and mmap.max() > 1 else 0)).astype(np.uint8)
        name = "array"
    else:
        binary = read_mmap(str(mmap))
        name = Path(mmap).name
    crop = transform_mmaps([binary], CropParams(), scale_size=scale_size, input_size=input_size)[0]  # (S, S)
    full = crop.float()
    fig = Figure(figsize=(3 + 2.2 * len(sizes), 5), dpi=110)
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(2, len(sizes) + 2)
    ax = fig.add_subplot(gs[:, :2])
    ax.imshow(full.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(f"{name}: {input_size}x{input_size} crop", fontsize=9)
    ax.axis("off")
    for row, method in enumerate(("bw", "grid")):
        for col, s in enumerate(sizes):
            small = downsample_mmaps(full[None], s, method)[0]  # (s, s)
            a = fig.add_subplot(gs[row, col + 2])
            a.imshow(small.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            a.set_title(f"{s}x{s} {'plain' if method == 'bw' else 'grid'}", fontsize=8)
            a.axis("off")
    fig.suptitle("Motion map downsampling: plain (top), grid technique (bottom)", fontsize=10)
    return _save(fig, out)
