"""tvl1-torch (fpar.video.tvl1): one iteration against a per-pixel loop written like OpenCV's code, the median filter
and the pyramid against OpenCV, batched = one pair at a time, and the end-point error against OpenCV's TV-L1 on
pairs of exactly known flow (fpar.video.known_flow)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from fpar.models.layers.rep_flow import image_gradient, tvl1_iteration
from fpar.video.known_flow import affine_pair, endpoint_error, object_pair, standard_pairs, texture
from fpar.video.tvl1 import TVL1Batcher, TVL1Params, median_filter, pyramid_sizes, tvl1_torch
from tests.conftest import REAL_CLIP

REAL_FRAME = REAL_CLIP / "rgb0001.png"  # a real GTEA61 frame shipped in tests/data


def _loop_iteration(u1, u2, p11, p12, p21, p22, ix, iy, rho_c, *, lam=0.15, theta=0.3, tau=0.25):
    """One iteration of OpenCV's procOneScale inner loop, pixel by pixel in float64 (estimateV, divergence,
    estimateU, forwardGradient, estimateDualVariables), written from the algorithm's description."""
    h, w = u1.shape
    lt, taut = lam * theta, tau / theta
    grad = ix * ix + iy * iy
    v1, v2 = np.zeros((h, w)), np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            rho = rho_c[y, x] + ix[y, x] * u1[y, x] + iy[y, x] * u2[y, x]
            if rho < -lt * grad[y, x]:
                d1, d2 = lt * ix[y, x], lt * iy[y, x]
            elif rho > lt * grad[y, x]:
                d1, d2 = -lt * ix[y, x], -lt * iy[y, x]
            elif grad[y, x] > np.finfo(np.float32).eps:
                d1, d2 = -rho / grad[y, x] * ix[y, x], -rho / grad[y, x] * iy[y, x]
            else:
                d1 = d2 = 0.0
            v1[y, x], v2[y, x] = u1[y, x] + d1, u2[y, x] + d2

    def div(a, b):  # a: x-component, b: y-component; OpenCV: p on the last column / row is zero
        d = np.zeros((h, w))
        for y in range(h):
            for x in range(w):
                ax = (a[y, x] if x < w - 1 else 0.0) - (a[y, x - 1] if x > 0 else 0.0)
                by = (b[y, x] if y < h - 1 else 0.0) - (b[y - 1, x] if y > 0 else 0.0)
                d[y, x] = ax + by
        return d

    n1 = v1 + theta * div(p11, p12)
    n2 = v2 + theta * div(p21, p22)

    def fwd(u):
        gx, gy = np.zeros((h, w)), np.zeros((h, w))
        for y in range(h):
            for x in range(w):
                gx[y, x] = u[y, x + 1] - u[y, x] if x < w - 1 else 0.0
                gy[y, x] = u[y + 1, x] - u[y, x] if y < h - 1 else 0.0
        return gx, gy

    out = [n1, n2]
    for u, (pa, pb) in ((n1, (p11, p12)), (n2, (p21, p22))):
        gx, gy = fwd(u)
        ng = 1.0 + taut * np.hypot(gx, gy)
        out += [(pa + taut * gx) / ng, (pb + taut * gy) / ng]
    return out  # u1, u2, p11, p12, p21, p22


def test_one_iteration_matches_loop_reference():
    rng = np.random.default_rng(0)
    h, w = 7, 9
    u1, u2 = rng.normal(size=(2, h, w))
    # p on the last column (x-part) / last row (y-part) is 0, as the forward gradient keeps it in the solver
    p11, p12, p21, p22 = rng.normal(scale=0.5, size=(4, h, w))
    p11[:, -1] = p21[:, -1] = 0.0
    p12[-1] = p22[-1] = 0.0
    ix, iy = rng.normal(scale=3.0, size=(2, h, w))
    ix[0, 0] = iy[0, 0] = 1e-5  # a nearly flat pixel, |grad|^2 = 2e-10 <= FLT_EPSILON: the documented difference
    rho_c = rng.normal(scale=2.0, size=(h, w))
    ref = _loop_iteration(u1, u2, p11, p12, p21, p22, ix, iy, rho_c)

    t = lambda a: torch.tensor(a, dtype=torch.float64)[None, None]  # noqa: E731  (1, 1, H, W)
    u = torch.cat([t(u1), t(u2)])  # (2, 1, H, W): u1 rows then u2 rows
    px, py = torch.cat([t(p11), t(p21)]), torch.cat([t(p12), t(p22)])
    grad = torch.stack([t(ix), t(iy)])  # (2, 1, 1, H, W)
    g = grad.square().sum(0)
    g = torch.where(g > np.finfo(np.float32).eps, g, torch.full_like(g, 1e-30))
    nu, npx, npy = tvl1_iteration(u, px, py, grad, t(rho_c), g, lam_theta=0.045, theta=0.3, step=0.25 / 0.3, eps=0.0)
    got = [nu[0, 0], nu[1, 0], npx[0, 0], npy[0, 0], npx[1, 0], npy[1, 0]]
    for name, a, b in zip(("u1", "u2", "p11", "p12", "p21", "p22"), got, ref):
        np.testing.assert_allclose(a.numpy(), b, atol=1e-6, rtol=0, err_msg=name)


def test_centred_gradient_has_opencv_halved_border():
    f = torch.arange(20.0).view(1, 1, 4, 5) ** 2 / 7.0  # (1, 1, 4, 5)
    fx, fy = image_gradient(f, border=0.5)
    a = f[0, 0].numpy()
    ex = np.empty_like(a)
    ex[:, 1:-1] = 0.5 * (a[:, 2:] - a[:, :-2])
    ex[:, 0], ex[:, -1] = 0.5 * (a[:, 1] - a[:, 0]), 0.5 * (a[:, -1] - a[:, -2])
    ey = np.empty_like(a)
    ey[1:-1] = 0.5 * (a[2:] - a[:-2])
    ey[0], ey[-1] = 0.5 * (a[1] - a[0]), 0.5 * (a[-1] - a[-2])
    np.testing.assert_allclose(fx[0, 0].numpy(), ex, rtol=1e-6)
    np.testing.assert_allclose(fy[0, 0].numpy(), ey, rtol=1e-6)


@pytest.mark.parametrize("k", [3, 5])
def test_median_filter_torch_path_equals_opencv(k):
    u = torch.randn(3, 1, 17, 23)
    via_cv = median_filter(u, k)  # the CPU path: cv2.medianBlur
    r = k // 2
    padded = torch.nn.functional.pad(u, (r, r, r, r), mode="replicate")
    windows = torch.nn.functional.unfold(padded, k)  # (3, k*k, H*W)
    via_torch = windows.median(dim=1).values.view_as(u)
    assert torch.equal(via_cv, via_torch)
    assert torch.equal(median_filter(u.double(), k).float(), via_torch)  # float64 takes the PyTorch path


def test_pyramid_sizes_are_opencvs():
    assert pyramid_sizes(240, 320, 5, 0.8) == [(240, 320), (192, 256), (154, 205), (123, 164), (98, 131)]
    assert pyramid_sizes(20, 30, 5, 0.8) == [(20, 30), (16, 24)]  # 12.8 rows would be under 16 px
    assert pyramid_sizes(10, 10, 5, 0.8) == [(10, 10)]


def test_batched_equals_one_pair_at_a_time():
    src = texture(48 + 32, 64 + 32, seed=4)
    pairs = [
        affine_pair("a", src, (48, 64), shift=(1.3, -0.4)),
        affine_pair("b", src, (48, 64), angle_deg=3.0),
        object_pair("c", texture(80, 96, 5), texture(80, 96, 6), (48, 64), shift=(-2.0, 1.0)),
    ]
    i0 = torch.from_numpy(np.stack([p.first for p in pairs]))
    i1 = torch.from_numpy(np.stack([p.second for p in pairs]))
    stats, alone = {}, {}
    batched = tvl1_torch(i0, i1, stats=stats)  # (3, 2, H, W)
    single = torch.cat([tvl1_torch(i0[k : k + 1], i1[k : k + 1], stats=alone) for k in range(3)])
    assert torch.equal(batched, single)  # every operation is per image: bit for bit
    # each pair stopped on its own test: the batch did the iterations of the three solves, not 3 x the slowest
    assert stats["iterations"] == alone["iterations"]
    assert batched.shape == (3, 2, 48, 64)
    assert stats["iterations"] > 0
    # the GPU's way (the working set as a mask, few host syncs), forced here on the CPU: the same flow and steps
    masked_stats: dict = {}
    assert torch.equal(tvl1_torch(i0, i1, stats=masked_stats, masked=True), batched)
    assert masked_stats == stats
    # The batcher groups by size and keeps the order; OpenCV layout (H, W, 2).
    out = TVL1Batcher(batch=2)([(p.first, p.second) for p in pairs])
    for k, f in enumerate(out):
        assert f.shape == (48, 64, 2) and f.dtype == np.float32
        np.testing.assert_allclose(f, single[k].permute(1, 2, 0).numpy(), atol=1e-6, rtol=0)


def test_identical_frames_give_zero_flow():
    img = texture(40, 50, seed=7).astype(np.uint8)
    flow = tvl1_torch(torch.from_numpy(img)[None], torch.from_numpy(img)[None])
    assert flow.abs().max().item() < 1e-6


def test_endpoint_error_within_5_percent_of_opencv_tvl1():
    """Mean EPE over valid pixels (in view, not occluded) of pairs with exactly known flow: translations, a
    rotation, a zoom, a moving disc over a static background, and a real GTEA61 frame (tests/data) moved the same
    ways. OpenCV TV-L1 with its defaults against tvl1-torch with the same settings."""
    real = cv2.cvtColor(cv2.imread(str(REAL_FRAME)), cv2.COLOR_BGR2RGB)
    pairs = standard_pairs((96, 128), real=real)
    ours = TVL1Batcher(batch=len(pairs), device="cpu")([(p.first, p.second) for p in pairs])
    tvl1 = cv2.optflow.DualTVL1OpticalFlow_create()
    rows = []
    for pair, flow in zip(pairs, ours):
        rows.append(
            (pair.name, endpoint_error(tvl1.calc(pair.first, pair.second, None), pair), endpoint_error(flow, pair))
        )
    cv_mean = float(np.mean([r[1] for r in rows]))
    our_mean = float(np.mean([r[2] for r in rows]))
    table = "\n".join(f"{n}: opencv {a:.4f} tvl1-torch {b:.4f}" for n, a, b in rows)
    assert our_mean <= 1.05 * cv_mean, table
    # Every pair is solved: a far-off flow on any one of them would be a bug, not rounding.
    for name, a, b in rows:
        assert b <= 1.5 * a + 0.01, f"{name}: opencv {a:.4f}, tvl1-torch {b:.4f}"
    # And the flow is the true one to a fraction of a pixel on the textured translations.
    assert rows[0][2] < 0.05 and rows[1][2] < 0.05, table


def test_params_are_opencvs_defaults():
    tvl1 = cv2.optflow.DualTVL1OpticalFlow_create()
    p = TVL1Params()
    assert math.isclose(p.tau, tvl1.getTau()) and math.isclose(p.lam, tvl1.getLambda())
    assert math.isclose(p.theta, tvl1.getTheta()) and math.isclose(p.epsilon, tvl1.getEpsilon())
    assert math.isclose(p.scale_step, tvl1.getScaleStep())
    assert (p.nscales, p.warps, p.inner_iterations, p.outer_iterations, p.median) == (
        tvl1.getScalesNumber(),
        tvl1.getWarpingsNumber(),
        tvl1.getInnerIterations(),
        tvl1.getOuterIterations(),
        tvl1.getMedianFiltering(),
    )


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="same shape"):
        tvl1_torch(torch.zeros(1, 8, 8), torch.zeros(1, 8, 9))
    with pytest.raises(ValueError, match="3 x 3"):
        tvl1_torch(torch.zeros(1, 2, 8), torch.zeros(1, 2, 8))
    with pytest.raises(ValueError, match="pair 0"):
        TVL1Batcher()([(np.zeros((8, 8), np.uint8), np.zeros((8, 9), np.uint8))])
