"""Tests of the Representation Flow layer (fpar.models.layers.rep_flow): known shifts, a slow loop reference,
the adjoint pair grad/div, gradcheck, and the module contract (shapes, gradients, errors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fpar.models.layers.rep_flow import (
    RepresentationFlow,
    TVL1Kernels,
    depthwise_stencil,
    divergence,
    forward_gradient,
    image_gradient,
    tvl1_flow,
)

# ---------------------------------------------------------------------------------------------------------------
# Slow reference: explicit python loops over iterations, channels and pixels, explicit index shifting, numpy float64.
# ---------------------------------------------------------------------------------------------------------------


def _reference_channel(a, b, taps, *, n_iter, theta, lam, tau, eps):
    """TV-L1 on one (H, W) channel pair; taps = six 1-D stencils (3, 3, 2, 2, 2, 2 values)."""
    ix, iy, gxk, gyk, dxk, dyk = taps
    h, w = a.shape

    # Image gradient of F2 (= b): 3-tap stencil inside, one-sided difference of b on the border.
    bx = np.zeros((h, w))
    by = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            if j == 0:
                bx[i, j] = b[i, 1] - b[i, 0]
            elif j == w - 1:
                bx[i, j] = b[i, w - 1] - b[i, w - 2]
            else:
                bx[i, j] = ix[0] * b[i, j - 1] + ix[1] * b[i, j] + ix[2] * b[i, j + 1]
            if i == 0:
                by[i, j] = b[1, j] - b[0, j]
            elif i == h - 1:
                by[i, j] = b[h - 1, j] - b[h - 2, j]
            else:
                by[i, j] = iy[0] * b[i - 1, j] + iy[1] * b[i, j] + iy[2] * b[i + 1, j]

    def fwd_grad(u):
        ux = np.zeros((h, w))
        uy = np.zeros((h, w))
        for i in range(h):
            for j in range(w):
                ux[i, j] = gxk[0] * u[i, j] + gxk[1] * u[i, j + 1] if j < w - 1 else 0.0
                uy[i, j] = gyk[0] * u[i, j] + gyk[1] * u[i + 1, j] if i < h - 1 else 0.0
        return ux, uy

    def div(px, py):
        # Chambolle: p[k] counts only for 0 <= k <= W-2 (resp. H-2); d[j] = k0 * p[j-1] + k1 * p[j].
        def px_at(i, j):
            return px[i, j] if 0 <= j <= w - 2 else 0.0

        def py_at(i, j):
            return py[i, j] if 0 <= i <= h - 2 else 0.0

        d = np.zeros((h, w))
        for i in range(h):
            for j in range(w):
                d[i, j] = (
                    dxk[0] * px_at(i, j - 1) + dxk[1] * px_at(i, j) + dyk[0] * py_at(i - 1, j) + dyk[1] * py_at(i, j)
                )
        return d

    u1, u2 = np.zeros((h, w)), np.zeros((h, w))
    p11, p12, p21, p22 = (np.zeros((h, w)) for _ in range(4))
    lt = lam * theta
    for _ in range(n_iter):
        v1, v2 = np.zeros((h, w)), np.zeros((h, w))
        for i in range(h):
            for j in range(w):
                g = bx[i, j] ** 2 + by[i, j] ** 2 + eps
                rho = b[i, j] - a[i, j] + bx[i, j] * u1[i, j] + by[i, j] * u2[i, j]
                if rho < -lt * g:
                    d1, d2 = lt * bx[i, j], lt * by[i, j]
                elif rho > lt * g:
                    d1, d2 = -lt * bx[i, j], -lt * by[i, j]
                else:
                    d1, d2 = -rho * bx[i, j] / g, -rho * by[i, j] / g
                v1[i, j] = u1[i, j] + d1
                v2[i, j] = u2[i, j] + d2
        u1 = v1 + theta * div(p11, p12)
        u2 = v2 + theta * div(p21, p22)
        u1x, u1y = fwd_grad(u1)
        u2x, u2y = fwd_grad(u2)
        for i in range(h):
            for j in range(w):
                n1 = 1.0 + tau / theta * np.sqrt(u1x[i, j] ** 2 + u1y[i, j] ** 2 + eps)
                p11[i, j] = (p11[i, j] + tau / theta * u1x[i, j]) / n1
                p12[i, j] = (p12[i, j] + tau / theta * u1y[i, j]) / n1
                n2 = 1.0 + tau / theta * np.sqrt(u2x[i, j] ** 2 + u2y[i, j] ** 2 + eps)
                p21[i, j] = (p21[i, j] + tau / theta * u2x[i, j]) / n2
                p22[i, j] = (p22[i, j] + tau / theta * u2y[i, j]) / n2
    return u1, u2


def tvl1_flow_reference(f1, f2, *, kernels=None, n_iter=10, theta=0.3, lam=0.15, tau=0.25, eps=1e-6):
    """Loop reference of `tvl1_flow` on (N, C, H, W) tensors; returns float64 numpy arrays (u1, u2)."""
    a_all = f1.detach().double().numpy()
    b_all = f2.detach().double().numpy()
    n, c, _, _ = a_all.shape
    if kernels is None:
        kernels = TVL1Kernels.exact(c, dtype=torch.float64)
    u1 = np.zeros_like(a_all)
    u2 = np.zeros_like(a_all)
    for ch in range(c):
        taps = [k[ch].detach().double().reshape(-1).tolist() for k in kernels]
        for s in range(n):
            u1[s, ch], u2[s, ch] = _reference_channel(
                a_all[s, ch], b_all[s, ch], taps, n_iter=n_iter, theta=theta, lam=lam, tau=tau, eps=eps
            )
    return u1, u2


# ---------------------------------------------------------------------------------------------------------------
# Helpers and fixtures
# ---------------------------------------------------------------------------------------------------------------


def smooth_texture(n: int, c: int, h: int, w: int, *, sigma: float = 2.0, seed: int = 0) -> torch.Tensor:
    """Gaussian-blurred (periodic) noise scaled to [0, 255], float64 (N, C, H, W)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    r = int(3 * sigma)
    k = torch.exp(-(torch.arange(-r, r + 1, dtype=torch.float64) ** 2) / (2 * sigma**2))
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="circular"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="circular"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    return 255.0 * (x - lo) / (hi - lo)


def perturbed_kernels(c: int, *, seed: int, scale: float = 0.2) -> TVL1Kernels:
    """Exact stencils plus a different random perturbation per channel (to catch orientation / grouping mistakes)."""
    gen = torch.Generator().manual_seed(seed)
    exact = TVL1Kernels.exact(c, dtype=torch.float64)
    return TVL1Kernels(*(k + scale * torch.randn(k.shape, generator=gen, dtype=torch.float64) for k in exact))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---------------------------------------------------------------------------------------------------------------
# Solver
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dims, shift, component, sign",
    [(3, 1, 0, 1.0), (3, -1, 0, -1.0), (2, 1, 1, 1.0), (2, -1, 1, -1.0)],
    ids=["right", "left", "down", "up"],
)
def test_known_shift_gives_unit_flow(dims, shift, component, sign):
    f1 = smooth_texture(1, 2, 32, 40, sigma=2.0, seed=1)
    f2 = torch.roll(f1, shifts=shift, dims=dims)  # content moves by one pixel
    flow = tvl1_flow(f1, f2, n_iter=50)
    interior = (slice(None), slice(None), slice(6, -6), slice(6, -6))  # away from the wrap-around seam
    along = sign * flow[component][interior].median().item()
    across = flow[1 - component][interior].median().item()
    assert 0.8 < along < 1.2, f"expected ~1 px along the shift, got {along:.3f}"
    assert abs(across) < 0.1, f"expected ~0 across the shift, got {across:.3f}"


def test_identical_frames_give_zero_flow():
    f = smooth_texture(2, 3, 9, 11, seed=2)
    u1, u2 = tvl1_flow(f, f.clone(), n_iter=5)
    assert torch.equal(u1, torch.zeros_like(u1)) and torch.equal(u2, torch.zeros_like(u2))


@pytest.mark.parametrize("use_exact", [True, False], ids=["exact-stencils", "perturbed-stencils"])
def test_solver_matches_loop_reference(use_exact):
    n, c, h, w = 2, 3, 6, 7  # H != W so a transposed stencil cannot pass
    f1 = smooth_texture(n, c, h, w, sigma=1.0, seed=3)
    f2 = smooth_texture(n, c, h, w, sigma=1.0, seed=4)
    kernels = TVL1Kernels.exact(c, dtype=torch.float64) if use_exact else perturbed_kernels(c, seed=5)
    params = {"n_iter": 6, "theta": 0.3, "lam": 0.15, "tau": 0.25, "eps": 1e-6}
    u1, u2 = tvl1_flow(f1, f2, kernels=kernels, **params)
    r1, r2 = tvl1_flow_reference(f1, f2, kernels=kernels, **params)
    assert np.abs(r1).max() > 1e-3 and np.abs(r2).max() > 1e-3  # a non-trivial comparison
    # and the first iteration already visits both the clamped and the linear cases of the threshold
    fx, fy = image_gradient(f2, kernels.image_x, kernels.image_y)
    ratio = ((f2 - f1) / (fx**2 + fy**2 + params["eps"])).abs()
    lam_theta = params["lam"] * params["theta"]
    assert (ratio > lam_theta).any() and (ratio < lam_theta).any()
    np.testing.assert_allclose(u1.numpy(), r1, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(u2.numpy(), r2, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kshape", [(1, 3), (3, 1), (1, 2), (2, 1)])
def test_depthwise_stencil_equals_grouped_conv(kshape):
    c = 4
    x = torch.randn(2, c, 6, 7, dtype=torch.float64)
    kernel = torch.randn(c, 1, *kshape, dtype=torch.float64)
    torch.testing.assert_close(depthwise_stencil(x, kernel), F.conv2d(x, kernel, groups=c))


def test_divergence_is_negative_adjoint_of_forward_gradient():
    n, c, h, w = 2, 3, 5, 8
    k = TVL1Kernels.exact(c, dtype=torch.float64)
    u = torch.randn(n, c, h, w, dtype=torch.float64)
    px, py = torch.randn(n, c, h, w, dtype=torch.float64), torch.randn(n, c, h, w, dtype=torch.float64)
    ux, uy = forward_gradient(u, k.grad_x, k.grad_y)
    lhs = (ux * px + uy * py).sum()
    rhs = -(u * divergence(px, py, k.div_x, k.div_y)).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-10)
    # orientation: ux differentiates along W, uy along H
    ramp = torch.arange(w, dtype=torch.float64).expand(n, c, h, w)
    ux, uy = forward_gradient(ramp, k.grad_x, k.grad_y)
    assert torch.all(ux[..., :-1] == 1) and torch.all(ux[..., -1] == 0) and torch.all(uy == 0)


def test_solver_matches_opencv_single_scale_tvl1():
    """OpenCV's dual TV-L1 with 1 scale, 1 warp and no median filter runs the same iteration. Its one-sided border
    gradient is halved (ours is the plain one-sided difference), and that difference travels one pixel per iteration,
    so compare beyond n_iter + 1 pixels of the border."""
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2, "optflow"):
        pytest.skip("cv2.optflow missing (opencv-contrib-python-headless)")
    n_iter = 10
    a = smooth_texture(1, 1, 32, 40, sigma=1.5, seed=9)[0, 0].round().numpy().astype(np.uint8)
    b = np.roll(a, (1, 1), axis=(0, 1))
    algo = cv2.optflow.DualTVL1OpticalFlow_create()
    algo.setScalesNumber(1)
    algo.setWarpingsNumber(1)
    algo.setOuterIterations(1)
    algo.setInnerIterations(n_iter)
    algo.setMedianFiltering(1)
    algo.setEpsilon(0.0)
    expected = algo.calc(a, b, None)  # (H, W, 2) float32
    f1 = torch.from_numpy(a).double()[None, None]  # (1, 1, H, W)
    f2 = torch.from_numpy(b).double()[None, None]
    u1, u2 = tvl1_flow(f1, f2, n_iter=n_iter, lam=0.15, theta=0.3, tau=0.25)
    m = n_iter + 1
    got = np.stack([u1[0, 0].numpy(), u2[0, 0].numpy()], axis=-1)[m:-m, m:-m]
    assert np.abs(expected[m:-m, m:-m]).max() > 0.1
    np.testing.assert_allclose(got, expected[m:-m, m:-m], atol=1e-4)


def test_solver_gradcheck():
    n, c, h, w = 1, 2, 4, 5
    f1 = smooth_texture(n, c, h, w, sigma=1.0, seed=6).requires_grad_()
    f2 = smooth_texture(n, c, h, w, sigma=1.0, seed=7).requires_grad_()
    scalars = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (0.3, 0.15, 0.25)]
    kernels = [k.requires_grad_() for k in perturbed_kernels(c, seed=8, scale=0.05)]

    def fn(f1, f2, theta, lam, tau, *ks):
        u1, u2 = tvl1_flow(f1, f2, kernels=TVL1Kernels(*ks), n_iter=3, theta=theta, lam=lam, tau=tau, eps=1e-6)
        return torch.cat([u1, u2], dim=1)

    assert torch.autograd.gradcheck(fn, (f1, f2, *scalars, *kernels), eps=1e-6, atol=1e-6, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# Module
# ---------------------------------------------------------------------------------------------------------------


def test_layer_gradcheck():
    layer = RepresentationFlow(2, bottleneck=2, n_iter=2).double()
    x = torch.randn(1, 2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,), eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("b, c, t, h, w", [(2, 6, 4, 7, 9), (1, 3, 2, 5, 5)])
def test_layer_shape_and_all_parameters_get_gradients(b, c, t, h, w):
    layer = RepresentationFlow(c, bottleneck=4)
    x = torch.randn(b, c, t, h, w, requires_grad=True)
    out = layer(x)
    assert out.shape == (b, c, t - 1, h, w)
    assert torch.isfinite(out).all() and (out >= 0).all()
    (out * torch.randn_like(out)).sum().backward()
    names = {name for name, _ in layer.named_parameters()}
    assert {"theta", "lam", "tau", "image_x", "image_y", "grad_x", "grad_y", "div_x", "div_y"} <= names
    for name, p in layer.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_learned_kernels_are_depthwise_exact_stencils():
    layer = RepresentationFlow(8, bottleneck=5)
    assert layer.image_x.shape == (5, 1, 1, 3) and layer.image_y.shape == (5, 1, 3, 1)
    assert layer.grad_x.shape == (5, 1, 1, 2) and layer.div_y.shape == (5, 1, 2, 1)
    torch.testing.assert_close(layer.image_x[3].flatten(), torch.tensor([-0.5, 0.0, 0.5]))
    torch.testing.assert_close(layer.div_x[0].flatten(), torch.tensor([-1.0, 1.0]))


def test_fixed_kernels_and_params_are_buffers():
    layer = RepresentationFlow(4, bottleneck=2, learn_kernels=False, learn_params=False)
    params = {name for name, _ in layer.named_parameters()}
    assert params == {"reduce.weight", "expand.weight", "bn.weight", "bn.bias"}
    assert {"theta", "lam", "tau", "image_x", "div_y"} <= set(layer.state_dict())


def test_normalisation_is_per_sample():
    layer = RepresentationFlow(3, bottleneck=2).eval()
    x = torch.randn(2, 3, 3, 6, 6)
    z = layer.normalize(x * torch.tensor([1.0, 100.0]).view(2, 1, 1, 1, 1))
    for s in range(2):
        assert z[s].min().abs() < 1e-4 and (z[s].max() - 255).abs() < 1e-2
    # in eval mode a clip's output does not depend on the other clips of the batch
    torch.testing.assert_close(layer(x)[:1], layer(x[:1]))
    torch.testing.assert_close(layer(x)[1:], layer(x[1:]))


@pytest.mark.parametrize(
    "shape, match",
    [((1, 3, 1, 6, 6), "expected T >= 2"), ((3, 1, 6, 6), "expected input"), ((1, 4, 3, 6, 6), "expected input")],
    ids=["T=1", "4-D", "wrong-channels"],
)
def test_layer_rejects_bad_input(shape, match):
    layer = RepresentationFlow(3, bottleneck=2)
    with pytest.raises(ValueError, match=match):
        layer(torch.randn(*shape))
