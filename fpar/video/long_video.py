"""Long-video prediction: a window slides over a whole video (`fpar predict RUN VIDEO --window 2s --stride 0.5s`).

Streaming
    The video file (or frame folder) is decoded once, in order, at the run's short side (``data.scale_size``), as
    :func:`~fpar.video.predict.load_clip` reads a clip. A ring buffer holds the last W frames only (W: the window in
    frames, all of which the window being formed, or a final window aligned to the end, may read). When frame
    ``s + W - 1`` arrives, window ``[s, s + W)`` is complete and its clip is built at once, exactly as the test
    pipeline builds the clip of a W-frame video (:func:`~fpar.video.predict.clip_inputs`): T = ``data.frames``
    frames chosen by ``data.sampling`` over the window's frames and the centre crop; flow models get the window's
    centred stack(s) of warp flows, computed on the fly (once each: overlapping windows share them). Clips wait in a
    batch of ``batch`` windows that goes through the model under ``torch.inference_mode``. Memory is W frames + one
    batch of clips + a few numbers per window (its class probabilities), whatever the length of the video.

Windows
    Window k covers frames ``[k S, k S + W)`` (S: the stride in frames) while it fits in the video. When the last of
    them stops short of the end, one more window is aligned to end at the last frame, so that every frame is
    covered; a video shorter than W frames gives one window over all its frames (its T frames repeat, as the loader
    does for short videos). A span in seconds becomes ``round(seconds * fps)`` frames (at least 1), with the frame
    rate of the video stream (its average rate; ``fps`` resamples the video to that rate first) or, for a frame
    folder, the ``fps`` given. Window ends are exclusive: ``end_frame`` is the first frame after the window.

Segments (the merge rule)
    The window boundaries cut the video into elementary intervals, each covered by the same windows throughout.
    Each interval gets the mean of the class probabilities of the windows covering it, and the class that is
    most probable in that mean. Consecutive intervals of one class form a segment; its ``score`` is the mean over
    the segment's frames of that averaged probability of its class. With ``min_segment``, a segment shorter than it
    (the shortest first, then the leftmost) is absorbed by a neighbour: its frames take the neighbour class with the
    higher averaged probability over them, and neighbours of one class join; a video-long segment stays.

Outputs
    JSON (``{"video", "model", "checkpoint", "fps", "frames", "duration", "window", "stride", "min_segment",
    "top", "merge", "windows": [...], "segments": [...]}``) or CSV (one row per window, then one per segment, told
    apart by the ``kind`` column); a timeline picture (:func:`fpar.video.timeline.timeline_figure`); and with
    ``render`` an MP4 of the video with the current class and its score drawn on every frame (a second decoding
    pass, streamed like the first; ``render_cam``: the CAM of the nearest window's nearest sampled frame over the
    region the model sees).
"""

from __future__ import annotations

import csv
import heapq
import io
import json
import logging
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fpar.errors import FparError

if TYPE_CHECKING:
    import torch

    from fpar.engine.run import OpenRun

__all__ = ["Span", "parse_span", "merge_windows", "Merged", "predict_long_video", "RENDER_SHORT_SIDE"]

log = logging.getLogger(__name__)

RENDER_SHORT_SIDE = 240  # smaller videos are enlarged in the render so that the caption stays legible

MERGE_RULE = (
    "each elementary interval between window boundaries takes the mean probabilities of the windows covering it "
    "and its most probable class; runs of one class are segments, scored by the frame-weighted mean of that "
    "averaged probability; segments shorter than min_segment are absorbed by the neighbour class more probable "
    "over them"
)

_SPAN = re.compile(r"^\s*(?P<num>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[sf]?)\s*$", re.IGNORECASE)


# ----------------------------------------------------------------------------------------------- spans


@dataclass(frozen=True)
class Span:
    """A duration as the user gave it: ``value`` seconds (``unit="s"``) or frames (``unit="f"``)."""

    value: float
    unit: str  # "s" | "f"

    def __str__(self) -> str:
        return f"{self.value:g}{self.unit}"

    def frames(self, fps: float | None, option: str, source: Path) -> int:
        """The span in frames (seconds: ``round(value * fps)``, at least 1 when the value is positive)."""
        if self.unit == "f":
            return int(self.value)
        if fps is None:
            raise FparError(
                f"{option} {self} is in seconds but the frame rate of {source} is unknown (a frame folder has none): "
                f"give it with --fps, or {option} in frames (e.g. {option} 48f)"
            )
        return max(1, round(self.value * fps)) if self.value > 0 else 0


def parse_span(text: str | float | Span, option: str, *, allow_zero: bool = False) -> Span:
    """``"2s"`` / ``"0.5s"`` are seconds; ``"48f"`` or a plain integer ``"48"`` are frames.

    Raises:
        FparError: anything else, a fraction of a frame, or a span that is not positive (zero with ``allow_zero``).
    """
    if isinstance(text, Span):
        span = text
    else:
        m = _SPAN.match(str(text))
        if m is None:
            raise FparError(
                f"{option} {text!r} is not a duration: give seconds (2s, 0.5s) or frames (48f, or a plain integer)"
            )
        unit = m["unit"].lower() or "f"
        if unit == "f" and not float(m["num"]).is_integer():
            raise FparError(
                f"{option} {text!r} is a fraction of a frame: write {m['num']}s for seconds, or whole frames"
            )
        span = Span(float(m["num"]), unit)
    if span.value < 0 or (span.value == 0 and not allow_zero):
        raise FparError(f"{option} {span} must be {'>= 0' if allow_zero else 'positive'}")
    return span


# ----------------------------------------------------------------------------------------------- merging


@dataclass
class Merged:
    """The merge of the windows (see the module docstring), per elementary interval ``[cuts[i], cuts[i + 1])``.

    Attributes:
        cuts: (M + 1,) frame indices from 0 to N, increasing.
        mean: (M, C) mean class probabilities of the windows covering each interval.
        labels: (M,) class of each interval once short segments are absorbed.
        segments: ``(start_frame, end_frame, class, score)`` per segment, in order, covering the video.
    """

    cuts: np.ndarray
    mean: np.ndarray
    labels: np.ndarray
    segments: list[tuple[int, int, int, float]]


def merge_windows(starts, ends, probs: np.ndarray, *, min_frames: int = 0) -> Merged:
    """Windows ``[starts[j], ends[j])`` with class probabilities ``probs[j]`` -> intervals and segments.

    Args:
        starts, ends: frame bounds of the windows, both non-decreasing (as the sliding window makes them), covering
            ``[0, max(ends))`` without gaps.
        probs: (J, C) class probabilities of the windows.
        min_frames: segments shorter than this are absorbed by a neighbour (0: none is).
    """
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    assert len(starts) == len(ends) == len(probs) > 0, "one (start, end, probs) per window"
    assert (np.diff(starts) >= 0).all() and (np.diff(ends) >= 0).all() and (ends > starts).all()
    cuts = np.unique(np.concatenate([starts, ends]))  # (M + 1,)
    a, b = cuts[:-1], cuts[1:]
    # Windows are sorted by start and by end, so those covering [a, b) are one run of them: from the first that ends
    # after a to the last that starts before b.
    lo = np.searchsorted(ends, a, side="right")
    hi = np.searchsorted(starts, b, side="left")
    assert (hi > lo).all(), "every interval is covered by a window"
    csum = np.concatenate([np.zeros((1, probs.shape[1])), np.cumsum(probs, axis=0)])  # (J + 1, C)
    mean = (csum[hi] - csum[lo]) / (hi - lo)[:, None]  # (M, C)
    length = (b - a).astype(np.float64)  # (M,)
    mass = np.concatenate([np.zeros((1, probs.shape[1])), np.cumsum(mean * length[:, None], axis=0)])  # (M + 1, C)
    labels = mean.argmax(axis=1)
    runs = _runs(labels)
    if min_frames > 0:
        runs = _absorb(runs, cuts, mass, min_frames)
        for i0, i1, c in runs:
            labels[i0:i1] = c
    segments = []
    for i0, i1, c in runs:
        f0, f1 = int(cuts[i0]), int(cuts[i1])
        segments.append((f0, f1, int(c), float((mass[i1, c] - mass[i0, c]) / (f1 - f0))))
    return Merged(cuts, mean, labels, segments)


def _runs(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """Maximal runs ``(first interval, last interval + 1, class)`` of equal labels."""
    edges = np.flatnonzero(np.diff(labels)) + 1
    bounds = [0, *edges.tolist(), len(labels)]
    return [(i0, i1, int(labels[i0])) for i0, i1 in zip(bounds[:-1], bounds[1:])]


def _absorb(runs: list[tuple[int, int, int]], cuts: np.ndarray, mass: np.ndarray, min_frames: int) -> list:
    """The min-segment rule: the shortest run under ``min_frames`` frames (then the leftmost) takes the neighbour
    class that is more probable over its frames; neighbours of one class join. A heap of run lengths with lazy
    deletion keeps it O(R log R) for R runs."""
    first = [r[0] for r in runs]
    last = [r[1] for r in runs]
    cls = [r[2] for r in runs]
    prev = [i - 1 for i in range(len(runs))]
    nxt = [i + 1 if i + 1 < len(runs) else -1 for i in range(len(runs))]
    alive = [True] * len(runs)

    def frames(r: int) -> int:
        return int(cuts[last[r]] - cuts[first[r]])

    heap = [(frames(r), first[r], r) for r in range(len(runs))]
    heapq.heapify(heap)
    while heap:
        n, _, r = heapq.heappop(heap)
        if not alive[r] or n != frames(r):
            continue  # a run that has grown or been absorbed since this entry was pushed
        if n >= min_frames:
            break
        neighbours = [x for x in (prev[r], nxt[r]) if x >= 0]
        if not neighbours:
            break  # one segment for the whole video
        # the neighbour class more probable over r's frames (the left one on a tie)
        into = max(neighbours, key=lambda x: mass[last[r], cls[x]] - mass[first[r], cls[x]])
        group = [x for x in (prev[r], r, nxt[r]) if x >= 0 and (x == r or cls[x] == cls[into])]
        keep = group[0]
        first[keep], last[keep], cls[keep] = first[group[0]], last[group[-1]], cls[into]
        for x in group[1:]:
            alive[x] = False
        nxt[keep] = nxt[group[-1]]
        if nxt[keep] >= 0:
            prev[nxt[keep]] = keep
        heapq.heappush(heap, (frames(keep), first[keep], keep))
    return [(first[r], last[r], cls[r]) for r in range(len(runs)) if alive[r]]


# ----------------------------------------------------------------------------------------------- streaming


class _Slider:
    """Windows of ``w`` frames every ``s`` frames over a stream of frames (see the module docstring), each yielded as
    ``(start, length, frame)`` as soon as its last frame is read; ``frame(i)`` gives frame ``i`` of the video until
    the next window is yielded. Holds the last ``w`` frames only; ``frames`` counts the frames read."""

    def __init__(self, source: Iterable[np.ndarray], w: int, s: int):
        self.source, self.w, self.s = source, w, s
        self.frames = 0

    def __iter__(self) -> Iterator[tuple[int, int, Callable[[int], np.ndarray]]]:
        ring: deque[np.ndarray] = deque(maxlen=self.w)

        def frame(i: int) -> np.ndarray:
            return ring[i - (self.frames - len(ring))]  # ring[0] is frame `frames - len(ring)`

        end = 0  # end of the last window yielded
        for img in self.source:
            ring.append(img)
            self.frames += 1
            start = self.frames - self.w
            if start >= 0 and start % self.s == 0:
                end = self.frames
                yield start, self.w, frame
        if self.frames == 0:
            return
        if end == 0:  # shorter than one window: one window over every frame
            yield 0, self.frames, frame
        elif end < self.frames:  # the tail: one more window, ending at the last frame
            yield self.frames - self.w, self.w, frame


def _open_source(
    path: Path, fps: float | None, short_side: int
) -> tuple[Iterator[np.ndarray], float | None, int | None]:
    """(frames at ``short_side``, frame rate or None, the container's frame count or None) of a video or folder."""
    from fpar.video.io import iter_frame_folder, iter_video, list_frame_files, video_info
    from fpar.video.predict import _frame_folder

    if path.is_dir():
        folder = _frame_folder(path)
        return iter_frame_folder(folder, short_side=short_side), fps, len(list_frame_files(folder))
    info = video_info(path)
    if fps is not None:  # resampled by timestamp to `fps` (as `fpar predict --fps` and `fpar prepare --fps` do)
        return iter_video(path, fps=fps, short_side=short_side), float(fps), None
    return iter_video(path, short_side=short_side), info["fps"], info["frames"]


# ----------------------------------------------------------------------------------------------- outputs


def _output_paths(
    out: str | os.PathLike | None, timeline: str | os.PathLike | None, render: str | os.PathLike | None
) -> dict[str, Path | None]:
    """The files to write, checked before any work: the right suffixes, none existing."""
    paths: dict[str, Path | None] = {"out": None, "timeline": None, "render": None}
    if out is not None:
        paths["out"] = Path(out)
        if paths["out"].suffix.lower() not in (".json", ".csv"):
            raise FparError(f"--out {out}: give a .json or a .csv file (the format follows the suffix)")
    if timeline is not None:
        paths["timeline"] = Path(timeline)
    elif paths["out"] is not None:  # by default the picture goes next to the results
        paths["timeline"] = paths["out"].with_name(paths["out"].stem + ".timeline.png")
    if paths["timeline"] is not None and paths["timeline"].suffix.lower() != ".png":
        raise FparError(f"--timeline {paths['timeline']}: give a .png file")
    if render is not None:
        paths["render"] = Path(render)
        if paths["render"].suffix.lower() != ".mp4":
            raise FparError(f"--render {render}: give an .mp4 file")
    for key, p in paths.items():  # (the suffixes keep them apart; the video itself exists)
        if p is not None:
            _refuse_existing(p, key)
    return paths


def _refuse_existing(path: Path, key: str) -> None:
    from fpar.utils import refuse_existing

    hint = " (written next to --out unless --timeline says where)" if key == "timeline" else ""
    refuse_existing(path, f"--{key} path", hint)


def _write_new(path: Path, data: bytes, key: str) -> None:
    from fpar.utils import atomic_write_bytes

    _refuse_existing(path, key)  # again: the prediction of a long video takes a while
    atomic_write_bytes(path, data)


def _csv_bytes(result: dict) -> bytes:
    """One row per window (``kind=window``; ``class`` / ``score``: its top-1; ``class_k`` / ``prob_k``: its top-k),
    then one per segment (``kind=segment``; the top-k columns empty). Times in seconds (empty without a rate)."""
    k = result["top"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["kind", "index", "start", "end", "start_frame", "end_frame", "class", "score"]
    w.writerow(head + [f"{n}_{i}" for i in range(1, k + 1) for n in ("class", "prob")])

    def times(r: dict) -> list:
        return ["" if r["start"] is None else r["start"], "" if r["end"] is None else r["end"]]

    for r in result["windows"]:
        top = [x for t in r["top"] for x in (t["class"], t["prob"])]
        top += [""] * (2 * k - len(top))
        w.writerow(["window", r["index"], *times(r), r["start_frame"], r["end_frame"], *top[:2], *top])
    for r in result["segments"]:
        row = ["segment", r["index"], *times(r), r["start_frame"], r["end_frame"], r["class"], r["score"]]
        w.writerow(row + [""] * (2 * k))
    return buf.getvalue().encode()


# ----------------------------------------------------------------------------------------------- rendering


def _caption(img: np.ndarray, text: str, right: str, score: float) -> None:
    """Draw in place a dark band at the top with ``text`` (left), ``right`` (right) and a bar as long as ``score``."""
    import cv2

    h, w = img.shape[:2]
    band = max(18, h // 10)
    img[:band] = (img[:band].astype(np.uint16) * 3 // 10).astype(np.uint8)  # darkened, the frame still shows
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, band / 36
    thick = max(1, round(band / 24))
    base = int(band * 0.68)
    (rw, _), _ = cv2.getTextSize(right, font, scale, thick)
    cv2.putText(img, right, (w - rw - 6, base), font, scale, (255, 255, 255), thick, cv2.LINE_AA)
    room = w - rw - 18  # the class and score fit left of the time: smaller type, then cut with "..."
    (tw, _), _ = cv2.getTextSize(text, font, scale, thick)
    if tw > room:
        scale = max(0.3, scale * room / tw)
        while len(text) > 4 and cv2.getTextSize(text, font, scale, thick)[0][0] > room:
            text = text[:-4] + "..."
    cv2.putText(img, text, (6, base), font, scale, (255, 255, 255), thick, cv2.LINE_AA)
    bar = max(2, band // 8)
    img[band - bar : band, : int(round(w * min(max(score, 0.0), 1.0)))] = (80, 220, 80)


def _render_size(w: int, h: int) -> tuple[int, int]:
    """The render's (width, height): the video's size, enlarged to a short side of :data:`RENDER_SHORT_SIDE` when
    smaller, rounded down to even numbers (what yuv420p needs)."""
    r = max(1.0, RENDER_SHORT_SIDE / min(w, h))
    return max(2, int(w * r) // 2 * 2), max(2, int(h * r) // 2 * 2)


def _render(
    video: Path,
    dst: Path,
    *,
    fps: float,
    resample: float | None,
    merged: Merged,
    classes: list[str],
    frames: int,
    cams: dict | None,
    cfg,
    progress: Callable | None,
) -> int:
    """Write the annotated MP4 (a second, streamed decoding pass at the video's own size). Returns its frame count.

    ``cams``: ``{"centres": (J,) window centres, "sampled": [abs frame indices per window], "maps": [(T', h, w)]}``.
    """
    import av
    import cv2

    from fpar.data.transforms import CropParams, crop_box
    from fpar.drawing import overlay
    from fpar.video.io import iter_frame_folder, iter_video
    from fpar.video.predict import _frame_folder

    # at the video's own size, resampled to the rate the prediction pass used
    source = iter_frame_folder(_frame_folder(video)) if video.is_dir() else iter_video(video, fps=resample)
    if progress is not None:
        source = progress(source, total=frames, desc="render", unit="frame")
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"  # mpeg4 is built into every FFmpeg
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp.mp4")
    dst.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    i = 0  # the interval of the current frame
    cuts, mean, labels = merged.cuts, merged.mean, merged.labels
    try:
        with av.open(str(tmp), "w") as container:
            stream = None
            for f, img in enumerate(source):
                if stream is None:
                    size = _render_size(img.shape[1], img.shape[0])
                    stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
                    stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
                    if codec == "libx264":
                        stream.options = {"crf": "20", "preset": "ultrafast"}  # speed over file size
                    else:
                        stream.bit_rate = 8 * size[0] * size[1]
                    box = crop_box(*size, CropParams(), scale_size=cfg.data.scale_size, input_size=cfg.data.input_size)
                if (img.shape[1], img.shape[0]) != size:
                    img = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
                else:
                    img = img.copy()  # drawn on; the decoder's array may be reused
                while i + 1 < len(labels) and f >= cuts[i + 1]:
                    i += 1
                c = int(labels[i])
                if cams is not None:
                    # the CAM of the window centred nearest this frame (centres are sorted), at its sampled frame
                    # nearest this frame
                    j = int(np.searchsorted(cams["centres"], f))
                    j = min(j, len(cams["centres"]) - 1)
                    if j > 0 and f - cams["centres"][j - 1] <= cams["centres"][j] - f:
                        j -= 1
                    maps, sampled = cams["maps"][j], cams["sampled"][j][: len(cams["maps"][j])]
                    k = int(np.abs(np.asarray(sampled) - f).argmin())
                    x0, y0, x1, y1 = box
                    img[y0:y1, x0:x1] = overlay(img[y0:y1, x0:x1], maps[k].astype(np.float32))
                score = float(mean[i, c])
                _caption(img, f"{classes[c]} {100 * score:.0f}%", f"{f / fps:.1f} s", score)
                for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    container.mux(packet)
                written += 1
            if stream is None:
                raise FparError(f"no frames decoded from {video} for --render on a second pass; re-encode the video")
            for packet in stream.encode():  # the encoder's delayed frames
                container.mux(packet)
        if written != frames:
            log.warning("%s: the render pass decoded %d frames, the prediction pass %d", video, written, frames)
        _refuse_existing(dst, "render")
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    return written


# ----------------------------------------------------------------------------------------------- prediction


@dataclass
class _Scores:
    """What the pass over the video gives: window bounds (frames), their class probabilities, the video's length
    and, for the CAM on the render, each window's centre, sampled frames and attention maps."""

    starts: list[int]
    ends: list[int]
    probs: np.ndarray  # (J, C) float32
    frames: int
    cams: dict | None  # {"centres": (J,) array, "sampled": [[abs frame index] * T], "maps": [(T', h, w) float16]}


def _score_windows(
    frames_in: Iterable[np.ndarray],
    w: int,
    s: int,
    *,
    run: OpenRun,
    device: torch.device,
    batch: int,
    flow_method: str,
    cams: bool,
    source: Path,
) -> _Scores:
    """Stream the frames, build each window's clip as the test pipeline would and run the model on batches of them.

    Raises:
        FparError: no frames, or a model that returned no attention map for ``cams``.
    """
    import torch

    from fpar.video.predict import FlowCache, _plan, clip_inputs

    cfg, spec, model = run.cfg, run.spec, run.model
    reads = tuple(spec.inputs(cfg, False))
    on = {m: m in reads for m in ("rgb", "flow", "flow_seq")}
    plans: dict[int, dict] = {}
    cache = FlowCache()
    pending: list[tuple[int, int, dict, list[int]]] = []  # (start, length, clip inputs, sampled frames)
    starts: list[int] = []
    ends: list[int] = []
    probs: list[np.ndarray] = []
    maps: dict | None = {"centres": [], "sampled": [], "maps": []} if cams else None

    def flush() -> None:
        if not pending:
            return
        x = {m: torch.stack([p[2][m] for p in pending]).to(device) for m in reads}  # (B, ...) per modality
        with torch.inference_mode():
            o = spec.forward(model, x, False)
        p = o.logits.float().softmax(dim=1).cpu().numpy()  # (B, C)
        if maps is not None and o.attn is None:  # checked by the caller; a model that skipped attention is a bug
            raise FparError(f"{run.path} returned no attention map")
        for j, (start, n, _, sampled) in enumerate(pending):
            starts.append(start)
            ends.append(start + n)
            probs.append(p[j].astype(np.float32))
            if maps is not None:
                maps["centres"].append(start + n / 2)
                maps["sampled"].append(sampled)
                maps["maps"].append(o.attn[j].float().cpu().numpy().astype(np.float16))  # (T', h, w)
        pending.clear()

    slider = _Slider(frames_in, w, s)
    for start, n, frame in slider:
        if n not in plans:  # every window has W frames, but for a video shorter than one
            plans[n] = _plan(n, cfg, **on, source=source)
        plan = plans[n]
        x = clip_inputs(frame, plan, cfg, flow_method=flow_method, offset=start, cache=cache)
        cache.drop_before(start + s)  # the next window starts there (the tail window recomputes what it lacks)
        pending.append((start, n, x, [start + i for i in plan["rgb"]]))
        if len(pending) == batch:
            flush()
    flush()
    if slider.frames == 0:
        raise FparError(f"no frames decoded from {source}; check the file (or re-encode it with ffmpeg)")
    if maps is not None:
        maps["centres"] = np.asarray(maps["centres"])
    return _Scores(starts, ends, np.stack(probs), slider.frames, maps)


def _device(name: str) -> torch.device:
    """``--device``: ``auto`` is CUDA when there is one (as ``train.device=auto``), else a torch device name."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise FparError(f"--device {name!r} is not a device: give auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FparError(f"--device {name}: CUDA is not available here; use --device cpu or auto")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise FparError(f"--device {name}: this PyTorch has no usable MPS device; use --device cpu or auto")
    return dev


def _seconds(frame: int, rate: float | None) -> float | None:
    return None if rate is None else round(frame / rate, 4)


def _records(
    scored: _Scores, merged: Merged, classes: list[str], k: int, rate: float | None
) -> tuple[list[dict], list[dict]]:
    """The ``windows`` (bounds, top-k) and ``segments`` (bounds, class, score) of the result; times in seconds."""
    windows = []
    for j, (a, b, p) in enumerate(zip(scored.starts, scored.ends, scored.probs)):
        order = np.argsort(-p, kind="stable")[:k]  # most probable first
        windows.append(
            {
                "index": j,
                "start": _seconds(a, rate),
                "end": _seconds(b, rate),
                "start_frame": a,
                "end_frame": b,
                "top": [{"class": classes[int(c)], "prob": round(float(p[c]), 6)} for c in order],
            }
        )
    segments = [
        {
            "index": j,
            "start": _seconds(a, rate),
            "end": _seconds(b, rate),
            "start_frame": a,
            "end_frame": b,
            "class": classes[c],
            "score": round(score, 6),
        }
        for j, (a, b, c, score) in enumerate(merged.segments)
    ]
    return windows, segments


def predict_long_video(
    run_or_checkpoint: str | os.PathLike,
    video: str | os.PathLike,
    *,
    window: str | Span = "2s",
    stride: str | Span | None = None,
    top: int = 5,
    batch: int = 8,
    min_segment: str | Span | None = None,
    fps: float | None = None,
    short_side: int | None = None,
    flow_method: str = "dis",
    device: str = "auto",
    out: str | os.PathLike | None = None,
    timeline: str | os.PathLike | None = None,
    render: str | os.PathLike | None = None,
    render_cam: bool = False,
    progress: Callable | None = None,
) -> dict[str, Any]:
    """Slide a window over a whole video with a trained run (any model family) and merge the windows into segments.

    Args:
        run_or_checkpoint: a run folder (its ``best.pt``) or a checkpoint file.
        video: a video file (anything PyAV reads) or a frame folder (images in natural order, or an instance folder
            with an ``rgb/`` subfolder).
        window, stride: seconds (``"2s"``) or frames (``"48f"``, ``"48"``); the stride defaults to half the window
            and may not exceed it (frames between windows would have no prediction).
        top: classes listed per window (at most the number of classes).
        batch: windows per forward pass.
        min_segment: segments shorter than this are absorbed by a neighbour (None: kept); see the module docstring.
        fps: a video file is resampled to this frame rate first; a frame folder is taken at this rate (needed when
            a span is in seconds). None: the video stream's own rate.
        short_side: shorter side of the frames before the transform (default: the run's ``data.scale_size``).
        flow_method: flow models: the estimator inside the on-the-fly warp flow (``dis``, ``tvl1``, ``tvl1-torch``,
            ``farneback``).
        device: ``auto`` (CUDA when there is one), ``cpu``, ``cuda``, ...
        out: a ``.json`` or ``.csv`` file for the results (the module docstring says what each holds).
        timeline: a ``.png`` for the timeline picture (default with ``out``: ``<out stem>.timeline.png`` beside it).
        render: an ``.mp4`` of the video with the current class and its score on every frame.
        render_cam: draw the CAM on the render too (models with attention maps).
        progress: wraps an iterable for a progress bar (``tqdm``); called as ``progress(it, total=, desc=, unit=)``.

    Returns:
        The result written to ``out`` (see the module docstring) with ``"files"``: the paths written.

    Raises:
        FparError: bad run, option or input; an output file that exists (checked before the work and refused,
        never overwritten); ``render_cam`` with a model without attention maps.
    """

    from fpar.engine.run import open_run
    from fpar.video.flow import FLOW_METHODS

    t0 = time.perf_counter()
    path = Path(video)
    if not path.exists():
        raise FparError(f"video file or frame folder not found: {path}; give a video file or a folder of frames")
    if top < 1:
        raise FparError(f"--top {top} must be >= 1")
    if batch < 1:
        raise FparError(f"--batch {batch} must be >= 1 (windows per forward pass)")
    if flow_method not in FLOW_METHODS:
        raise FparError(f"unknown flow method {flow_method!r}; choose one of {', '.join(FLOW_METHODS)}")
    if fps is not None and not fps > 0:
        raise FparError(f"--fps {fps} must be a positive frame rate")
    if render_cam and render is None:
        raise FparError("--render-cam draws the CAM on the --render video: give --render OUT.mp4 too")
    w_span = parse_span(window, "--window")
    s_span = parse_span(stride, "--stride") if stride is not None else None
    m_span = parse_span(min_segment, "--min-segment", allow_zero=True) if min_segment is not None else None
    files = _output_paths(out, timeline, render)

    run = open_run(run_or_checkpoint)
    cfg, spec, model = run.cfg, run.spec, run.for_inference()  # BN folded, channels_last
    reads = tuple(spec.inputs(cfg, False))
    unknown = set(reads) - {"rgb", "flow", "flow_seq"}
    if unknown:
        raise FparError(f"{run.path}: fpar predict builds rgb and flow inputs; this model reads {', '.join(unknown)}")
    if render_cam:
        reason = spec.attention(model) if spec.attention is not None else "its family has no attention maps"
        if reason is not None:
            raise FparError(f"{run.path} cannot draw --render-cam: {reason}")
    short_side = int(short_side or cfg.data.scale_size)
    if short_side <= 0:
        raise FparError(f"--short-side {short_side} must be a positive number of pixels")

    frames_in, rate, total = _open_source(path, fps, short_side)
    if render is not None and rate is None:
        raise FparError(f"--render needs the frame rate of {path}, which is unknown (a frame folder): give --fps")
    w = w_span.frames(rate, "--window", path)
    s = s_span.frames(rate, "--stride", path) if s_span is not None else max(1, w // 2)
    min_frames = m_span.frames(rate, "--min-segment", path) if m_span is not None else 0
    if s > w:
        raise FparError(
            f"--stride {s_span} ({s} frames) is longer than --window {w_span} ({w} frames): the frames between "
            "windows would get no prediction; give a stride up to the window"
        )
    flow_stack = cfg.data.flow_stack if {"flow", "flow_seq"} & set(reads) else 0
    if flow_stack and w < flow_stack + 1:
        raise FparError(
            f"--window {w_span} is {w} frame(s); this flow model stacks {flow_stack} consecutive flows, which needs "
            f"windows of at least {flow_stack + 1} frames"
        )
    dev = _device(device)
    model = model.to(dev)
    classes = run.classes
    k = min(int(top), len(classes))
    if progress is not None:
        frames_in = progress(frames_in, total=total, desc="predict", unit="frame")

    scored = _score_windows(
        frames_in, w, s, run=run, device=dev, batch=batch, flow_method=flow_method, cams=render_cam, source=path
    )
    t_pred = time.perf_counter() - t0
    n_frames = scored.frames
    merged = merge_windows(scored.starts, scored.ends, scored.probs, min_frames=min_frames)
    windows, segments = _records(scored, merged, classes, k, rate)

    def span(f: int) -> dict:
        return {"frames": f, "seconds": _seconds(f, rate)}

    result: dict[str, Any] = {
        "video": str(video),
        "model": spec.name,
        "checkpoint": str(run.path),
        "fps": rate,
        "frames": n_frames,
        "duration": _seconds(n_frames, rate),
        "window": span(w),
        "stride": span(s),
        "min_segment": span(min_frames),
        "top": k,
        "merge": MERGE_RULE,
        "windows": windows,
        "segments": segments,
    }
    if flow_stack:
        result["flow_method"] = flow_method
    if files["out"] is not None:
        dst = files["out"]
        data = _csv_bytes(result) if dst.suffix.lower() == ".csv" else (json.dumps(result, indent=1) + "\n").encode()
        _write_new(dst, data, "out")
    if files["timeline"] is not None:
        from fpar.video.timeline import timeline_figure

        _refuse_existing(files["timeline"], "timeline")
        timeline_figure(result, files["timeline"], classes)
    t_render = time.perf_counter()
    if files["render"] is not None:
        _render(
            path,
            files["render"],
            fps=rate,
            resample=fps,
            merged=merged,
            classes=classes,
            frames=n_frames,
            cams=scored.cams,
            cfg=cfg,
            progress=progress,
        )
    log.info(
        "%s: %d frames, %d windows of %d frames every %d, %d segments; predicted in %.1f s, rendered in %.1f s",
        path,
        n_frames,
        len(windows),
        w,
        s,
        len(segments),
        t_pred,
        time.perf_counter() - t_render,
    )
    result["files"] = {key: None if p is None else str(p) for key, p in files.items()}
    return result
