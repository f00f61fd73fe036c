"""The LSTA cell: long short-term attention (Sudhakaran, Escalera & Lanz, CVPR 2019; lsta.md §1).

One step takes the frame's no-BN conv5 features x_t (B, C, h, w) and its raw CAM prior (B, 1, h, w) and updates two
recurrences:

* **attention** (single-channel states a, s; zero-initialised)::

      i, f, o = σ(W_s* s + b + W_cam* cam)        ã = tanh(W_s* s + b + W_cam* cam)      (one conv pair per gate)
      a_t = f ⊙ a + i ⊙ ã                         s_t = o ⊙ tanh(a_t)
      u_t = softmax over the h·w positions of (s_t + cam)          x̄_t = x_t ⊙ u_t   (broadcast over channels)

* **memory** (states c, o of ``mem_size`` channels; zero-initialised)::

      h = o_{t-1} ⊙ tanh(c_{t-1})                                          (never stored, as in the original)
      i, f = σ(W_x* x̄_t + b + W_h* h [+ flow_i, flow_f])     c̃ = tanh(W_x* x̄_t + b + W_h* h [+ flow_c])
      c_t = f ⊙ c_{t-1} + i ⊙ c̃
      k′ = argmax(W_c · avgpool(c_t) + W_p · avgpool(x̄_t))              (output pooling, ``out_pool_size`` classes)
      ĉ = W_c[k′] ⊙ c_t                                                   (a channel re-weighting of the memory)
      o_t = σ(W_oh* h + b + W_oc* ĉ)                                      (no x term in the output gate)

The optional ``flow`` term (B, 3·mem, h, w) is the cross-modal hook of the original (``x_flow_i/f/c``; its
``x_flow_o`` is never used there, so the output gate takes none here either).

Layout: the four attention gate convs are fused into ``conv_s`` (1 -> 4, bias) and ``conv_cam`` (1 -> 4, no bias), gate
order **i, f, ã, o**; the three memory gates into ``conv_x`` (C -> 3·mem, bias) and ``conv_h`` (mem -> 3·mem, no
bias), order **i, f, c̃**; the output gate keeps two convs, ``conv_o_h`` (on h, bias) and ``conv_o_c`` (on ĉ).

Deliberate differences from the original code (lsta.md §6):

* the original declares the output gate's h-conv with the *input* channel count and names the pair swapped
  (``conv_o_x`` is applied to h); it only runs because mem_size equals 512. Here ``conv_o_h`` is mem -> mem, so any
  mem_size works; with mem_size = C = 512 the weights map one to one (`fpar.models.lsta.from_original` / `to_original`);
* the coupling term ``W_p`` (``coupling_fc``) enters only the argmax that picks k′: it can never receive a gradient
  and stays at its initial values (as in the original, where it is trained by nothing). ``W_c`` learns only through
  ĉ, i.e. through the output gates of steps 1..T-1.

Init (as the original): every conv Xavier-normal with the fans of its own (unfused) gate conv, biases zero;
``c_classifier`` and ``coupling_fc`` keep PyTorch's default Linear init.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import select_rows

ATTENTION_GATES: tuple[str, ...] = ("i", "f", "a", "o")
MEMORY_GATES: tuple[str, ...] = ("i", "f", "c")

State = tuple[Tensor, Tensor, Tensor, Tensor]  # (a, s, c, o)


class LSTACell(nn.Module):
    """``forward(x, cam, state=None, flow=None) -> (x_bar, u, state)``.

    Args:
        input_channels: C of the features (512 for ResNet-34).
        mem_size: memory channels (512).
        out_pool_size: classes of the output pooling (``--outPoolSize``, 100).
        kernel_size: of every conv (3).
    """

    def __init__(self, input_channels: int = 512, mem_size: int = 512, out_pool_size: int = 100, kernel_size: int = 3):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd to keep the spatial size, got {kernel_size}")
        k, pad = kernel_size, kernel_size // 2
        self.input_channels, self.mem_size, self.out_pool_size = int(input_channels), int(mem_size), int(out_pool_size)
        self.conv_s = nn.Conv2d(1, 4, k, padding=pad, bias=True)  # attention gates i, f, ã, o on s_{t-1}
        self.conv_cam = nn.Conv2d(1, 4, k, padding=pad, bias=False)  # ... and on the CAM
        self.conv_x = nn.Conv2d(input_channels, 3 * mem_size, k, padding=pad, bias=True)  # memory gates i, f, c̃
        self.conv_h = nn.Conv2d(mem_size, 3 * mem_size, k, padding=pad, bias=False)
        self.conv_o_h = nn.Conv2d(mem_size, mem_size, k, padding=pad, bias=True)  # output gate on h
        self.conv_o_c = nn.Conv2d(mem_size, mem_size, k, padding=pad, bias=False)  # ... and on ĉ
        self.c_classifier = nn.Linear(mem_size, out_pool_size, bias=False)  # W_c
        self.coupling_fc = nn.Linear(input_channels, out_pool_size, bias=False)  # W_p (argmax only: no gradient)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for conv, n in ((self.conv_s, 4), (self.conv_cam, 4), (self.conv_x, 3), (self.conv_h, 3)):
                step = conv.out_channels // n
                for g in range(n):  # a view per gate: Xavier with that gate conv's own fans
                    nn.init.xavier_normal_(conv.weight[g * step : (g + 1) * step])
                if conv.bias is not None:
                    nn.init.zeros_(conv.bias)
            for conv in (self.conv_o_h, self.conv_o_c):
                nn.init.xavier_normal_(conv.weight)
            nn.init.zeros_(self.conv_o_h.bias)

    def zero_state(self, x: Tensor) -> State:
        """(a, s) (B, 1, h, w) and (c, o) (B, mem, h, w), all zeros."""
        b, _, h, w = x.shape
        a = x.new_zeros(b, 1, h, w)
        c = x.new_zeros(b, self.mem_size, h, w)
        return a, a.clone(), c, c.clone()

    def attend(self, x: Tensor, cam: Tensor, a: Tensor, s: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The attention recurrence: returns (x_bar (B, C, h, w), u (B, 1, h, w), a_t, s_t)."""
        g = self.conv_s(s) + self.conv_cam(cam)  # (B, 4, h, w): i, f, ã, o
        gi, gf, ga, go = g.chunk(4, dim=1)  # each (B, 1, h, w)
        a = torch.sigmoid(gf) * a + torch.sigmoid(gi) * torch.tanh(ga)
        s = torch.sigmoid(go) * torch.tanh(a)
        b, _, h, w = x.shape
        u = F.softmax((s + cam).reshape(b, h * w), dim=1).reshape(b, 1, h, w)  # (B, 1, h, w), sums to 1
        return x * u, u, a, s

    def forward(self, x: Tensor, cam: Tensor, state: State | None = None, flow: Tensor | None = None):
        """x (B, C, h, w), cam (B, 1, h, w), flow (B, 3·mem, h, w) or None -> (x_bar, u, (a, s, c, o))."""
        if state is None:
            state = self.zero_state(x)
        a, s, c, o = state
        x_bar, u, a, s = self.attend(x, cam, a, s)
        h = o * torch.tanh(c)  # (B, mem, h, w)
        gates = self.conv_x(x_bar) + self.conv_h(h)  # (B, 3*mem, h, w): i, f, c̃
        if flow is not None:
            gates = gates + flow
        gi, gf, gc = gates.chunk(3, dim=1)  # each (B, mem, h, w)
        c = torch.sigmoid(gf) * c + torch.sigmoid(gi) * torch.tanh(gc)
        with torch.no_grad():  # only the argmax is used: W_p gets no gradient, W_c none through this path
            z = self.c_classifier(c.mean(dim=(2, 3))) + self.coupling_fc(x_bar.mean(dim=(2, 3)))  # (B, out_pool)
            k = z.argmax(dim=1)  # (B,)
        w_k = select_rows(self.c_classifier.weight, k)  # (B, mem): W_c[k'], reproducible grad (see select_rows)
        c_hat = w_k[:, :, None, None] * c  # (B, mem, h, w): W_c[k'] re-weights channels
        o = torch.sigmoid(self.conv_o_h(h) + self.conv_o_c(c_hat))
        return x_bar, u, (a, s, c, o)

    def extra_repr(self) -> str:
        return f"{self.input_channels}, mem_size={self.mem_size}, out_pool_size={self.out_pool_size}"
