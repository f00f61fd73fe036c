"""Reading videos (PyAV) and frame folders into RGB uint8 arrays.

Every function returns frames as ``(H, W, 3)`` uint8 RGB arrays. Problems with the user's files (missing, not a
video, undecodable, empty) raise :class:`~fpar.errors.FparError` naming the file and saying what to do.
"""

from __future__ import annotations

import heapq
import logging
import os
import re
from collections import deque
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from fpar.data.frames import rgb_converter
from fpar.errors import FparError

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "iter_video",
    "read_video",
    "video_info",
    "list_frame_files",
    "iter_frame_folder",
    "read_frame_folder",
    "resize_short_side",
    "natural_key",
]

log = logging.getLogger(__name__)

# The largest shorter side fpar resizes frames to (an 8K frame's): a typo of 100000 would allocate tens of GB
MAX_SHORT_SIDE = 4320
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (
    ".mp4",
    ".avi",
    ".mov",
    ".mkv",
    ".webm",
    ".m4v",
    ".mpg",
    ".mpeg",
    ".wmv",
    ".flv",
    ".3gp",
    ".ts",
    ".mts",
    ".ogv",
)

# Tolerance (seconds) when comparing frame timestamps with start / end / resampling targets: timestamps come from
# rational time bases converted to float, so exact equalities can be off by a few ulps.
_EPS = 1e-6

_REORDER = 16  # frames of look-ahead used to re-sort timestamps (B-frame reordering depth is far smaller)

_REENCODE_HINT = "re-encode it, e.g. `ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT.mp4`"


def natural_key(name: str) -> list:
    """Sort key that orders embedded numbers numerically: ``img2`` < ``img10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def resize_short_side(img: np.ndarray, short_side: int | None) -> np.ndarray:
    """Resize ``img`` so that its shorter side equals ``short_side`` (aspect kept, long side rounded).

    Uses area interpolation when shrinking and bilinear when enlarging; returns ``img`` itself when the size already
    matches or ``short_side`` is None.
    """
    if short_side is None:
        return img
    import cv2

    short_side = int(short_side)
    if short_side <= 0:
        raise ValueError(f"short_side must be a positive integer, got {short_side}")
    h, w = img.shape[:2]
    if min(h, w) == short_side:
        return img
    if h <= w:
        nh, nw = short_side, max(1, int(round(w * short_side / h)))
    else:
        nh, nw = max(1, int(round(h * short_side / w))), short_side
    interp = cv2.INTER_AREA if short_side < min(h, w) else cv2.INTER_LINEAR
    return cv2.resize(img, (nw, nh), interpolation=interp)


def _check_range(path: Path, start: float | None, end: float | None, fps: float | None, max_frames: int | None):
    if start is not None and start < 0:
        raise FparError(f"{path}: start={start} s is negative; give a start time >= 0 seconds")
    if start is not None and end is not None and end <= start:
        raise FparError(f"{path}: end={end} s is not after start={start} s; give end > start (seconds)")
    if fps is not None and not fps > 0:
        raise FparError(f"{path}: fps={fps} is not positive; give a target frame rate > 0 or leave it unset")
    if max_frames is not None and max_frames < 0:
        raise FparError(f"{path}: max_frames={max_frames} is negative")


def iter_video(
    path: str | os.PathLike,
    *,
    fps: float | None = None,
    short_side: int | None = None,
    start: float | None = None,
    end: float | None = None,
    max_frames: int | None = None,
) -> Iterator[np.ndarray]:
    """Decode ``path`` lazily, yielding RGB uint8 ``(H, W, 3)`` frames; see :func:`read_video` for the options.

    The arguments and the file's existence are checked at call time; decoding errors surface while iterating.
    """
    path = Path(path)
    _check_range(path, start, end, fps, max_frames)
    if not path.is_file():
        raise FparError(f"video file not found: {path}; check the path (or the CSV's `video` column)")
    return _iter_video(path, fps, short_side, start, end, max_frames)


def _iter_video(path, fps, short_side, start, end, max_frames) -> Iterator[np.ndarray]:
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise FparError(f"cannot open video {path} ({e}); check it is a video file or {_REENCODE_HINT}") from e
    try:
        if not container.streams.video:
            raise FparError(f"{path} has no video stream; give a video file (audio-only and image files are not)")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame + slice threading: decoding is otherwise the bottleneck for HD input
        yield from _decode(container, stream, path, fps, short_side, start, end, max_frames)
    except av.error.FFmpegError as e:
        raise FparError(f"error while decoding video {path} ({e}); the file may be truncated, {_REENCODE_HINT}") from e
    finally:
        container.close()


def _decode(container, stream, path, fps, short_side, start, end, max_frames) -> Iterator[np.ndarray]:
    import av

    if max_frames == 0:
        return
    tb = stream.time_base or Fraction(1, 1)
    t0 = float(stream.start_time * tb) if stream.start_time is not None else 0.0
    rate = float(stream.average_rate or stream.guessed_rate or 25)
    if start:
        # Seek to the keyframe before `start` (backward=True); the frames before `start` are decoded and dropped below,
        # so an imprecise seek costs time but never changes the result. Some containers cannot seek: decode from 0.
        try:
            container.seek(int((start + t0) / tb), stream=stream, backward=True, any_frame=False)
        except (av.error.FFmpegError, OverflowError, ValueError) as e:
            log.debug("seek failed in %s (%s); decoding from the beginning", path, e)
            container.seek(0)

    def timed_frames() -> Iterator[tuple[float, object]]:
        # Decoders emit frames in display order, but some containers (e.g. AVI with packed B-frames) attach the
        # timestamps in a locally permuted order (1, 2, 4, 3, 5, 7, 6, ...). The set of timestamps is right, so the
        # k-th emitted frame gets the k-th smallest one: a small reorder window (heap) restores it, and is the
        # identity for well-formed streams.
        window: deque = deque()
        heap: list[float] = []
        for index, frame in enumerate(container.decode(stream)):
            ts = frame.pts if frame.pts is not None else frame.dts
            heapq.heappush(heap, (float(ts * tb) - t0) if ts is not None else index / rate)
            window.append(frame)
            if len(window) > _REORDER:
                yield heapq.heappop(heap), window.popleft()
        while window:
            yield heapq.heappop(heap), window.popleft()

    def selected() -> Iterator[tuple[float, object]]:
        for t, frame in timed_frames():
            if start is not None and t < start - _EPS:
                continue
            if end is not None and t >= end - _EPS:
                return
            yield t, frame

    convert = rgb_converter()  # not frame.to_ndarray: fork-safe (fpar.data.frames.rgb_converter)

    def to_rgb(frame) -> np.ndarray:
        return resize_short_side(convert(frame), short_side)

    emitted = 0
    if fps is None:
        for _, frame in selected():
            yield to_rgb(frame)
            emitted += 1
            if max_frames is not None and emitted >= max_frames:
                return
        return

    # Resampling to `fps`: the output frame k shows the latest source frame whose timestamp is <= target_k, with
    # target_k = t_first + k / fps. Downsampling drops frames, upsampling repeats them; the clip keeps its duration.
    step = 1.0 / float(fps)
    prev_t = prev_frame = None
    prev_rgb = None
    k = 0
    t_first = None
    for t, frame in selected():
        if t_first is None:
            t_first = t
        if prev_frame is not None:
            while t_first + k * step < t - _EPS:  # targets strictly before this frame belong to the previous frame
                if prev_rgb is None:
                    prev_rgb = to_rgb(prev_frame)
                yield prev_rgb
                k += 1
                emitted += 1
                if max_frames is not None and emitted >= max_frames:
                    return
        prev_t, prev_frame, prev_rgb = t, frame, None
    if prev_frame is None:
        return
    while t_first + k * step <= prev_t + _EPS:  # the last frame serves the targets up to its own timestamp
        if prev_rgb is None:
            prev_rgb = to_rgb(prev_frame)
        yield prev_rgb
        k += 1
        emitted += 1
        if max_frames is not None and emitted >= max_frames:
            return


def video_info(path: str | os.PathLike) -> dict:
    """What the container says about the first video stream, without decoding: ``{"fps": float | None (the
    stream's average frame rate), "frames": int | None (the container's count; an estimate for some files),
    "width", "height"}``.

    Raises:
        FparError: the file is missing, is not a video or has no video stream.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise FparError(f"video file not found: {path}; check the path")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise FparError(f"{path} has no video stream; give a video file (audio-only and image files are not)")
            s = container.streams.video[0]
            rate = s.average_rate or s.guessed_rate
            return {
                "fps": float(rate) if rate else None,
                "frames": int(s.frames) if s.frames else None,
                "width": int(s.codec_context.width),
                "height": int(s.codec_context.height),
            }
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise FparError(f"cannot open video {path} ({e}); check it is a video file or {_REENCODE_HINT}") from e


def read_video(
    path: str | os.PathLike,
    *,
    fps: float | None = None,
    short_side: int | None = None,
    start: float | None = None,
    end: float | None = None,
    max_frames: int | None = None,
) -> list[np.ndarray]:
    """Decode a video file (any format PyAV/FFmpeg reads) into a list of RGB uint8 ``(H, W, 3)`` frames.

    Args:
        fps: resample to this frame rate by timestamp (frame k = latest source frame at or before
            ``t_first + k / fps``); None keeps every decoded frame.
        short_side: resize every frame so its shorter side equals this (aspect kept); None keeps the size.
        start, end: keep only frames with ``start <= t < end`` (seconds from the start of the stream).
        max_frames: stop after this many output frames.

    Raises:
        FparError: the file is missing, is not a video, or cannot be decoded.
    """
    return list(iter_video(path, fps=fps, short_side=short_side, start=start, end=end, max_frames=max_frames))


def list_frame_files(path: str | os.PathLike) -> list[Path]:
    """Image files of a frame folder in natural order, ignoring hidden files and names containing ``(``.

    Names with ``(`` are the ``frame (1).png`` duplicates that file managers create when copying; they are never
    frames of the sequence.
    """
    path = Path(path)
    if not path.is_dir():
        raise FparError(f"frame folder not found: {path}; give a folder of images (e.g. rgb0001.png, rgb0002.png, ...)")
    files = [
        p
        for p in path.iterdir()
        if not p.name.startswith(".") and "(" not in p.name and p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    ]
    files.sort(key=lambda p: natural_key(p.name))
    return files


def _read_image_rgb(p: Path) -> np.ndarray:
    import cv2

    try:
        data = np.fromfile(str(p), dtype=np.uint8)
    except OSError as e:
        raise FparError(f"cannot read image {p} ({e}); check the file permissions") from e
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise FparError(f"cannot decode image {p}; the file is empty or corrupt, delete or replace it")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def iter_frame_folder(path: str | os.PathLike, *, short_side: int | None = None) -> Iterator[np.ndarray]:
    """Lazily read a frame folder (see :func:`read_frame_folder`), optionally resizing to ``short_side``.

    The folder is listed (and an empty folder rejected) at call time; unreadable images raise while iterating.
    """
    files = list_frame_files(path)
    if not files:
        raise FparError(f"no image files in frame folder {path}; expected {', '.join(IMAGE_EXTENSIONS)} files")
    return _iter_files(Path(path), files, short_side)


def _iter_files(path: Path, files: list[Path], short_side: int | None) -> Iterator[np.ndarray]:
    size = None
    for p in files:
        img = resize_short_side(_read_image_rgb(p), short_side)
        if size is None:
            size = img.shape[:2]
        elif img.shape[:2] != size:
            raise FparError(
                f"{p} is {img.shape[1]}x{img.shape[0]} but earlier frames of {path} are "
                f"{size[1]}x{size[0]}; all frames of a sequence must have the same size"
            )
        yield img


def read_frame_folder(path: str | os.PathLike) -> list[np.ndarray]:
    """Read every image of a frame folder (natural sort; hidden files and names with ``(`` skipped) as RGB uint8.

    Raises:
        FparError: the folder is missing or empty, an image cannot be decoded, or frame sizes differ.
    """
    return list(iter_frame_folder(path))
