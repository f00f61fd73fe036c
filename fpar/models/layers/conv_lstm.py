"""Convolutional LSTM cell of Ego-RNN (reference-spec §1.3).

The original cell has four gates (i, f, c~, o), each with two 3x3 convolutions: an input conv (input -> hidden, with
bias) and a hidden conv (hidden -> hidden, no bias). Here the four input convs are fused into one conv
(input -> 4*hidden) and the four hidden convs into another (hidden -> 4*hidden); that is two conv calls per step
instead of eight, with exactly the same arithmetic.

Weight layout of the fused convs (dim 0 = output channels), gate order **i, f, c~, o**:

    conv_x.weight[0*H:1*H]  = W_xi      conv_h.weight[0*H:1*H]  = W_hi      conv_x.bias[0*H:1*H] = b_i
    conv_x.weight[1*H:2*H]  = W_xf      conv_h.weight[1*H:2*H]  = W_hf      conv_x.bias[1*H:2*H] = b_f
    conv_x.weight[2*H:3*H]  = W_xc      conv_h.weight[2*H:3*H]  = W_hc      conv_x.bias[2*H:3*H] = b_c
    conv_x.weight[3*H:4*H]  = W_xo      conv_h.weight[3*H:4*H]  = W_ho      conv_x.bias[3*H:4*H] = b_o

with H = hidden_channels. `ConvLSTMCell.gate_weights()` returns these per-gate views.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

GATE_ORDER: tuple[str, str, str, str] = ("i", "f", "c", "o")


class ConvLSTMCell(nn.Module):
    """One step of a ConvLSTM without peepholes.

    ``forward(x, state)`` with x (B, C_in, H, W) and state ``(h, c)`` each (B, C_hid, H, W), or None for zeros.
    Returns the new ``(h, c)``, each (B, C_hid, H, W) (stride 1, padding k//2 keeps the spatial size):

        i = sigmoid(W_xi*x + b_i + W_hi*h)     f = sigmoid(W_xf*x + b_f + W_hf*h)
        g = tanh(W_xc*x + b_c + W_hc*h)        o = sigmoid(W_xo*x + b_o + W_ho*h)
        c' = g*i + c*f                         h' = o*tanh(c')

    Init: every per-gate weight block gets Xavier-normal with the fans of that gate's own conv (C_in*k*k,
    C_hid*k*k), not of the fused tensor; input biases are zero.
    """

    def __init__(self, input_channels: int, hidden_channels: int, kernel_size: int = 3):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd to keep the spatial size, got {kernel_size}")
        self.input_channels = int(input_channels)
        self.hidden_channels = int(hidden_channels)
        self.kernel_size = int(kernel_size)
        pad = kernel_size // 2
        self.conv_x = nn.Conv2d(input_channels, 4 * hidden_channels, kernel_size, padding=pad, bias=True)
        self.conv_h = nn.Conv2d(hidden_channels, 4 * hidden_channels, kernel_size, padding=pad, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        hid = self.hidden_channels
        with torch.no_grad():
            for g in range(4):
                # Slicing dim 0 gives a view of shape (hid, C, k, k): xavier_normal_ then computes the fans of that
                # single gate conv, as if the eight convs were separate modules (the original layout).
                nn.init.xavier_normal_(self.conv_x.weight[g * hid : (g + 1) * hid])
                nn.init.xavier_normal_(self.conv_h.weight[g * hid : (g + 1) * hid])
            nn.init.zeros_(self.conv_x.bias)

    def gate_weights(self) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
        """Per-gate views ``{gate: (W_x (H,C_in,k,k), b_x (H,), W_h (H,H,k,k))}`` for gates 'i', 'f', 'c', 'o'.

        They share storage with the fused parameters (writing into them changes the cell).
        """
        hid = self.hidden_channels
        out = {}
        for g, name in enumerate(GATE_ORDER):
            sl = slice(g * hid, (g + 1) * hid)
            out[name] = (self.conv_x.weight[sl], self.conv_x.bias[sl], self.conv_h.weight[sl])
        return out

    def zero_state(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Zero (h, c), each (B, C_hid, H, W), matching x's batch, size, dtype and device."""
        b, _, h, w = x.shape
        z = x.new_zeros(b, self.hidden_channels, h, w)
        return z, z.clone()

    def forward(
        self, x: Tensor, state: tuple[Tensor, Tensor] | None = None, extra: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``extra`` (B, 4*C_hid, H, W), optional, is added to the gate pre-activations (i, f, c~, o): the hook a
        cross-modal fusion uses to feed another stream's features into these gates."""
        # The original cell falls back to random-normal states when none is given; its model always passes zeros,
        # so zeros is the faithful default here.
        if state is None:
            state = self.zero_state(x)
        h_prev, c_prev = state
        gates = self.conv_x(x) + self.conv_h(h_prev)  # (B, 4*C_hid, H, W), gate order i, f, c~, o
        if extra is not None:
            gates = gates + extra
        i, f, g, o = gates.chunk(4, dim=1)  # each (B, C_hid, H, W)
        i = torch.sigmoid(i)
        f = torch.sigmoid(f)
        g = torch.tanh(g)
        o = torch.sigmoid(o)
        c = g * i + c_prev * f
        h = o * torch.tanh(c)
        return h, c

    def extra_repr(self) -> str:
        return f"{self.input_channels}, {self.hidden_channels}, kernel_size={self.kernel_size}, gates=(i, f, c~, o)"
