"""The 8-bit grey flow image codec shared by the whole toolkit (no OpenCV needed).

A flow component ``f`` (pixels) is stored as ``v = round(128 + 255 * f / (2 * bound))`` clipped to [0, 255] and read
back as ``f = (v - 128) * 2 * bound / 255``. With the default ``bound = 20`` px: 0 -> 128, +20 -> 255, -20 -> 0, and
the quantisation step is 40 / 255 ~ 0.157 px. Rounding is half-to-even (``np.rint``, like Python's ``round``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["encode_flow", "decode_flow"]


def encode_flow(f: np.ndarray, bound: float = 20.0) -> np.ndarray:
    """Encode a flow array (any shape, pixels) as uint8 grey values of the same shape.

    Values beyond +-``bound`` saturate at 255 / 0; NaN is stored as 128 (no motion).
    """
    if bound <= 0:
        raise ValueError(f"bound must be > 0, got {bound}")
    f = np.nan_to_num(np.asarray(f, dtype=np.float64), nan=0.0, posinf=bound, neginf=-bound)
    v = np.rint(128.0 + 255.0 * f / (2.0 * bound))
    return np.clip(v, 0, 255).astype(np.uint8)


def decode_flow(img: np.ndarray, bound: float = 20.0) -> np.ndarray:
    """Decode uint8 grey flow values (any shape) back to float32 pixels: ``(v - 128) * 2 * bound / 255``."""
    if bound <= 0:
        raise ValueError(f"bound must be > 0, got {bound}")
    v = np.asarray(img).astype(np.float32)
    return ((v - 128.0) * np.float32(2.0 * bound / 255.0)).astype(np.float32)
