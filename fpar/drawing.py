"""Pictures shared by `fpar cam` (experiments), `fpar data show` (data) and `fpar predict --cam` (video): attention
overlays and their labels.

Below all three layers (it knows arrays, not models): numpy and OpenCV only. Every label goes through
:func:`fit_text`, which measures the text with ``cv2.getTextSize`` and scales it down, then wraps it, so that no
label runs off a picture, at 224 px or at 64 px.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX
SCALE = 0.42  # the labels' size when they fit: capitals 11 px high
MIN_SCALE = 0.3  # the smallest size that stays legible (capitals 8 px high); narrower bands wrap instead
PAD = 4  # pixels between the text and each edge of its band (anti-aliasing reaches one pixel past the measured box)
BREAKS = "/_-.,:"  # where a word too wide for its band is cut first (paths, class names, run names)
Colour = tuple[int, int, int]
BLACK: Colour = (0, 0, 0)
WHITE: Colour = (255, 255, 255)
GREEN: Colour = (0, 110, 0)  # a correct prediction (dark enough for white bands)
RED: Colour = (180, 0, 0)  # a wrong prediction


@dataclass(frozen=True)
class FittedText:
    """Text laid out for a band: ``lines`` top to bottom, ``paragraph[i]`` the input line that ``lines[i]`` comes
    from, drawn at font ``scale``. Every line is at most ``width - 2 * PAD`` pixels wide at that scale."""

    lines: list[str]
    paragraph: list[int]
    scale: float
    width: int

    @property
    def ascent(self) -> int:
        return cv2.getTextSize("Hg", FONT, self.scale, 1)[0][1]

    @property
    def line_height(self) -> int:
        (_, h), descent = cv2.getTextSize("Hg", FONT, self.scale, 1)
        return h + descent + max(2, round(6 * self.scale))

    @property
    def height(self) -> int:
        """The band's height: every line plus PAD above and below."""
        return 2 * PAD + max(len(self.lines), 1) * self.line_height - max(2, round(6 * self.scale))


def text_width(text: str, scale: float) -> int:
    """Width in pixels of ``text`` drawn with the labels' font at ``scale`` (thickness 1)."""
    return cv2.getTextSize(text, FONT, scale, 1)[0][0]


def _cut(word: str, room: int, scale: float) -> list[str]:
    """``word`` in pieces no wider than ``room``: each cut after the last of BREAKS that leaves a piece at least half
    as long as the longest one that fits, else at characters."""
    pieces = []
    while text_width(word, scale) > room:
        k = len(word) - 1
        while k > 1 and text_width(word[:k], scale) > room:
            k -= 1
        j = max(word.rfind(c, 0, k) for c in BREAKS) + 1  # 0: no separator before the cut
        k = j if j >= max(k // 2, 1) else k
        pieces.append(word[:k])
        word = word[k:]
    return [*pieces, word] if word else pieces


def fit_text(
    text: str | Sequence[str], width: int, *, scale: float = SCALE, min_scale: float = MIN_SCALE
) -> FittedText:
    """Lay ``text`` out in a band ``width`` pixels wide.

    The scale is the largest of ``scale``, ``scale - 0.02``, ... ``min_scale`` at which every word fits whole on a
    line; words are then joined greedily into lines. A word wider than the band even at ``min_scale`` (a long path)
    is cut, after a ``/``, ``_``, ``-``, ``.``, ``,`` or ``:`` where possible.

    Args:
        text: one paragraph, or several (each starts a new line: the video, the true class, the prediction).
        width: the band's width in pixels.
    Raises:
        ValueError: for a band too narrow for one character at ``min_scale``.
    """
    paragraphs = [text] if isinstance(text, str) else list(text)
    if not 0 < min_scale <= scale:
        raise ValueError(f"expected 0 < min_scale <= scale, got min_scale={min_scale}, scale={scale}")
    room = width - 2 * PAD
    if room < text_width("W", min_scale):
        raise ValueError(f"expected a band at least {text_width('W', min_scale) + 2 * PAD} px wide, got {width}")
    words = [w for p in paragraphs for w in p.split()]
    s = scale
    while s - 0.02 >= min_scale - 1e-9 and any(text_width(w, s) > room for w in words):
        s = round(s - 0.02, 4)
    if any(text_width(w, s) > room for w in words):  # min_scale off the 0.02 steps: cut words at min_scale itself
        s = min_scale
    lines: list[str] = []
    source: list[int] = []
    for i, p in enumerate(paragraphs):
        start = len(lines)
        for word in p.split():
            pieces = _cut(word, room, s) if text_width(word, s) > room else [word]
            for k, piece in enumerate(pieces):
                if k == 0 and len(lines) > start and text_width(f"{lines[-1]} {piece}", s) <= room:
                    lines[-1] = f"{lines[-1]} {piece}"
                else:
                    lines.append(piece)
                    source.append(i)
        if len(lines) == start:  # an empty paragraph keeps its (blank) line
            lines.append("")
            source.append(i)
    return FittedText(lines, source, s, width)


def draw_text(
    image: np.ndarray,
    fitted: FittedText,
    *,
    x: int = 0,
    y: int = 0,
    colours: Sequence[Colour] | None = None,
    halo: Colour | None = None,
) -> np.ndarray:
    """Draw ``fitted`` into ``image`` (in place, and returned) with its band's top-left corner at (``x``, ``y``).

    Args:
        colours: one per paragraph of the fitted text (default black).
        halo: a 2-pixel outline under the text, for labels drawn over pictures rather than on a plain band.
    """
    for i, line in enumerate(fitted.lines):
        org = (x + PAD, y + PAD + fitted.ascent + i * fitted.line_height)
        colour = colours[fitted.paragraph[i]] if colours is not None else BLACK
        if halo is not None:
            cv2.putText(image, line, org, FONT, fitted.scale, halo, 2, cv2.LINE_AA)
        cv2.putText(image, line, org, FONT, fitted.scale, colour, 1, cv2.LINE_AA)
    return image


def wrapped_band(
    width: int,
    text: str | Sequence[str],
    *,
    scale: float = SCALE,
    min_scale: float = MIN_SCALE,
    colours: Sequence[Colour] | None = None,
    height: int | None = None,
) -> np.ndarray:
    """A white (H, ``width``, 3) uint8 band holding ``text`` laid out by :func:`fit_text`, so that labels never
    run off a small picture. ``height`` (at least the text's) makes bands of one row equally tall."""
    fitted = fit_text(text, width, scale=scale, min_scale=min_scale)
    band = np.full((max(fitted.height, height or 0), width, 3), 255, np.uint8)
    return draw_text(band, fitted, colours=colours)


def caption(
    image: np.ndarray, lines: str | Sequence[str], *, above: bool = False, colours: Sequence[Colour] | None = None
) -> np.ndarray:
    """``image`` (H, W, 3) uint8 with a white band of ``lines`` under it (or ``above``): (H + h, W, 3), the text
    scaled down and wrapped to W (see :func:`fit_text`), so it fits a 64 px crop as well as a 224 px one."""
    band = wrapped_band(image.shape[1], lines, colours=colours)
    return np.concatenate([band, image] if above else [image, band], 0)


def stamp(image: np.ndarray, text: str, *, scale: float = 0.4) -> np.ndarray:
    """A copy of ``image`` with ``text`` written in its top-left corner (black on a white halo), scaled down and
    wrapped to the image's width."""
    fitted = fit_text(text, image.shape[1], scale=scale)
    return draw_text(image.copy(), fitted, x=0, y=0, halo=WHITE)


def overlay(image: np.ndarray, attn: np.ndarray) -> np.ndarray:
    """The original visualisation: min-max scaled map, resized to the crop, JET colour map, 0.3 heat + 0.5 image.

    image (H, W, 3) uint8 RGB, attn (h, w) float -> (H, W, 3) uint8 RGB."""
    a = attn - attn.min()
    a = (255 * a / max(a.max(), 1e-12)).astype(np.uint8)
    a = cv2.resize(a, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    heat = cv2.cvtColor(cv2.applyColorMap(a, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return np.clip(0.3 * heat + 0.5 * image, 0, 255).astype(np.uint8)


def label_overlay(
    image: np.ndarray, attn: np.ndarray, lines: str | Sequence[str], *, colours: Sequence[Colour] | None = None
) -> np.ndarray:
    """:func:`overlay` of ``attn`` on ``image`` (H, W, 3) with :func:`caption` ``lines`` under it: (H + h, W, 3)
    uint8 RGB, e.g. ``prediction_lines(...)`` plus the frame number for `fpar predict --cam`."""
    return caption(overlay(image, attn), lines, colours=colours)


def format_score(p: float) -> str:
    """A softmax probability as a percentage with one decimal: 0.4321 -> ``43.2%``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"expected a probability in [0, 1], got {p}")
    return f"{100 * p:.1f}%"


def prediction_lines(
    video: str, predictions: Sequence[tuple[str, str, float]], *, truth: str | None = None
) -> list[str]:
    """The caption of a CAM picture, one paragraph per fact::

        ["video S2/take_cup/1", "true take_cup", "ego_rnn: predicted put_cup 43.2% (wrong)"]

    Args:
        video: the video's name (its key, clip name or file name).
        predictions: (model, predicted class, softmax probability) per model shown; an empty model name drops the
            ``model:`` prefix (a picture of one model).
        truth: the true class, when known; then each prediction says whether it is right.
    """
    lines = [f"video {video}"]
    if truth is not None:
        lines.append(f"true {truth}")
    for model, label, p in predictions:
        verdict = "" if truth is None else " (correct)" if label == truth else " (wrong)"
        lines.append(f"{model + ': ' if model else ''}predicted {label} {format_score(p)}{verdict}")
    return lines


def grey_tile(m: np.ndarray, size: int) -> np.ndarray:
    """A map in [0, 1] (s, s) as a (size, size, 3) grey RGB tile (nearest-neighbour upscaling)."""
    g = (255 * np.clip(m, 0, 1)).astype(np.uint8)
    g = cv2.resize(g, (size, size), interpolation=cv2.INTER_NEAREST)
    return cv2.cvtColor(g, cv2.COLOR_GRAY2RGB)


def title_row(titles: Sequence[str], col_width: int) -> np.ndarray:
    """Column titles over tiles ``col_width`` wide, each wrapped to its column, all at the scale of the one that
    needs the smallest (so the row reads as one); one height for the whole row."""
    scale = min(fit_text(t, col_width).scale for t in titles)
    fitted = [fit_text(t, col_width, scale=scale, min_scale=scale) for t in titles]
    h = max(f.height for f in fitted)
    bands = [draw_text(np.full((h, col_width, 3), 255, np.uint8), f) for f in fitted]
    return np.concatenate(bands, 1)
