"""Training data pipeline throughput (clips/s) on the `full` synthetic preset (GTEA61 scale, 455x256).

    python benchmarks/bench_data.py [--root /tmp/fpar-full] [--frames 16] [--size 224] [--batches 8] [--json OUT]

Writes the `full` preset to --root first if it is not there (a few minutes). Reports clips per second of the
training loader (decode + one shared crop/flip + normalise) for RGB only and for RGB + flow + motion maps, with
0 and 2 worker processes, in the same run; the ratio column is against the RGB-only, 0-worker baseline.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from fpar.config import DataConfig
from fpar.data.dataset import ClipDataset
from fpar.data.layout import discover
from fpar.data.synth import synthesize


def measure(ds, workers: int, batch: int, batches: int) -> float:
    loader = DataLoader(
        ds, batch_size=batch, shuffle=True, num_workers=workers, generator=torch.Generator().manual_seed(0)
    )
    it = iter(loader)
    next(it)  # warm-up (worker start, first decode)
    t = time.perf_counter()
    n = 0
    for _ in range(batches):
        b = next(it)
        n += b["label"].shape[0]
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="/tmp/fpar-full")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    root = Path(a.root)
    if not (root / "processed_frames2").is_dir():
        print(f"writing the full preset to {root} ...")
        synthesize(root, preset="full", seed=0)
    m = discover(root)
    cfg = DataConfig(frames=a.frames, input_size=a.size)
    train = m.select(["S1", "S3", "S4"])
    rows = []
    base = None
    for mods in (("rgb",), ("rgb", "flow", "mmaps")):
        ds = ClipDataset(m, train, cfg, modalities=mods, train=True)
        for workers in (0, 2):
            cps = measure(ds, workers, a.batch, a.batches)
            base = base or cps
            rows.append(
                {
                    "modalities": "+".join(mods),
                    "workers": workers,
                    "clips_per_s": round(cps, 2),
                    "ratio": round(cps / base, 2),
                }
            )
            print(f"{'+'.join(mods):>16}  workers={workers}  {cps:7.2f} clips/s  x{cps / base:.2f}")
    out = {"videos": len(m.videos), "train_videos": len(train), "frames": a.frames, "size": a.size, "rows": rows}
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
