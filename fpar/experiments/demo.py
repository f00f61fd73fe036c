"""`fpar demo`: the main job, end to end, on the synthetic data (3 to 7 minutes on a 2-core CPU).

1. write the ``demo`` synthetic dataset (14 classes, 196 videos, 4 subjects) unless it is there;
2. pre-train a resnet18 on single training frames, labelled by noun (stands in for ImageNet, unavailable offline);
3. Ego-RNN stage 1 (ConvLSTM + classifier) and stage 2 (+ layer4 convs + the CAM fc), selecting epochs on S2;
4. evaluate, print a results table, write CAM overlays of a few test videos.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..config import load_config
from ..errors import FparError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def config_path(name: str) -> Path:
    p = CONFIGS / name
    if not p.is_file():
        raise FparError(f"packaged config {p} is missing; reinstall fpar")
    return p


def run_demo(out: str = "fpar-demo", *, quick: bool = False, log=print) -> dict:
    from tqdm import tqdm

    from ..data.synth import synthesize
    from ..engine.pretrain import pretrain_backbone
    from ..engine.run import open_run
    from ..engine.trainer import train
    from .cam import cam_figure

    t0 = time.time()
    out_p = Path(out)
    data = out_p / "data"
    if not (data / "processed_frames2").is_dir():
        log(f"[1/4] writing the synthetic dataset to {data}")
        s = synthesize(data, preset="tiny" if quick else "demo", seed=0, progress=tqdm)
        log(f"      {s['videos']} videos, {s['classes']} classes, {s['frames']} frames")
    else:
        log(f"[1/4] using the synthetic dataset in {data}")
    backbone = out_p / "backbone.pt"
    if not backbone.is_file():
        log("[2/4] pre-training a resnet18 on single frames (noun labels) in place of ImageNet weights")
        pretrain_backbone(
            str(data),
            backbone,
            epochs=1 if quick else 6,
            per_video=6,
            lr=2e-3,
            color_jitter=0.2,  # the test subject's lighting differs: see fpar.engine.pretrain
            input_size=64 if quick else 96,
            scale_size=64 if quick else 112,
            log=lambda m: log("      " + m),
        )
    else:
        log(f"[2/4] using the pre-trained backbone {backbone}")
    runs = out_p / "runs"
    common = [f"data.root={data}", f"model.pretrained={backbone}"]
    if quick:
        common += [
            "data.input_size=64",
            "data.scale_size=64",
            "data.frames=4",
            "model.ego_rnn.mem_size=32",
            "train.epochs=2",
            "train.batch_size=8",
        ]
    results = {}
    for stage in ("stage1", "stage2"):
        run = runs / stage
        ov = [*common, f"out={run}"]
        if stage == "stage2":
            ov.append(f"init.from={runs / 'stage1'}")
        cfg = load_config(config_path(f"demo/{stage}.yaml"), ov)
        if (run / "summary.json").is_file():
            log(f"[3/4] {stage}: already trained in {run}")
            results[stage] = json.loads((run / "summary.json").read_text())
            continue
        log(f"[3/4] Ego-RNN {stage}: {cfg.train.epochs} epochs, trains {', '.join(cfg.train.trainable)}")
        resume = run if (run / "last.pt").is_file() else None
        results[stage] = train(cfg, resume=resume, progress=True, log=lambda m: log("      " + m))
    log("[4/4] CAM overlays of test videos")
    run = open_run(runs / "stage2")
    manifest = run.manifest()
    cams = []
    seen = set()
    for i in run.test_indices(manifest):
        v = manifest.videos[i]
        if v.verb not in seen and len(cams) < 4:
            seen.add(v.verb)
            p = runs / "stage2" / "cam" / f"{v.key.replace('/', '_').replace(',', '-')}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            cams.append(str(cam_figure(run, v.key, p)))
    n_classes = len(manifest.classes)
    lines = [
        "",
        f"Ego-RNN on the synthetic demo data ({n_classes} classes, chance {100 / n_classes:.1f}%), "
        f"test subject S2, {results['stage2']['videos']} test videos:",
        "| stage | best top-1 | epoch | final top-1 | top-5 | mean class | motion pairs top-1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for stage, s in results.items():
        pair = f"{s['pair_top1']:.1f}% ({s['pair_videos']} videos)" if s.get("pair_top1") is not None else "-"
        lines.append(
            f"| {stage} | {s['best_top1']:.1f}% | {s['best_epoch']} | {s['final_top1']:.1f}% | "
            f"{s['top5']:.1f}% | {s['mean_class_acc']:.1f}% | {pair} |"
        )
    lines.append(f"runs in {runs}; CAM overlays: {', '.join(cams)}; {time.time() - t0:.0f} s in all")
    for line in lines:
        log(line)
    return {"results": results, "cams": cams, "seconds": time.time() - t0}
