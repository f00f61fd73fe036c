"""Frame pairs with exactly known optical flow, to measure flow methods by their end-point error (EPE).

A pair is made from one texture by warping it with a known motion, so the flow of every pixel of the first frame is
known, and so is which pixels can be scored: those whose destination lies inside the second frame and that are not
covered by a moving object there (occluded). Motions: translations, rotations and zooms about the image centre
(the whole frame moves, like a head-mounted camera), and a textured disc moving over a static background (a hand).

Textures are smooth random noise at two scales (or a real frame, grey): TV-L1's data term needs image gradients,
and the second frame is resampled bicubically, which is exact for band-limited images.

Convention (OpenCV's): flow (H, W, 2), channel 0 = x, 1 = y, ``first[y, x] = second[y + v, x + u]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["FlowPair", "texture", "affine_pair", "object_pair", "standard_pairs", "endpoint_error"]


@dataclass
class FlowPair:
    """Two grey uint8 frames (H, W), the true flow from the first to the second (H, W, 2) float32, and the mask of
    the pixels that are scored (H, W) bool."""

    name: str
    first: np.ndarray
    second: np.ndarray
    flow: np.ndarray
    valid: np.ndarray


def texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """(H, W) float32 texture in [0, 255]: fine (σ 1.5 px) and coarse (σ 6 px) blurred noise, contrast-stretched."""
    rng = np.random.default_rng(seed)
    fine = cv2.GaussianBlur(rng.random((h, w), dtype=np.float32), (0, 0), 1.5)
    coarse = cv2.GaussianBlur(rng.random((h, w), dtype=np.float32), (0, 0), 6.0)
    t = fine / fine.std() + 0.7 * coarse / coarse.std()
    t = (t - t.min()) / (t.max() - t.min())
    return (255.0 * t).astype(np.float32)


def _render(src: np.ndarray, inverse: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Frame (H, W) whose pixel x' is ``src`` at ``inverse @ [x', 1]`` (2x3 affine), bicubic."""
    h, w = size
    out = cv2.warpAffine(
        src, inverse, (w, h), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT
    )
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def affine_pair(
    name: str,
    src: np.ndarray,
    size: tuple[int, int],
    *,
    shift: tuple[float, float] = (0.0, 0.0),
    angle_deg: float = 0.0,
    zoom: float = 1.0,
) -> FlowPair:
    """The whole frame moves: a point x of the first frame goes to ``c + zoom R(angle) (x - c) + shift`` (c the
    frame centre). ``src`` is a texture at least 16 px larger than ``size`` on each side; the first frame is its
    centre."""
    h, w = size
    sh, sw = src.shape
    if sh < h + 32 or sw < w + 32:
        raise ValueError(f"texture {src.shape} too small for frames {size}: needs 16 px of margin on each side")
    ox, oy = (sw - w) / 2.0, (sh - h) / 2.0  # first-frame pixel x is texture pixel x + o
    first = _render(src, np.array([[1.0, 0.0, ox], [0.0, 1.0, oy]]), size)
    a = np.deg2rad(angle_deg)
    A = zoom * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])  # (2, 2)
    c = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    t = c - A @ c + np.asarray(shift, float)  # x1 = A x0 + t
    # second(x1) = first(x0) = texture(A^-1 (x1 - t) + o)
    Ainv = np.linalg.inv(A)
    inverse = np.concatenate([Ainv, (-Ainv @ t + np.array([ox, oy]))[:, None]], axis=1)  # (2, 3)
    second = _render(src, inverse, size)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    x1 = A[0, 0] * xs + A[0, 1] * ys + t[0]
    y1 = A[1, 0] * xs + A[1, 1] * ys + t[1]
    flow = np.stack([x1 - xs, y1 - ys], axis=2).astype(np.float32)  # (H, W, 2)
    valid = (x1 >= 1) & (x1 <= w - 2) & (y1 >= 1) & (y1 <= h - 2)
    return FlowPair(name, first, second, flow, valid)


def object_pair(
    name: str, background: np.ndarray, obj: np.ndarray, size: tuple[int, int], *, shift: tuple[float, float]
) -> FlowPair:
    """A textured disc (radius a fifth of the short side, at the centre) moves by ``shift`` over a static
    background; background pixels the disc covers in the second frame are occluded (not scored)."""
    h, w = size
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    cx, cy, r = (w - 1) / 2.0, (h - 1) / 2.0, min(h, w) / 5.0
    dx, dy = shift
    inside0 = (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
    inside1 = (xs - cx - dx) ** 2 + (ys - cy - dy) ** 2 <= r * r
    bg = _render(background, np.array([[1.0, 0.0, 16.0], [0.0, 1.0, 16.0]]), size)
    ob0 = _render(obj, np.array([[1.0, 0.0, 16.0], [0.0, 1.0, 16.0]]), size)
    ob1 = _render(obj, np.array([[1.0, 0.0, 16.0 - dx], [0.0, 1.0, 16.0 - dy]]), size)  # the texture moves too
    first = np.where(inside0, ob0, bg)
    second = np.where(inside1, ob1, bg)
    flow = np.zeros((h, w, 2), np.float32)
    flow[inside0] = (dx, dy)
    valid = ~(inside1 & ~inside0)
    valid[:1], valid[-1:], valid[:, :1], valid[:, -1:] = False, False, False, False
    return FlowPair(name, first, second, flow, valid)


def standard_pairs(size: tuple[int, int] = (120, 160), *, real: np.ndarray | None = None) -> list[FlowPair]:
    """The pairs of tests/test_tvl1.py and benchmarks/bench_flow.py at ``size`` (H, W): a subpixel translation, a
    larger translation, a rotation, a zoom, a moving object; with ``real`` (an RGB or grey frame), the translation,
    rotation and zoom of that frame as well."""
    h, w = size
    src = texture(h + 64, w + 64, seed=1)
    pairs = [
        affine_pair("shift (0.6, -0.3) px", src, size, shift=(0.6, -0.3)),
        affine_pair("shift (3.2, 2.1) px", src, size, shift=(3.2, 2.1)),
        affine_pair("rotate 2 deg", src, size, angle_deg=2.0),
        affine_pair("zoom 1.03", src, size, zoom=1.03),
        object_pair("disc moves (2.5, -1.5) px", texture(h + 32, w + 32, 2), texture(h + 32, w + 32, 3), size,
                    shift=(2.5, -1.5)),
    ]  # fmt: skip
    if real is not None:
        grey = cv2.cvtColor(real, cv2.COLOR_RGB2GRAY) if real.ndim == 3 else real
        big = cv2.resize(grey, (w + 64, h + 64), interpolation=cv2.INTER_AREA).astype(np.float32)
        pairs += [
            affine_pair("real: shift (1.4, 0.7) px", big, size, shift=(1.4, 0.7)),
            affine_pair("real: rotate 1.5 deg", big, size, angle_deg=1.5),
            affine_pair("real: zoom 0.97", big, size, zoom=0.97),
        ]
    return pairs


def endpoint_error(flow: np.ndarray, pair: FlowPair) -> float:
    """Mean end-point error (px) of ``flow`` (H, W, 2) over the pair's valid pixels."""
    err = np.linalg.norm(flow.astype(np.float64) - pair.flow, axis=2)  # (H, W)
    return float(err[pair.valid].mean())
