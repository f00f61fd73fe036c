"""Figures of the report as PNG files (matplotlib, Agg canvas; no pyplot state, no display needed).

With ``fpar.video.timeline`` (the long-video timeline), the only module of fpar that imports matplotlib;
``fpar.experiments.report`` calls it.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
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


# Axes that survive an outlier run (see robust_range)
OUTLIER_Z = 3.5  # modified z-score beyond which a value is an outlier (Iglewicz and Hoaglin's cut-off)
SQUEEZE = 3.0  # outliers leave the axis only when keeping them would squeeze the others into under 1/SQUEEZE of it
LOG_DECADES = 2.0  # positive values (losses) spanning more decades than this get a log axis


@dataclass(frozen=True)
class AxisRange:
    """How to draw one value axis: ``log`` scale or not, and ``limits`` (None: everything fits, matplotlib's own)."""

    log: bool
    limits: tuple[float, float] | None


def robust_range(values: Any, *, log_ok: bool) -> AxisRange:
    """The value axis for ``values`` (every value an axis shows; NaN and inf are ignored) that keeps the bulk
    readable when one run is far off (a diverged loss of 1e6 among losses near 1, a 2% run among 50-60%).

    1. Outliers are values whose modified z-score ``0.6745 (x - median) / MAD`` exceeds OUTLIER_Z (with
       ``MAD = 0``, the mean absolute deviation stands in: ``(x - median) / (1.2533 MeanAD)``), computed on
       log10 of the values when ``log_ok`` and all are positive (losses are compared by ratio), else on the values.
    2. They are cut off the axis only when keeping them would squeeze the others into less than 1/SQUEEZE of it;
       the limits are then the others' range plus 8%, and the caller marks the cut values at the axis edge with
       their numbers (an off-axis run is never silently dropped). Values all equal but for the outliers keep a
       full axis: there is no detail to lose.
    3. A log scale is used when ``log_ok``, all values are positive and the shown ones span more than LOG_DECADES
       decades (a loss falling from 4 to 0.01); accuracies (``log_ok=False``) always stay linear.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return AxisRange(False, None)
    positive = log_ok and bool((v > 0).all())
    t = np.log10(v) if positive else v
    med = float(np.median(t))
    dev = np.abs(t - med)
    mad = float(np.median(dev))
    if mad > 0:
        z = 0.6745 * dev / mad
    else:
        mean_ad = float(dev.mean())
        z = dev / (1.253314 * mean_ad) if mean_ad > 0 else np.zeros_like(dev)
    keep = z <= OUTLIER_Z
    bulk = t[keep]
    span, bulk_span = float(t.max() - t.min()), float(bulk.max() - bulk.min())
    clip = not keep.all() and bulk_span > 0 and span > SQUEEZE * bulk_span
    shown = bulk if clip else t
    log = positive and float(shown.max() - shown.min()) > LOG_DECADES
    if not clip:
        return AxisRange(log, None)
    if log:  # pad in decades
        lo, hi = float(bulk.min()), float(bulk.max())
        pad = 0.08 * (hi - lo)
        return AxisRange(True, (10 ** (lo - pad), 10 ** (hi + pad)))
    lo, hi = (float(10 ** bulk.min()), float(10 ** bulk.max())) if positive else (float(bulk.min()), float(bulk.max()))
    pad = 0.08 * (hi - lo)
    return AxisRange(False, (lo - pad, hi + pad))


def fit_axis(ax: Any, *, log_ok: bool, which: str = "y") -> int:
    """Apply :func:`robust_range` to the values of every line drawn on ``ax`` so far (``which`` axis: ``y`` for
    curves, ``x`` for horizontal dot plots), and mark each value it cuts off: a triangle at the axis edge in the
    line's colour, with the most extreme cut value of each line and side written beside it. Call it once, before
    drawing reference lines (``axvline``), which are not data.

    Returns:
        How many values were cut off (for :func:`off_axis_note`).
    """
    lines = [ln for ln in ax.get_lines() if len(ln.get_xdata())]
    data = [np.asarray(ln.get_ydata() if which == "y" else ln.get_xdata(), dtype=np.float64) for ln in lines]
    r = robust_range(np.concatenate(data) if data else [], log_ok=log_ok)
    if r.log:
        (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    if r.limits is None:
        return 0
    lo, hi = r.limits
    (ax.set_ylim if which == "y" else ax.set_xlim)(lo, hi)
    cut = 0
    for ln, vals in zip(lines, data):
        other = np.asarray(ln.get_xdata() if which == "y" else ln.get_ydata(), dtype=np.float64)
        for side, edge, mask in (("high", hi, vals > hi), ("low", lo, vals < lo)):
            if not mask.any():
                continue
            cut += int(mask.sum())
            edges = np.full(int(mask.sum()), edge)
            xy = (other[mask], edges) if which == "y" else (edges, other[mask])
            marker, offset, ha = {
                ("y", "high"): ("^", (4, -10), "left"),
                ("y", "low"): ("v", (4, 4), "left"),
                ("x", "high"): (">", (-6, 5), "right"),
                ("x", "low"): ("<", (6, 5), "left"),
            }[which, side]
            ax.plot(*xy, linestyle="none", marker=marker, ms=7, color=ln.get_color(), clip_on=False, zorder=5)
            picked = np.where(mask, vals, np.nan)
            k = int(np.nanargmax(picked) if side == "high" else np.nanargmin(picked))
            at = (other[k], edge) if which == "y" else (edge, other[k])
            ax.annotate(
                f"{vals[k]:.3g}", at, xytext=offset, textcoords="offset points", fontsize=7, color=ln.get_color(), ha=ha
            )
    return cut


def off_axis_note(title: str, cut: int) -> str:
    """``title`` with a second line saying how many values :func:`fit_axis` marked at the axis edge (if any)."""
    if not cut:
        return title
    note = "1 value off the axis: marked at its edge" if cut == 1 else f"{cut} values off the axis: marked at its edge"
    return f"{title}\n{note}" if title else note


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

    The value axis goes through :func:`fit_axis`: a point whose runs diverged (a loss of 1e6) or failed (2%
    accuracy) is marked at the axis edge instead of flattening the others; losses spanning decades get a log axis.

    Args:
        series: point label -> the metrics.jsonl rows of each of its runs (a label may say how its epochs were
            selected: "selected on test").
        key: a metrics.jsonl column, e.g. ``val_top1`` or ``val_loss`` (``*loss`` columns may get a log axis).
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
    cut = fit_axis(ax, log_ok=key.endswith("loss"))
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    if title or cut:
        ax.set_title(off_axis_note(f"{title}: {ylabel} per epoch" if title else "", cut), fontsize=10)
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


def run_curves(
    history: list[dict[str, Any]],
    out: str | os.PathLike,
    *,
    title: str = "",
    select_on: str | None = None,
    best_epoch: int | None = None,
) -> Path | None:
    """Figure 16: train and validation accuracy (left) and loss (right) of one run, each LR phase in its own
    colour, the LR steps marked by vertical grey lines; both value axes go through :func:`fit_axis` (a diverged
    epoch is marked at the edge; the loss axis turns logarithmic when it spans decades).

    Args:
        select_on: the split that selected the run's epoch (``summary.json``): with ``test`` the dashed curve is the
            test split itself and says so ("selected on test").
        best_epoch: the selected epoch (1-based), starred on the evaluated accuracy curve.
    """
    if not history:
        return None
    phases = lr_phases(history)
    coloured = 1 < len(phases) <= MAX_PHASES
    evaluated = "test (epochs selected on test)" if select_on == "test" else "validation"
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
        cut = fit_axis(ax, log_ok=name == "loss")
        if cut:
            ax.set_title(off_axis_note("", cut), fontsize=8)
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
        ax_acc.plot([], [], "--", color="k", label=evaluated)[0],
    ]
    best = dict(zip(*_series(history, "val_top1"))).get(best_epoch) if best_epoch is not None else None
    if best is not None:
        on = f" on {select_on}" if select_on else ""
        handles += ax_acc.plot(
            [best_epoch], [best], "*", ms=12, color="gold", mec="k", zorder=6, label=f"selected epoch {best_epoch}{on}"
        )
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
    static-dynamic discriminator's loss when the run has them), the loss axis through :func:`fit_axis`. None when
    the run has no MS loss."""
    xs, ys = _series(history, "train_ms_loss")
    if not xs:
        return None
    fig, ax = _new(7, 4)
    ax.plot(xs, ys, "-", color=PHASE_COLOURS[1], marker="o" if len(xs) < 4 else None, label="MS loss (train)")
    dx, dy = _series(history, "train_disc_loss")
    if dx:
        ax.plot(dx, dy, "--", color=PHASE_COLOURS[2], label="discriminator loss (train)")
    cut = fit_axis(ax, log_ok=True)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("MS loss")
    ax.grid(alpha=0.3)
    handles = [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]  # not fit_axis's edge markers
    for key, label in (("train_ms_acc", "MS pixel accuracy (%)"), ("train_ms_mae", "MS mean abs. error")):
        mx, my = _series(history, key)
        if mx:
            ax2 = ax.twinx()
            handles += ax2.plot(mx, my, ":", color=PHASE_COLOURS[0], marker="s" if len(mx) < 4 else None, label=label)
            ax2.set_ylabel(label)
            break
    ax.legend(handles=handles, fontsize=7, loc="best")
    ax.set_title(
        off_axis_note((title + ": " if title else "") + "motion-segmentation loss per epoch", cut), fontsize=10
    )
    return _save(fig, out)


def point_summary(
    points: list[tuple[str, list[float], float | None]],
    out: str | os.PathLike,
    *,
    xlabel: str,
    title: str = "",
) -> Path | None:
    """Every run's accuracy at each grid point, one row per point (labels stay whole, however long): a dot per
    run (seed, or a seed's fold), the mean as a bar with ± the sample standard deviation, the report's number as
    a red cross. The accuracy axis goes through :func:`fit_axis`, so one failed run (2% among 50-60%) sits at the
    edge with its number instead of squeezing the others together.

    Args:
        points: (label, the runs' values, the report's number or None) per point, top to bottom; a label may
            carry how its epochs were selected ("selected on test").
        xlabel: what the values are (say "selected on test" when the test set chose the epochs).
    Returns:
        The PNG path, or None when no point has a value.
    """
    points = [(label, [v for v in vals if v is not None and math.isfinite(v)], pub) for label, vals, pub in points]
    if not any(vals for _, vals, _ in points):
        return None
    n = len(points)
    fig, ax = _new(8, min(1.2 + 0.38 * n, 14))
    for i, (_label, vals, pub) in enumerate(points):
        y = n - 1 - i  # the first point on top, as in the table
        if vals:
            ax.plot(vals, [y] * len(vals), "o", ms=5, alpha=0.7, color=PHASE_COLOURS[0])
            ax.plot([float(np.mean(vals))], [y], "|", ms=14, mew=2, color="k", zorder=4)  # an off-axis mean is marked
        if pub is not None:
            ax.plot([pub], [y], "x", ms=8, mew=2, color=PHASE_COLOURS[1])
    cut = fit_axis(ax, log_ok=False, which="x")
    for i, (_label, vals, _pub) in enumerate(points):  # after fit_axis: a spread, not values to fit the axis to
        if len(vals) > 1:
            sd = float(np.std(vals, ddof=1))
            ax.errorbar([float(np.mean(vals))], [n - 1 - i], xerr=[sd], fmt="none", capsize=3, color="k", zorder=4)
    ax.set_yticks(range(n), [label for label, _, _ in reversed(points)], fontsize=8)
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3, axis="x")
    handles = [
        ax.plot([], [], "o", color=PHASE_COLOURS[0], alpha=0.7, label="one run")[0],
        ax.plot([], [], "|", ms=10, mew=2, color="k", label="mean ± std")[0],
    ]
    if any(pub is not None for _, _, pub in points):
        handles.append(ax.plot([], [], "x", mew=2, color=PHASE_COLOURS[1], label="report")[0])
    ax.legend(handles=handles, fontsize=7, loc="best")
    if title or cut:
        ax.set_title(off_axis_note(title, cut), fontsize=10)
    return _save(fig, out)


def read_confusion(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """``confusion.csv`` as written by the trainer: (class names, (C, C) counts, rows = true class)."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise FparError(f"cannot read {path} ({e}); delete it or `fpar eval` the run again") from None
    if len(rows) < 2:
        raise FparError(f"{path} holds no confusion matrix")
    classes = rows[0][1:]
    counts = [r[1:] for r in rows[1:]]
    if any(len(r) != len(classes) for r in counts) or len(counts) != len(classes):
        raise FparError(f"{path} is not a square confusion matrix (cut short or edited?)")
    try:
        m = np.array([[int(x) for x in r] for r in counts], dtype=np.int64)
    except ValueError:
        raise FparError(f"{path} holds a count that is not a whole number (damaged or edited)") from None
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
