"""The timeline picture of a long-video prediction: classes over time (matplotlib, Agg canvas, no pyplot state).

With :mod:`fpar.experiments.figures` (the report's figures), the only module of fpar that imports matplotlib.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

__all__ = ["class_colours", "timeline_figure"]


def class_colours(n: int) -> list[tuple[float, float, float, float]]:
    """One RGBA colour per class: the 10 or 20 distinct ``tab`` colours, or ``n`` evenly spaced ``turbo`` ones."""
    import matplotlib

    if n <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [matplotlib.colormaps["tab20"](i) for i in range(n)]
    cmap = matplotlib.colormaps["turbo"]
    return [cmap(0.05 + 0.9 * i / (n - 1)) for i in range(n)]


def timeline_figure(result: dict[str, Any], out: str | os.PathLike, classes: list[str]) -> Path:
    """Write the timeline of ``result`` (what :func:`~fpar.video.long_video.predict_long_video` returns) as a PNG.

    Top: two rows of coloured bands, each window's top-1 class (drawn over the stride step around its centre, paler
    the less probable it is) and the merged segments (labelled where wide enough). Bottom: the top-1 probability of
    every window (dots) and the score of every segment (lines). Time in seconds (in frames without a frame rate);
    the legend lists the classes that occur, in the class order.

    Args:
        classes: the run's classes (colours are fixed by their order, so two timelines of one run agree).
    """
    from fpar.utils import atomic_write_bytes

    fps = result["fps"]
    scale = 1.0 / fps if fps else 1.0
    n = result["frames"]
    index = {c: i for i, c in enumerate(classes)}
    colours = class_colours(len(classes))
    half = result["stride"]["frames"] / 2

    fig = Figure(figsize=(11, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    bands, probs = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1.3, 1]})

    ranges, faces, centres, tops = [], [], [], []
    for wd in result["windows"]:
        c = (wd["start_frame"] + wd["end_frame"]) / 2
        x0, x1 = max(0.0, c - half), min(float(n), c + half)
        best = wd["top"][0]
        r, g, b, _ = colours[index[best["class"]]]
        ranges.append((x0 * scale, (x1 - x0) * scale))
        faces.append((r, g, b, 0.3 + 0.7 * best["prob"]))
        centres.append(c * scale)
        tops.append(best["prob"])
    bands.broken_barh(ranges, (1.1, 0.8), facecolors=faces, linewidth=0)
    segs = result["segments"]
    seg_ranges = [(s["start_frame"] * scale, (s["end_frame"] - s["start_frame"]) * scale) for s in segs]
    seg_faces = [colours[index[s["class"]]] for s in segs]
    bands.broken_barh(seg_ranges, (0.1, 0.8), facecolors=seg_faces, edgecolor="white", linewidth=0.5)
    for s, (x, width) in zip(segs, seg_ranges):
        if width > 0.08 * n * scale:  # a label that fits in its band
            bands.text(x + width / 2, 0.5, s["class"], ha="center", va="center", fontsize=7, clip_on=True)
    bands.set_ylim(0, 2)
    bands.set_yticks([0.5, 1.5], ["segments", "windows (top-1)"])
    bands.set_xlim(0, n * scale)
    bands.set_title(
        f"{Path(result['video']).name}: {result['model']}, {len(result['windows'])} windows of "
        f"{_span(result['window'])} every {_span(result['stride'])}, {len(segs)} segments",
        fontsize=10,
    )

    probs.plot(centres, tops, ".", ms=3, color="0.35", label="window top-1 probability")
    for s, (x, width), face in zip(segs, seg_ranges, seg_faces):
        probs.hlines(s["score"], x, x + width, colors=[face], linewidth=2.5)
    probs.plot([], [], "-", color="0.5", linewidth=2.5, label="segment score")  # a legend entry for the lines
    probs.set_ylim(0, 1.05)
    probs.set_ylabel("probability")
    probs.set_xlabel("time (s)" if fps else "frame")
    probs.legend(loc="lower right", fontsize=7, frameon=False)
    probs.grid(alpha=0.3)

    present = sorted({index[s["class"]] for s in segs} | {index[wd["top"][0]["class"]] for wd in result["windows"]})
    handles = [Patch(facecolor=colours[i], label=classes[i]) for i in present]
    bands.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
        frameon=False,
        ncol=max(1, math.ceil(len(handles) / 14)),
        title="classes",
        title_fontsize=8,
    )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(out, buf.getvalue())


def _span(span: dict) -> str:
    return f"{span['seconds']:g} s" if span.get("seconds") is not None else f"{span['frames']} frames"
