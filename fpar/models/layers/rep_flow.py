"""Representation Flow layer: a differentiable TV-L1 optical-flow solver over feature maps (reference-spec §6).

Piergiovanni & Ryoo, "Representation Flow for Action Recognition", CVPR 2019. The layer unrolls a fixed number of
iterations of the TV-L1 duality scheme (Zach, Pock & Bischof 2007, with Chambolle's projection for the dual variable)
on pairs of consecutive feature maps, and makes the step sizes and the difference stencils learnable.

Two levels:

* `tvl1_flow(f1, f2, ...)`: the solver on (N, C, H, W) pairs, each channel solved independently (depthwise).
* `RepresentationFlow(channels)`: the wrapper module on (B, C, T, H, W) features (Conv3d layout, as in the original),
  with bottleneck, normalisation, frame pairing, un-bottleneck, BatchNorm and residual.

Discrete operators (all per channel, x = width = last dim, y = height):

* image gradient of F2: central difference [-0.5, 0, 0.5] inside, one-sided F2[1]-F2[0] / F2[-1]-F2[-2] on the
  border rows/columns (always of F2);
* forward gradient of u: [-1, 1], zero on the last column (x) / last row (y) (Neumann boundary);
* divergence of p: the matching backward difference with Chambolle's boundary cases, so that
  ``<grad u, p> = -<u, div p>`` exactly for the default stencils (div = -grad^T).

With the exact stencils, `tvl1_flow` is the iteration of OpenCV's ``DualTVL1OpticalFlow`` run with 1 scale, 1 warp
and no median filter; the only difference is OpenCV's halved one-sided border gradient (tests/test_rep_flow.py checks
the agreement away from the border).

Every stencil is a depthwise convolution (one kernel per channel, like ``groups=C``), evaluated by
`depthwise_stencil` as a weighted sum of shifted slices instead of ``F.conv2d`` for speed (see there).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TVL1Kernels(NamedTuple):
    """Depthwise difference stencils of the solver, one per channel (dim 0 = C).

    Attributes:
        image_x: (C, 1, 1, 3) interior x-derivative of F2; exact value [-0.5, 0, 0.5].
        image_y: (C, 1, 3, 1) interior y-derivative of F2; exact value [-0.5, 0, 0.5]^T.
        grad_x: (C, 1, 1, 2) forward x-difference of the flow; exact value [-1, 1].
        grad_y: (C, 1, 2, 1) forward y-difference of the flow; exact value [-1, 1]^T.
        div_x: (C, 1, 1, 2) backward x-difference of the dual variable; exact value [-1, 1] (applied to the
            zero-padded dual, see `divergence`).
        div_y: (C, 1, 2, 1) backward y-difference of the dual variable; exact value [-1, 1]^T.
    """

    image_x: Tensor
    image_y: Tensor
    grad_x: Tensor
    grad_y: Tensor
    div_x: Tensor
    div_y: Tensor

    @classmethod
    def exact(
        cls, channels: int, *, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> TVL1Kernels:
        """The exact difference stencils, repeated for `channels` channels."""
        kw = {"dtype": dtype, "device": device}
        central = torch.tensor([-0.5, 0.0, 0.5], **kw)
        forward = torch.tensor([-1.0, 1.0], **kw)
        return cls(
            image_x=central.view(1, 1, 1, 3).repeat(channels, 1, 1, 1),
            image_y=central.view(1, 1, 3, 1).repeat(channels, 1, 1, 1),
            grad_x=forward.view(1, 1, 1, 2).repeat(channels, 1, 1, 1),
            grad_y=forward.view(1, 1, 2, 1).repeat(channels, 1, 1, 1),
            div_x=forward.view(1, 1, 1, 2).repeat(channels, 1, 1, 1),
            div_y=forward.view(1, 1, 2, 1).repeat(channels, 1, 1, 1),
        )


def depthwise_stencil(x: Tensor, kernel: Tensor) -> Tensor:
    """'Valid' depthwise cross-correlation of x (N, C, H, W) with a 1-D kernel per channel.

    Equal to ``F.conv2d(x, kernel, groups=C)`` (no padding), computed as a weighted sum of shifted slices: for these
    2- and 3-tap kernels that is much faster on CPU than the oneDNN depthwise convolution (about 80x on 6x1x256x455
    with torch 2.14), and it is as cheap as any elementwise op on GPU.

    Args:
        x: (N, C, H, W).
        kernel: (C, 1, 1, k) to filter along W, or (C, 1, k, 1) to filter along H.

    Returns:
        (N, C, H, W-k+1) or (N, C, H-k+1, W).
    """
    c = x.shape[1]
    assert kernel.dim() == 4 and kernel.shape[0] == c and kernel.shape[1] == 1 and 1 in kernel.shape[2:]
    dim = 3 if kernel.shape[2] == 1 else 2
    taps = kernel.shape[dim]
    length = x.shape[dim] - taps + 1
    weight = kernel.reshape(c, taps, 1, 1)  # (C, k, 1, 1): tap i of every channel broadcasts over (H, W)
    out = x.narrow(dim, 0, length) * weight[:, 0]
    for i in range(1, taps):
        out = out + x.narrow(dim, i, length) * weight[:, i]
    return out


def _difference(x: Tensor, dim: int) -> Tensor:
    """x[k+1] - x[k] along `dim` ('valid': one shorter); bit for bit `depthwise_stencil` with the exact [-1, 1]."""
    n = x.shape[dim] - 1
    return x.narrow(dim, 1, n) - x.narrow(dim, 0, n)


def image_gradient(
    f: Tensor, kernel_x: Tensor | None = None, kernel_y: Tensor | None = None, *, border: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Gradient of an image stack: 3-tap `kernel_x`/`kernel_y` inside, one-sided differences of `f` on the border.

    Args:
        f: (N, C, H, W), with H, W >= 3.
        kernel_x: (C, 1, 1, 3) depthwise kernel; None is the exact central difference [-0.5, 0, 0.5], computed as
            0.5 * (f[j+1] - f[j-1]) (bit for bit the stencil's result: scaling by 0.5 is exact).
        kernel_y: (C, 1, 3, 1) depthwise kernel, or None (the exact one).
        border: factor of the one-sided border differences: 1 (the layer: F2[1] - F2[0]) or 0.5 (OpenCV's
            ``centeredGradient``: 0.5 * (F2[1] - F2[0])).

    Returns:
        (fx, fy), each (N, C, H, W).
    """

    def inner(dim: int, kernel: Tensor | None) -> Tensor:
        if kernel is not None:
            return depthwise_stencil(f, kernel)
        n = f.shape[dim] - 2
        return 0.5 * (f.narrow(dim, 2, n) - f.narrow(dim, 0, n))

    def edge(t: Tensor) -> Tensor:
        return t if border == 1.0 else border * t

    # Inner x, fx, inner y, fy, in this order: the layer's backward accumulates into f in the order of these uses.
    inner_x = inner(3, kernel_x)  # (N, C, H, W-2): columns 1 .. W-2
    fx = torch.cat([edge(f[..., :, 1:2] - f[..., :, 0:1]), inner_x, edge(f[..., :, -1:] - f[..., :, -2:-1])], dim=3)
    inner_y = inner(2, kernel_y)  # (N, C, H-2, W): rows 1 .. H-2
    fy = torch.cat([edge(f[..., 1:2, :] - f[..., 0:1, :]), inner_y, edge(f[..., -1:, :] - f[..., -2:-1, :])], dim=2)
    return fx, fy


def forward_gradient(
    u: Tensor, kernel_x: Tensor | None = None, kernel_y: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Forward differences of `u` (N, C, H, W); the last column of ux and the last row of uy are 0 (Chambolle).

    A None kernel is the exact [-1, 1], computed as a plain difference (bit for bit the stencil's result)."""
    # (The order of the operations is the layer's graph order, which its backward's rounding depends on.)
    ux = F.pad(depthwise_stencil(u, kernel_x) if kernel_x is not None else _difference(u, 3), (0, 1))  # (N, C, H, W)
    uy = F.pad(depthwise_stencil(u, kernel_y) if kernel_y is not None else _difference(u, 2), (0, 0, 0, 1))
    return ux, uy  # (N, C, H, W) each


def divergence(px: Tensor, py: Tensor, kernel_x: Tensor | None = None, kernel_y: Tensor | None = None) -> Tensor:
    """Discrete divergence of the dual field (px, py), each (N, C, H, W), adjoint to `forward_gradient`.

    Chambolle's definition: (div p)[j] = p[j] - p[j-1] inside, p[0] at j = 0 and -p[W-2] at j = W-1 (same along y).
    That is the 2-tap kernel applied to p with its last column dropped and one zero column added on each side.
    OpenCV's ``divergence`` is the same operator (its p is 0 on the last column, where the forward gradient is 0).
    """
    qx = F.pad(px[..., :, :-1], (1, 1))  # (N, C, H, W+1)
    dx = depthwise_stencil(qx, kernel_x) if kernel_x is not None else _difference(qx, 3)  # (N, C, H, W)
    qy = F.pad(py[..., :-1, :], (0, 0, 1, 1))  # (N, C, H+1, W)
    dy = depthwise_stencil(qy, kernel_y) if kernel_y is not None else _difference(qy, 2)  # (N, C, H, W)
    return dx + dy


def tvl1_iteration(
    u: Tensor,
    px: Tensor,
    py: Tensor,
    grad: Tensor,
    rho_c: Tensor,
    g: Tensor,
    *,
    lam_theta: float | Tensor,
    theta: float | Tensor,
    step: float | Tensor,
    eps: float,
    kernels: TVL1Kernels | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One iteration of the TV-L1 duality scheme, shared by `tvl1_flow` (the layer) and `fpar.video.tvl1` (the
    pyramidal solver of ``--flow tvl1-torch``).

    With M images of C channels (u1 and u2 travel as one stack: index 0 is x, 1 is y):

        ρ = ρ_c + ∇I·u
        v = u - clamp(ρ / g, -λθ, λθ) ∇I          (the three cases of the threshold step in one expression)
        u = v + θ div(p)
        p = (p + (τ/θ) ∇u) / (1 + (τ/θ) sqrt(|∇u|² + eps))

    Args:
        u, px, py: (2M, C, H, W) flow and the x / y components of its dual variable: rows 0 .. M-1 are u1 (p1),
            rows M .. 2M-1 are u2 (p2); u1 and u2 share every stencil, so they travel as one stack.
        grad: (2, M, C, H, W) image gradient (x, y) of the (warped) second image.
        rho_c: (M, C, H, W) the constant part of the residual ρ.
        g: (M, C, H, W) the divisor of the threshold step: |∇I|² (+ eps for the layer).
        lam_theta, theta, step: λθ, θ and τ/θ.
        eps: added under the square root of |∇u| (0 is OpenCV's hypot).
        kernels: the difference stencils of C channels (the layer's learnable ones); None is the exact stencils.

    Returns:
        (u, px, py), each (2M, C, H, W).
    """
    two_m, c, h, w = u.shape
    u_xy = u.view(2, two_m // 2, c, h, w)  # (2, M, C, H, W)
    rho = rho_c + (grad * u_xy).sum(0)  # (M, C, H, W)
    if isinstance(lam_theta, Tensor):  # the layer's learnable λ, θ
        shrink = torch.minimum(torch.maximum(rho / g, -lam_theta), lam_theta)  # (M, C, H, W)
    else:
        shrink = (rho / g).clamp(-lam_theta, lam_theta)  # (M, C, H, W)
    v = (u_xy - shrink * grad).view(two_m, c, h, w)  # (2M, C, H, W)
    kx, ky = (kernels.div_x, kernels.div_y) if kernels is not None else (None, None)
    u = v + theta * divergence(px, py, kx, ky)  # (2M, C, H, W)
    kx, ky = (kernels.grad_x, kernels.grad_y) if kernels is not None else (None, None)
    ux, uy = forward_gradient(u, kx, ky)  # (2M, C, H, W) each
    norm = torch.sqrt(ux * ux + uy * uy + eps) if eps else torch.sqrt(ux * ux + uy * uy)
    denom = 1.0 + step * norm  # (2M, C, H, W)
    return u, (px + step * ux) / denom, (py + step * uy) / denom


def tvl1_flow(
    f1: Tensor,
    f2: Tensor,
    *,
    kernels: TVL1Kernels | None = None,
    n_iter: int = 10,
    theta: float | Tensor = 0.3,
    lam: float | Tensor = 0.15,
    tau: float | Tensor = 0.25,
    eps: float = 1e-6,
) -> tuple[Tensor, Tensor]:
    """Unrolled TV-L1 flow from `f1` to `f2`, every channel solved independently (no warping, no pyramid).

    With ∇F2 the image gradient of F2, g = |∇F2|² + eps, ρ_c = F2 - F1 and u = p = 0, each iteration is
    `tvl1_iteration`:

        ρ = ρ_c + ∇F2·u
        v = u - clamp(ρ / g, -λθ, λθ) ∇F2        (the three-case threshold: +λθ∇F2 / -λθ∇F2 / -ρ∇F2/g)
        u = v + θ div(p)                          (for u1 with p1 and u2 with p2)
        p = (p + (τ/θ) ∇u) / (1 + (τ/θ) sqrt(|∇u|² + eps))

    The flow follows brightness constancy F1(x) = F2(x + u): content moving right gives u1 > 0, down gives u2 > 0.

    Args:
        f1: (N, C, H, W) first frame, H, W >= 3.
        f2: (N, C, H, W) second frame.
        kernels: depthwise stencils for C channels; None uses `TVL1Kernels.exact`.
        n_iter: number of unrolled iterations.
        theta: θ, the coupling weight between u and v (also in the dual step τ/θ).
        lam: λ, the weight of the data term.
        tau: τ, the dual step size.
        eps: added to |∇F2|² and under the square root of |∇u| so every operation stays differentiable.

    Returns:
        (u1, u2): the x and y flow, each (N, C, H, W).
    """
    if f1.dim() != 4 or f1.shape != f2.shape:
        raise ValueError(
            f"expected f1 and f2 of the same shape (N, C, H, W), got {tuple(f1.shape)} and {tuple(f2.shape)}"
        )
    n, c, h, w = f1.shape
    if h < 3 or w < 3:
        raise ValueError(f"expected H >= 3 and W >= 3 for the central-difference image gradient, got H={h}, W={w}")
    if kernels is None:
        kernels = TVL1Kernels.exact(c, dtype=f1.dtype, device=f1.device)
    if kernels.image_x.shape[0] != c:
        raise ValueError(f"expected kernels for {c} channels, got {kernels.image_x.shape[0]}")

    f2x, f2y = image_gradient(f2, kernels.image_x, kernels.image_y)  # (N, C, H, W) each
    grad_f2 = torch.stack([f2x, f2y])  # (2, N, C, H, W): x, y
    g = f2x * f2x + f2y * f2y + eps  # (N, C, H, W)
    rho_c = f2 - f1  # (N, C, H, W)

    theta = torch.as_tensor(theta, dtype=f1.dtype, device=f1.device)
    lam_theta = torch.as_tensor(lam, dtype=f1.dtype, device=f1.device) * theta
    step = torch.as_tensor(tau, dtype=f1.dtype, device=f1.device) / theta

    # u1 and u2 share every stencil, so they travel as one stack of 2N images: [u1 of all N; u2 of all N].
    u = f1.new_zeros(2 * n, c, h, w)  # (2N, C, H, W)
    px = f1.new_zeros(2 * n, c, h, w)  # (2N, C, H, W): x-component of p1 (first N) and p2 (last N)
    py = f1.new_zeros(2 * n, c, h, w)  # (2N, C, H, W): y-component
    for _ in range(n_iter):
        u, px, py = tvl1_iteration(
            u, px, py, grad_f2, rho_c, g, lam_theta=lam_theta, theta=theta, step=step, eps=eps, kernels=kernels
        )
    u1, u2 = u.view(2, n, c, h, w).unbind(0)  # (N, C, H, W) each
    return u1, u2


class RepresentationFlow(nn.Module):
    """Representation Flow layer (Piergiovanni & Ryoo, CVPR 2019) with a residual, as used inside Ego-RNN.

    Input x (B, C, T, H, W) (Conv3d layout, T >= 2, H, W >= 3); output (B, C, T-1, H, W):

        x ──> Conv3d 1x1x1 C->K (no bias) ──> per-sample min/max to [0, 255] ──> pairs (t, t+1): B(T-1) pairs
          │                                                                          │
          │                                                        TV-L1 (`tvl1_flow`, n_iter) -> u1, u2 (K each)
          │                                                                          │
          │                                  BatchNorm3d(C) <── Conv3d 1x1x1 2K->C (no bias) <── concat [u1, u2]
          │                                         │
          └──── x[:, :, :-1] (first T-1 frames) ──> + ──> ReLU

    Args:
        channels: C, the number of input (and output) channels.
        bottleneck: K, the channels the flow is computed on (32 in the paper).
        n_iter: unrolled TV-L1 iterations (10 in the paper).
        theta, lam, tau: initial θ, λ, τ of the solver.
        learn_kernels: make the six difference stencils learnable depthwise kernels (initialised to the exact
            stencils); otherwise they are fixed buffers.
        learn_params: make θ, λ, τ learnable scalars; otherwise fixed buffers.

    Deliberate differences from the public code (`piergiaj/representation-flow-cvpr19:rep_flow_layer.py` ac5c3ff,
    reference-spec §9 item 20):

    * the normalisation maps to [0, 255] (the public code divides by min - max and lands in [-255, 0]), and it uses
      each sample's own min/max over (C, T, H, W) instead of the whole batch's, so a sample's flow does not depend
      on the other clips in the batch;
    * the forward-gradient and divergence kernels are a horizontal pair for x and a vertical pair for y (the public
      code has four vertical kernels and loses the x-derivative);
    * all stencils are depthwise (one kernel per channel, as groups=K), so each channel's flow uses only that
      channel;
    * the border of ∇F2 is a one-sided difference of F2 (the public code uses F1 there);
    * the divergence uses Chambolle's boundary cases, exactly the negative adjoint of the forward gradient;
    * eps keeps |∇F2|² away from 0 in the division and |∇u| differentiable at 0; no `mask ^ 1` bool arithmetic.
    """

    def __init__(
        self,
        channels: int,
        *,
        bottleneck: int = 32,
        n_iter: int = 10,
        theta: float = 0.3,
        lam: float = 0.15,
        tau: float = 0.25,
        learn_kernels: bool = True,
        learn_params: bool = True,
        eps: float = 1e-6,
    ):
        super().__init__()
        if channels < 1 or bottleneck < 1:
            raise ValueError(f"expected channels >= 1 and bottleneck >= 1, got {channels} and {bottleneck}")
        if n_iter < 1:
            raise ValueError(f"expected n_iter >= 1, got {n_iter}")
        self.channels = int(channels)
        self.bottleneck = int(bottleneck)
        self.n_iter = int(n_iter)
        self.eps = float(eps)
        self.learn_kernels = bool(learn_kernels)
        self.learn_params = bool(learn_params)

        self.reduce = nn.Conv3d(channels, bottleneck, kernel_size=1, bias=False)
        self.expand = nn.Conv3d(2 * bottleneck, channels, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm3d(channels)

        for name, value in TVL1Kernels.exact(bottleneck)._asdict().items():
            self._register(name, value, learn_kernels)
        for name, value in (("theta", theta), ("lam", lam), ("tau", tau)):
            self._register(name, torch.tensor(float(value)), learn_params)

    def _register(self, name: str, value: Tensor, learnable: bool) -> None:
        if learnable:
            self.register_parameter(name, nn.Parameter(value))
        else:
            self.register_buffer(name, value)

    @property
    def kernels(self) -> TVL1Kernels:
        return TVL1Kernels(*(getattr(self, name) for name in TVL1Kernels._fields))

    def normalize(self, x: Tensor) -> Tensor:
        """Map each sample of x (B, K, T, H, W) to [0, 255] with its own min and max."""
        lo = x.amin(dim=(1, 2, 3, 4), keepdim=True)  # (B, 1, 1, 1, 1)
        hi = x.amax(dim=(1, 2, 3, 4), keepdim=True)  # (B, 1, 1, 1, 1)
        return 255.0 * (x - lo) / (hi - lo + self.eps)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 5 or x.shape[1] != self.channels:
            raise ValueError(f"expected input of shape (B, {self.channels}, T, H, W), got {tuple(x.shape)}")
        b, _, t, h, w = x.shape
        if t < 2:
            raise ValueError(f"expected T >= 2 frames to form a pair, got T={t}")
        if h < 3 or w < 3:
            raise ValueError(f"expected H >= 3 and W >= 3, got H={h}, W={w}")
        k = self.bottleneck

        z = self.normalize(self.reduce(x))  # (B, K, T, H, W)
        z = z.permute(0, 2, 1, 3, 4)  # (B, T, K, H, W)
        f1 = z[:, :-1].reshape(b * (t - 1), k, h, w)  # (B(T-1), K, H, W): frames t
        f2 = z[:, 1:].reshape(b * (t - 1), k, h, w)  # (B(T-1), K, H, W): frames t+1
        u1, u2 = tvl1_flow(
            f1,
            f2,
            kernels=self.kernels,
            n_iter=self.n_iter,
            theta=self.theta,
            lam=self.lam,
            tau=self.tau,
            eps=self.eps,
        )  # (B(T-1), K, H, W) each
        flow = torch.cat([u1, u2], dim=1)  # (B(T-1), 2K, H, W)
        flow = flow.view(b, t - 1, 2 * k, h, w).permute(0, 2, 1, 3, 4)  # (B, 2K, T-1, H, W)
        out = self.bn(self.expand(flow))  # (B, C, T-1, H, W)
        return torch.relu(out + x[:, :, :-1])  # (B, C, T-1, H, W)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, bottleneck={self.bottleneck}, n_iter={self.n_iter}, "
            f"learn_kernels={self.learn_kernels}, learn_params={self.learn_params}"
        )
