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


def wrapped_band(width: int, text: str, line_height: int = 18) -> np.ndarray:
    """A white band holding ``text`` wrapped to ``width`` pixels (words kept whole; a word wider than the band is
    cut at characters), so that labels never run off a small picture."""
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.42

    def fits(t: str) -> bool:
        return cv2.getTextSize(t, font, scale, 1)[0][0] <= width - 8

    lines: list[str] = []
    for word in text.split():
        while not fits(word):  # one long word (a path): split it
            k = max(1, len(word) - 1)
            while k > 1 and not fits(word[:k]):
                k -= 1
            lines.append(word[:k])
            word = word[k:]
        if lines and fits(f"{lines[-1]} {word}"):
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    band = np.full((line_height * max(len(lines), 1) + 6, width, 3), 255, np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(band, line, (4, 14 + i * line_height), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return band


def title_row(titles: list[str], col_width: int) -> np.ndarray:
    """Column titles over tiles ``col_width`` wide, each wrapped to its column; one height for the whole row."""
    bands = [wrapped_band(col_width, t) for t in titles]
    h = max(b.shape[0] for b in bands)
    bands = [np.concatenate([b, np.full((h - b.shape[0], col_width, 3), 255, np.uint8)], 0) for b in bands]
    return np.concatenate(bands, 1)
