"""Decoding of the three image modalities, with one-line errors that name the file."""

from __future__ import annotations

import cv2
import numpy as np

from ..errors import FparError

cv2.setNumThreads(1)  # decoding runs inside DataLoader workers; let torch own the cores


def _read(path: str, flag: int) -> np.ndarray:
    img = cv2.imread(path, flag)
    if img is None:
        import os

        if not os.path.exists(path):
            raise FparError(f"image {path} is missing; re-run `fpar data check` on the dataset")
        raise FparError(f"image {path} cannot be decoded (truncated or not an image); replace or delete it")
    return img


def read_rgb(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    img = _read(path, cv2.IMREAD_COLOR)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_grey(path: str) -> np.ndarray:
    """(H, W) uint8. GTEA61 stores flows as 3-channel PNGs with equal channels: they are read as grey."""
    return _read(path, cv2.IMREAD_GRAYSCALE)


def read_mmap(path: str) -> np.ndarray:
    """(H, W) uint8 in {0, 1}. Thresholded explicitly at 127 (no dithering, unlike PIL's convert('1'))."""
    return (_read(path, cv2.IMREAD_GRAYSCALE) > 127).astype(np.uint8)
