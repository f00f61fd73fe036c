"""A frozen trunk's forward over a batch of frames: all at once, in chunks (``train.frozen_chunk``), one at a time.

Stage 1 puts a training batch's B·T frames (8 x 16 = 128 at the paper's size) through the frozen ResNet-34 without
a graph; evaluation and stage 2's stem-to-layer3 do the same. All at once, every layer's map is one large tensor
(conv1's: 128 x 64 x 112 x 112 fp32 = 411 MB), and the BN, ReLU, max-pool and residual adds are passes over main
memory. In chunks of a few frames each map fits the CPU's caches. One frame at a time is the 2018 code's loop.

Each way runs `ResNetTrunk.forward_features` (eval mode, frozen parameters, channels_last, denormals flushed, as
the trainer runs it) on the same frames, in alternating rounds; figures are medians. ``max_abs_diff`` is each
way's largest difference from all at once, over every map the trunk returns.

    python benchmarks/bench_trunk_chunk.py [--frames 128] [--size 224] [--chunks 0 1 4 8 16 32] [--rounds 3]
        [--threads 2] [--json benchmarks/results/trunk_chunk.json]

``--chunks 0`` is all at once (the baseline of the ratios).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from fpar.models.backbone import build_trunk
from fpar.utils import flush_denormal

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit_json  # noqa: E402  (benchmarks/common.py)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="resnet34")
    ap.add_argument("--frames", type=int, default=128)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--chunks", type=int, nargs="+", default=[0, 1, 4, 8, 16, 32])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if 0 not in a.chunks:
        a.chunks = [0, *a.chunks]
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    trunk = build_trunk(a.arch, pretrained=None, num_classes=1000).eval().to(memory_format=torch.channels_last)
    trunk.requires_grad_(False)
    x = torch.randn(a.frames, 3, a.size, a.size).contiguous(memory_format=torch.channels_last)

    def run(chunk: int) -> dict[str, torch.Tensor]:
        trunk.frozen_chunk = chunk
        return trunk.forward_features(x)

    with flush_denormal(True):
        ref = run(0)
        diff = {c: max(float((o - ref[k]).abs().max()) for k, o in run(c).items()) for c in a.chunks}
        times: dict[int, list[float]] = {c: [] for c in a.chunks}
        for _ in range(a.rounds):
            for c in a.chunks:  # alternating: each round runs every way once
                t0 = time.perf_counter()
                run(c)
                times[c].append(time.perf_counter() - t0)
    med = {c: statistics.median(v) for c, v in times.items()}
    emit_json(
        {
            "arch": a.arch,
            "frames": a.frames,
            "size": a.size,
            "threads": a.threads,
            "rounds": a.rounds,
            "median_seconds": {str(c): round(m, 3) for c, m in med.items()},
            "frames_per_s": {str(c): round(a.frames / m, 2) for c, m in med.items()},
            "speedup_vs_all_at_once": {str(c): round(med[0] / m, 2) for c, m in med.items()},
            "max_abs_diff": {str(c): d for c, d in diff.items()},
        },
        a.json,
    )


if __name__ == "__main__":
    main()
