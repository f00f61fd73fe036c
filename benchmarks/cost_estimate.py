"""Cost of a full reproduction of each table of the report on GTEA61 (341 training, 116 test videos).

    python benchmarks/cost_estimate.py [--bench benchmarks/results/ego_rnn_cpu.json]

Expands every grid in configs/paper/ and adds up frame-epochs (a clip of T frames costs T frames; a flow stack costs
one frame-equivalent). CPU-hours use the training and inference frames/s that benchmarks/bench_ego_rnn.py measured
on this machine (stage-2 training rate, so stage 1 is slightly over-counted). GPU-hours are an ESTIMATE, not a
measurement (no GPU here): FLOPs per frame from the same benchmark, x3 for training, at an assumed 30 TFLOP/s
sustained (an H100 in bf16 at modest utilisation).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fpar.experiments.grid import expand, trial_config

TRAIN, TEST = 341, 116
PAPER = Path(__file__).resolve().parents[1] / "fpar" / "configs" / "paper"


def frames_per_clip(cfg) -> int:
    if cfg.model.name == "flow_resnet":
        return 1
    if cfg.model.name == "two_stream":
        return cfg.data.frames + 1
    return cfg.data.frames


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", default="benchmarks/results/ego_rnn_cpu.json")
    ap.add_argument("--gpu-tflops", type=float, default=30.0)
    a = ap.parse_args()
    b = json.loads(Path(a.bench).read_text())
    train_fps = b["train_stage2_clips_per_s"] * b["frames"]
    infer_fps = b["inference_clips_per_s"] * b["frames"]
    gflop_per_frame = b["inference_gflops_per_clip"] / b["frames"]
    print(
        f"CPU rates from {a.bench}: train {train_fps:.2f} frames/s, inference {infer_fps:.2f} frames/s "
        f"({b['threads']} threads); {gflop_per_frame:.1f} GFLOP per frame"
    )
    print("| table | runs | epochs | CPU-hours (measured rates) | GPU-hours (estimate) |")
    print("|---|---|---|---|---|")
    for grid in sorted(PAPER.glob("fig*.yaml")) + [PAPER / "loso.yaml"]:
        trials = expand(grid, check=False)
        runs = {t.name: f"/runs/{t.name}" for t in trials}
        cpu_s = flops = 0.0
        epochs = 0
        for t in trials:
            cfg = trial_config(t, runs)
            f = frames_per_clip(cfg)
            e = cfg.train.epochs
            epochs += e
            cpu_s += e * (TRAIN * f / train_fps + TEST * f / infer_fps)
            flops += e * (3 * TRAIN * f + TEST * f) * gflop_per_frame * 1e9
        gpu_h = flops / (a.gpu_tflops * 1e12) / 3600
        print(f"| {grid.stem} | {len(trials)} | {epochs} | {cpu_s / 3600:,.0f} | {gpu_h:,.1f} |")


if __name__ == "__main__":
    main()
