"""Decoding of the three image modalities, with one-line errors that name the file."""

from __future__ import annotations

import os

import cv2
import numpy as np

from ..errors import FparError
from .frames import is_video, read_tar_member, read_video_frames, split_ref

cv2.setNumThreads(1)  # decoding runs inside DataLoader workers; let torch own the cores
# OpenCV >= 4.11 decodes straight to RGB (the same pixels as BGR + cvtColor, one pass fewer over each frame)
_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)

try:  # the `fast-png` extra: libspng decodes an 8-bit PNG frame about 20% faster than OpenCV's libpng
    import pyspng
except ImportError:  # pragma: no cover - depends on the install
    pyspng = None

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_8BIT_RGB = b"\x08\x02"  # IHDR bit depth 8, colour type 2 (truecolour, no alpha): GTEA61's and fpar's own frames


def _read_png_rgb(path: str) -> np.ndarray | None:
    """(H, W, 3) uint8 RGB of an 8-bit truecolour PNG file, decoded by libspng; None for anything else (another
    kind of PNG or image, a member of a tar or video, a file that is missing or that libspng refuses), which OpenCV
    then decodes as before, with its one-line errors. PNG is lossless: both decoders give the same pixels (checked
    in tests/test_sampling_transforms.py)."""
    if pyspng is None or split_ref(path) is not None or not path.lower().endswith(".png"):
        return None
    try:
        with open(path, "rb") as fh:
            # signature, then the IHDR chunk: length (4), "IHDR", width, height (4 each), bit depth (byte 24),
            # colour type (25); only this much is read of a PNG that OpenCV will decode
            head = fh.read(33)
            if len(head) < 33 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR" or head[24:26] != _PNG_8BIT_RGB:
                return None
            data = head + fh.read()
    except OSError:
        return None
    try:
        img = pyspng.load(data)
    except Exception:  # libspng's errors are plain RuntimeErrors/ValueErrors; OpenCV gets the file and says why
        return None
    return img if img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8 else None


_JPEG_SOI, _JPEG_EOI = b"\xff\xd8", b"\xff\xd9"
_JPEG_TAIL = 1024  # the end-of-image marker is looked for this far from the end (some writers pad after it)


def _jpeg_cut(head: bytes, tail: bytes) -> bool:
    """Whether a file that starts with ``head`` and ends with ``tail`` (its last `_JPEG_TAIL` bytes) is a JPEG cut
    short: no end-of-image marker. libjpeg decodes such a file all the same, the missing rows grey, and only warns on
    stderr ("Premature end of JPEG file"), so a cut frame would be trained on; fpar refuses it, naming the file.
    (In the entropy-coded data a 0xFF byte is always followed by 0x00 or a restart marker, never by 0xD9.)"""
    return head[:2] == _JPEG_SOI and _JPEG_EOI not in tail


def _jpeg_file_cut(path: str) -> bool:
    if not path.lower().endswith((".jpg", ".jpeg")):
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - _JPEG_TAIL))
            return _jpeg_cut(head, fh.read())
    except OSError:
        return False  # cv2.imread fails on it and _read says why


class ImageError(FparError):
    """An image fpar cannot use; ``kind`` is ``unreadable_image`` (missing, unreadable, truncated, not an image) or
    ``colour_flow`` (a flow image that is not 8-bit grey), the `fpar data check` problem kind."""

    def __init__(self, message: str, kind: str = "unreadable_image"):
        super().__init__(message)
        self.kind = kind


def _read(path: str, flag: int) -> np.ndarray:
    ref = split_ref(path)
    if ref is not None:
        return _read_member(path, *ref, flag)
    if _jpeg_file_cut(path):
        raise ImageError(f"image {path} is a JPEG cut short (no end-of-image marker); replace or delete it")
    img = cv2.imread(path, flag)
    if img is None:
        if not os.path.exists(path):
            raise ImageError(f"image {path} is missing; re-run `fpar data check` on the dataset")
        if not os.access(path, os.R_OK):
            raise ImageError(f"image {path} cannot be read (permission denied); fix its permissions (chmod a+r)")
        raise ImageError(f"image {path} cannot be decoded (truncated or not an image); replace or delete it")
    return img


def _read_member(ref: str, container: str, member: str, flag: int) -> np.ndarray:
    """A frame inside a tar (``TAR::MEMBER``) or a video (``VIDEO::K``), as cv2.imread would return it."""
    if is_video(container):
        rgb = read_video_frames(container, [int(member)])[int(member)]
        if flag == _IMREAD_RGB:
            return rgb
        if flag == cv2.IMREAD_COLOR:
            return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    try:
        data = read_tar_member(container, member)
    except FparError as e:
        raise ImageError(str(e)) from None
    if _jpeg_cut(data[:2], data[-_JPEG_TAIL:]):
        raise ImageError(f"image {ref} is a JPEG cut short (no end-of-image marker); download its tar again")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if img is None:
        raise ImageError(f"image {ref} cannot be decoded (truncated or not an image); download its tar again")
    return img


def read_rgb_many(paths: list[str]) -> list[np.ndarray]:
    """`read_rgb` of several frames; the frames of one video file are decoded in one pass."""
    videos: dict[str, list[int]] = {}
    for p in paths:
        ref = split_ref(p)
        if ref is not None and is_video(ref[0]):
            videos.setdefault(ref[0], []).append(int(ref[1]))
    if not videos:
        return [read_rgb(p) for p in paths]
    decoded = {v: read_video_frames(v, idx) for v, idx in videos.items()}
    out = []
    for p in paths:
        ref = split_ref(p)
        out.append(decoded[ref[0]][int(ref[1])] if ref is not None and ref[0] in decoded else read_rgb(p))
    return out


def read_rgb(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    img = _read_png_rgb(path)
    if img is not None:
        return img
    if _IMREAD_RGB is not None:
        return _read(path, _IMREAD_RGB)
    return cv2.cvtColor(_read(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def read_grey(path: str) -> np.ndarray:
    """(H, W) uint8. GTEA61 stores flows as 3-channel PNGs with equal channels: they are read as grey. A flow image
    whose channels differ (a colour-coded flow picture, not fpar's 8-bit encoding) is refused, naming the file."""
    img = _read(path, cv2.IMREAD_UNCHANGED)
    if img.ndim == 3:
        if img.shape[2] == 4:
            img = img[..., :3]
        if img.shape[2] == 3 and not (
            np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2])
        ):
            raise ImageError(
                f"flow image {path} is in colour (its channels differ): fpar reads warp flow as 8-bit grey, "
                "v = 128 + 255 * f / 40 (GTEA61 stores equal channels); re-export it as grey (fpar prepare does)",
                "colour_flow",
            )
        img = img[..., 0]
    if img.dtype != np.uint8:
        raise ImageError(f"flow image {path} has {img.dtype} pixels; fpar reads 8-bit grey flow images", "colour_flow")
    return img


def read_mmap(path: str) -> np.ndarray:
    """(H, W) uint8 in {0, 1}. Thresholded explicitly at 127 (no dithering, unlike PIL's convert('1'))."""
    return (_read(path, cv2.IMREAD_GRAYSCALE) > 127).astype(np.uint8)
