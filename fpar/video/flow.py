"""Optical flow, camera-motion compensation ("warp flow") and binary motion maps.

Conventions (OpenCV's): a flow ``F`` from ``prev`` to ``next`` is ``(H, W, 2)`` float32 pixels, channel 0 = x
(right), channel 1 = y (down), such that ``prev[y, x] ~ next[y + F[y, x, 1], x + F[y, x, 0]]``.

Warp flow (camera motion removed), the approach of improved dense trajectories:

1. track corners of ``prev`` into ``next`` with pyramidal Lucas-Kanade, keep the pairs that survive a
   forward-backward check, and fit the dominant homography ``H`` (``next ~ H prev``) with RANSAC: the background is
   the largest consistently moving structure, moving hands / objects are the RANSAC outliers;
2. warp ``next`` back into ``prev``'s frame with ``H`` (``warped(x) = next(H x)``): the camera motion is undone, so
   a static scene under camera shake becomes (nearly) identical to ``prev``;
3. compute the optical flow from ``prev`` to the warped frame: what remains is the motion of independently moving
   things, relative to the background. Pixels whose source ``H x`` falls outside ``next`` carry no information and get
   zero flow.

Warping and re-estimating (rather than subtracting the homography's flow from the raw flow) keeps the residual flow
small, where flow estimators are most accurate, and costs the same single dense-flow computation.
"""

from __future__ import annotations

import threading
from typing import Any

import cv2
import numpy as np

from fpar.errors import FparError

__all__ = [
    "FLOW_METHODS",
    "to_grey",
    "compute_flow",
    "compute_flows",
    "estimate_camera_homography",
    "compensate_camera",
    "warp_flow",
    "warp_flows",
    "motion_map",
]

# tvl1-torch: the same TV-L1 in PyTorch (fpar.video.tvl1), batched, on CUDA when present
FLOW_METHODS = ("tvl1", "tvl1-torch", "farneback", "dis")

_local = threading.local()  # OpenCV flow objects are stateful and not thread-safe: one per thread (and process)


def to_grey(img: np.ndarray) -> np.ndarray:
    """``(H, W)`` uint8 grey from ``(H, W)``, ``(H, W, 1)`` or RGB ``(H, W, 3)`` input (float in [0, 255] accepted)."""
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.dtype != np.uint8:
        img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    if img.ndim != 2:
        raise ValueError(f"expected a grey (H, W) or RGB (H, W, 3) image, got shape {img.shape}")
    return img


def _flow_object(method: str):
    cache = _local.__dict__.setdefault("flow_objects", {})
    obj = cache.get(method)
    if obj is None:
        if method == "tvl1":
            if not hasattr(cv2, "optflow") or not hasattr(cv2.optflow, "DualTVL1OpticalFlow_create"):
                raise FparError(
                    "TV-L1 optical flow needs OpenCV's contrib modules (cv2.optflow), which this OpenCV lacks; "
                    "`pip uninstall opencv-python opencv-python-headless && pip install opencv-contrib-python-headless`"
                    " or use flow_method='dis' (fast) / 'farneback'"
                )
            obj = cv2.optflow.DualTVL1OpticalFlow_create()  # OpenCV defaults (tau .25, lambda .15, 5 scales, 5 warps)
        elif method == "dis":
            obj = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        else:
            raise AssertionError(method)
        cache[method] = obj
    return obj


_TVL1_SETTINGS: dict[str, Any] = {"device": None, "batch": 8}  # see configure_tvl1


def configure_tvl1(*, device: str | None = None, batch: int | None = None) -> None:
    """Where and how many pairs at a time ``"tvl1-torch"`` solves from now on (this process): ``device`` ``"cuda"``,
    ``"cpu"``, ... (None: CUDA when present), ``batch`` pairs per solve (None: 8). Both are set on every call. The
    flow does not depend on the batch (tests/test_tvl1.py: batched = one at a time); CPU and CUDA agree to float
    rounding."""
    _TVL1_SETTINGS["device"] = device
    _TVL1_SETTINGS["batch"] = 8 if batch is None else int(batch)


def _batcher():
    """This thread's tvl1-torch solver (`fpar.video.tvl1.TVL1Batcher`) with the `configure_tvl1` settings."""
    from fpar.video.tvl1 import TVL1Batcher, flow_device

    b = _local.__dict__.get("tvl1_torch")
    want = (flow_device(_TVL1_SETTINGS["device"]), _TVL1_SETTINGS["batch"])
    if b is None or (b.device, b.batch) != want:
        b = _local.tvl1_torch = TVL1Batcher(device=_TVL1_SETTINGS["device"], batch=_TVL1_SETTINGS["batch"])
    return b


def check_method(method: str) -> None:
    """A one-line `FparError` for an unknown flow method."""
    if method not in FLOW_METHODS:
        raise FparError(f"unknown flow method {method!r}; choose one of {', '.join(FLOW_METHODS)}")


def compute_flow(prev_grey: np.ndarray, next_grey: np.ndarray, method: str = "tvl1") -> np.ndarray:
    """Dense optical flow from ``prev_grey`` to ``next_grey`` as ``(H, W, 2)`` float32 pixels (x, y).

    Methods: ``"tvl1"`` (OpenCV's Dual TV-L1, the reference quality used by two-stream papers, ~0.4 s per 320x240
    pair on two cores), ``"tvl1-torch"`` (the same algorithm in PyTorch, :mod:`fpar.video.tvl1`: batched, on CUDA
    when present; see `compute_flows` for many pairs at once), ``"dis"`` (DIS, medium preset, tens of times faster)
    and ``"farneback"``. Inputs are grey uint8 ``(H, W)`` (RGB is converted) of equal size.
    """
    return compute_flows([(prev_grey, next_grey)], method)[0]


def compute_flows(pairs: list[tuple[np.ndarray, np.ndarray]], method: str = "tvl1") -> list[np.ndarray]:
    """`compute_flow` of every ``(prev, next)`` pair; ``"tvl1-torch"`` solves them in batches, the OpenCV methods
    one after the other."""
    check_method(method)
    greys = []
    for prev_grey, next_grey in pairs:
        prev_grey, next_grey = to_grey(prev_grey), to_grey(next_grey)
        if prev_grey.shape != next_grey.shape:
            raise ValueError(f"frames differ in size: {prev_grey.shape} vs {next_grey.shape}")
        greys.append((prev_grey, next_grey))
    if method == "tvl1-torch":
        return _batcher()(greys)
    return [_opencv_flow(a, b, method) for a, b in greys]


def _opencv_flow(prev_grey: np.ndarray, next_grey: np.ndarray, method: str) -> np.ndarray:
    if method == "farneback":
        flow = cv2.calcOpticalFlowFarneback(
            prev_grey,
            next_grey,
            None,
            pyr_scale=0.5,
            levels=4,
            winsize=15,
            iterations=3,
            poly_n=5,
            poly_sigma=1.2,
            flags=0,
        )
    else:
        flow = _flow_object(method).calc(prev_grey, next_grey, None)
    return np.ascontiguousarray(flow, dtype=np.float32)  # (H, W, 2)


def _homography_from_points(src: np.ndarray, dst: np.ndarray, shape: tuple[int, int], ransac_px: float) -> np.ndarray:
    eye = np.eye(3, dtype=np.float64)
    if len(src) < 8:
        return eye
    H, inliers = cv2.findHomography(src, dst, cv2.RANSAC, ransac_px, maxIters=2000, confidence=0.995)
    if H is None or inliers is None or int(inliers.sum()) < 8 or not np.all(np.isfinite(H)):
        return eye
    # Reject degenerate fits: camera motion between consecutive frames moves the image corners by a fraction of
    # the image, never more than half its diagonal (a wild H would smear the whole frame).
    h, w = shape
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64).reshape(-1, 1, 2)
    moved = cv2.perspectiveTransform(corners, H)
    if not np.all(np.isfinite(moved)) or np.abs(moved - corners).max() > 0.5 * np.hypot(h, w):
        return eye
    return H / H[2, 2]


def estimate_camera_homography(
    prev: np.ndarray,
    next: np.ndarray,
    *,
    flow: np.ndarray | None = None,
    max_corners: int = 1000,
    ransac_px: float = 1.0,
) -> np.ndarray:
    """Dominant (camera) homography ``H`` (3x3 float64) with ``next ~ H prev`` in homogeneous pixel coordinates.

    Without ``flow``: Shi-Tomasi corners of ``prev`` are tracked into ``next`` with pyramidal LK, pairs failing a
    forward-backward check (> 0.5 px) dropped, and ``H`` fitted with RANSAC (``ransac_px`` reprojection threshold).
    With ``flow`` (``prev`` -> ``next``, ``(H, W, 2)``): correspondences are sampled on a regular grid of the flow
    field instead. Returns the identity when there is too little texture or the fit is degenerate.
    """
    prev, next = to_grey(prev), to_grey(next)
    h, w = prev.shape
    if flow is not None:
        step = max(4, int(round(np.sqrt(h * w / 1500.0))))  # ~1500 samples whatever the resolution
        ys, xs = np.mgrid[step // 2 : h : step, step // 2 : w : step]  # (gh, gw) each
        src = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)  # (N, 2)
        dst = src + flow[ys.ravel(), xs.ravel()].astype(np.float32)  # (N, 2)
        return _homography_from_points(src, dst, (h, w), ransac_px)

    min_dist = max(3, int(round(min(h, w) / 40)))
    p0 = cv2.goodFeaturesToTrack(prev, maxCorners=max_corners, qualityLevel=0.01, minDistance=min_dist, blockSize=5)
    if p0 is None or len(p0) < 8:
        return np.eye(3, dtype=np.float64)
    lk = dict(winSize=(15, 15), maxLevel=3, criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))
    p1, st1, _ = cv2.calcOpticalFlowPyrLK(prev, next, p0, None, **lk)  # (N, 1, 2)
    p0r, st2, _ = cv2.calcOpticalFlowPyrLK(next, prev, p1, None, **lk)  # back-tracked, (N, 1, 2)
    fb = np.linalg.norm((p0 - p0r).reshape(-1, 2), axis=1)  # (N,)
    good = (st1.ravel() == 1) & (st2.ravel() == 1) & (fb < 0.5)
    return _homography_from_points(p0.reshape(-1, 2)[good], p1.reshape(-1, 2)[good], (h, w), ransac_px)


def compensate_camera(
    prev_grey: np.ndarray, next_grey: np.ndarray, *, homography: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The camera-motion step of the warp flow: ``next_grey`` warped back onto ``prev_grey`` with the dominant
    homography (estimated with :func:`estimate_camera_homography` unless ``homography`` is given), and the mask
    ``(H, W)`` bool of the pixels whose warped source lies inside ``next_grey`` (None: no camera motion, the frame
    is returned as it is)."""
    h, w = prev_grey.shape
    H = estimate_camera_homography(prev_grey, next_grey) if homography is None else np.asarray(homography, np.float64)
    if np.allclose(H, np.eye(3), atol=1e-9):
        return next_grey, None
    # WARP_INVERSE_MAP: warped(x) = next(H x). Border replication keeps the flow estimator from seeing a hard edge;
    # those pixels are zeroed afterwards anyway.
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = cv2.warpPerspective(next_grey, H, (w, h), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    valid = cv2.warpPerspective(np.full((h, w), 255, np.uint8), H, (w, h), flags=flags, borderValue=0)
    valid = cv2.erode(valid, np.ones((3, 3), np.uint8)) > 0  # (H, W); drop the interpolated rim as well
    return warped, valid


def warp_flow(
    prev_grey: np.ndarray,
    next_grey: np.ndarray,
    method: str = "tvl1",
    *,
    homography: np.ndarray | None = None,
) -> np.ndarray:
    """Optical flow from ``prev_grey`` to ``next_grey`` with the camera motion removed, ``(H, W, 2)`` float32.

    ``next_grey`` is warped back onto ``prev_grey`` with the dominant homography (:func:`compensate_camera`) and the
    flow is computed against the warped frame, so the static background gives ~0 and independently moving things
    keep their motion relative to it. Pixels whose warped source lies outside ``next_grey`` get zero flow. See the
    module docstring.
    """
    hs = None if homography is None else [homography]
    return warp_flows([(prev_grey, next_grey)], method, homographies=hs)[0]


def warp_flows(
    pairs: list[tuple[np.ndarray, np.ndarray]],
    method: str = "tvl1",
    *,
    homographies: list[np.ndarray] | None = None,
    timings: dict[str, float] | None = None,
) -> list[np.ndarray]:
    """`warp_flow` of every ``(prev, next)`` pair: the camera step pair by pair (OpenCV), then the flows of all the
    pairs at once (`compute_flows`: batched for ``"tvl1-torch"``). ``timings``, if given, gets ``"camera_s"`` and
    ``"flow_s"`` added: the seconds of each step."""
    import time

    check_method(method)
    t0 = time.perf_counter()
    staged = []
    for k, (prev_grey, next_grey) in enumerate(pairs):
        prev_grey, next_grey = to_grey(prev_grey), to_grey(next_grey)
        if prev_grey.shape != next_grey.shape:
            raise ValueError(f"frames differ in size: {prev_grey.shape} vs {next_grey.shape}")
        H = None if homographies is None else homographies[k]
        warped, valid = compensate_camera(prev_grey, next_grey, homography=H)
        staged.append((prev_grey, warped, valid))
    t1 = time.perf_counter()
    flows = compute_flows([(a, b) for a, b, _ in staged], method)  # (H, W, 2) each
    for flow, (_, _, valid) in zip(flows, staged):
        if valid is not None:
            flow[~valid] = 0.0
    if timings is not None:
        timings["camera_s"] = timings.get("camera_s", 0.0) + (t1 - t0)
        timings["flow_s"] = timings.get("flow_s", 0.0) + (time.perf_counter() - t1)
    return flows


def motion_map(
    warp_flow: np.ndarray,
    thresh: float = 1.0,
    *,
    min_area: float = 0.001,
    kernel: int | None = None,
) -> np.ndarray:
    """Binary map (uint8 {0, 255}, ``(H, W)``) of independently moving regions from a warp flow ``(H, W, 2)``.

    A pixel moves when its (3x3 median-smoothed) warp-flow magnitude exceeds ``thresh`` pixels. The mask is then
    cleaned: morphological opening (drops isolated specks), closing (fills small holes inside moving regions), and
    connected components smaller than ``min_area`` of the image are removed. ``kernel`` is the structuring element
    size (odd; default scales with the image, 3 px at 64-256 px short side).
    """
    flow = np.asarray(warp_flow, dtype=np.float32)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"expected a flow of shape (H, W, 2), got {flow.shape}")
    h, w = flow.shape[:2]
    mag = np.sqrt(flow[..., 0] ** 2 + flow[..., 1] ** 2)  # (H, W)
    mag = cv2.medianBlur(mag, 3)  # robust to isolated flow outliers
    mask = (mag > thresh).astype(np.uint8)  # (H, W) {0, 1}
    if kernel is None:
        kernel = max(3, (min(h, w) // 85) | 1)
    se = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel, kernel))
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, se)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, se)
    if min_area > 0 and mask.any():
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        small = stats[:, cv2.CC_STAT_AREA] < min_area * h * w  # (n,)
        small[0] = True  # label 0 is the background
        mask = (~small[labels]).astype(np.uint8)
    return mask * np.uint8(255)
