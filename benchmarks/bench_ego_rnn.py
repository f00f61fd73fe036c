"""Ego-RNN speed on this machine: training and inference clips/s at T=16, 224 px (ResNet-34, ConvLSTM 512),
and inference time next to the time the same FLOPs take as one large matrix multiply in the same run.

    python benchmarks/bench_ego_rnn.py [--frames 16] [--size 224] [--batch 2] [--threads N] [--json OUT]

The matmul time is a practical roofline: the ratio says how far the model is from the machine's dense-GEMM speed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from fpar import create_model
from fpar.engine.stages import apply_trainable, set_train_mode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json  # noqa: E402  (benchmarks/common.py)

STAGE2 = [r"^lstm\.", r"^classifier\.", r"^backbone\.layer4\.\d+\.conv[12]\.weight$", r"^backbone\.fc\.weight$"]


def timeit(fn, reps: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    model = create_model("ego_rnn", num_classes=61, pretrained=None, input_size=a.size)
    x = torch.randn(a.batch, a.frames, 3, a.size, a.size)
    y = torch.randint(0, 61, (a.batch,))

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    flops = fc.get_total_flops()
    with torch.no_grad():
        t_inf = timeit(lambda: model(x), a.reps)

    # one matmul with the same FLOPs (2*n^3)
    n = int(round((flops / 2) ** (1 / 3)))
    A, B = torch.randn(n, n), torch.randn(n, n)
    t_mm = timeit(lambda: A @ B, a.reps)

    results = {}
    for stage, pats in (("stage1", [r"^lstm\.", r"^classifier\."]), ("stage2", STAGE2)):
        apply_trainable(model, pats)
        set_train_mode(model, [])
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step(opt=opt):
            loss = F.cross_entropy(model(x).logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        results[f"train_{stage}_clips_per_s"] = round(a.batch / timeit(step, a.reps), 3)
    out = {
        "frames": a.frames,
        "size": a.size,
        "batch": a.batch,
        "threads": torch.get_num_threads(),
        "inference_gflops_per_clip": round(flops / a.batch / 1e9, 2),
        "inference_clips_per_s": round(a.batch / t_inf, 3),
        "matmul_same_flops_s": round(t_mm, 4),
        "inference_s": round(t_inf, 4),
        "inference_vs_matmul": round(t_inf / t_mm, 2),
        **results,
    }
    for k, v in out.items():
        print(f"{k:>28}: {v}")
    write_json(out, a.json)


if __name__ == "__main__":
    main()
