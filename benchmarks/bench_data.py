"""Training data pipeline throughput (clips/s) on the `full` synthetic preset (GTEA61 scale, 455x256).

    python benchmarks/bench_data.py [--root /tmp/fpar-full] [--frames 16] [--size 224] [--batches 8] [--videos 60]
                                    [--rounds 3] [--json OUT]

Writes the `full` preset to --root first if it is not there (a few minutes). On the same ``--videos`` training
videos, in alternating rounds (medians), clips per second of:

* ``pil_loop`` (the baseline): per frame, PIL open + resize to the short side + crop + to-tensor + normalise, in the
  main process, one clip after the other;
* the training loader (decode + one shared crop/flip; the uint8 clips are normalised on the device after the copy)
  for RGB only, with 0 and 2 worker processes, and for RGB + flow + motion maps; ``*_normalised_on_cpu`` adds that
  normalisation in the main process, as a CPU-only run does it;
* the same RGB loader reading a decoded-frame cache (`fpar data cache`, built here under --root first).

fpar decodes PNG frames with libspng when the `fast-png` extra (pyspng) is installed, with OpenCV otherwise; the
JSON's ``png_decoder`` says which.

The ratio column is against the baseline of the same run.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from fpar.config import DataConfig
from fpar.data import imageio
from fpar.data.dataset import ClipDataset
from fpar.data.frame_cache import build_frame_cache
from fpar.data.layout import discover
from fpar.data.synth import synthesize
from fpar.data.transforms import normalize_batch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json  # noqa: E402  (benchmarks/common.py)


def measure(ds, workers: int, batch: int, batches: int, normalise: bool = False) -> float:
    """Clips per second of ``batches`` training batches after a warm-up batch (the loader restarts at its end)."""
    loader = DataLoader(
        ds, batch_size=batch, shuffle=True, num_workers=workers, generator=torch.Generator().manual_seed(0)
    )
    it = iter(loader)
    next(it)  # warm-up (worker start, first decode)
    t = time.perf_counter()
    n = 0
    for _ in range(batches):
        try:
            b = next(it)
        except StopIteration:
            it = iter(loader)
            b = next(it)
        if normalise:  # what the trainer does after the copy (on the device; here the main process's CPU)
            normalize_batch(b)
        n += b["label"].shape[0]
    return n / (time.perf_counter() - t)


def pil_loop(m, train: list[int], frames: int, size: int, scale: int, clips: int) -> float:
    """The baseline: T frames per clip through PIL one by one in this process (the 2018 code's transforms)."""
    from PIL import Image

    from fpar.data.sampling import uniform_indices
    from fpar.data.transforms import RGB_MEAN, RGB_STD

    mean = torch.tensor(RGB_MEAN).view(3, 1, 1)
    std = torch.tensor(RGB_STD).view(3, 1, 1)
    t = time.perf_counter()
    for c in range(clips):
        v = m.videos[train[c % len(train)]]
        out = []
        for k in uniform_indices(v.num_frames, frames):
            img = Image.open(v.rgb[k]).convert("RGB")
            w, h = img.size
            r = scale / min(w, h)
            img = img.resize((round(w * r), round(h * r)), Image.BILINEAR)
            w, h = img.size
            x0, y0 = (w - size) // 2, (h - size) // 2
            img = img.crop((x0, y0, x0 + size, y0 + size))
            x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
            out.append((x - mean) / std)
        torch.stack(out)  # (T, 3, S, S)
    return clips / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="/tmp/fpar-full")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--videos", type=int, default=60, help="training videos measured (and cached)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    root = Path(a.root)
    if not (root / "processed_frames2").is_dir():
        print(f"writing the full preset to {root} ...")
        synthesize(root, preset="full", seed=0)
    m = discover(root)
    cfg = DataConfig(frames=a.frames, input_size=a.size)
    train = m.select(["S1", "S3", "S4"])[: a.videos]
    cache_dir = root / ".fpar-frame-cache"
    built = build_frame_cache(m, cache_dir, videos=train)
    cached_cfg = copy.deepcopy(cfg)
    cached_cfg.frame_cache = str(cache_dir)
    n = a.batch * a.batches
    cases = {
        "pil_loop": lambda: pil_loop(m, train, a.frames, a.size, cfg.scale_size, n),
        "rgb_w0": lambda: measure(ClipDataset(m, train, cfg, train=True), 0, a.batch, a.batches),
        "rgb_w2": lambda: measure(ClipDataset(m, train, cfg, train=True), 2, a.batch, a.batches),
        "rgb_w2_normalised_on_cpu": lambda: measure(
            ClipDataset(m, train, cfg, train=True), 2, a.batch, a.batches, True
        ),
        "rgb_cache_w0": lambda: measure(ClipDataset(m, train, cached_cfg, train=True), 0, a.batch, a.batches),
        "rgb_cache_w2": lambda: measure(ClipDataset(m, train, cached_cfg, train=True), 2, a.batch, a.batches),
        "rgb_cache_w0_normalised_on_cpu": lambda: measure(
            ClipDataset(m, train, cached_cfg, train=True), 0, a.batch, a.batches, True
        ),
        "rgb+flow+mmaps_w2": lambda: measure(
            ClipDataset(m, train, cfg, modalities=("rgb", "flow", "mmaps"), train=True), 2, a.batch, a.batches
        ),
    }
    got: dict[str, list[float]] = {k: [] for k in cases}
    for r in range(a.rounds):
        for name, fn in cases.items() if r % 2 == 0 else list(cases.items())[::-1]:
            got[name].append(fn())
    base = statistics.median(got["pil_loop"])
    rows = []
    for name, values in got.items():
        cps = statistics.median(values)
        rows.append({"case": name, "clips_per_s": round(cps, 2), "ratio_vs_pil_loop": round(cps / base, 2)})
        print(f"{name:>18}  {cps:7.2f} clips/s  x{cps / base:.2f}")
    out = {
        "videos": len(m.videos),
        "measured_videos": len(train),
        "frames": a.frames,
        "size": a.size,
        "rounds": a.rounds,
        "frame_cache_gib": round(built["bytes"] / 2**30, 2),
        # fpar's PNG decoder (the `fast-png` extra); the baseline's is PIL's either way
        "png_decoder": "libspng (pyspng)" if imageio.pyspng is not None else "opencv",
        "rows": rows,
    }
    write_json(out, a.json)


if __name__ == "__main__":
    main()
