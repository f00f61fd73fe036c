"""Ego-RNN inference against the machine's fp32 matmul rate, with and without BatchNorm folded into the convs.

At B=1, T=16, 224 px (ResNet-34 + ConvLSTM 512, CAM), the model's FLOPs (``torch.utils.flop_counter``) divided by
its time is compared with the rate of one 4096^3 fp32 matmul timed in the same run. Variants:

* ``plain``: the model in eval mode, as `fpar eval` runs it;
* ``folded``: BN folded into the preceding convs (`fpar.models.backbone.fold_batchnorm`, as `fpar predict` runs it);
* ``folded_channels_last``: the same with the model and input in channels_last memory format.

Rounds alternate the variants and the matmul; figures are medians.

    python benchmarks/bench_inference.py [--frames 16] [--size 224] [--rounds 5] [--threads 2]
        [--json benchmarks/results/inference_cpu.json]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from fpar import create_model
from fpar.models.backbone import fold_batchnorm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit_json  # noqa: E402  (benchmarks/common.py)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--matmul", type=int, default=4096)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = create_model("ego_rnn", num_classes=61, pretrained=None, input_size=a.size).eval()
    x = torch.randn(1, a.frames, 3, a.size, a.size)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        ref = model(x).logits
    flops = fc.get_total_flops()

    folded = copy.deepcopy(model)
    n_folded = fold_batchnorm(folded)
    # channels_last weights: the convs then produce channels_last maps from the (T, 3, S, S) frames the model makes
    folded_cl = copy.deepcopy(folded).to(memory_format=torch.channels_last)
    variants = {
        "plain": lambda: model(x).logits,
        "folded": lambda: folded(x).logits,
        "folded_channels_last": lambda: folded_cl(x).logits,
    }
    with torch.no_grad():
        diffs = {k: float((fn() - ref).abs().max()) for k, fn in variants.items()}
    A, B = torch.randn(a.matmul, a.matmul), torch.randn(a.matmul, a.matmul)
    mm_flops = 2 * a.matmul**3
    times: dict[str, list[float]] = {k: [] for k in [*variants, "matmul"]}
    with torch.inference_mode():
        for fn in [*variants.values(), lambda: A @ B]:
            fn()  # warm-up
        for r in range(a.rounds):
            order = [*variants.items(), ("matmul", lambda: A @ B)]
            for name, fn in order if r % 2 == 0 else order[::-1]:
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    mm_rate = mm_flops / statistics.median(times["matmul"])
    out = {
        "frames": a.frames,
        "size": a.size,
        "batch": 1,
        "threads": torch.get_num_threads(),
        "rounds": a.rounds,
        "model_gflops": round(flops / 1e9, 2),
        "matmul": f"{a.matmul}^3 fp32",
        "matmul_gflops_per_s": round(mm_rate / 1e9, 1),
        "batchnorms_folded": n_folded,
        "max_logit_difference_vs_plain": diffs,
        "variants": {
            k: {
                "seconds": round(statistics.median(times[k]), 4),
                "gflops_per_s": round(flops / statistics.median(times[k]) / 1e9, 1),
                "share_of_matmul_rate": round(flops / statistics.median(times[k]) / mm_rate, 3),
            }
            for k in variants
        },
    }
    emit_json(out, a.json)


if __name__ == "__main__":
    main()
