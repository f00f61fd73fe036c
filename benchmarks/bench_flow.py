"""Optical-flow methods on the same frame pairs of exactly known flow: end-point error and frames/s.

Methods: OpenCV's TV-L1 (the reference: the flow the published two-stream models were trained on), DIS (medium
preset) and Farneback, one pair after the other, and tvl1-torch (`fpar.video.tvl1`: OpenCV's TV-L1 in PyTorch)
solving ``--batch`` pairs at once. The pairs are `fpar.video.known_flow.standard_pairs` (translations, a rotation, a
zoom, a disc moving over a static background, and the real GTEA61 frame of tests/data moved the same ways), at
each ``--size``. EPE is the mean over each pair's valid pixels (in view, not occluded), averaged over pairs.

Rounds alternate the methods; the figure is the median over rounds of (pairs / seconds). The camera-motion step of
the warp flow (`fpar.video.flow.compensate_camera`: LK tracks + RANSAC homography + warp, the same for every flow
method) is timed on its own, as frames/s.

    python benchmarks/bench_flow.py [--size 320x240 456x256] [--batch 8] [--rounds 3] [--threads 2]
        [--device cpu|cuda] [--json benchmarks/results/flow_cpu.json] [--picture docs/img/flow_methods.png]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from fpar.video.flow import compensate_camera, compute_flows
from fpar.video.known_flow import endpoint_error, standard_pairs
from fpar.video.tvl1 import TVL1Batcher

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit_json  # noqa: E402  (benchmarks/common.py)

REAL_FRAME = Path(__file__).resolve().parents[1] / "tests" / "data" / "gtea61-real-clip" / "rgb0001.png"
METHODS = ("tvl1", "tvl1-torch", "dis", "farneback")


def _size(text: str) -> tuple[int, int]:
    w, _, h = text.partition("x")
    return int(h), int(w)  # (H, W)


def _solve(method: str, pairs, batcher: TVL1Batcher) -> list[np.ndarray]:
    inputs = [(p.first, p.second) for p in pairs]
    if method == "tvl1-torch":
        out = batcher(inputs)
        if batcher.device.type == "cuda":
            torch.cuda.synchronize()
        return out
    return compute_flows(inputs, method)


def flow_picture(pairs, flows: dict[str, list[np.ndarray]], out: Path, picks: list[int]) -> None:
    """One row per chosen pair: first frame | true flow | each method's flow (HSV: hue = direction, value =
    magnitude, one scale per row), each tile labelled with the method and its EPE on that pair."""
    from fpar.drawing import caption

    rows = []
    for k in picks:
        pair = pairs[k]
        scale = max(float(np.linalg.norm(pair.flow, axis=2).max()), 1e-3)

        def colour(f: np.ndarray, scale: float = scale) -> np.ndarray:
            mag, ang = cv2.cartToPolar(f[..., 0].astype(np.float32), f[..., 1].astype(np.float32))
            hsv = np.zeros((*f.shape[:2], 3), np.uint8)
            hsv[..., 0] = (ang * 90 / np.pi).astype(np.uint8)
            hsv[..., 1] = 255
            hsv[..., 2] = np.clip(255 * mag / scale, 0, 255).astype(np.uint8)
            return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)

        tiles = [caption(cv2.cvtColor(pair.first, cv2.COLOR_GRAY2RGB), [pair.name, "first frame"], above=True)]
        truth = colour(np.where(pair.valid[..., None], pair.flow, 0))
        tiles.append(caption(truth, ["true flow", f"max {scale:.2f} px"], above=True))
        for m in METHODS:
            tiles.append(
                caption(colour(flows[m][k]), [m, f"EPE {endpoint_error(flows[m][k], pair):.3f} px"], above=True)
            )
        height = max(t.shape[0] for t in tiles)
        tiles = [np.pad(t, ((0, height - t.shape[0]), (0, 4), (0, 0)), constant_values=255) for t in tiles]
        rows.append(np.concatenate(tiles, axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", nargs="+", default=["320x240", "456x256"])
    ap.add_argument("--batch", type=int, default=8, help="tvl1-torch pairs per solve")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default=None, help="tvl1-torch device (default: cuda when present)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--picture", type=Path, help="PNG of the methods' flows side by side (first size)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    real = cv2.cvtColor(cv2.imread(str(REAL_FRAME)), cv2.COLOR_BGR2RGB) if REAL_FRAME.is_file() else None
    batcher = TVL1Batcher(device=args.device, batch=args.batch)
    result: dict = {
        "threads": args.threads,
        "tvl1_torch_batch": args.batch,
        "tvl1_torch_device": str(batcher.device),
        "torch": torch.__version__,
        "opencv": cv2.__version__,
        "real_frame": real is not None,
        "rounds": args.rounds,
        "sizes": {},
    }
    if batcher.device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(0)
    for text in args.size:
        h, w = _size(text)
        pairs = standard_pairs((h, w), real=real)
        _solve("tvl1-torch", pairs[:1], batcher)  # warm-up (allocator, CUDA context)
        times: dict[str, list[float]] = {m: [] for m in METHODS}
        flows: dict[str, list[np.ndarray]] = {}
        camera: list[float] = []
        for r in range(args.rounds):
            order = METHODS if r % 2 == 0 else METHODS[::-1]
            for m in order:
                t0 = time.perf_counter()
                flows[m] = _solve(m, pairs, batcher)
                times[m].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for p in pairs:
                compensate_camera(p.first, p.second)
            camera.append(time.perf_counter() - t0)
        n = len(pairs)
        entry = {
            "pairs": n,
            "methods": {
                m: {
                    "epe": round(float(np.mean([endpoint_error(f, p) for f, p in zip(flows[m], pairs)])), 4),
                    "frames_per_s": round(n / statistics.median(times[m]), 3),
                    "per_pair": {p.name: round(endpoint_error(f, p), 4) for f, p in zip(flows[m], pairs)},
                }
                for m in METHODS
            },
            "camera_step_frames_per_s": round(n / statistics.median(camera), 2),
        }
        cv_rate = entry["methods"]["tvl1"]["frames_per_s"]
        entry["tvl1_torch_speedup_vs_opencv_tvl1"] = round(entry["methods"]["tvl1-torch"]["frames_per_s"] / cv_rate, 2)
        entry["tvl1_torch_epe_ratio_vs_opencv_tvl1"] = round(
            entry["methods"]["tvl1-torch"]["epe"] / entry["methods"]["tvl1"]["epe"], 4
        )
        result["sizes"][text] = entry
        if args.picture and text == args.size[0]:
            names = [p.name for p in pairs]
            picks = [names.index("disc moves (2.5, -1.5) px"), names.index("rotate 2 deg")]
            if "real: rotate 1.5 deg" in names:
                picks.append(names.index("real: rotate 1.5 deg"))
            flow_picture(pairs, flows, args.picture, picks)
        print(
            text, json.dumps({m: {k: v for k, v in d.items() if k != "per_pair"} for m, d in entry["methods"].items()})
        )
    emit_json(result, args.json)


if __name__ == "__main__":
    main()
