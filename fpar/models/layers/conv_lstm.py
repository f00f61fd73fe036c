"""Convolutional LSTM cell of Ego-RNN (reference-spec §1.3).

The original cell has four gates (i, f, c~, o), each with two 3x3 convolutions: an input conv (input -> hidden, with
bias) and a hidden conv (hidden -> hidden, no bias). fpar runs them the same way, as eight convolutions of H output
channels: on this kind of CPU one fused conv of 4·H channels per side is slower (0.52-0.86x at 7x7, B 8-32, T 7-16;
`benchmarks/bench_convlstm.py`), which made stage 1 slower than the 2018 code.

Checkpoints keep the fused layout, so every checkpoint and weight transfer reads as before: the state dict holds
``conv_x.weight`` (4·H, C, k, k), ``conv_x.bias`` (4·H,) and ``conv_h.weight`` (4·H, H, k, k), gate order
**i, f, c~, o**:

    conv_x.weight[0*H:1*H]  = W_xi      conv_h.weight[0*H:1*H]  = W_hi      conv_x.bias[0*H:1*H] = b_i
    conv_x.weight[1*H:2*H]  = W_xf      conv_h.weight[1*H:2*H]  = W_hf      conv_x.bias[1*H:2*H] = b_f
    conv_x.weight[2*H:3*H]  = W_xc      conv_h.weight[2*H:3*H]  = W_hc      conv_x.bias[2*H:3*H] = b_c
    conv_x.weight[3*H:4*H]  = W_xo      conv_h.weight[3*H:4*H]  = W_ho      conv_x.bias[3*H:4*H] = b_o

with H = hidden_channels. The parameters themselves are per gate (`GateConvs`: ``conv_x.weight_i`` ...);
`ConvLSTMCell.gate_weights()` returns them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

GATE_ORDER: tuple[str, str, str, str] = ("i", "f", "c", "o")


class GateConvs(nn.Module):
    """The convolutions of the four gates on one input (x or h): one conv of ``out`` channels per gate, held as
    parameters ``weight_<gate>`` / ``bias_<gate>``, saved and loaded as one fused ``weight`` (4·out, C, k, k) and
    ``bias`` (4·out,), in gate order. ``weight`` and ``bias`` as attributes are those fused tensors (copies: write
    into the per-gate parameters, or load a state dict)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, bias: bool):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.padding = kernel_size // 2
        for g in GATE_ORDER:
            self.register_parameter(
                f"weight_{g}", nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
            )
            self.register_parameter(f"bias_{g}", nn.Parameter(torch.zeros(out_channels)) if bias else None)
        self.register_state_dict_post_hook(_save_fused)
        self.register_load_state_dict_pre_hook(_load_fused)
        # The draws nn.Conv2d's own init made for fpar 0.1.0's fused conv (overwritten by the cell's Xavier init):
        # made here too, so a seeded run draws every later number (other layers' init, dropout) as it did.
        fused = torch.empty(4 * out_channels, in_channels, kernel_size, kernel_size)
        nn.init.kaiming_uniform_(fused, a=math.sqrt(5))
        if bias:
            bound = 1 / math.sqrt(in_channels * kernel_size * kernel_size)
            nn.init.uniform_(torch.empty(4 * out_channels), -bound, bound)

    @property
    def weight(self) -> Tensor:
        return torch.cat([getattr(self, f"weight_{g}") for g in GATE_ORDER])

    @property
    def bias(self) -> Tensor | None:
        if self.bias_i is None:
            return None
        return torch.cat([getattr(self, f"bias_{g}") for g in GATE_ORDER])

    def gates(self, x: Tensor) -> list[Tensor]:
        """The four gate pre-activations, each (B, out, H, W)."""
        return [
            F.conv2d(x, getattr(self, f"weight_{g}"), getattr(self, f"bias_{g}"), padding=self.padding)
            for g in GATE_ORDER
        ]

    def forward(self, x: Tensor) -> Tensor:
        """(B, 4·out, H, W): the fused conv's output."""
        return torch.cat(self.gates(x), dim=1)

    def extra_repr(self) -> str:
        bias = self.bias_i is not None
        return f"{self.in_channels}, 4 x {self.out_channels}, kernel_size={self.kernel_size}, bias={bias}"


def _save_fused(module: GateConvs, state: dict, prefix: str, local_metadata) -> None:
    if isinstance(state.get(f"{prefix}weight_i"), nn.Parameter):
        return  # state_dict(keep_vars=True): the caller wants the parameters themselves (tracing, ONNX export)
    for kind in ("weight", "bias"):
        parts = [state.pop(f"{prefix}{kind}_{g}", None) for g in GATE_ORDER]
        if all(p is not None for p in parts):
            state[f"{prefix}{kind}"] = torch.cat(parts)


def _load_fused(module: GateConvs, state: dict, prefix: str, *args) -> None:
    for kind in ("weight", "bias"):
        fused = state.pop(f"{prefix}{kind}", None)
        if fused is None:
            continue
        if fused.shape[0] != 4 * module.out_channels:
            state[f"{prefix}{kind}"] = fused  # let load_state_dict report the mismatch under the fused name
            continue
        for g, part in zip(GATE_ORDER, fused.chunk(4, dim=0)):
            state[f"{prefix}{kind}_{g}"] = part


class ConvLSTMCell(nn.Module):
    """One step of a ConvLSTM without peepholes.

    ``forward(x, state)`` with x (B, C_in, H, W) and state ``(h, c)`` each (B, C_hid, H, W), or None for zeros
    (x (B, T, C_in, H, W) runs the whole sequence and returns the last state). Returns the new ``(h, c)``, each
    (B, C_hid, H, W) (stride 1, padding k//2 keeps the spatial size):

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
        self.conv_x = GateConvs(input_channels, hidden_channels, kernel_size, bias=True)
        self.conv_h = GateConvs(hidden_channels, hidden_channels, kernel_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for g in GATE_ORDER:
                # Xavier-normal with the fans of that gate's own conv, as the original's separate modules
                nn.init.xavier_normal_(getattr(self.conv_x, f"weight_{g}"))
                nn.init.xavier_normal_(getattr(self.conv_h, f"weight_{g}"))
                nn.init.zeros_(getattr(self.conv_x, f"bias_{g}"))

    def gate_weights(self) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
        """The per-gate parameters ``{gate: (W_x (H,C_in,k,k), b_x (H,), W_h (H,H,k,k))}`` for 'i', 'f', 'c', 'o'
        (writing into them changes the cell)."""
        x, h = self.conv_x, self.conv_h
        return {g: (getattr(x, f"weight_{g}"), getattr(x, f"bias_{g}"), getattr(h, f"weight_{g}")) for g in GATE_ORDER}

    def zero_state(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Zero (h, c), each (B, C_hid, H, W), matching x's batch, size, dtype and device."""
        b, _, h, w = x.shape
        z = x.new_zeros(b, self.hidden_channels, h, w)
        return z, z.clone()

    def step(
        self, x_gates: list[Tensor], state: tuple[Tensor, Tensor] | None = None, extra: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """One step from its input terms ``W_x*x + b`` (four (B, C_hid, H, W), `GateConvs.gates`): the new
        ``(h, c)``. ``state`` None is the zero state, whose hidden convolutions (no bias) are exactly zero: they
        are skipped, and c' = g*i, bit for bit what the full step computes from zeros."""
        if state is None:
            pre = list(x_gates)
        else:
            h_prev = state[0]
            pre = [a + b for a, b in zip(x_gates, self.conv_h.gates(h_prev))]  # i, f, c~, o: (B, C_hid, H, W)
        if extra is not None:
            pre = [p + e for p, e in zip(pre, extra.chunk(4, dim=1))]
        i, f, g, o = pre
        i = torch.sigmoid(i)
        g = torch.tanh(g)
        o = torch.sigmoid(o)
        if state is None:
            c = g * i
        else:
            c = g * i + state[1] * torch.sigmoid(f)
        h = o * torch.tanh(c)
        return h, c

    def forward(
        self, x: Tensor, state: tuple[Tensor, Tensor] | None = None, extra: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """One step, x (B, C_in, H, W), or a whole sequence, x (B, T, C_in, H, W): the new (or the last) ``(h, c)``,
        each (B, C_hid, H, W).

        ``extra`` (B, 4*C_hid, H, W), or (B, T, 4*C_hid, H, W) with a sequence, optional, is added to the gate
        pre-activations (i, f, c~, o): the hook a cross-modal fusion uses to feed another stream's features into
        these gates.

        A sequence from no state skips its first step's hidden convolutions (exactly zero, see `step`) when T > 1.
        A single step from no state runs on an explicit zero state, so that every parameter gets a gradient (zeros
        for the hidden convolutions), as the original cell's do: DDP and weight decay see the same parameters.

        The input convolutions run step by step, on B frames each: one convolution over all B·T frames (they do not
        depend on the state) was no faster on this project's CPU (0.89-1.04x at B 8-32, T 7-16, 512 channels,
        7x7), and holds the B·T gate maps in memory. The backward is autograd's: a hand-written backward through
        time that computed each weight's gradient once over all B·T frames (one weight-gradient convolution per
        side instead of one per gate and step; a 2-core EPYC's oneDNN ran those at 134 GFLOP/s against 109 for
        the per-step ones) was 0.88x this cell's forward + backward at B 8, T 16 (tried, not kept). Winograd
        F(4x4, 3x3) as 36 batched matmuls (a third of the multiplications at 7x7) was no better either: 0.25x the
        direct convolution's forward + backward at 8 frames (the recurrent step's batch), 1.3-1.5x only at 128-512
        frames, where its transforms' memory traffic ate the rest, and 28x the float error (tried, not kept)."""
        # The original cell falls back to random-normal states when none is given; its model always passes zeros,
        # so zeros is the faithful default here.
        if x.dim() == 4:
            return self.step(self.conv_x.gates(x), state if state is not None else self.zero_state(x), extra)
        if x.dim() != 5:
            raise ValueError(f"expected x of shape (B, C, H, W) or (B, T, C, H, W), got {tuple(x.shape)}")
        b, t = x.shape[:2]
        if extra is not None and (extra.dim() != 5 or extra.shape[:2] != (b, t)):
            raise ValueError(
                f"a sequence's extra must be (B, T, 4*C_hid, H, W) = ({b}, {t}, ...), got {tuple(extra.shape)}"
            )
        if t == 1 and state is None:  # a one-step sequence keeps every parameter in the graph (DDP, weight decay)
            state = self.zero_state(x[:, 0])
        for k in range(t):
            state = self.step(self.conv_x.gates(x[:, k]), state, None if extra is None else extra[:, k])
        return state

    def extra_repr(self) -> str:
        return f"{self.input_channels}, {self.hidden_channels}, kernel_size={self.kernel_size}, gates=(i, f, c~, o)"
