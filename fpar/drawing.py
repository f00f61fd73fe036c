"""Pictures shared by `fpar cam` (experiments) and `fpar predict --cam` (video): attention overlays and labels.

Below both layers (it knows arrays, not models): numpy and OpenCV only.
"""

from __future__ import annotations

import cv2
import numpy as np


def overlay(image: np.ndarray, attn: np.ndarray) -> np.ndarray:
    """The original visualisation: min-max scaled map, resized to the crop, JET colour map, 0.3 heat + 0.5 image.

    image (H, W, 3) uint8 RGB, attn (h, w) float -> (H, W, 3) uint8 RGB."""
    a = attn - attn.min()
    a = (255 * a / max(a.max(), 1e-12)).astype(np.uint8)
    a = cv2.resize(a, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    heat = cv2.cvtColor(cv2.applyColorMap(a, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return np.clip(0.3 * heat + 0.5 * image, 0, 255).astype(np.uint8)


def grey_tile(m: np.ndarray, size: int) -> np.ndarray:
    """A map in [0, 1] (s, s) as a (size, size, 3) grey RGB tile (nearest-neighbour upscaling)."""
    g = (255 * np.clip(m, 0, 1)).astype(np.uint8)
    g = cv2.resize(g, (size, size), interpolation=cv2.INTER_NEAREST)
    return cv2.cvtColor(g, cv2.COLOR_GRAY2RGB)


def text_band(width: int, texts: list[tuple[int, str]], height: int = 22) -> np.ndarray:
    """A white (height, width, 3) band with black text at the given x offsets."""
    band = np.full((height, width, 3), 255, np.uint8)
    for x, t in texts:
        cv2.putText(band, t, (x + 4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    return band
