"""Stage-1 (and stage-2) training speed, through fpar's trainer, against the original code's way, in one run.

    python benchmarks/bench_stage1.py [--stage 1|2] [--preset tiny] [--classes 0] [--frames 7] [--size 112]
                                      [--epochs 4] [--rounds 3] [--batch 8] [--threads 2] [--baseline-ieee]
                                      [--pool K] [--json benchmarks/results/stage1.json]

``--stage 2`` trains what Ego-RNN's stage 2 trains (layer4's conv weights and the fc's CAM weights too), the
baseline included (layer4 then records a graph per frame); the cache then holds the stem and layers 1-3.

The issue's setting: ``--preset full --classes 4 --frames 16 --size 224 --epochs 10 --rounds 2`` (the `full`
preset's 455x256 frames, its first 4 classes, one video per class and subject: 12 training and 4 test videos).

Four ways to train the same stage 1 (ResNet-34 trunk frozen, ConvLSTM 512 + classifier trained, Adam) for
``--epochs`` epochs on the same synthetic clips, each evaluated every epoch, in alternating rounds (medians):

* ``baseline``: written here the way the 2018 code works: each frame through the trunk in a Python loop (frozen
  parameters with ``requires_grad=False``, no ``no_grad``), CAM per frame, the ConvLSTM as eight separate
  convolutions, then backward and Adam;
* ``fpar``: `fpar.engine.trainer.train` as is (all frames of a batch through the trunk at once, fused gates, the
  evaluations after the first from the frozen prefix's features in memory: ``train.eval_memo_mb``);
* ``cache_cold``: the trainer with ``data.feature_cache`` starting empty (the schedule includes building it);
* ``cache_warm``: the trainer with that cache already full;
* ``pool_cold`` (with ``--pool K``): the trainer with an empty cache and ``data.draw_pool=K``, each video limited
  to a fixed pool of K of its 40 draws. Another augmentation than the other four ways' (fewer distinct crops), so
  a figure of its own, not one of the issue's targets: each block of K epochs shows each pooled draw once, so the
  cache is full after K epochs.

Figures are training images per second (clips x frames x epochs / wall time of the whole schedule, evaluation
included). The baseline runs with denormal floats flushed to zero, as fpar trains (``train.flush_denormal``), so
that the ratios show the structural levers; ``--baseline-ieee`` runs it with the CPU's default IEEE denormals
instead, as the 2018 code ran. The projection for the paper's 200-epoch stage 1 uses the measured per-clip cost of
a hit and of a miss and the expected number of distinct draws of a video in 200 epochs (40 draws:
40 (1 - (39/40)^200) misses; 150 epochs with ``--stage 2``, the paper's stage 2); with ``--pool K`` also for a
pool of K draws (exactly K misses: the pool is cycled through, `fpar.data.transforms.pooled_draw`).
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fpar.config import load_config, set_value
from fpar.data.synth import PRESETS, Preset, synthesize
from fpar.data.transforms import normalize_rgb
from fpar.engine.build import build_model
from fpar.engine.trainer import make_loader, prepare, train
from fpar.models.layers.attention import cam_attention
from fpar.models.layers.conv_lstm import ConvLSTMCell
from fpar.utils import flush_denormal

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_convlstm import EightConvCell  # noqa: E402  (the original cell, written once)
from common import emit_json  # noqa: E402  (benchmarks/common.py)

STAGE1 = Path(__file__).resolve().parents[1] / "configs" / "ego_rnn_stage1.yaml"
STAGE2 = STAGE1.with_name("ego_rnn_stage2.yaml")
DRAWS = 40


def baseline_schedule(cfg, epochs: int, ftz: bool) -> float:
    """Train + evaluate the original way; returns seconds."""
    with flush_denormal(ftz):
        return _baseline_schedule(cfg, epochs)


def _baseline_schedule(cfg, epochs: int) -> float:
    manifest, _, train_ds, select_ds, _ = prepare(cfg)
    model, _ = build_model(cfg, manifest.vocab)
    trunk = model.backbone
    # what the recipe trains of the trunk (stage 1: nothing; stage 2: layer4's convs and the fc weight)
    patterns = [re.compile(p) for p in cfg.train.trainable]
    trained = []
    for n, p in trunk.named_parameters():
        p.requires_grad = any(r.search(f"backbone.{n}") for r in patterns)
        if p.requires_grad:
            trained.append(p)
    trunk.eval()  # BatchNorm frozen in both stages
    lstm = EightConvCell(ConvLSTMCell(trunk.num_features, cfg.model.ego_rnn.mem_size))  # the original's 8 convs
    head = nn.Linear(cfg.model.ego_rnn.mem_size, len(manifest.classes))
    drop = nn.Dropout(cfg.model.dropout)
    opt = torch.optim.Adam([*lstm.parameters(), *head.parameters(), *trained], lr=1e-3, eps=1e-4)

    def clip_logits(rgb):
        state = None
        for t in range(rgb.shape[1]):  # one frame at a time, as the original
            feats = trunk.forward_features(rgb[:, t])
            attended, _, _ = cam_attention(feats["conv5"], feats["conv5_nobn"], trunk.fc.weight, trunk.fc.bias)
            state = lstm(attended, state)
        return head(drop(state[1].mean(dim=(2, 3))))

    t0 = time.perf_counter()
    for epoch in range(epochs):
        train_ds.set_epoch(epoch)
        lstm.train()
        for batch in make_loader(train_ds, cfg, train=True, epoch=epoch):
            loss = F.cross_entropy(clip_logits(normalize_rgb(batch["rgb"])), batch["label"])
            opt.zero_grad()
            loss.backward()
            opt.step()
        lstm.eval()
        with torch.no_grad():
            for batch in make_loader(select_ds, cfg, train=False):
                clip_logits(normalize_rgb(batch["rgb"]))
    return time.perf_counter() - t0


def trainer_schedule(cfg, out: Path, cache: Path | None, pool: int = 0) -> tuple[float, list[float]]:
    c = copy.deepcopy(cfg)
    set_value(c, "out", str(out), "the benchmark")
    if cache is not None:
        set_value(c, "data.feature_cache", str(cache), "the benchmark")
    set_value(c, "data.draw_pool", pool, "the benchmark")
    t0 = time.perf_counter()
    train(c, log=lambda m: None, progress=False)
    dt = time.perf_counter() - t0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return dt, [r.get("cache_hit_rate", 0.0) for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage", type=int, choices=(1, 2), default=1, help="Ego-RNN stage 1 or 2 (trains layer4 too)")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--classes", type=int, default=0, help="first K classes of the preset, one video each (0: all)")
    ap.add_argument("--baseline-ieee", action="store_true", help="baseline with IEEE denormals (the 2018 code's way)")
    ap.add_argument("--data", default=None, help="dataset root (default: a synthetic --preset)")
    ap.add_argument("--frames", type=int, default=7)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pool", type=int, default=0, help="also a cold cache with data.draw_pool=K (0: not run)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    work = Path(tempfile.mkdtemp(prefix=f"fpar-bench-stage{a.stage}-"))
    try:
        root = Path(a.data) if a.data else work / "data"
        preset = a.preset
        if a.classes:  # a subset of the preset: its frame size and lengths, fewer videos
            base = PRESETS[a.preset]
            preset = f"{a.preset}-{a.classes}-classes"
            PRESETS[preset] = Preset(
                base.width, base.height, base.classes[: a.classes], {s: 1 for s in base.videos}, base.frames
            )
        if not a.data:
            synthesize(root, preset=preset, seed=0)
        cfg = load_config(
            STAGE1 if a.stage == 1 else STAGE2,
            [
                "init.from=none",  # the speed does not depend on where the weights come from
                f"data.root={root}",
                f"data.frames={a.frames}",
                f"data.input_size={a.size}",
                f"data.scale_size={round(a.size * 256 / 224)}",
                "model.pretrained=none",  # the speed does not depend on the values of the weights
                f"train.batch_size={a.batch}",
                f"train.eval_batch_size={a.batch}",
                f"train.epochs={a.epochs}",
                "train.progress=false",
            ],
        )
        _, _, train_ds, select_ds, _ = prepare(cfg)
        images = len(train_ds) * a.frames * a.epochs
        ways = ("baseline", "fpar", "cache_cold", "cache_warm", *(("pool_cold",) if a.pool else ()))
        times: dict[str, list[float]] = {k: [] for k in ways}
        pool_hits: list[float] = []
        hit_rates: list[float] = []
        for r in range(a.rounds):  # alternating: every way once per round
            times["baseline"].append(baseline_schedule(cfg, a.epochs, ftz=not a.baseline_ieee))
            times["fpar"].append(trainer_schedule(cfg, work / f"fpar{r}", None)[0])
            cache = work / f"cache{r}"
            dt, _ = trainer_schedule(cfg, work / f"cold{r}", cache)
            times["cache_cold"].append(dt)
            dt, hits = trainer_schedule(cfg, work / f"warm{r}", cache)
            times["cache_warm"].append(dt)
            hit_rates = hits
            shutil.rmtree(cache)
            if a.pool:
                dt, pool_hits = trainer_schedule(cfg, work / f"pool{r}", cache, a.pool)
                times["pool_cold"].append(dt)
                shutil.rmtree(cache)
        med = {k: statistics.median(v) for k, v in times.items()}
        ips = {k: images / v for k, v in med.items()}
        base = ips["baseline"]
        # projection for the paper's schedule (stage 1: 200 epochs, stage 2: 150): seconds per clip-epoch of a miss
        # (cold epoch ~ all misses) and of a hit (warm)
        n_ep = 200 if a.stage == 1 else 150
        per_clip_warm = med["cache_warm"] / (len(train_ds) * a.epochs)
        per_clip_base = med["baseline"] / (len(train_ds) * a.epochs)
        per_clip_miss = med["fpar"] / (len(train_ds) * a.epochs)
        proj_base = n_ep * per_clip_base

        def projection(draws: int, cycled: bool = False) -> dict:
            # distinct draws of a video in n_ep epochs: expected ones for draws picked uniformly each epoch; a pool
            # is cycled through (each block of K epochs shows each pooled draw once), so exactly min(K, n_ep)
            misses = min(draws, n_ep) if cycled else draws * (1 - (1 - 1 / draws) ** n_ep)
            proj_cache = misses * per_clip_miss + (n_ep - misses) * per_clip_warm
            return {
                "expected_misses_per_video": round(misses, 2),
                "speedup_vs_baseline": round(proj_base / proj_cache, 2),
            }

        result = {
            "stage": a.stage,
            "preset": preset if not a.data else str(root),
            "baseline_denormals": "ieee" if a.baseline_ieee else "flushed",
            "train_videos": len(train_ds),
            "test_videos": len(select_ds),
            "frames": a.frames,
            "size": a.size,
            "batch": a.batch,
            "epochs": a.epochs,
            "rounds": a.rounds,
            "threads": a.threads,
            "median_seconds": {k: round(v, 2) for k, v in med.items()},
            "images_per_s": {k: round(v, 2) for k, v in ips.items()},
            "speedup_vs_baseline": {k: round(v / base, 2) for k, v in ips.items()},
            "warm_hit_rates": hit_rates,
            f"projection_{n_ep}_epochs": projection(DRAWS),
        }
        if a.pool:
            result["pool"] = a.pool
            result["pool_cold_hit_rates"] = pool_hits
            result[f"projection_{n_ep}_epochs_pool"] = projection(a.pool, cycled=True)
        emit_json(result, a.json)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
