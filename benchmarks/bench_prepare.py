"""Throughput of `fpar.video.prepare`'s flow step per CPU core: TV-L1 vs DIS vs Farneback, in one run.

The flow step is what `prepare` does for every consecutive frame pair after decoding: camera homography, warp,
dense flow (`warp_flow`), the two 8-bit flow encodings and the motion map. PNG writing and decoding are excluded.
OpenCV is limited to one thread (``--threads``), so the numbers are frames per second per core; `prepare` scales
across videos with ``workers`` processes.

    python benchmarks/bench_prepare.py [--video PATH] [--frames 20] [--short-side 240] [--json out.json]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from fpar.data.flowcodec import encode_flow  # noqa: E402
from fpar.utils import atomic_write_json  # noqa: E402
from fpar.video.flow import FLOW_METHODS, compute_flow, motion_map, to_grey, warp_flow  # noqa: E402
from fpar.video.io import read_video  # noqa: E402

DEFAULT_VIDEO = "/work/shared/data/videos/ucf101-eyemakeup.avi"


def flow_step(a: np.ndarray, b: np.ndarray, method: str) -> None:
    wf = warp_flow(a, b, method)  # (H, W, 2)
    encode_flow(wf[..., 0]), encode_flow(wf[..., 1])
    motion_map(wf)


def time_pairs(fn, grey: list[np.ndarray], method: str, repeats: int) -> float:
    """Best-of-``repeats`` seconds for running ``fn`` over all consecutive pairs (after one warm-up pair)."""
    fn(grey[0], grey[1], method)  # warm-up: allocates OpenCV's flow objects and pyramids
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for a, b in zip(grey[:-1], grey[1:]):
            fn(a, b, method)
        best = min(best, time.perf_counter() - t)
    return best


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", default=DEFAULT_VIDEO)
    ap.add_argument("--frames", type=int, default=20, help="first N frames (N-1 pairs)")
    ap.add_argument("--short-side", type=int, default=240, help="resize so the shorter side is this (240: 320x240)")
    ap.add_argument("--threads", type=int, default=1, help="OpenCV threads (1 = per-core numbers)")
    ap.add_argument("--repeats", type=int, default=1, help="best of N passes (TV-L1 always runs once)")
    ap.add_argument("--methods", nargs="+", default=["tvl1", "dis", "farneback"], choices=FLOW_METHODS)
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)

    cv2.setNumThreads(args.threads)
    frames = read_video(args.video, short_side=args.short_side, max_frames=args.frames)
    grey = [to_grey(f) for f in frames]
    pairs = len(grey) - 1
    h, w = grey[0].shape
    print(f"{Path(args.video).name}: {pairs} pairs at {w}x{h}, OpenCV threads={args.threads}")

    results: dict[str, dict] = {}
    for m in args.methods:
        reps = 1 if m == "tvl1" else args.repeats
        step = time_pairs(flow_step, grey, m, reps)
        flow_only = time_pairs(compute_flow, grey, m, reps)
        results[m] = {
            "fps_per_core": pairs / step,
            "sec_per_pair": step / pairs,
            "flow_only_fps_per_core": pairs / flow_only,
        }
    base = results.get("tvl1", {}).get("fps_per_core")
    print(f"{'method':<10} {'fps/core':>9} {'s/pair':>8} {'flow-only fps':>14} {'x tvl1':>7}")
    for m, r in results.items():
        r["speedup_vs_tvl1"] = r["fps_per_core"] / base if base else None
        ratio = f"{r['speedup_vs_tvl1']:.1f}" if base else "-"
        print(
            f"{m:<10} {r['fps_per_core']:>9.2f} {r['sec_per_pair']:>8.4f} {r['flow_only_fps_per_core']:>14.2f} "
            f"{ratio:>7}"
        )

    report = {
        "benchmark": "prepare flow step (warp_flow + encode + motion_map)",
        "video": str(args.video),
        "pairs": pairs,
        "size": [w, h],
        "opencv_threads": args.threads,
        "opencv": cv2.__version__,
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "results": results,
    }
    if args.json:
        atomic_write_json(args.json, report)
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
