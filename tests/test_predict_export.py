"""From raw video: `fpar prepare`, `fpar predict` (flow on the fly, CAM) and `fpar export` (ONNX, torch.export)."""

from __future__ import annotations

import io
import json
import sys
from contextlib import redirect_stdout
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

from fpar.cli import main
from fpar.config import from_dict, load_config
from fpar.data.dataset import ClipDataset
from fpar.data.layout import discover
from fpar.data.transforms import normalize_rgb
from fpar.engine.checkpoint import load_checkpoint
from fpar.engine.trainer import train
from fpar.errors import FparError
from fpar.video.export import export_model
from fpar.video.predict import load_clip, predict_video

from .conftest import REAL_VIDEO, tiny_args

needs_real_video = pytest.mark.skipif(not REAL_VIDEO.is_file(), reason=f"{REAL_VIDEO} not available")


def _write_video(path: Path, n: int = 8, seed: int = 0, w: int = 96, h: int = 64) -> Path:
    """A textured background panning right and a bright block moving down; H.264 near-lossless."""
    rng = np.random.default_rng(seed)
    big = cv2.GaussianBlur(rng.uniform(0, 255, (h + 40, w + 40)).astype(np.float32), (0, 0), 1.5)
    big = cv2.normalize(big, None, 20, 160, cv2.NORM_MINMAX)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.options = {"crf": "4", "preset": "ultrafast"}
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for k in range(n):
            f = big[20 : 20 + h, 20 - 2 * k + 16 : 20 - 2 * k + 16 + w].copy()  # (h, w)
            f[8 + 3 * k : 24 + 3 * k, 30:46] = 230
            rgb = np.repeat(np.clip(f, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)  # (h, w, 3)
            c.mux(s.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        c.mux(s.encode())
    return path


@pytest.fixture(scope="module")
def runs(tiny_root, tmp_path_factory) -> dict[str, Path]:
    """Tiny trained runs (one epoch): Ego-RNN with CAM, flow_resnet (L = 2) and the two-stream model on both."""
    out = tmp_path_factory.mktemp("runs")
    base = [*tiny_args(tiny_root), "train.epochs=1"]
    extra = {
        "rgb": ["model.cam=true"],
        "flow": ["model.name=flow_resnet", "data.flow_stack=2", "train.trainable=[.]"],
        "two": [
            "model.name=two_stream",
            "data.flow_stack=2",
            f"model.rgb_run={out / 'rgb'}",
            f"model.flow_run={out / 'flow'}",
            r"train.trainable=[^classifier\.]",
        ],
    }
    for name, ov in extra.items():
        train(load_config(None, [*base, f"out={out / name}", *ov]), log=lambda m: None)
    return {name: out / name for name in extra}


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return _write_video(tmp_path_factory.mktemp("video") / "clip.mp4")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, str]:
    """`fpar prepare` on VIDEOS/S1/take_x/1.mp4 and VIDEOS/S2/take_x/1.mp4 (DIS flow, short side 64)."""
    tmp = tmp_path_factory.mktemp("prep")
    _write_video(tmp / "videos" / "S1" / "take_x" / "1.mp4", seed=1)
    _write_video(tmp / "videos" / "S2" / "take_x" / "1.mp4", seed=2)
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main(["prepare", str(tmp / "videos"), str(tmp / "data"), "--flow", "dis", "--short-side", "64", "--quiet"])
    assert rc == 0, buf.getvalue()
    return tmp / "data", buf.getvalue()


def _check_top(r: dict, run: Path, k: int) -> None:
    classes = load_checkpoint(run)["classes"]
    probs = [t["prob"] for t in r["top"]]
    assert len(r["top"]) == k
    assert probs == sorted(probs, reverse=True) and all(0 <= p <= 1 for p in probs)
    assert sum(probs) <= 1 + 1e-6
    assert all(t["class"] in classes for t in r["top"]) and len({t["class"] for t in r["top"]}) == k


# ----------------------------------------------------------------------------------------------- predict


def test_predict_on_a_frame_folder_gives_the_test_pipeline_scores(runs, tiny_root):
    manifest = discover(tiny_root)
    i = next(j for j, v in enumerate(manifest.videos) if v.subject == "S2" and v.usable)
    v = manifest.videos[i]
    r = predict_video(runs["rgb"], Path(v.rgb[0]).parent, top=3)
    _check_top(r, runs["rgb"], 3)
    assert r["model"] == "ego_rnn" and r["frames"] == v.num_frames and len(r["sampled"]) == 3
    # the same clip through the dataset's test pipeline and the model: the same probabilities
    ckpt = load_checkpoint(runs["rgb"])
    cfg = from_dict(ckpt["config"])
    from fpar import load_run

    model, _ = load_run(str(runs["rgb"]))
    item = ClipDataset(manifest, [i], cfg.data, train=False)[0]
    with torch.no_grad():
        probs = model(normalize_rgb(item["rgb"][None]), with_ms=False).logits.softmax(1)[0]
    p, c = probs.topk(3)
    assert [t["class"] for t in r["top"]] == [manifest.classes[int(j)] for j in c]
    np.testing.assert_allclose([t["prob"] for t in r["top"]], p.numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["rgb", "flow", "two"])
def test_predict_on_a_video_file_for_every_model_family(runs, video, name):
    r = predict_video(runs[name], video, top=2)
    _check_top(r, runs[name], 2)
    assert r["frames"] == 8 and r["video"] == str(video)
    assert r["model"] == {"rgb": "ego_rnn", "flow": "flow_resnet", "two": "two_stream"}[name]
    if name != "rgb":
        # 7 flows, a centred stack of L = 2: flows 2 and 3 (frames 2 -> 3 -> 4), computed on the fly
        assert r["flow_stacks"] == [[2, 3]] and r["flow_method"] == "dis"
    if name != "flow":
        assert r["sampled"] == [0, 2, 5]  # floor(k * 8 / 3)


@needs_real_video
@pytest.mark.parametrize("name", ["rgb", "two"])
def test_predict_on_the_real_video(runs, name):
    r = predict_video(runs[name], REAL_VIDEO, top=5)
    _check_top(r, runs[name], 5)
    assert r["frames"] > 100


def test_on_the_fly_flow_equals_the_prepared_flow(runs, prepared):
    """The flow stack built from raw frames is bit-identical to the one the loader reads from `fpar prepare` output
    (same warp flow, same 8-bit encoding, same centred stack)."""
    root, _ = prepared
    cfg = from_dict(load_checkpoint(runs["flow"])["config"])
    manifest = discover(root)
    for i, v in enumerate(manifest.videos):
        item = ClipDataset(manifest, [i], cfg.data, modalities=("rgb", "flow"), train=False)[0]
        clip = load_clip(Path(v.rgb[0]).parent.parent, cfg, rgb=True, flow=True, flow_method="dis")
        assert clip["flow"].shape == (1, 4, 64, 64) and clip["rgb"].shape == (1, 3, 3, 64, 64)
        torch.testing.assert_close(clip["flow"][0], item["flow"], rtol=0, atol=0)
        torch.testing.assert_close(clip["rgb"][0], normalize_rgb(item["rgb"]), rtol=0, atol=0)


def test_a_long_video_is_read_in_two_passes_with_the_same_result(runs, video, monkeypatch):
    import fpar.video.predict as predict_mod

    one = predict_video(runs["two"], video)
    monkeypatch.setattr(predict_mod, "BUFFER_BYTES", 1)  # over budget after the first frame
    assert predict_video(runs["two"], video) == one


def test_predict_cli_json_and_cam(runs, video, tmp_path, capsys):
    assert main(["predict", str(runs["rgb"]), str(video), "--json", "--top", "2", "--cam", str(tmp_path / "cam")]) == 0
    r = json.loads(capsys.readouterr().out)
    assert [set(t) for t in r["top"]] == [{"class", "prob"}] * 2 and r["frames"] == 8
    assert len(r["cam"]) == 3
    from fpar.drawing import caption, prediction_lines

    lines = prediction_lines(video.name, [("ego_rnn", r["top"][0]["class"], r["top"][0]["prob"])])
    for k, p in enumerate(r["cam"]):
        img = cv2.imread(p)
        # the 64 px overlay with its caption under it: video, prediction and score, and the frame's number
        band = caption(np.zeros((64, 64, 3), np.uint8), [*lines, f"frame {r['sampled'][k] + 1}"])[64:]
        assert img is not None and img.shape == (64 + band.shape[0], 64, 3)
        np.testing.assert_array_equal(cv2.cvtColor(img[64:], cv2.COLOR_BGR2RGB), band)
        assert (img[:64] != 255).any()  # the overlay itself
    assert main(["predict", str(runs["flow"]), str(video), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "flow_resnet" in out and out.count("%") == 3
    # --flow tvl1-torch: the clip's flows computed in one batch
    assert main(["predict", str(runs["flow"]), str(video), "--flow", "tvl1-torch", "--json", "--top", "2"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["flow_method"] == "tvl1-torch" and len(r["top"]) == 2 and r["flow_stacks"]


def test_cam_of_a_flow_model_is_refused(runs, video, tmp_path, capsys):
    assert main(["predict", str(runs["flow"]), str(video), "--cam", str(tmp_path / "cam")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "no CAM" in err and "Ego-RNN" in err
    assert not (tmp_path / "cam").exists()


def test_predict_bad_input(runs, tmp_path):
    with pytest.raises(FparError, match="not found"):
        predict_video(runs["rgb"], tmp_path / "missing.mp4")
    (tmp_path / "text.mp4").write_text("not a video")
    with pytest.raises(FparError, match="cannot open video"):
        predict_video(runs["rgb"], tmp_path / "text.mp4")
    short = tmp_path / "short"
    short.mkdir()
    for k in range(2):
        cv2.imwrite(str(short / f"rgb{k + 1:04d}.png"), np.full((64, 80, 3), 40 * k, np.uint8))
    assert predict_video(runs["rgb"], short)["frames"] == 2  # RGB: frames repeat, as in the loader
    with pytest.raises(FparError, match="at least 3 frames"):
        predict_video(runs["flow"], short)
    with pytest.raises(FparError, match="flow method"):
        predict_video(runs["flow"], short, flow_method="magic")


# ----------------------------------------------------------------------------------------------- export


@pytest.mark.parametrize("fmt", ["onnx", "torch-export"])
@pytest.mark.parametrize("name", ["rgb", "flow"])
def test_export_parity(runs, video, tmp_path, name, fmt):
    out = tmp_path / ("model.onnx" if fmt == "onnx" else "model.pt2")
    r = export_model(runs[name], out, format=fmt)
    assert r["path"] == str(out) and out.is_file() and r["format"] == fmt
    assert r["max_abs_diff"] < 1e-4 and r["dynamic_batch"]
    shape = [1, 3, 3, 64, 64] if name == "rgb" else [1, 4, 64, 64]
    assert r["input_shape"] == shape
    meta = json.loads(Path(r["sidecar"]).read_text())
    assert meta["classes"] == load_checkpoint(runs[name])["classes"] and meta["input"]["shape"] == shape
    assert meta["normalisation"]["flow_mean"] == 0.449 and meta["parity"]["max_abs_diff"] == r["max_abs_diff"]
    assert not list(tmp_path.glob(".*tmp*"))
    # a real clip, batch 3: the exported model gives the PyTorch logits
    from fpar import load_run

    model, info = load_run(str(runs[name]))
    clip = load_clip(video, from_dict(info["config"]), rgb=name == "rgb", flow=name == "flow")
    x = torch.cat([clip["rgb" if name == "rgb" else "flow"]] * 3)
    with torch.no_grad():
        ref = model(x).logits
    if fmt == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(sess.run(None, {meta["input"]["name"]: x.numpy()})[0])
    else:
        got = torch.export.load(str(out)).module()(x)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_export_cli_and_frames_option(runs, tmp_path, capsys):
    out = tmp_path / "t5.onnx"
    assert main(["export", str(runs["rgb"]), "--format", "onnx", "--out", str(out), "--frames", "5"]) == 0
    msg = capsys.readouterr().out
    assert f"wrote {out}" in msg and "max |diff|" in msg and "[1, 5, 3, 64, 64]" in msg
    assert json.loads(Path(str(out) + ".json").read_text())["preprocessing"]["frames"] == 5
    assert main(["export", str(runs["flow"]), "--frames", "5"]) == 2
    assert "Ego-RNN models only" in capsys.readouterr().err
    assert main(["export", str(runs["rgb"]), "--format", "tflite"]) == 2
    assert "torch-export" in capsys.readouterr().err


def test_two_stream_export_is_refused(runs, capsys):
    assert main(["export", str(runs["two"]), "--format", "onnx"]) == 2
    err = capsys.readouterr().err
    assert "two-stream" in err and "not supported" in err and "two inputs" in err
    assert not (runs["two"] / "best.onnx").exists()


def test_onnx_export_without_onnxruntime_says_how_to_install(runs, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    with pytest.raises(FparError, match=r"pip install 'fpar\[export\]'"):
        export_model(runs["rgb"], tmp_path / "m.onnx")


# ----------------------------------------------------------------------------------------------- prepare


def test_prepare_cli_writes_a_checkable_dataset(prepared, capsys):
    root, out = prepared
    assert "prepared 2 video(s) (16 frames, flow dis)" in out and "failed 0 video(s)" in out
    for s in ("S1", "S2"):
        assert len(list((root / "processed_frames2" / s / "take_x" / "1" / "rgb").glob("rgb*.png"))) == 8
        assert len(list((root / "flow_x_processed" / s / "take_x" / "1").glob("flow_x_*.png"))) == 7
    assert main(["data", "check", str(root), "--train", "S1", "--test", "S2"]) == 0
    # a second run skips both; a broken video fails with exit 2 and is listed
    assert main(["prepare", str(root.parent / "videos"), str(root), "--flow", "dis", "--short-side", "64"]) == 0
    assert "skipped 2 video(s)" in capsys.readouterr().out
    (root.parent / "videos" / "S2" / "take_x" / "2.mp4").write_text("broken")
    try:
        rc = main(["prepare", str(root.parent / "videos"), str(root), "--flow", "dis", "--short-side", "64", "--quiet"])
    finally:
        (root.parent / "videos" / "S2" / "take_x" / "2.mp4").unlink()
    cap = capsys.readouterr()
    assert rc == 2 and "failed 1 video(s):" in cap.out and "S2/take_x/2" in cap.out
    assert "1 of 3 video(s) failed" in cap.err
