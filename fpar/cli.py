"""The `fpar` command line: the only place that parses arguments.

Every user error is an `FparError`, printed as one line (``error: ...``) with exit status 2.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
from pathlib import Path

import typer

from .errors import FparError
from .utils import refuse_existing, refuse_file

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="First-person action recognition: Ego-RNN, two-stream, motion segmentation, rep-flow.",
)
data_app = typer.Typer(no_args_is_help=True, help="Dataset tools: check, synth, show, cache.")
app.add_typer(data_app, name="data")


def _version(value: bool) -> None:
    if value:
        from .version import __version__

        typer.echo(f"fpar {__version__}")
        raise typer.Exit(0)


_DEBUG = {"on": False}


def _debug(value: bool) -> None:
    _DEBUG["on"] = _DEBUG["on"] or value


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version"),
    debug: bool = typer.Option(
        False, "--debug", callback=_debug, is_eager=True, help="print the traceback of an internal error"
    ),
):
    """First-person action recognition: Ego-RNN, two-stream, motion segmentation, rep-flow."""


def _png_out(out: str, what: str) -> None:
    """``--out`` of a command that writes a PNG: a .png path where nothing is yet."""
    if Path(out).suffix.lower() != ".png":
        raise FparError(f"--out {out}: {what} is a PNG image; give a path ending in .png")
    refuse_existing(out, "--out")


def _threads() -> None:
    import torch

    n = os.environ.get("FPAR_THREADS")
    if n:
        if not n.strip().isdigit() or int(n) < 1:
            raise FparError(f"FPAR_THREADS={n!r} must be a whole number of threads, at least 1 (or unset)")
        torch.set_num_threads(int(n))


# --------------------------------------------------------------------------------------------------------------
# data


def _data_config(root: str, overrides: list[str] | None, *, fmt: str | None, split: int | None):
    """The config of a `fpar data` command: the key=value overrides, then the root and --format/--split. The
    options are values as typed (a root "007" or subjects "01,02" stay strings): set, not parsed as YAML."""
    from .config import load_config, set_value

    cfg = load_config(None, overrides or [])
    set_value(cfg, "data.root", root, "the command line")
    if fmt is not None:
        set_value(cfg, "data.format", fmt, "--format")
    if split is not None:
        set_value(cfg, "data.split", split, "--split")
    return cfg


@data_app.command("check", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def data_check(
    root: str = typer.Argument(..., help="dataset root"),
    overrides: list[str] | None = typer.Argument(None, help="data key=value, e.g. data.format=egornn"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON object"),
    frames: int = typer.Option(7, "--frames", help="T to check video lengths against"),
    flow_stack: int = typer.Option(5, "--flow-stack"),
    train_subjects: str | None = typer.Option(None, "--train", help="training subjects (data.train_subjects)"),
    test_subjects: str | None = typer.Option(None, "--test", help="test subjects (data.test_subjects)"),
    frames_dir: str | None = typer.Option(None, "--frames-dir", help="GTEA61 frames folder (data.frames_dir)"),
    no_decode: bool = typer.Option(False, "--no-decode", help="check names only, do not open every image"),
    fmt: str | None = typer.Option(None, "--format", help="dataset format (data.format; default: detected)"),
    split: int | None = typer.Option(None, "--split", help="EGTEA Gaze+ split 1, 2 or 3 (data.split)"),
):
    """Scan a dataset: videos per split, classes, frame counts and every problem found."""
    from .config import set_value, validate
    from .data.check import check_dataset, format_report

    cfg = _data_config(root, overrides, fmt=fmt, split=split)
    for key, value in (("data.train_subjects", train_subjects), ("data.test_subjects", test_subjects)):
        if value is not None:
            set_value(cfg, key, [s.strip() for s in value.split(",")], "the command line")
    if frames_dir is not None:
        set_value(cfg, "data.frames_dir", frames_dir, "the command line")
    for option, value in (("--frames", frames), ("--flow-stack", flow_stack)):
        if value < 1:
            raise FparError(f"{option} {value}: give at least 1 (training refuses fewer)")
    validate(cfg)
    r = check_dataset(cfg.data, frames=frames, flow_stack=flow_stack, decode=not no_decode)
    typer.echo(json.dumps(r, indent=2) if json_out else format_report(r))
    if not r["usable"]:
        why = next((p["message"] for p in r["problems"] if p["kind"] == "missing_subject"), None)
        raise FparError(
            f"{root} is not usable for training: " + (why or "it needs usable videos in both the train and test split")
        )


@data_app.command("cache", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def data_cache(
    root: str = typer.Argument(..., help="dataset root"),
    overrides: list[str] | None = typer.Argument(None, help="data key=value, e.g. data.frames_dir=frames"),
    out: str | None = typer.Option(None, "--out", help="cache folder (default: <root>/.fpar-frame-cache)"),
    fmt: str | None = typer.Option(None, "--format", help="dataset format (data.format; default: detected)"),
    split: int | None = typer.Option(None, "--split", help="EGTEA Gaze+ split 1, 2 or 3 (data.split)"),
):
    """Decode every RGB frame once into memory-mapped files; train with data.frame_cache=<the folder printed>."""
    from tqdm import tqdm

    from .config import validate
    from .data.frame_cache import build_frame_cache
    from .data.readers import read_dataset

    cfg = _data_config(root, overrides, fmt=fmt, split=split)
    validate(cfg)
    manifest = read_dataset(cfg.data)
    target = out or str(Path(root) / ".fpar-frame-cache")
    s = build_frame_cache(manifest, target, progress=tqdm)
    typer.echo(
        f"frame cache {s['dir']}: {s['videos']} videos ({s['written']} written, {s['current']} already current), "
        f"{s['frames']} frames, {s['bytes'] / 2**30:.2f} GiB; train with data.frame_cache={s['dir']}"
    )


@data_app.command("synth")
def data_synth(
    out: str = typer.Argument(..., help="output folder"),
    preset: str = typer.Option("demo", "--preset", help="tiny | demo | full"),
    seed: int = typer.Option(0, "--seed"),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="replace OUT and everything in it (only a dataset fpar data synth wrote)"
    ),
):
    """Write a synthetic egocentric dataset in the GTEA61 layout."""
    from tqdm import tqdm

    from .data.synth import synthesize

    s = synthesize(out, preset=preset, seed=seed, overwrite=overwrite, progress=tqdm)
    typer.echo(f"wrote {s['videos']} videos ({s['classes']} classes, {s['frames']} frames, {s['size']}) to {s['root']}")


@data_app.command("show")
def data_show(
    root: str = typer.Argument(...),
    video: str = typer.Argument(..., help="SUBJECT/CLASS/INSTANCE, e.g. S2/take_cup/1"),
    out: str | None = typer.Option(None, "--out", help="PNG path (default: <video>.png here)"),
    frames: int = typer.Option(5, "--frames"),
    transformed: bool = typer.Option(False, "--transformed", help="after the test transform (what the model sees)"),
    train: bool = typer.Option(False, "--train", help="with --transformed: a random training transform"),
    input_size: int = typer.Option(224, "--input-size"),
    scale_size: int = typer.Option(256, "--scale-size"),
    seed: int = typer.Option(0, "--seed"),
):
    """Figure 6: sampled frames of each modality side by side for one video."""
    from .config import DataConfig
    from .data.readers import read_dataset
    from .data.show import find_video, show_video

    manifest = read_dataset(DataConfig(root=root))
    i = find_video(manifest, video)
    out = out or manifest.videos[i].key.replace("/", "_").replace(",", "-") + ".png"
    _png_out(out, "the picture")
    p = show_video(
        manifest,
        i,
        out,
        frames=frames,
        cfg=DataConfig(input_size=input_size, scale_size=scale_size),
        transformed=transformed,
        train=train,
        seed=seed,
    )
    typer.echo(f"wrote {p}")


# --------------------------------------------------------------------------------------------------------------
# train / eval / config


def _resume_defaults(config_yaml: Path) -> list[str]:
    """Overrides that keep a run written by an older fpar as it ran: keys added since with a new default are set to
    what that fpar did (``train.channels_last`` and ``train.flush_denormal`` came in on by default; a run without
    the key ran without it)."""
    from omegaconf import OmegaConf

    try:
        saved = OmegaConf.to_container(OmegaConf.load(config_yaml))
    except Exception:  # noqa: BLE001 - load_config reports an unreadable file with its own message
        return []
    train_block = saved.get("train") if isinstance(saved, dict) else None
    if not isinstance(train_block, dict):
        return []
    return [f"train.{key}=false" for key in ("channels_last", "flush_denormal") if key not in train_block]


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(
    config: str | None = typer.Argument(None, help="YAML recipe, e.g. configs/ego_rnn_stage1.yaml"),
    overrides: list[str] | None = typer.Argument(None, help="dotted key=value overrides"),
    resume: str | None = typer.Option(None, "--resume", help="continue an interrupted run folder"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
    nproc: int = typer.Option(1, "--nproc", help="processes on this machine (DDP; as torchrun --nproc-per-node)"),
):
    """Train one stage: `fpar train CONFIG key=value ...` or `fpar train --resume RUN_DIR`."""
    from .config import load_config, to_dict
    from .engine import distributed
    from .engine.trainer import train as run_train

    if nproc != 1 and not distributed.launched():
        args = ["train", *([config] if config else []), *(overrides or [])]
        args += [*(["--resume", resume] if resume else []), *(["--quiet"] if quiet else [])]
        code = distributed.launch(args, nproc)
        if code:
            raise typer.Exit(code)
        return
    _threads()
    if resume:
        run = Path(resume)
        if not (run / "config.yaml").is_file():
            raise FparError(f"{run} is not a run folder (no config.yaml); give the folder `fpar train` wrote")
        if not (run / "config.yaml").read_bytes().strip():
            raise FparError(
                f"{run / 'config.yaml'} is empty: the run's config is lost; a new run with init.from={run} starts "
                "from its checkpoint"
            )
        if config:  # `fpar train --resume RUN key=value`: the first override lands in CONFIG
            if "=" not in config:
                raise FparError(f"--resume takes the run's own config.yaml; drop {config!r} (only key=value overrides)")
            overrides = [config, *(overrides or [])]
        # what changes where or how fast a run goes, never its values
        allowed = (
            "train.epochs",
            "train.device",
            "train.progress",
            "data.num_workers",
            "data.root",
            "data.frame_cache",
        )
        bad = [o for o in overrides or [] if o.split("=", 1)[0].strip() not in allowed]
        defaults = _resume_defaults(run / "config.yaml")
        if bad:  # an override that sets the value the run has changes nothing: it may stay
            saved = to_dict(load_config(run / "config.yaml", defaults))
            bad = [o for o in bad if to_dict(load_config(run / "config.yaml", [*defaults, o])) != saved]
        if bad:
            raise FparError(
                f"--resume continues a run exactly as configured; {bad[0]!r} would change it (allowed: "
                f"{', '.join(allowed)}); start a new run with init.from={run} instead"
            )
        cfg = load_config(run / "config.yaml", [*defaults, *(overrides or [])])
    else:
        if config and "=" in config:
            overrides = [config, *(overrides or [])]
            config = None
        cfg = load_config(config, overrides or [])
    s = run_train(cfg, resume=resume, progress=cfg.train.progress and not quiet)
    if int(os.environ.get("RANK", "0") or 0) == 0:  # one summary line, not one per process
        typer.echo(_summary_line(s))


def _summary_line(s: dict) -> str:
    line = (
        f"{s['name']}: best top-1 {s['best_top1']:.2f}% at epoch {s['best_epoch']} (final {s['final_top1']:.2f}%, "
        f"top-5 {s['top5']:.2f}%, mean class {s['mean_class_acc']:.2f}%) on {s['videos']} videos, "
        f"selected on {s['select_on']}; run folder {s['run']}"
    )
    if s.get("action_top1") is not None:  # verb/noun heads: EPIC's figures of the selected epoch
        line += (
            f"\n  verb {s['verb_top1']:.2f}% / {s['verb_top5']:.2f}%, noun {s['noun_top1']:.2f}% / "
            f"{s['noun_top5']:.2f}%, action {s['action_top1']:.2f}% / {s['action_top5']:.2f}% (top-1 / top-5; "
            f"epoch chosen by {s.get('selected_by', 'top1')})"
        )
    if s.get("test_top1") is not None:
        line += f"; test top-1 at the selected epoch {s['test_top1']:.2f}%"
    return line


@app.command("eval")
def eval_cmd(
    run: str = typer.Argument(..., help="run folder or checkpoint"),
    data: str | None = typer.Option(None, "--data", help="dataset root (default: the run's)"),
    which: str = typer.Option("best", "--which", help="best | last"),
    subjects: str | None = typer.Option(None, "--subjects", help="comma-separated subjects (default: test split)"),
    json_out: bool = typer.Option(False, "--json"),
):
    """Evaluate a trained run on its test split, or on other subjects (top-1, top-5, mean class, verb, noun)."""
    from .engine.run import open_run
    from .engine.trainer import evaluate, make_loader, pick_device

    _threads()
    run_ = open_run(run, which)
    ckpt, cfg = run_.ckpt, run_.cfg
    manifest = run_.manifest(data)
    subs = subjects.split(",") if subjects else None
    indices = manifest.select(subs, key="--subjects") if subs else run_.test_indices(manifest)
    ds = run_.dataset(manifest, indices)
    device = pick_device(cfg.train.device)
    model = run_.model.to(device)
    m = evaluate(model, make_loader(ds, cfg, train=False), cfg, device, run_.vocab, progress=not json_out)
    m.pop("confusion")
    split = ",".join(subs) if subs else "the test split"
    m = {"checkpoint": ckpt["path"], "epoch": ckpt.get("epoch"), "subjects": subs, **m}
    if json_out:
        typer.echo(json.dumps(m, indent=2))
    else:
        vn = f"  verb {m['verb_acc']:.2f}%  noun {m['noun_acc']:.2f}%" if "verb_acc" in m else ""
        typer.echo(
            f"{ckpt['path']} (epoch {m['epoch']}) on {split}: top-1 {m['top1']:.2f}%  top-5 "
            f"{m['top5']:.2f}%  mean class {m['mean_class_acc']:.2f}%{vn}  ({m['videos']} videos)"
        )


@app.command()
def fuse(
    rgb_run: str = typer.Argument(..., help="trained Ego-RNN run"),
    flow_run: str = typer.Argument(..., help="trained flow_resnet run"),
    weight: float = typer.Option(0.5, "--weight", help="weight of the flow scores"),
    data: str | None = typer.Option(None, "--data"),
    json_out: bool = typer.Option(False, "--json"),
):
    """Late fusion: average the two streams' scores on the test subjects (Ego-RNN's untrained baseline)."""
    from .engine.fusion import late_fusion_eval

    _threads()
    r = late_fusion_eval(rgb_run, flow_run, weight=weight, data_root=data)
    if json_out:
        typer.echo(json.dumps(r, indent=2))
        return
    for k in ("rgb", "flow", "fusion"):
        m = r[k]
        typer.echo(f"{k:>6}: top-1 {m['top1']:.2f}%  top-5 {m['top5']:.2f}%  mean class {m['mean_class_acc']:.2f}%")
    typer.echo(f"{r['videos']} videos ({r['split']}); fusion = {r['weight']} flow + {1 - r['weight']} rgb")


@app.command("config")
def config_cmd(
    config: str | None = typer.Argument(None),
    overrides: list[str] | None = typer.Argument(None),
    keys: bool = typer.Option(False, "--keys", help="list every valid key"),
):
    """Print the resolved config (defaults + file + overrides), or every valid key (plug-in blocks included)."""
    from .config import dump, load_config, valid_keys

    if keys:
        typer.echo("\n".join(valid_keys()))
        return
    if config and "=" in config:
        overrides, config = [config, *(overrides or [])], None
    typer.echo(dump(load_config(config, overrides or [])), nl=False)


@app.command("models")
def models_cmd():
    """The registered model families and dataset formats (built in, entry points, FPAR_PLUGINS)."""
    from .registry import model_specs, reader_specs

    typer.echo("models (model.name):")
    for name, spec in model_specs().items():
        typer.echo(f"  {name:<14} {spec.description}  [inputs: {'+'.join(_inputs_of(spec))}]")
    typer.echo("dataset formats (data.format):")
    for name, spec in reader_specs().items():
        typer.echo(f"  {name:<14} {spec.description}")


def _inputs_of(spec) -> tuple[str, ...]:
    from .config import ExperimentConfig

    cfg = ExperimentConfig()
    cfg.model.name = spec.name
    return spec.inputs(cfg, False)


@app.command("model-params")
def model_params(
    config: str | None = typer.Argument(None),
    overrides: list[str] | None = typer.Argument(None),
    num_classes: int = typer.Option(61, "--num-classes"),
):
    """List parameter names (for train.trainable patterns) and which the config trains."""
    from .config import load_config
    from .engine.build import build_model, resolve_trainable
    from .engine.stages import apply_trainable

    if config and "=" in config:
        overrides, config = [config, *(overrides or [])], None
    if num_classes < 1:
        raise FparError(f"--num-classes {num_classes}: give at least 1 class")
    from .data.layout import gtea_vocabulary

    cfg = load_config(config, [*(overrides or []), "model.pretrained=none"])
    model, _ = build_model(cfg, gtea_vocabulary([f"c{i}_x{i}" for i in range(num_classes)]))
    trainable = set(apply_trainable(model, resolve_trainable(cfg)))
    for n, p in model.named_parameters():
        typer.echo(f"{'T' if n in trainable else ' '} {n} {tuple(p.shape)}")


@app.command()
def cam(
    run: str = typer.Argument(
        ..., help="run folder or checkpoint (a family with attention maps: Ego-RNN, two-stream, LSTA)"
    ),
    video: str = typer.Argument(..., help="SUBJECT/CLASS/INSTANCE"),
    out: str | None = typer.Option(None, "--out", help="PNG path"),
    data: str | None = typer.Option(None, "--data"),
    compare: str | None = typer.Option(None, "--compare", help="another run whose CAM is shown beside"),
):
    """CAM overlays for a video (Figures 10-11); for MS models also predicted and true motion maps."""
    from .engine.run import open_run
    from .experiments.cam import cam_figure

    out = out or f"cam_{video.strip('/').replace('/', '_').replace(',', '-')}.png"
    _png_out(out, "the CAM sheet")
    other = open_run(compare) if compare else None
    typer.echo(f"wrote {cam_figure(open_run(run), video, out, data_root=data, compare=other)}")


@app.command()
def pretrain(
    root: str = typer.Argument(..., help="dataset root"),
    out: str = typer.Argument(..., help="output .pt (torchvision-format state dict)"),
    arch: str = typer.Option("resnet18", "--arch"),
    target: str = typer.Option("noun", "--target", help="noun | class"),
    input_size: int = typer.Option(112, "--input-size"),
    scale_size: int = typer.Option(128, "--scale-size"),
    epochs: int = typer.Option(4, "--epochs"),
    batch_size: int = typer.Option(32, "--batch-size"),
    lr: float = typer.Option(1e-3, "--lr"),
    color_jitter: float = typer.Option(
        0.2, "--color-jitter", help="photometric jitter of the training frames (gain, tint, offset; 0 = none)"
    ),
    seed: int = typer.Option(0, "--seed"),
):
    """Pre-train a backbone on single frames (when ImageNet weights cannot be had); use it as model.pretrained."""
    from .engine.pretrain import pretrain_backbone

    refuse_existing(out, "OUT")  # before the training, not after it
    _threads()
    r = pretrain_backbone(
        root,
        out,
        arch=arch,
        target=target,
        input_size=input_size,
        scale_size=scale_size,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        color_jitter=color_jitter,
        seed=seed,
    )
    typer.echo(f"wrote {r['path']}: frame accuracy train {r['train_acc']:.1f}%, test {r['test_acc']:.1f}%")


@app.command()
def demo(
    out: str = typer.Option("fpar-demo", "--out", help="folder for the data and the runs"),
    quick: bool = typer.Option(False, "--quick", help="a much shorter run (smoke test)"),
):
    """The main job on synthetic data: make data, pre-train a backbone, Ego-RNN stage 1 + 2, evaluate, CAMs."""
    from .experiments.demo import run_demo

    _threads()
    run_demo(out, quick=quick, log=typer.echo)


# --------------------------------------------------------------------------------------------------------------
# raw video: prepare / predict / export


@app.command()
def prepare(
    videos: str = typer.Argument(..., help="VIDEOS/<subject>/<class>/<instance>.<ext> (or frame folders), or a .csv"),
    out: str = typer.Argument(..., help="dataset root to write (GTEA61 course layout)"),
    fmt: str = typer.Option(
        "gtea61", "--format", help="gtea61 (videos in class folders) | egtea | epic100 (VIDEOS is that dataset's root)"
    ),
    csv: str | None = typer.Option(None, "--csv", help="CSV video,subject,class[,start,end] (paths relative to it)"),
    workers: int = typer.Option(1, "--workers", help="processes"),
    fps: float | None = typer.Option(None, "--fps", help="resample videos to this frame rate (default: native)"),
    short_side: int = typer.Option(256, "--short-side", help="shorter side of the written frames, px (0: keep)"),
    flow: str = typer.Option(
        "tvl1", "--flow", help="tvl1 (OpenCV, reference) | tvl1-torch (same, batched, GPU) | dis (fast) | farneback"
    ),
    flow_batch: int | None = typer.Option(None, "--flow-batch", help="tvl1-torch pairs per batch (8; 32 on CUDA)"),
    flow_device: str | None = typer.Option(None, "--flow-device", help="tvl1-torch device (default: cuda if any)"),
    json_out: bool = typer.Option(False, "--json", help="print the summary as one JSON object"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
    redo: bool = typer.Option(
        False, "--redo", help="prepare again the videos OUT holds from other settings (replacing them)"
    ),
):
    """Raw videos -> frames, warp flows (camera motion removed) and motion maps in the layout fpar trains on."""
    from .video.prepare import prepare as run_prepare

    s = run_prepare(
        videos,
        out,
        csv=csv,
        fps=fps,
        short_side=short_side or None,
        flow_method=flow,
        workers=workers,
        progress=not (quiet or json_out),
        layout=fmt,
        flow_batch=flow_batch,
        flow_device=flow_device,
        redo=redo,
    )
    failed = s["failed"]
    if json_out:
        typer.echo(json.dumps(s, indent=2))
    else:
        typer.echo(
            f"prepared {len(s['processed'])} video(s) ({s['frames']} frames, flow {s['flow_method']}) in "
            f"{s['seconds']:.1f} s -> {s['root']} (flow {s['flow_s']:.1f} s, camera step {s['camera_s']:.1f} s)"
        )
        typer.echo(f"skipped {len(s['skipped'])} video(s) already prepared with the same settings")
        if s.get("next"):
            typer.echo(s["next"])
        typer.echo(f"failed {len(failed)} video(s)" + (":" if failed else ""))
        for f in failed:
            typer.echo(f"  {f['key']} ({f['source']}): {f['error']}")
    if failed:
        raise FparError(
            f"{len(failed)} of {s['videos']} video(s) failed (listed above); fix them and run again: prepared "
            "videos are skipped"
        )


@app.command()
def predict(
    run: str = typer.Argument(..., help="run folder or checkpoint (any model)"),
    video: str | None = typer.Argument(None, help="video file or frame folder"),
    top: int = typer.Option(5, "--top", help="how many classes to show"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON object"),
    cam_dir: str | None = typer.Option(None, "--cam", help="folder for CAM overlays of the sampled frames (PNG)"),
    flow: str = typer.Option(
        "dis", "--flow", help="flow models: dis (fast) | tvl1 (reference) | tvl1-torch (same, batched) | farneback"
    ),
    fps: float | None = typer.Option(
        None, "--fps", help="resample the video to this frame rate first (--window, frame folder: its frame rate)"
    ),
    short_side: int | None = typer.Option(None, "--short-side", help="frame size, px (default: data.scale_size)"),
    epic_test: str | None = typer.Option(None, "--epic-test", help="EPIC_100_test_timestamps.csv: write a submission"),
    out: str | None = typer.Option(
        None, "--out", help="--window: the results (.json or .csv); --epic-test: the submission JSON"
    ),
    sls: str | None = typer.Option(None, "--sls", help="--epic-test: supervision levels PT,TL,TD (0-5 each)"),
    root: str | None = typer.Option(None, "--root", help="--epic-test: EPIC frames folder (default: the run's)"),
    window: str | None = typer.Option(
        None, "--window", help="slide a window over the whole video: seconds (2s) or frames (48f, or 48)"
    ),
    stride: str | None = typer.Option(None, "--stride", help="--window: step between windows (default: half of it)"),
    batch: int | None = typer.Option(None, "--batch", help="--window: windows per forward pass (default 8)"),
    min_segment: str | None = typer.Option(
        None, "--min-segment", help="--window: absorb shorter segments into a neighbour (2s, 48f)"
    ),
    timeline: str | None = typer.Option(
        None, "--timeline", help="--window: timeline PNG (default with --out: <out>.timeline.png)"
    ),
    render: str | None = typer.Option(None, "--render", help="--window: MP4 of the video with the current class"),
    render_cam: bool = typer.Option(False, "--render-cam", help="--render: draw the CAM too (models with CAM)"),
    device: str | None = typer.Option(None, "--device", help="--window: auto (default) | cpu | cuda"),
):
    """Classify a raw video (or frame folder) with a trained run; flow is computed on the fly. With --window, slide
    over a whole video (streamed) and write per-window top-k and merged segments (--out .json or .csv), a timeline
    PNG and an annotated MP4 (--render). With --epic-test, score EPIC-KITCHENS-100's test segments and write the
    challenge's submission JSON."""
    from .video.predict import predict_video

    _threads()
    windowed = {
        "--stride": stride,
        "--batch": batch,
        "--min-segment": min_segment,
        "--timeline": timeline,
        "--render": render,
        "--render-cam": render_cam or None,
        "--device": device,
    }
    if window is None and any(v is not None for v in windowed.values()):
        given = ", ".join(k for k, v in windowed.items() if v is not None)
        raise FparError(f"{given}: only with --window (e.g. --window 2s --stride 0.5s)")
    if window is not None:
        if epic_test is not None or video is None:
            raise FparError("usage: fpar predict RUN VIDEO --window 2s [--stride 0.5s] [--out FILE.json|FILE.csv]")
        if cam_dir is not None:
            raise FparError("--cam writes the CAMs of one clip; with --window, --render-cam draws them on --render")
        _predict_windows(
            run,
            video,
            window=window,
            stride=stride,
            top=top,
            batch=8 if batch is None else batch,
            min_segment=min_segment,
            fps=fps,
            short_side=short_side,
            flow_method=flow,
            device=device or "auto",
            out=out,
            timeline=timeline,
            render=render,
            render_cam=render_cam,
            json_out=json_out,
        )
        return
    if epic_test is not None:
        from .experiments.submission import epic_submission

        if video is not None or not out:
            raise FparError("usage: fpar predict RUN --epic-test CSV --out FILE.json --sls PT,TL,TD (no VIDEO)")
        s = epic_submission(run, epic_test, out, sls=sls, root=root)
        typer.echo(json.dumps(s) if json_out else f"wrote {s['segments']} segments' verb and noun scores to {s['out']}")
        return
    if video is None:
        raise FparError("give a VIDEO (file or frame folder) to classify, or --epic-test CSV --out FILE.json")
    if cam_dir is not None:
        refuse_file(cam_dir, "--cam", "the CAM overlays")
    r = predict_video(run, video, top=top, cam_out=cam_dir, flow_method=flow, fps=fps, short_side=short_side)
    if json_out:
        typer.echo(json.dumps(r, indent=2))
        return
    typer.echo(f"{r['video']}: {r['frames']} frames, {r['model']} ({r['checkpoint']})")
    width = max(len(t["class"]) for t in r["top"])
    for i, t in enumerate(r["top"], 1):
        typer.echo(f"  {i:2d}. {t['class']:<{width}}  {100 * t['prob']:6.2f}%")
    if r.get("cam"):
        typer.echo(f"wrote {len(r['cam'])} CAM overlay(s) to {cam_dir}")


MAX_SEGMENT_LINES = 20  # segments listed on the terminal; the rest are in --out


def _predict_windows(run: str, video: str, *, json_out: bool, **options) -> None:
    """`fpar predict --window`: the long-video prediction, then its summary (or the whole result as JSON)."""
    from .video.long_video import predict_long_video

    progress = None
    if not json_out and sys.stderr.isatty():
        from tqdm import tqdm

        progress = tqdm
    r = predict_long_video(run, video, progress=progress, **options)
    if json_out:
        typer.echo(json.dumps(r, indent=2))
        return

    def at(seconds: float | None, frame: int) -> str:
        return f"{seconds:8.2f} s" if seconds is not None else f"{frame:7d} f"

    def span(s: dict) -> str:
        return f"{s['seconds']:g} s ({s['frames']} frames)" if s["seconds"] is not None else f"{s['frames']} frames"

    rate = f" at {r['fps']:g} fps ({r['duration']:.1f} s)" if r["fps"] else ""
    typer.echo(
        f"{r['video']}: {r['frames']} frames{rate}, {r['model']} ({r['checkpoint']}); {len(r['windows'])} windows of "
        f"{span(r['window'])} every {span(r['stride'])}; {len(r['segments'])} segment(s):"
    )
    width = max(len(s["class"]) for s in r["segments"])
    for s in r["segments"][:MAX_SEGMENT_LINES]:
        typer.echo(
            f"  {at(s['start'], s['start_frame'])} - {at(s['end'], s['end_frame'])}  {s['class']:<{width}}  "
            f"{100 * s['score']:6.2f}%"
        )
    if len(r["segments"]) > MAX_SEGMENT_LINES:
        where = "all of them in --out" if r["files"].get("out") else "give --out FILE.json for all of them"
        typer.echo(f"  ... {len(r['segments']) - MAX_SEGMENT_LINES} more ({where})")
    written = [p for p in r["files"].values() if p]
    if written:
        typer.echo(f"wrote {', '.join(written)}")


@app.command("export")
def export_cmd(
    run: str = typer.Argument(
        ..., help="run folder or checkpoint (a family that exports: Ego-RNN, flow_resnet, LSTA RGB, plug-ins)"
    ),
    fmt: str = typer.Option("onnx", "--format", help="onnx | torch-export"),
    out: str | None = typer.Option(None, "--out", help="output file (default: best.onnx / best.pt2 beside the run)"),
    frames: int | None = typer.Option(None, "--frames", help="Ego-RNN: clip length T (default: the run's)"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON object"),
):
    """Export the inference path (logits) to ONNX or torch.export, checked against PyTorch, plus a JSON sidecar."""
    from .video.export import export_model

    _threads()
    r = export_model(run, out, format=fmt, frames=frames)
    if json_out:
        typer.echo(json.dumps(r, indent=2))
        return
    batch = "dynamic batch" if r["dynamic_batch"] else "batch fixed to 1"
    typer.echo(
        f"wrote {r['path']} ({r['format']}, input {r['input_name']} {r['input_shape']}, {batch}); "
        f"parity with {r['checked_with']}: max |diff| {r['max_abs_diff']:.2e} (tolerance {r['tolerance']:.0e}); "
        f"sidecar {r['sidecar']}"
    )


# --------------------------------------------------------------------------------------------------------------
# sweeps / reports / reproductions of the report's tables


def _seed_list(seeds: str | None) -> list[int] | None:
    if not seeds:
        return None
    try:
        out = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        out = []
    if not out or any(s < 0 for s in out) or len(set(out)) != len(out):
        raise FparError(f"--seeds {seeds!r}: give distinct seeds of at least 0, comma-separated, e.g. --seeds 0,1,2")
    return out


@app.command("sweep", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def sweep_cmd(
    grid: str = typer.Argument(..., help="grid file, or a sweep folder with --status"),
    overrides: list[str] | None = typer.Argument(None, help="key=value for every trial (after the grid's values)"),
    workers: int = typer.Option(1, "--workers", help="trials trained at the same time, one process each"),
    storage: str | None = typer.Option(None, "--storage", help="Optuna storage URL (default: sweep.db in --out)"),
    out: str | None = typer.Option(None, "--out", help="sweep folder (default: sweeps/<name>)"),
    seeds: str | None = typer.Option(None, "--seeds", help="comma-separated seeds replacing the grid's"),
    max_trials: int | None = typer.Option(None, "--max-trials", help="start at most N trials in this call"),
    no_retry: bool = typer.Option(False, "--no-retry-failed", help="do not run failed trials again"),
    status: bool = typer.Option(False, "--status", help="print the state of every trial; train nothing"),
    stale_after: float = typer.Option(
        900.0, "--stale-after", help="seconds without a heartbeat after which another host's trial is taken over"
    ),
    no_wait: bool = typer.Option(
        False, "--no-wait", help="with --storage: exit when only trials other processes run are left"
    ),
):
    """Run every trial of a grid file as a run folder under the sweep folder; a second call resumes it. With a
    shared --storage, many processes (on many machines) share the trials: each is trained once, and a trial whose
    process dies is resumed from its last.pt by another."""
    from .experiments.sweep import format_status, run_sweep, sweep_dir_for, sweep_status

    if not stale_after > 0:
        raise FparError(f"--stale-after {stale_after}: give a positive number of seconds (default 900)")
    if status:
        p = Path(grid)
        if not p.is_dir():
            from .experiments.grid import load_grid

            p = sweep_dir_for(load_grid(grid), out)
        typer.echo(format_status(sweep_status(p, storage=storage)))
        return
    _threads()
    s = run_sweep(
        grid,
        workers=workers,
        storage=storage,
        out=out,
        log=typer.echo,
        extra_overrides=overrides or [],
        seeds=_seed_list(seeds),
        retry_failed=not no_retry,
        max_trials=max_trials,
        stale_after=stale_after,
        wait=False if no_wait else None,
        heartbeat_s=min(30.0, stale_after / 4),
        poll_s=min(5.0, stale_after / 4),
    )
    typer.echo(format_status(s))
    failed = [r for r in s["trials"] if r["state"] == "failed"]
    stopped = [r for r in s["trials"] if r["state"] == "interrupted"]
    if failed:
        typer.echo(f"{len(failed)} trial(s) failed; their errors are above and in <run>/error.txt", err=True)
    if stopped:
        typer.echo(f"{len(stopped)} trial(s) not finished; run the same command again to continue", err=True)
    if failed or stopped:
        raise typer.Exit(1)


@app.command("report")
def report_cmd(
    paths: list[str] = typer.Argument(..., help="sweep folders and/or run folders"),
    out: str = typer.Option("report", "--out", help="folder for table.md, table.csv, figures/, index.html"),
    all_runs: bool = typer.Option(False, "--all-runs", help="per-run figures for every seed (default: best seed)"),
    title: str | None = typer.Option(None, "--title"),
):
    """Tables (mean ± std over seeds per grid point, beside the report's numbers), figures and index.html."""
    from .experiments.report import make_report

    r = make_report(paths, out, all_runs=all_runs, title=title)
    typer.echo(r["markdown"])
    typer.echo(f"wrote {Path(out) / 'index.html'}, table.md, table.csv and {len(r['files']) - 3} figure(s)")


@app.command("reproduce", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def reproduce_cmd(
    figure: str = typer.Argument(..., help="fig07 ... fig25, 21, loso or fig20"),
    overrides: list[str] | None = typer.Argument(None, help="key=value for every run"),
    data: str = typer.Option(..., "--data", help="dataset root"),
    quick: bool = typer.Option(False, "--quick", help="tiny runs (minutes on a CPU); every point still runs"),
    workers: int = typer.Option(1, "--workers", help="trials trained at the same time, one process each"),
    out: str | None = typer.Option(None, "--out", help="sweep folder (default: sweeps/<figure>[-quick])"),
    storage: str | None = typer.Option(None, "--storage", help="Optuna storage URL shared by many machines"),
    pretrained: str | None = typer.Option(None, "--pretrained", help="backbone weights (e.g. from `fpar pretrain`)"),
    seeds: str | None = typer.Option(None, "--seeds", help="comma-separated seeds replacing the table's"),
):
    """Run one table of the report (stage 1 first where needed) and print it beside the report's numbers."""
    from .experiments.reproduce import reproduce

    _threads()
    r = reproduce(
        figure,
        data,
        quick=quick,
        workers=workers,
        out=out,
        storage=storage,
        pretrained=pretrained,
        overrides=overrides or [],
        seeds=_seed_list(seeds),
        log=typer.echo,
    )
    bad = [t for t in r.get("status", {}).get("trials", []) if t["state"] in ("failed", "interrupted")]
    if bad:
        raise typer.Exit(1)


def _usage_error_types() -> tuple[type | tuple, type]:
    """Click's usage-error class, from the click that typer runs on: current typer vendors its own copy
    (``typer._click``) and no longer installs ``click``, older typer uses ``click`` itself."""
    import importlib

    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            exc = importlib.import_module(name)
        except ImportError:
            continue
        return exc.ClickException, getattr(exc, "Abort", typer.Abort)
    return (), typer.Abort


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        rv = app(args=argv, standalone_mode=False)
        if isinstance(rv, int):  # typer returns the exit code (e.g. 130 after Ctrl-C) instead of raising
            return rv
    except FparError as e:
        typer.echo(f"error: {e}", err=True)
        return FparError.exit_code
    except KeyboardInterrupt:
        typer.echo("interrupted (run folders keep their last completed epoch; resume with --resume)", err=True)
        return 130
    except typer.Exit as e:
        return e.exit_code
    except Exception as e:  # click usage errors (missing argument, unknown option, bad value), then the rest
        usage, abort = _usage_error_types()
        if isinstance(e, usage):
            e.show()
            return int(getattr(e, "exit_code", 2))
        if isinstance(e, abort):
            return 1
        if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:
            where = e.filename or "a file"
            typer.echo(
                f"error: cannot use {where} ({e.strerror}); free some space, fix its permissions or choose another "
                "folder (files already written are intact)",
                err=True,
            )
            return FparError.exit_code
        if _DEBUG["on"] or os.environ.get("FPAR_DEBUG"):
            raise
        typer.echo(f"error: internal error ({type(e).__name__}: {e}); {_crash_report()}", err=True)
        return 1
    return 0


_DISK_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def _crash_report() -> str:
    """Write the current traceback to a file; the message says where (or prints it when no file can be had)."""
    import tempfile
    import time
    import traceback

    text = traceback.format_exc()
    try:
        fd, path = tempfile.mkstemp(prefix=f"fpar-crash-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write(f"fpar {sys.argv[1:]}\n\n{text}")
        return f"the traceback is in {path} (or rerun with --debug); please report it"
    except OSError:
        return "rerun with --debug to see the traceback; please report it"


if __name__ == "__main__":
    sys.exit(main())
