"""``tvl1-torch``: OpenCV's Dual TV-L1 optical flow in PyTorch, many frame pairs at once, on CUDA or CPU.

The algorithm is OpenCV's ``DualTVL1OpticalFlow`` (Zach, Pock & Bischof 2007, in Sánchez Pérez et al.'s IPOL
formulation) with OpenCV's defaults, so the flow the published two-stream models were trained on can be made at
GPU speed:

* an image pyramid of ``nscales`` levels, each ``scale_step`` (0.8) of the one below (bilinear, no pre-blur), stopped
  before a side falls under 16 px; the flow starts at 0 on the coarsest level and is carried to the next finer one
  by bilinear resizing, multiplied by 1 / scale_step;
* on each level the dual variable starts at 0 and ``warps`` warpings are done: I1 and its centred gradient (with
  OpenCV's halved one-sided border) are sampled bicubically at x + u, giving ρ_c = I1w - ∇I1w·u - I0 and g = |∇I1w|²;
* within a warping, up to ``outer_iterations`` x ``inner_iterations`` iterations of the primal-dual step
  (`fpar.models.layers.rep_flow.tvl1_iteration`, the step the representation-flow layer unrolls), a 5x5 median
  filter of the flow before each block of ``inner_iterations``, and a stop as soon as the squared change of the
  flow, summed over the image, falls to ``epsilon² x area`` (OpenCV's test, every iteration).

Each pair stops on its own test: a batch runs until its slowest pair has converged, and a pair that has converged
leaves the working set (its flow and dual variable are put back for the next warping), so a pair's flow does not
depend on the other pairs in the batch (tests/test_tvl1.py: batched = one at a time). On a GPU the working set is a
mask instead: every pair is stepped, a converged one keeps the values it stopped with, and whether all have stopped
is asked every `_CHECK_EVERY` iterations, since shrinking the set needs the host to read the test at every one (a
device sync per iteration, thousands per batch). The flow is the same either way (tests/test_tvl1.py).

Deliberate differences from OpenCV (each a fraction of a percent of the end-point error, tests/test_tvl1.py
checks the error against OpenCV's on pairs of exactly known flow):

* the warp's bicubic weights are computed for the sub-pixel position to float precision (OpenCV's ``remap``
  quantises it to 1/32 px), and the pyramid's bilinear resizes are PyTorch's, which round differently from OpenCV's
  fixed-point tables;
* in the threshold step a pixel with |∇I1w|² at or under FLT_EPSILON follows the same clamp as the others (OpenCV
  leaves v = u there when |ρ| is small); the flow change is at most λθ |∇I1w| < 2e-5 px.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fpar.models.layers.rep_flow import image_gradient, tvl1_iteration
from fpar.utils import keep_freed_memory

__all__ = ["TVL1Params", "tvl1_torch", "median_filter", "pyramid_sizes", "flow_device", "TVL1Batcher"]

log = logging.getLogger(__name__)

_FLT_EPSILON = float(np.finfo(np.float32).eps)


@dataclass(frozen=True)
class TVL1Params:
    """OpenCV's ``DualTVL1OpticalFlow_create()`` defaults (gamma = 0, no initial flow)."""

    tau: float = 0.25
    lam: float = 0.15
    theta: float = 0.3
    nscales: int = 5
    warps: int = 5
    epsilon: float = 0.01
    inner_iterations: int = 30
    outer_iterations: int = 10
    scale_step: float = 0.8
    median: int = 5


def pyramid_sizes(h: int, w: int, nscales: int, scale_step: float) -> list[tuple[int, int]]:
    """(H, W) of each pyramid level, finest first, as OpenCV makes them: each side rounded from the level below
    times ``scale_step``, and no level with a side under 16 px (the finest level is always kept)."""
    sizes = [(h, w)]
    for _ in range(1, nscales):
        ph, pw = sizes[-1]
        nh, nw = round(ph * scale_step), round(pw * scale_step)  # cvRound: half to even, as Python's round
        if nh < 16 or nw < 16:
            break
        sizes.append((nh, nw))
    return sizes


def median_filter(u: Tensor, k: int) -> Tensor:
    """k x k median of every image of ``u`` (N, C, H, W) with the border replicated (OpenCV's ``medianBlur``).

    Float CPU tensors with k in (3, 5) go through ``cv2.medianBlur`` (the same values: a median is an exact
    selection); anything else through ``unfold`` and ``median`` in PyTorch.
    """
    if k <= 1:
        return u
    n, c, h, w = u.shape
    if u.device.type == "cpu" and u.dtype == torch.float32 and k in (3, 5):
        import cv2

        flat = u.detach().reshape(n * c, h, w).contiguous().numpy()  # (NC, H, W)
        out = np.stack([cv2.medianBlur(img, k) for img in flat])  # (NC, H, W)
        return torch.from_numpy(out).view(n, c, h, w)
    r = k // 2
    padded = F.pad(u.reshape(n * c, 1, h, w), (r, r, r, r), mode="replicate")  # (NC, 1, H+2r, W+2r)
    windows = F.unfold(padded, k)  # (NC, k*k, H*W)
    return windows.median(dim=1).values.view(n, c, h, w)


def _warp(images: Tensor, u: Tensor, base: tuple[Tensor, Tensor]) -> Tensor:
    """Sample ``images`` (M, K, H, W) at (x + u1, y + u2), bicubic (a = -0.75), 0 outside the image: OpenCV's
    ``remap`` with INTER_CUBIC and its default constant border; ``u`` is (2M, 1, H, W).

    Where the flow is exactly 0 the pixel itself is taken: ``grid_sample``'s normalised coordinates round (by about
    1e-5 px), and TV-L1 amplifies such residuals where the image is flat (identical frames gave 0.8 px of flow at
    a border without this)."""
    m, _, h, w = images.shape
    u1, u2 = u.view(2, m, h, w).unbind(0)  # (M, H, W) each
    xs, ys = base  # (1, H, W) pixel coordinates
    # align_corners=True: -1 and 1 are the centres of the first and last pixels, so pixel x is 2x / (W - 1) - 1.
    gx = (xs + u1) * (2.0 / max(w - 1, 1)) - 1.0  # (M, H, W)
    gy = (ys + u2) * (2.0 / max(h - 1, 1)) - 1.0  # (M, H, W)
    grid = torch.stack([gx, gy], dim=3)  # (M, H, W, 2)
    out = F.grid_sample(images, grid, mode="bicubic", padding_mode="zeros", align_corners=True)  # (M, K, H, W)
    still = ((u1 == 0) & (u2 == 0))[:, None]  # (M, 1, H, W)
    return torch.where(still, images, out)


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of (N, C, H, W) to ``size``, source pixel (dst + 0.5) * in / out - 0.5 (OpenCV's resize to a
    given size): the flow's way up the pyramid."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _downscale(x: Tensor, size: tuple[int, int], scale: float) -> Tensor:
    """Bilinear resize of (N, C, H, W) to ``size`` with source pixel (dst + 0.5) / scale - 0.5 and the border
    replicated: OpenCV's ``resize(src, dst, Size(), scale, scale)``, which maps by 1 / scale even where the rounded
    size makes the ratio of the sizes differ from it (the image pyramid)."""
    n, _, h, w = x.shape
    oh, ow = size
    dev, dt = x.device, x.dtype
    xs = ((torch.arange(ow, device=dev, dtype=dt) + 0.5) / scale - 0.5).clamp(0, w - 1)  # (OW,) source columns
    ys = ((torch.arange(oh, device=dev, dtype=dt) + 0.5) / scale - 0.5).clamp(0, h - 1)  # (OH,) source rows
    gy, gx = torch.meshgrid(ys * (2.0 / max(h - 1, 1)) - 1.0, xs * (2.0 / max(w - 1, 1)) - 1.0, indexing="ij")
    grid = torch.stack([gx, gy], dim=2).expand(n, oh, ow, 2)  # (N, OH, OW, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)  # (N, C, OH, OW)


class _Step:
    """The primal-dual iteration with the solver's fixed λθ, θ and τ/θ (OpenCV's hypot: no eps under the root)."""

    def __init__(self, params: TVL1Params):
        self.lam_theta = params.lam * params.theta
        self.theta = params.theta
        self.step = params.tau / params.theta

    def __call__(self, u: Tensor, px: Tensor, py: Tensor, grad: Tensor, rho_c: Tensor, g: Tensor):
        return tvl1_iteration(
            u, px, py, grad, rho_c, g, lam_theta=self.lam_theta, theta=self.theta, step=self.step, eps=0.0
        )


def _rows(n: int, idx: Tensor) -> Tensor:
    """Rows of the (2N, ...) u1/u2 stack that belong to samples ``idx``: idx and idx + N."""
    return torch.cat([idx, idx + n])


_CHECK_EVERY = 10  # the masked loop's iterations between two looks at whether every pair has converged


def _iterate_masked(
    u: Tensor, px: Tensor, py: Tensor, terms: tuple, threshold: float, params: TVL1Params, step: _Step, stats: dict
) -> tuple[Tensor, Tensor, Tensor]:
    """One warping's iterations with the working set as a mask: no host sync but every `_CHECK_EVERY` iterations.

    u, px, py: (2N, 1, H, W); ``terms``: (grad, rho_c, g) of the warping. A pair steps while it is active; on the
    iteration its change falls to ``threshold`` it takes that step's values and keeps them, as the working-set loop
    puts a converged pair's values back, and the median filter leaves it alone too."""
    n2, _, h, w = u.shape
    n = n2 // 2
    active = torch.ones(n, dtype=torch.bool, device=u.device)  # (N,)
    steps = torch.zeros((), dtype=torch.long, device=u.device)  # pair-iterations done, read once at the end
    total = params.outer_iterations * params.inner_iterations
    for it in range(total):
        rows = active.repeat(2).view(n2, 1, 1, 1)  # (2N, 1, 1, 1): u1 and u2 rows of the active pairs
        if params.median > 1 and it % params.inner_iterations == 0:
            u = torch.where(rows, median_filter(u, params.median), u)
        new_u, new_px, new_py = step(u, px, py, *terms)  # (2N, 1, H, W) each
        change = (new_u - u).square().view(2, n, h * w).sum(dim=(0, 2))  # (N,)
        u = torch.where(rows, new_u, u)
        px = torch.where(rows, new_px, px)
        py = torch.where(rows, new_py, py)
        steps += active.sum()
        active = active & (change > threshold)
        if (it + 1) % _CHECK_EVERY == 0 and not bool(active.any()):
            break
    stats["iterations"] += int(steps)
    return u, px, py


def _one_scale(
    i0: Tensor, i1: Tensor, u: Tensor, params: TVL1Params, step: _Step, stats: dict, masked: bool = False
) -> Tensor:
    """Flow on one pyramid level. i0, i1: (N, 1, H, W); u: (2N, 1, H, W) initial flow; returns (2N, 1, H, W).
    ``masked``: iterate with `_iterate_masked` (the GPU's way) instead of shrinking the working set."""
    n, _, h, w = i0.shape
    dev, dt = i0.device, i0.dtype
    i1x, i1y = image_gradient(i1, border=0.5)  # (N, 1, H, W) each: OpenCV's centredGradient
    stack = torch.cat([i1, i1x, i1y], dim=1)  # (N, 3, H, W): warped together
    ys, xs = torch.meshgrid(torch.arange(h, device=dev, dtype=dt), torch.arange(w, device=dev, dtype=dt), indexing="ij")
    base = (xs[None], ys[None])  # (1, H, W) each
    px = torch.zeros_like(u)  # (2N, 1, H, W): dual variable, zero at the start of every level
    py = torch.zeros_like(u)
    threshold = params.epsilon * params.epsilon * h * w  # OpenCV's scaledEpsilon
    total = params.outer_iterations * params.inner_iterations
    for _ in range(params.warps):
        warped = _warp(stack, u, base)  # (N, 3, H, W)
        i1w, ix, iy = warped[:, 0:1], warped[:, 1:2], warped[:, 2:3]  # (N, 1, H, W) each
        grad = torch.stack([ix, iy])  # (2, N, 1, H, W)
        u1, u2 = u.view(2, n, 1, h, w).unbind(0)  # (N, 1, H, W) each
        rho_c = i1w - ix * u1 - iy * u2 - i0  # (N, 1, H, W)
        g = ix * ix + iy * iy  # (N, 1, H, W)
        # The threshold step divides by g; where g <= FLT_EPSILON a huge divisor's reciprocal keeps the clamp (see
        # the module docstring) without a division by zero.
        g = torch.where(g > _FLT_EPSILON, g, torch.full_like(g, 1e-30))
        if masked:
            u, px, py = _iterate_masked(u, px, py, (grad, rho_c, g), threshold, params, step, stats)
            continue

        # The working set: samples still iterating. A converged sample's u, px, py go back into the full tensors.
        idx = torch.arange(n, device=dev)  # (M,) sample numbers of the working set
        wu, wpx, wpy, wgrad, wrho, wg = u, px, py, grad, rho_c, g
        for it in range(total):
            if params.median > 1 and it % params.inner_iterations == 0:
                wu = median_filter(wu, params.median)
            new_u, wpx, wpy = step(wu, wpx, wpy, wgrad, wrho, wg)  # (2M, 1, H, W) each
            m = idx.numel()
            change = (new_u - wu).square().view(2, m, h * w).sum(dim=(0, 2))  # (M,) squared change of (u1, u2)
            wu = new_u
            stats["iterations"] += m
            done = change <= threshold  # (M,)
            if it == total - 1:
                done = torch.ones_like(done)
            if bool(done.any()):
                rows = _rows(n, idx[done])
                local = _rows(m, done.nonzero().squeeze(1))
                u = u.index_copy(0, rows, wu[local])
                px = px.index_copy(0, rows, wpx[local])
                py = py.index_copy(0, rows, wpy[local])
                if bool(done.all()):
                    break
                keep = (~done).nonzero().squeeze(1)  # (M',) local positions that go on
                keep_rows = _rows(m, keep)
                wu, wpx, wpy = wu[keep_rows], wpx[keep_rows], wpy[keep_rows]
                wgrad, wrho, wg = wgrad[:, keep], wrho[keep], wg[keep]
                idx = idx[keep]
    return u


def tvl1_torch(
    i0: Tensor,
    i1: Tensor,
    params: TVL1Params = TVL1Params(),
    *,
    stats: dict | None = None,
    masked: bool | None = None,
) -> Tensor:
    """Dense TV-L1 flow from each image of ``i0`` to the matching image of ``i1`` (see the module docstring).

    Args:
        i0, i1: (N, H, W) or (N, 1, H, W) grey images in [0, 255] (uint8 or float), H, W >= 3, on any device.
        params: the solver's settings (OpenCV's defaults).
        stats: if given, ``stats["iterations"]`` is increased by the number of (pair x iteration) steps done.
        masked: the working set as a mask, without a host sync per iteration (None: on a GPU; same flow).

    Returns:
        (N, 2, H, W) float32 flow in pixels: channel 0 = x (right), 1 = y (down), such that
        ``i0[y, x] ~ i1[y + u[1], x + u[0]]`` (OpenCV's convention).
    """
    if i0.shape != i1.shape:
        raise ValueError(f"expected i0 and i1 of the same shape, got {tuple(i0.shape)} and {tuple(i1.shape)}")
    if i0.dim() == 3:
        i0, i1 = i0[:, None], i1[:, None]
    if i0.dim() != 4 or i0.shape[1] != 1:
        raise ValueError(f"expected (N, H, W) or (N, 1, H, W) grey images, got {tuple(i0.shape)}")
    n, _, h, w = i0.shape
    if h < 3 or w < 3:
        raise ValueError(f"expected images of at least 3 x 3 pixels, got {h} x {w}")
    stats = stats if stats is not None else {}
    stats.setdefault("iterations", 0)
    masked = i0.device.type != "cpu" if masked is None else masked
    i0 = i0.to(torch.float32)
    i1 = i1.to(torch.float32)
    step = _Step(params)
    sizes = pyramid_sizes(h, w, params.nscales, params.scale_step)
    levels = [(i0, i1)]
    for size in sizes[1:]:
        a, b = levels[-1]
        levels.append(
            (_downscale(a, size, params.scale_step), _downscale(b, size, params.scale_step))
        )  # (N, 1, h_s, w_s) each
    ch, cw = sizes[-1]
    u = i0.new_zeros(2 * n, 1, ch, cw)  # (2N, 1, h, w) on the coarsest level
    for s in range(len(sizes) - 1, -1, -1):
        a, b = levels[s]
        u = _one_scale(a, b, u, params, step, stats, masked)  # (2N, 1, h_s, w_s)
        if s > 0:
            u = _resize(u, sizes[s - 1]) * (1.0 / params.scale_step)  # (2N, 1, h_{s-1}, w_{s-1})
    return u.view(2, n, h, w).permute(1, 0, 2, 3).contiguous()  # (N, 2, H, W)


def flow_device(device: str | None = None) -> torch.device:
    """The device tvl1-torch runs on: ``device`` if given, else CUDA when present, else the CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class TVL1Batcher:
    """Solves lists of grey uint8 frame pairs with `tvl1_torch` in batches of ``batch`` pairs of the same size.

    Pairs are grouped by size (every pair of a video has one), moved to ``device`` and solved; the results come back
    as OpenCV-layout (H, W, 2) float32 arrays in the input order.
    """

    def __init__(
        self,
        *,
        device: str | None = None,
        batch: int = 8,
        params: TVL1Params = TVL1Params(),
    ):
        if batch < 1:
            raise ValueError(f"batch={batch} must be >= 1")
        self.device = flow_device(device)
        self.batch = int(batch)
        if self.device.type == "cpu":
            keep_freed_memory()
        self.params = params
        self.stats: dict = {"iterations": 0}

    def __call__(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        out: list[np.ndarray | None] = [None] * len(pairs)
        by_size: dict[tuple[int, int], list[int]] = {}
        for k, (a, b) in enumerate(pairs):
            if a.shape != b.shape or a.ndim != 2:
                raise ValueError(f"pair {k}: expected two grey (H, W) frames of one size, got {a.shape}, {b.shape}")
            by_size.setdefault(a.shape, []).append(k)
        for ks in by_size.values():
            for start in range(0, len(ks), self.batch):
                chunk = ks[start : start + self.batch]
                i0 = torch.from_numpy(np.stack([pairs[k][0] for k in chunk])).to(self.device)  # (B, H, W) uint8
                i1 = torch.from_numpy(np.stack([pairs[k][1] for k in chunk])).to(self.device)
                with torch.inference_mode():
                    flow = tvl1_torch(i0, i1, self.params, stats=self.stats)  # (B, 2, H, W)
                flow = flow.permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 2)
                for j, k in enumerate(chunk):
                    out[k] = np.ascontiguousarray(flow[j])
        return out  # type: ignore[return-value]
