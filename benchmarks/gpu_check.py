"""The prepared GPU check (performance issue, target 7): run it once on a lent GPU and keep its JSON.

    python benchmarks/gpu_check.py --json benchmarks/results/gpu.json            # on the GPU machine
    python benchmarks/gpu_check.py --device cpu --small                          # a smoke run anywhere

What it measures, with random weights (nothing is downloaded) and `train.amp` autocast (bf16 where the device has
it, else fp16 with a GradScaler), pinned host batches copied with ``non_blocking=True``:

1. one Adam training step of every model family's shipped config (Ego-RNN stage 1 and 2, flow_resnet34, LSTA
   stage 1, 2 and flow; the two-stream models' steps are about the sum of their streams'): seconds per step
   (median of 3 after a warm-up), clips/s, and ``torch.cuda.max_memory_allocated``;
2. the memory target: Ego-RNN at batch 32, T=25, 224 px, the whole trunk trainable, MS head at conv4, with bf16 and
   ``train.checkpoint``: ``max_memory_allocated`` of one step (the CPU count of benchmarks/bench_memory.py: 4.7 GB);
3. tvl1-torch (benchmarks/bench_flow.py's pairs) at 320x240, 64 pairs per batch, frames/s, against OpenCV's TV-L1
   on the machine's CPU cores in the same run (the issue's target: 50x).

``--small`` shrinks every size (T, pixels, batch) so the script finishes in a minute on a CPU; its figures mean
nothing, it checks that the script runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

from fpar.config import load_config
from fpar.engine.build import build_model, compile_model, forward_batch, resolve_trainable, to_channels_last
from fpar.engine.stages import apply_trainable, set_train_mode
from fpar.engine.trainer import cuda_has_bf16
from fpar.models.backbone import ResNetTrunk
from fpar.models.heads import total_loss
from fpar.registry import model_spec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json  # noqa: E402  (benchmarks/common.py)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# name -> (config, overrides). The two-stream models are built from trained stream runs, which a bare machine does
# not have: their streams are timed here (a joint step costs about the sum of its streams' steps).
FAMILIES = {
    "ego_rnn_stage1": ("ego_rnn_stage1.yaml", []),
    "ego_rnn_stage2": ("ego_rnn_stage2.yaml", []),
    "flow_resnet34": ("flow_resnet34.yaml", []),
    "lsta_stage1": ("lsta_stage1.yaml", []),
    "lsta_stage2": ("lsta_stage2.yaml", []),
    "lsta_flow": ("lsta_flow.yaml", []),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batch(cfg, keys, batch: int, classes: int) -> dict:
    """Random inputs of every key the family reads (pinned on the host, as the loader gives them)."""
    t, s, L = cfg.data.frames, cfg.data.input_size, cfg.data.flow_stack
    make = {
        "rgb": lambda: torch.randn(batch, t, 3, s, s),
        "flow": lambda: torch.randn(batch, 2 * L, s, s),
        "flow_seq": lambda: torch.randn(batch, t, 2 * L, s, s),
        "mmaps": lambda: torch.randint(0, 2, (batch, t, s, s), dtype=torch.uint8),
    }
    out = {k: make[k]() for k in keys if k in make}
    out["label"] = torch.randint(0, classes, (batch,))
    out["static_idx"] = torch.randint(0, t, (batch,))
    if torch.cuda.is_available():
        out = {k: v.pin_memory() for k, v in out.items()}
    return out


def _amp(device: torch.device) -> torch.dtype:
    """What the trainer's ``train.amp=true`` autocasts to on a GPU (on a CPU: bf16, native or not)."""
    if device.type == "cuda":
        return torch.bfloat16 if cuda_has_bf16(device) else torch.float16
    return torch.bfloat16


def train_step_figures(name: str, yaml: str, device, *, small: bool, batch: int, overrides=()) -> dict:
    size = ["data.input_size=64", "data.scale_size=72", "data.frames=3"] if small else []
    cfg = load_config(CONFIGS / yaml, ["model.pretrained=none", "init.from=null", *size, *overrides])
    classes = [f"c{i}" for i in range(61)]
    model, _ = build_model(cfg, classes)
    apply_trainable(model, resolve_trainable(cfg))
    set_train_mode(model, cfg.train.bn_train)
    model.to(device)
    to_channels_last(model)
    for m in model.modules():
        if isinstance(m, ResNetTrunk):
            m.checkpoint = cfg.train.checkpoint
    if cfg.train.compile:
        compile_model(model, model_spec(cfg.model.name))
    keys = model_spec(cfg.model.name).inputs(cfg, True)
    host = _batch(cfg, keys, batch, len(classes))
    dtype = _amp(device)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        b = {k: v.to(device, non_blocking=True) for k, v in host.items()}
        with torch.autocast(device.type, dtype=dtype):
            out = forward_batch(model, cfg, b, train=True)
        out.float()
        loss, _ = total_loss(model.losses(out, b))
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    row = {
        "config": yaml,
        "batch": batch,
        "frames": cfg.data.frames,
        "size": cfg.data.input_size,
        "amp": str(dtype).removeprefix("torch."),
        "seconds_per_step": round(statistics.median(times), 4),
        "clips_per_s": round(batch / statistics.median(times), 2),
    }
    if device.type == "cuda":
        row["max_memory_allocated_gb"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 2)
    print(name, json.dumps(row), flush=True)
    return row


def flow_figures(device, *, small: bool) -> dict:
    import cv2

    from fpar.video.flow import compute_flows
    from fpar.video.known_flow import endpoint_error, standard_pairs
    from fpar.video.tvl1 import TVL1Batcher

    size = (60, 80) if small else (240, 320)
    n = 10 if small else 64
    pairs = (standard_pairs(size) * 13)[:n]  # one batch of n: a short tail batch would cost a whole batch's time
    inputs = [(p.first, p.second) for p in pairs]
    batcher = TVL1Batcher(device=str(device), batch=n)
    batcher(inputs[:2])  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    ours = batcher(inputs)
    _sync(device)
    t_ours = time.perf_counter() - t0
    cv2.setNumThreads(os.cpu_count() or 1)
    k = min(len(pairs), 10)
    t0 = time.perf_counter()
    ref = compute_flows(inputs[:k], "tvl1")
    t_cv = (time.perf_counter() - t0) / k
    row = {
        "size": f"{size[1]}x{size[0]}",
        "pairs": len(pairs),
        "batch": batcher.batch,
        "tvl1_torch_frames_per_s": round(len(pairs) / t_ours, 2),
        "opencv_tvl1_frames_per_s": round(1 / t_cv, 2),
        "opencv_threads": cv2.getNumThreads(),
        "speedup": round(t_cv * len(pairs) / t_ours, 1),
        "epe_tvl1_torch": round(sum(endpoint_error(f, p) for f, p in zip(ours[:k], pairs)) / k, 4),
        "epe_opencv": round(sum(endpoint_error(f, p) for f, p in zip(ref, pairs)) / k, 4),
    }
    print("tvl1-torch", json.dumps(row), flush=True)
    return row


def _section(target: dict, key: str, make) -> None:
    """``target[key] = make()``; a failure (out of memory, no ``cv2.optflow``) is recorded under ``key`` (its
    message and last traceback lines) and the script goes on with the next section."""
    try:
        target[key] = make()
    except Exception as e:  # noqa: BLE001 - one section's failure must not lose the others
        target[key] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc().splitlines()[-6:]}
        print(key, "failed:", target[key]["error"], flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--small", action="store_true", help="tiny sizes: check that the script runs")
    ap.add_argument("--compile", action="store_true", help="also a stage-2 step with train.compile (compiles first)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    device = torch.device(a.device)
    out: dict = {"device": str(device), "torch": torch.__version__, "small": a.small}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
        out["bf16"] = cuda_has_bf16(device)
    batch = 2 if a.small else 8
    out["train_steps"] = {}

    def family(name: str, yaml: str, extra: list[str]):
        def make() -> dict:
            try:
                return train_step_figures(name, yaml, device, small=a.small, batch=batch, overrides=extra)
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()

        return make

    for name, (yaml, extra) in FAMILIES.items():
        _section(out["train_steps"], name, family(name, yaml, extra))
        write_json(out, a.json)  # after every section: a lease that ends mid-run loses nothing measured
    memory = [
        "model.ego_rnn.ms.enabled=true",
        "model.ego_rnn.ms.layer=conv4",
        "train.trainable=[.]",
        "train.checkpoint=true",
    ]
    if not a.small:
        memory += ["data.frames=25", "data.input_size=224"]
    mem_batch = 2 if a.small else 32
    _section(
        out,
        "memory_target",
        lambda: train_step_figures(
            "memory", "ego_rnn_stage2.yaml", device, small=a.small, batch=mem_batch, overrides=memory
        ),
    )
    write_json(out, a.json)
    _section(out, "tvl1_torch", lambda: flow_figures(device, small=a.small))
    write_json(out, a.json)
    if a.compile:  # last: compiling takes minutes, and what came before is written already
        _section(
            out,
            "ego_rnn_stage2_compiled",
            lambda: train_step_figures(
                "ego_rnn_stage2_compiled",
                "ego_rnn_stage2.yaml",
                device,
                small=a.small,
                batch=batch,
                overrides=["train.compile=true"],
            ),
        )
        write_json(out, a.json)
    print(json.dumps(out, indent=2))  # (written to --json after the last section already)


if __name__ == "__main__":
    main()
