"""Seconds per clip of the Representation Flow layer vs OpenCV's TV-L1, on the same 7 frames (6 pairs), in one run.

Rows:

* ``repflow C=128 K=32 28x28``: `RepresentationFlow(128)` on (1, 128, 7, 28, 28) random features, where Ego-RNN
  places it (after ResNet layer2, 224 input); forward (no grad) and forward + backward.
* ``repflow C=1 K=1 256x455``: `RepresentationFlow(1, bottleneck=1)` straight on the grey frames at 256x455.
* ``tvl1_flow solver 256x455``: the bare solver on the 6 grey pairs (gives a flow to compare).
* ``opencv tvl1 default``: `cv2.optflow.DualTVL1OpticalFlow_create()` with its defaults (5 scales, 5 warps, up to
  10x30 iterations per warp, median filter) on the same 6 pairs at 455x256.
* ``opencv tvl1 1 scale``: the same with 1 scale, 1 warp, exactly ``--n-iter`` iterations and no median filter, the
  closest OpenCV analogue of the layer's single-scale, no-warp unrolled solver.

Both libraries get the same number of threads (``--threads``, default 1: per-core numbers, which also stay stable on
a shared machine where two-thread runs can stall). ``ratio`` is seconds per clip / seconds per clip of OpenCV's
default TV-L1 (below 1 = faster). The median flow columns are over the interior of all pairs, and the last line checks
that the bare solver and OpenCV's 1-scale run agree away from the border. With ``--synthetic`` the frames are a smooth
texture moving 1 px right per frame, so the true flow is (1, 0); without it they are the first 7 frames of ``--video``
resized to 455x256.

    python benchmarks/bench_repflow.py [--video PATH | --synthetic] [--repeats 3] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from fpar.models.layers.rep_flow import RepresentationFlow, tvl1_flow  # noqa: E402
from fpar.utils import atomic_write_json  # noqa: E402

DEFAULT_VIDEO = "/work/shared/data/videos/ucf101-eyemakeup.avi"
WIDTH, HEIGHT, FRAMES = 455, 256, 7


def synthetic_frames(seed: int = 0) -> list[np.ndarray]:
    """A blurred-noise texture (sigma 2 px) moving 1 px right per frame: 7 uint8 (256, 455) frames."""
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.standard_normal((HEIGHT, WIDTH)).astype(np.float32), (0, 0), 2.0)
    base = cv2.normalize(base, None, 0, 255, cv2.NORM_MINMAX)
    return [np.roll(base, t, axis=1).round().astype(np.uint8) for t in range(FRAMES)]


def video_frames(path: str) -> list[np.ndarray]:
    from fpar.video.io import read_video

    rgb = read_video(path, max_frames=FRAMES)
    if len(rgb) < FRAMES:
        raise SystemExit(f"error: {path} has {len(rgb)} frames, expected at least {FRAMES}")
    resized = [cv2.resize(f, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA) for f in rgb]
    return [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in resized]


def timed(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> tuple[float, object]:
    """Best-of-``repeats`` seconds of ``fn()`` after one warm-up call, and the last result."""
    out = fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best, out


def interior_median(u1: np.ndarray, u2: np.ndarray, margin: int = 16) -> tuple[float, float]:
    s = (..., slice(margin, -margin), slice(margin, -margin))
    return float(np.median(u1[s])), float(np.median(u2[s]))


def opencv_tvl1(grey: list[np.ndarray], single_scale_iters: int | None) -> Callable[[], np.ndarray]:
    algo = cv2.optflow.DualTVL1OpticalFlow_create()
    if single_scale_iters is not None:
        algo.setScalesNumber(1)
        algo.setWarpingsNumber(1)
        algo.setOuterIterations(1)
        algo.setInnerIterations(single_scale_iters)
        algo.setMedianFiltering(1)
        algo.setEpsilon(0.0)  # no early stop: exactly single_scale_iters iterations

    def run() -> np.ndarray:
        return np.stack([algo.calc(a, b, None) for a, b in zip(grey[:-1], grey[1:])])  # (6, H, W, 2)

    return run


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--video", default=None, help=f"first 7 frames, resized to 455x256 grey (default {DEFAULT_VIDEO})")
    src.add_argument("--synthetic", action="store_true", help="texture moving 1 px right per frame instead")
    ap.add_argument("--n-iter", type=int, default=10, help="solver iterations (the layer's default is 10)")
    ap.add_argument("--repeats", type=int, default=3, help="best of N (OpenCV default TV-L1 always runs once)")
    ap.add_argument("--threads", type=int, default=1, help="torch and OpenCV threads (1 = per-core numbers)")
    ap.add_argument("--device", default="cpu", help="torch device for the layer rows (OpenCV always runs on CPU)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)

    video = args.video or (DEFAULT_VIDEO if Path(DEFAULT_VIDEO).is_file() else None)
    if args.synthetic or video is None:
        source = "synthetic: texture moving +1 px in x per frame"
        grey = synthetic_frames()
    else:
        if not Path(video).is_file():
            raise SystemExit(f"error: {video} not found; pass --video PATH or --synthetic")
        source = str(video)
        grey = video_frames(video)
    print(f"frames: {source}; {len(grey) - 1} pairs at {WIDTH}x{HEIGHT}")
    print(
        f"torch {torch.__version__} threads={torch.get_num_threads()} device={device}; "
        f"OpenCV {cv2.__version__} threads={cv2.getNumThreads()}; {platform.processor() or platform.machine()}"
    )

    rows: list[dict] = []

    def add(name: str, seconds: float, backward: float | None = None, flow: tuple[float, float] | None = None):
        rows.append({"name": name, "sec_per_clip": seconds, "fwd_bwd_sec_per_clip": backward, "median_flow": flow})

    # 1. the layer where Ego-RNN puts it: 128 channels at 28x28 after layer2
    layer = RepresentationFlow(128, bottleneck=32, n_iter=args.n_iter).to(device)
    feats = torch.randn(1, 128, FRAMES, 28, 28, device=device)
    fwd, bwd = time_layer(layer, feats, args.repeats, sync)
    add("repflow C=128 K=32 28x28", fwd, bwd)

    # 2. the layer and 3. the bare solver straight on the grey frames at full resolution
    clip = torch.from_numpy(np.stack(grey)).float().to(device)  # (T, H, W)
    clip = clip.view(1, 1, FRAMES, HEIGHT, WIDTH) / 255.0  # (1, 1, T, H, W)
    layer = RepresentationFlow(1, bottleneck=1, n_iter=args.n_iter).to(device)
    fwd, bwd = time_layer(layer, clip, args.repeats, sync)
    add(f"repflow C=1 K=1 {HEIGHT}x{WIDTH}", fwd, bwd)

    f = clip[0, 0]  # (T, H, W), values in [0, 1]
    f1, f2 = (255.0 * f[:-1]).unsqueeze(1), (255.0 * f[1:]).unsqueeze(1)  # (T-1, 1, H, W): 6 pairs as a batch
    with torch.no_grad():
        sec, (u1, u2) = timed(lambda: tvl1_flow(f1, f2, n_iter=args.n_iter), args.repeats, sync)
    ours = np.stack([u1[:, 0].cpu().numpy(), u2[:, 0].cpu().numpy()], axis=-1)  # (6, H, W, 2) like OpenCV's
    add(f"tvl1_flow solver {HEIGHT}x{WIDTH}", sec, flow=interior_median(ours[..., 0], ours[..., 1]))
    agreement = None

    # 4./5. OpenCV on the same uint8 frames
    if not hasattr(cv2, "optflow"):
        print("cv2.optflow is missing (install opencv-contrib-python-headless): OpenCV rows skipped")
    else:
        sec, flow = _once(opencv_tvl1(grey, None))
        add("opencv tvl1 default", sec, flow=interior_median(flow[..., 0], flow[..., 1]))
        sec, flow = timed(opencv_tvl1(grey, args.n_iter), args.repeats, lambda: None)
        add(f"opencv tvl1 1 scale {args.n_iter} it", sec, flow=interior_median(flow[..., 0], flow[..., 1]))
        # Same algorithm and parameters; only the border of grad F2 differs (OpenCV halves the one-sided difference),
        # and that reaches one pixel further inward per iteration, so compare beyond n_iter + 1 pixels.
        m = args.n_iter + 1
        agreement = float(np.abs(ours - flow)[:, m:-m, m:-m].max())

    base = next((r["sec_per_clip"] for r in rows if r["name"] == "opencv tvl1 default"), None)
    print(f"{'method':<30} {'s/clip':>9} {'ratio':>7} {'fwd+bwd s/clip':>15} {'median u1, u2':>16}")
    for r in rows:
        r["ratio_vs_opencv_default"] = r["sec_per_clip"] / base if base else None
        ratio = f"{r['ratio_vs_opencv_default']:.4f}" if base else "n/a"
        bwd = f"{r['fwd_bwd_sec_per_clip']:.4f}" if r["fwd_bwd_sec_per_clip"] is not None else "-"
        flow = "{:+.2f}, {:+.2f}".format(*r["median_flow"]) if r["median_flow"] is not None else "-"
        print(f"{r['name']:<30} {r['sec_per_clip']:>9.4f} {ratio:>7} {bwd:>15} {flow:>16}")

    if agreement is not None:
        print(f"max |tvl1_flow - opencv 1 scale| beyond {args.n_iter + 1} px of the border: {agreement:.2e} px")

    result = {
        "frames": source,
        "pairs": len(grey) - 1,
        "size": [HEIGHT, WIDTH],
        "n_iter": args.n_iter,
        "repeats": args.repeats,
        "device": str(device),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "opencv": cv2.__version__,
        "opencv_threads": cv2.getNumThreads(),
        "rows": rows,
        "max_abs_diff_solver_vs_opencv_1_scale_interior": agreement,
    }
    if args.json is not None:
        atomic_write_json(args.json, result)
        print(f"wrote {args.json}")
    return result


def _once(fn: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    """OpenCV's default TV-L1 takes seconds per pair: time one pass, no warm-up (nothing to warm up)."""
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def time_layer(layer: RepresentationFlow, x: torch.Tensor, repeats: int, sync: Callable[[], None]):
    """Best-of seconds for a no-grad forward (eval mode) and for a train-mode forward + backward of one clip."""
    layer.eval()
    with torch.no_grad():
        fwd, _ = timed(lambda: layer(x), repeats, sync)
    layer.train()
    x = x.clone().requires_grad_()

    def step() -> None:
        layer.zero_grad(set_to_none=True)
        layer(x).sum().backward()

    bwd, _ = timed(step, repeats, sync)
    return fwd, bwd


if __name__ == "__main__":
    main()
