"""Decoding of the three image modalities, with one-line errors that name the file."""

from __future__ import annotations

import os

import cv2
import numpy as np

from ..errors import FparError

cv2.setNumThreads(1)  # decoding runs inside DataLoader workers; let torch own the cores


class ImageError(FparError):
    """An image fpar cannot use; ``kind`` is ``unreadable_image`` (missing, unreadable, truncated, not an image) or
    ``colour_flow`` (a flow image that is not 8-bit grey), the `fpar data check` problem kind."""

    def __init__(self, message: str, kind: str = "unreadable_image"):
        super().__init__(message)
        self.kind = kind


def _read(path: str, flag: int) -> np.ndarray:
    img = cv2.imread(path, flag)
    if img is None:
        if not os.path.exists(path):
            raise ImageError(f"image {path} is missing; re-run `fpar data check` on the dataset")
        if not os.access(path, os.R_OK):
            raise ImageError(f"image {path} cannot be read (permission denied); fix its permissions (chmod a+r)")
        raise ImageError(f"image {path} cannot be decoded (truncated or not an image); replace or delete it")
    return img


def read_rgb(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    img = _read(path, cv2.IMREAD_COLOR)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


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
