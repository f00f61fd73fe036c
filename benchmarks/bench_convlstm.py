"""ConvLSTM step cost, in alternating rounds (medians): forward + backward over T steps from a zero state, as stage 1
trains it, with the same weights in three layouts:

* ``fpar``: `fpar.models.layers.conv_lstm.ConvLSTMCell` on the whole sequence, as the models call it (eight
  per-gate convolutions per step, the zero first state's hidden convolutions skipped);
* ``fpar_per_step``: the same cell called one step at a time from an explicit zero state (eight convolutions at
  every step);
* ``fused``: fpar 0.1.0's cell, two convolutions of 4·H output channels per step (written here);
* ``original``: the 2018 code's cell, eight ``nn.Conv2d`` modules (written here).

    python benchmarks/bench_convlstm.py [--batch 8 32] [--size 7] [--steps 7 16] [--rounds 7] [--threads 2]
                                        [--json benchmarks/results/convlstm.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from fpar.models.layers.conv_lstm import ConvLSTMCell

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json  # noqa: E402  (benchmarks/common.py)


class EightConvCell(nn.Module):
    """The original layout: per gate an input conv (bias) and a hidden conv (no bias)."""

    def __init__(self, cell: ConvLSTMCell):
        super().__init__()
        cin, hid = cell.input_channels, cell.hidden_channels
        self.hid = hid
        self.x = nn.ModuleList(nn.Conv2d(cin, hid, 3, padding=1) for _ in range(4))
        self.h = nn.ModuleList(nn.Conv2d(hid, hid, 3, padding=1, bias=False) for _ in range(4))
        with torch.no_grad():
            for k, (wx, bx, wh) in enumerate(cell.gate_weights().values()):
                self.x[k].weight.copy_(wx)
                self.x[k].bias.copy_(bx)
                self.h[k].weight.copy_(wh)

    def forward(self, x, state):
        if state is None:
            z = x.new_zeros(x.shape[0], self.hid, *x.shape[2:])
            state = (z, z)
        h, c = state
        i, f, g, o = (self.x[k](x) + self.h[k](h) for k in range(4))
        c = torch.tanh(g) * torch.sigmoid(i) + c * torch.sigmoid(f)
        return torch.sigmoid(o) * torch.tanh(c), c


class FusedCell(nn.Module):
    """fpar 0.1.0's layout: one conv of 4·H channels on x (bias), one on h; gates chunked out of the sum."""

    def __init__(self, cell: ConvLSTMCell):
        super().__init__()
        sd = cell.state_dict()
        cin, hid = cell.input_channels, cell.hidden_channels
        self.conv_x = nn.Conv2d(cin, 4 * hid, 3, padding=1)
        self.conv_h = nn.Conv2d(hid, 4 * hid, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv_x.weight.copy_(sd["conv_x.weight"])
            self.conv_x.bias.copy_(sd["conv_x.bias"])
            self.conv_h.weight.copy_(sd["conv_h.weight"])

    def forward(self, x, state):
        if state is None:
            z = x.new_zeros(x.shape[0], self.conv_h.in_channels, *x.shape[2:])
            state = (z, z)
        h, c = state
        i, f, g, o = (self.conv_x(x) + self.conv_h(h)).chunk(4, dim=1)
        c = torch.tanh(g) * torch.sigmoid(i) + c * torch.sigmoid(f)
        return torch.sigmoid(o) * torch.tanh(c), c


class Sequence(nn.Module):
    """fpar's cell on the whole (B, T, C, H, W) sequence in one call."""

    def __init__(self, cell: ConvLSTMCell):
        super().__init__()
        self.cell = cell


def schedule(cell: nn.Module, x: torch.Tensor) -> float:
    t0 = time.perf_counter()
    if isinstance(cell, Sequence):
        state = cell.cell(x)
    else:
        state = None
        for t in range(x.shape[1]):
            state = cell(x[:, t], state)
    state[1].mean().backward()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--size", type=int, default=7, help="feature map side (7 for 224 px input)")
    ap.add_argument("--steps", type=int, nargs="+", default=[7, 16])
    ap.add_argument("--channels", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    for b in a.batch:
        for steps in a.steps:
            torch.manual_seed(0)
            x = torch.randn(b, steps, a.channels, a.size, a.size)
            cell = ConvLSTMCell(a.channels, a.channels, 3)
            cells = {
                "fpar": Sequence(cell),
                "fpar_per_step": cell,
                "fused": FusedCell(cell),
                "original": EightConvCell(cell),
            }
            for c in cells.values():
                schedule(c, x)  # warm-up (oneDNN primitive creation)
            times: dict[str, list[float]] = {m: [] for m in cells}
            for _ in range(a.rounds):
                for m, c in cells.items():  # alternating
                    times[m].append(schedule(c, x))
            med = {m: statistics.median(v) for m, v in times.items()}
            row = {
                "batch": b,
                "steps": steps,
                "size": a.size,
                "median_s": {m: round(v, 4) for m, v in med.items()},
                "fpar_vs_per_step": round(med["fpar_per_step"] / med["fpar"], 3),
                "fpar_vs_fused": round(med["fused"] / med["fpar"], 3),
                "fpar_vs_original": round(med["original"] / med["fpar"], 3),
            }
            rows.append(row)
            print(json.dumps(row))
    out = {"threads": a.threads, "channels": a.channels, "rounds": a.rounds, "rows": rows}
    write_json(out, a.json)


if __name__ == "__main__":
    main()
