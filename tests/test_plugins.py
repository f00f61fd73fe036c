"""Plug-ins: the README's worked example end to end through the CLI, every registered model through the whole
inference path, the layer order of the imports, and no model name tested outside its own file."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fpar.config import load_config
from fpar.data.transforms import normalize_batch
from fpar.engine.run import open_run
from fpar.engine.trainer import train
from fpar.registry import model_specs
from tests.conftest import tiny_args

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "fpar"


# --------------------------------------------------------------------------------------------------------------
# The README's plug-in, installed as an entry point, through the normal CLI in fresh processes


def readme_example(name: str) -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"<!-- example: {re.escape(name)} -->\n```python\n(.*?)```", text, re.S)
    assert m, f"README.md has no example block for {name}"
    return m.group(1)


def write_clips(root: Path) -> list[dict]:
    """6 clips of 4 JPEG frames, 2 classes told apart by brightness, 4 for training and 2 for testing."""
    rng = np.random.default_rng(0)
    clips = []
    for i in range(6):
        label = ("dark", "bright")[i % 2]
        split = "train" if i < 4 else "test"
        d = root / f"c{i}"
        d.mkdir(parents=True)
        for k in range(4):
            base = 40 if label == "dark" else 200
            img = np.clip(base + rng.normal(0, 20, (40, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"img_{k:05d}.jpg", quality=90)
        clips.append({"clip": f"c{i}", "label": label, "split": split})
    (root / "clips.json").write_text(json.dumps(clips))
    return clips


def install_entry_point(site: Path, module: str) -> None:
    """A minimal installed distribution: what `pip install` of a package with these entry points leaves behind."""
    dist = site / "tinyplug-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tinyplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        f"[fpar.models]\nmeanpool = {module}\n\n[fpar.readers]\ncliplist = {module}\n"
    )


def test_readme_plugin_trains_evaluates_predicts_and_exports_through_the_cli(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "tinyplug.py").write_text(readme_example("tinyplug.py"))
    install_entry_point(site, "tinyplug")
    clips = write_clips(tmp_path / "clips")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "FPAR_THREADS": "1"}
    env.pop("FPAR_PLUGINS", None)

    def fpar(*args: str) -> subprocess.CompletedProcess:
        r = subprocess.run([sys.executable, "-m", "fpar", *args], capture_output=True, text=True, env=env, timeout=240)
        assert r.returncode == 0, f"fpar {' '.join(args)} failed:\n{r.stderr[-3000:]}"
        assert "Traceback" not in r.stderr
        return r

    listed = fpar("models").stdout
    assert re.search(r"^\s+meanpool\s", listed, re.M) and re.search(r"^\s+cliplist\s", listed, re.M)

    run = tmp_path / "runs" / "mp"
    common = ["model.pretrained=none", "data.input_size=32", "data.scale_size=32", "data.frames=3"]
    out = fpar(
        "train",
        "model.name=meanpool",
        f"data.root={tmp_path / 'clips'}",
        *common,
        "train.trainable=[.]",
        "train.epochs=2",
        "train.batch_size=2",
        "optim.lr=0.05",
        f"out={run}",
        "--quiet",
    ).stdout
    assert "(cliplist format)" in out  # data.format=auto detected the plug-in reader and said so
    summary = json.loads((run / "summary.json").read_text())
    assert summary["model"] == "meanpool" and summary["videos"] == 2 and summary["epochs"] == 2
    saved = (run / "config.yaml").read_text()
    assert "name: meanpool" in saved

    ev = json.loads(fpar("eval", str(run), "--json").stdout)
    assert ev["videos"] == 2 and "verb_acc" not in ev  # the reader's vocabulary has no verbs
    assert ev["top1"] == pytest.approx(summary["best_top1"])  # best.pt scores what training recorded for it

    pred = json.loads(fpar("predict", str(run), str(tmp_path / "clips" / "c5"), "--json", "--top", "2").stdout)
    assert pred["model"] == "meanpool" and pred["frames"] == 4
    assert {t["class"] for t in pred["top"]} == {"dark", "bright"}
    assert sum(t["prob"] for t in pred["top"]) == pytest.approx(1.0, abs=1e-5)

    exp = json.loads(fpar("export", str(run), "--format", "torch-export", "--json").stdout)
    assert Path(exp["path"]).is_file() and exp["input_shape"] == [1, 3, 3, 32, 32]
    assert exp["max_abs_diff"] <= exp["tolerance"]
    sidecar = json.loads(Path(exp["sidecar"]).read_text())
    assert sidecar["model"] == "meanpool" and sidecar["classes"] == sorted({c["label"] for c in clips})

    # the same plug-in by module name instead of an entry point
    env_mod = {**env, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(ROOT)]), "FPAR_PLUGINS": "tinyplug"}
    (site / "tinyplug-0.1.dist-info" / "entry_points.txt").unlink()
    r = subprocess.run([sys.executable, "-m", "fpar", "models"], capture_output=True, text=True, env=env_mod)
    assert r.returncode == 0 and "meanpool" in r.stdout


def test_a_broken_plugin_is_one_line(tmp_path):
    (tmp_path / "badplug.py").write_text("raise RuntimeError('boom')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]), "FPAR_PLUGINS": "badplug"}
    r = subprocess.run([sys.executable, "-m", "fpar", "models"], capture_output=True, text=True, env=env)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "badplug" in r.stderr and "RuntimeError: boom" in r.stderr


# --------------------------------------------------------------------------------------------------------------
# Every registered model: build -> forward -> one training step -> open_run -> predict -> export


def _train_family(name: str, root: Path, out: Path, *extra: str) -> Path:
    cfg = load_config(
        None,
        [
            *tiny_args(root),
            f"model.name={name}",
            "train.trainable=[.]",  # every parameter: a pattern that fits any family
            "train.epochs=1",
            "train.max_batches=1",
            "data.flow_stack=2",
            f"out={out}",
            *extra,
        ],
    )
    train(cfg, log=lambda m: None)
    return out


def _streams_for(spec, root: Path, tmp: Path) -> list[str]:
    """Train one single-stream run per slot, of any family that reads what the slot needs."""
    from fpar.config import ExperimentConfig

    out = []
    for slot_name, slot in spec.streams.items():
        for cand in model_specs().values():
            cfg = ExperimentConfig()
            cfg.model.name = cand.name
            fits = not slot.families or cand.name in slot.families
            if fits and not cand.streams and tuple(cand.inputs(cfg, False)) == slot.inputs:
                run = _train_family(cand.name, root, tmp / f"{spec.name}-{slot_name}")
                out.append(f"model.{spec.name}.{slot.key}={run}")
                break
        else:
            pytest.fail(f"no registered family can fill the {slot_name} slot of {spec.name}")
    return out


@pytest.mark.parametrize("name", sorted(model_specs()))
def test_every_registered_model_builds_trains_opens_predicts_and_exports(name, tiny_root, tmp_path):
    import torch

    from fpar.video.export import export_model
    from fpar.video.predict import predict_video

    spec = model_specs()[name]
    run = _train_family(name, tiny_root, tmp_path / name, *_streams_for(spec, tiny_root, tmp_path))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and np.isfinite(rows[0]["train_loss"]) and rows[0]["train_loss"] > 0

    opened = open_run(run)
    assert opened.spec is spec and not opened.model.training
    manifest = opened.manifest()
    test = opened.test_indices(manifest)
    item = opened.dataset(manifest, test[:1])[0]
    batch = normalize_batch({k: v[None] for k, v in item.items() if torch.is_tensor(v)})
    with torch.no_grad():
        out = spec.forward(opened.model, batch, False)
    assert out.logits.shape == (1, len(opened.classes)) and torch.isfinite(out.logits).all()

    video = Path(manifest.videos[test[0]].rgb[0]).parent
    pred = predict_video(run, video, top=3)
    assert len(pred["top"]) == 3 and pred["model"] == name
    # predict builds the clip the test pipeline builds: the same top class as the dataset's clip (RGB-only models
    # exactly; flow models compute their flow on the fly, so only the format is checked for them)
    if spec.inputs(opened.cfg, False) == ("rgb",):
        assert pred["top"][0]["class"] == opened.classes[int(out.logits.argmax())]

    if spec.attention is not None and spec.attention(opened.model) is None and "rgb" in spec.inputs(opened.cfg, False):
        from fpar.experiments.cam import cam_figure

        png = cam_figure(opened, manifest.videos[test[0]].key, tmp_path / "cam.png")
        assert png.stat().st_size > 1000  # the figure of a model that has attention maps

    if spec.export is None:
        with pytest.raises(Exception, match="not supported|no export"):
            export_model(run, tmp_path / "m.pt2", format="torch-export")
    else:
        r = export_model(run, tmp_path / "m.pt2", format="torch-export")
        assert r["max_abs_diff"] <= r["tolerance"] and Path(r["path"]).is_file()


# --------------------------------------------------------------------------------------------------------------
# Architecture rules

LAYERS = {"base": 0, "data": 1, "models": 2, "engine": 3, "experiments": 4, "video": 4, "cli": 5}
BASE = {"errors", "utils", "config", "registry", "version", "drawing", "locks"}


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("cli", "__main__", "__init__"):
        return "cli"  # the package itself (fpar.load_run) and the CLI are the top
    if parts[1] in BASE:
        return "base"
    return parts[1]


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute fpar module) for every import in the file, at any depth (function-level imports too)."""
    mod = _module_name(path)
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(source if source is not None else path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "fpar"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "fpar":
                continue
            for a in node.names:  # `from fpar.data import manifest` imports the module fpar.data.manifest
                sub = f"{target}.{a.name}"
                is_module = (ROOT / Path(*sub.split("."))).with_suffix(".py").is_file() or (
                    ROOT / Path(*sub.split("."))
                ).is_dir()
                out.append((node.lineno, sub if is_module else target))
    return out


def test_imports_follow_the_layer_order():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        me = _layer(_module_name(path))
        for line, target in _imports(path):
            other = _layer(target)
            if LAYERS[other] > LAYERS[me] or {me, other} == {"experiments", "video"}:
                bad.append(f"{path.relative_to(ROOT)}:{line} ({me}) imports {target} ({other})")
    assert not bad, "imports against data < models < engine < {experiments, video} < cli:\n" + "\n".join(bad)


def test_the_layer_check_catches_a_violation():
    # the checker itself, on a would-be data module importing the engine (relatively) and the video layer
    probe = PKG / "data" / "probe.py"  # not written: the source is given
    got = [t for _, t in _imports(probe, "from ..engine import trainer\nfrom fpar.video import export\nimport os\n")]
    assert got == ["fpar.engine.trainer", "fpar.video.export"]
    assert all(LAYERS[_layer(t)] > LAYERS[_layer(_module_name(probe))] for t in got)


def test_no_model_name_is_tested_outside_its_own_file():
    pattern = re.compile(r"[\"'](ego_rnn|flow_resnet|two_stream|lsta\w*)[\"']")
    families = {p.stem for p in (PKG / "models").glob("*.py")}
    hits = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(ROOT)
        allowed = rel == Path("fpar/registry.py") or (rel.parent == Path("fpar/models") and rel.stem in families)
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line) and not allowed:
                hits.append(f"{rel}:{i}: {line.strip()}")
    assert not hits, "\n".join(hits)
