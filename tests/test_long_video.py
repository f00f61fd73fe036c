"""Long-video prediction (`fpar predict RUN VIDEO --window`): windows and merged segments on planted colour segments,
the clip of a window, bounded memory, the CSV / timeline / MP4 outputs, the merge rule and the errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from fpar.cli import main
from fpar.config import load_config
from fpar.engine.trainer import train
from fpar.errors import FparError
from fpar.video.long_video import Span, merge_windows, parse_span, predict_long_video
from fpar.video.predict import predict_video

from .conftest import Forked

# Classes told apart by colour alone: a tiny model learns them in three epochs. The class order (sorted names) is
# open_jam, pour_water, take_cup.
COLOURS = {"take_cup": (220, 40, 40), "open_jam": (40, 200, 60), "pour_water": (50, 70, 230)}
FPS = 24
# (class, frames) of the planted video: 2000 frames, 83 s; every segment holds several whole 2 s windows
PLANTED = [
    ("take_cup", 300),
    ("open_jam", 180),
    ("pour_water", 420),
    ("take_cup", 240),
    ("open_jam", 360),
    ("pour_water", 200),
    ("open_jam", 300),
]


def _frames(colour: tuple[int, int, int], n: int, rng: np.random.Generator, w: int, h: int, sigma: float):
    """``n`` frames of a flat colour with Gaussian noise, (h, w, 3) uint8 RGB each."""
    for _ in range(n):
        yield np.clip(np.asarray(colour, np.float32) + rng.normal(0, sigma, (h, w, 3)), 0, 255).astype(np.uint8)


def _planted_video(path: Path, planted: list[tuple[str, int]], *, w: int = 64, h: int = 48) -> Path:
    """An H.264 video at FPS of the planted segments, each a flat class colour (mild noise)."""
    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"crf": "18", "preset": "ultrafast"}
        for cls, n in planted:
            for img in _frames(COLOURS[cls], n, rng, w, h, 8):
                c.mux(s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        c.mux(s.encode())
    return path


def _decoded(path: Path, keep: int) -> tuple[int, float, np.ndarray]:
    """(frames, frame rate, frame ``keep`` as (H, W, 3) RGB) of a video, decoding every frame."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        n, kept = 0, None
        for f in c.decode(s):
            if n == keep:
                kept = f.to_ndarray(format="rgb24")
            n += 1
        return n, float(s.average_rate), kept


@pytest.fixture(scope="module")
def colour_runs(tmp_path_factory) -> dict[str, Path]:
    """Ego-RNN with CAM (3 epochs; 100% on the test subject) and flow_resnet (1 epoch, L = 2) on a GTEA61-layout
    dataset of the colour classes: 4 subjects x 4 instances x 4 frames of 48x64, flows all 128 (still). Ego-RNN is
    evaluated after its last epoch only, so that best.pt is that epoch (the first epoch at 100% is still unsure)."""
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    flow = np.full((48, 64), 128, np.uint8)
    for subject in ("S1", "S2", "S3", "S4"):
        for cls, colour in COLOURS.items():
            for inst in range(1, 5):
                rgb = root / "processed_frames2" / subject / cls / str(inst) / "rgb"
                rgb.mkdir(parents=True)
                for k, img in enumerate(_frames(colour, 4, rng, 64, 48, 25), 1):
                    cv2.imwrite(str(rgb / f"rgb{k:04d}.png"), img[:, :, ::-1])
                for d in ("x", "y"):
                    fd = root / f"flow_{d}_processed" / subject / cls / str(inst)
                    fd.mkdir(parents=True)
                    for k in range(1, 4):
                        cv2.imwrite(str(fd / f"flow_{d}_{k:05d}.png"), flow)
    out = tmp_path_factory.mktemp("colour-runs")
    base = [
        f"data.root={root}",
        "data.input_size=32",
        "data.scale_size=32",
        "data.frames=3",
        "model.backbone=resnet18",
        "model.pretrained=none",
        "model.mem_size=16",
        "model.dropout=0",
        "sched.name=none",
        "train.trainable=[.]",
        "train.batch_size=6",
        "train.eval_batch_size=12",
        "train.progress=false",
    ]
    extra = {
        "rgb": ["model.cam=true", "train.epochs=3", "train.eval_every=3"],
        "flow": ["model.name=flow_resnet", "data.flow_stack=2", "train.epochs=1"],
    }
    for name, ov in extra.items():
        s = train(load_config(None, [*base, *ov, f"out={out / name}"]), log=lambda m: None)
        if name == "rgb":
            assert s["final_top1"] == 100.0
    return {name: out / name for name in extra}


@pytest.fixture(scope="module")
def planted_video(tmp_path_factory) -> Path:
    return _planted_video(tmp_path_factory.mktemp("planted") / "kitchen.mp4", PLANTED)


# ----------------------------------------------------------------------------------------------- end to end


def test_windows_and_segments_match_the_planted_segments(colour_runs, planted_video, tmp_path, capsys):
    out, render = tmp_path / "res" / "kitchen.json", tmp_path / "kitchen.mp4"
    base = ["predict", str(colour_runs["rgb"]), str(planted_video), "--window", "2s", "--stride", "0.5s"]
    assert main([*base, "--top", "2", "--batch", "5", "--out", str(out), "--render", str(render), "--render-cam"]) == 0
    printed = capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["fps"] == FPS and r["frames"] == 2000 and r["model"] == "ego_rnn"
    assert r["window"] == {"frames": 48, "seconds": 2.0} and r["stride"] == {"frames": 12, "seconds": 0.5}
    # 163 windows every 12 frames (the last ends at 1992) and one more ending at the last frame
    assert len(r["windows"]) == 164 and r["windows"][-1]["start_frame"] == 2000 - 48
    assert [w["start_frame"] for w in r["windows"][:-1]] == list(range(0, 163 * 12, 12))
    assert all(len(w["top"]) == 2 and w["end"] == round(w["end_frame"] / FPS, 4) for w in r["windows"])

    bounds, start = [], 0
    for cls, n in PLANTED:
        bounds.append((start, start + n, cls))
        start += n
    inside = 0
    for w in r["windows"]:
        for a, b, cls in bounds:
            if a <= w["start_frame"] and w["end_frame"] <= b:  # wholly inside a planted segment
                assert w["top"][0]["class"] == cls, w
                assert w["top"][0]["prob"] > 0.5
                inside += 1
    assert inside > 120

    segs = r["segments"]
    assert [s["class"] for s in segs] == [cls for cls, _ in PLANTED]
    assert segs[0]["start_frame"] == 0 and segs[-1]["end_frame"] == 2000
    assert all(s["end_frame"] == t["start_frame"] for s, t in zip(segs, segs[1:]))  # contiguous
    for s, (a, b, _) in zip(segs, bounds):  # within one stride of the planted bounds
        assert abs(s["start_frame"] - a) <= 12 and abs(s["end_frame"] - b) <= 12, (s, a, b)
        assert s["start"] == round(s["start_frame"] / FPS, 4) and 0.5 < s["score"] <= 1
    assert "7 segment(s)" in printed and printed.count("take_cup") == 2

    timeline = out.with_name("kitchen.timeline.png")  # next to --out by default
    img = cv2.imread(str(timeline))
    assert img is not None and img.shape[1] > 800 and img.shape[0] > 300
    n, rate, frame = _decoded(render, keep=100)
    assert n == 2000 and rate == FPS
    assert frame.shape == (240, 320, 3)  # enlarged to a short side of 240 (even sizes, yuv420p)
    # frame 100 (take_cup, red): the caption band on top is dark; the CAM covers the region the model sees (the
    # centre 240x240 square); outside it the frame is as it was
    red = np.asarray(COLOURS["take_cup"])
    assert frame[:20, 100:200].mean() < 60
    assert np.abs(frame[200:230, 5:30].reshape(-1, 3).mean(0) - red).max() < 15
    assert np.abs(frame[100:200, 100:220].reshape(-1, 3).mean(0) - red).max() > 60
    assert not list(tmp_path.glob(".*tmp*"))

    # an existing output is refused before any work and left as it was
    before = out.read_bytes()
    assert main([*base, "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_bytes() == before


def test_memory_does_not_grow_with_the_length_of_the_video(colour_runs, tmp_path):
    """Peak RSS of `fpar predict --window` on 1,000 and 4,000 frames, each in a fresh (forked) process, side by side.
    The 64x128 frames are enlarged to 128x256 (--short-side 128: cheap to decode, big to keep): holding the 3,000
    extra frames would take 295 MB."""
    children = {}
    for n in (1000, 4000):
        video = _planted_video(tmp_path / f"v{n}.mp4", [(cls, 250) for cls, _ in PLANTED * 3][: n // 250], w=128, h=64)
        args = ["predict", str(colour_runs["rgb"]), str(video), "--window", "2s", "--stride", "0.5s"]
        children[n] = Forked([*args, "--short-side", "128", "--out", str(tmp_path / f"v{n}.json")])
    peak = {}
    for n, child in children.items():
        code, err = child.wait()
        assert code == 0, err
        peak[n] = child.rusage.ru_maxrss / 1024  # KiB on Linux -> MiB
        assert len(json.loads((tmp_path / f"v{n}.json").read_text())["segments"]) == n // 250
    print(f"peak RSS: {peak[1000]:.0f} MiB at 1,000 frames, {peak[4000]:.0f} MiB at 4,000")
    assert abs(peak[4000] - peak[1000]) < 200


# ----------------------------------------------------------------------------------------------- windows


def _folder(path: Path, frames: list[np.ndarray]) -> Path:
    path.mkdir(parents=True)
    for k, img in enumerate(frames, 1):
        cv2.imwrite(str(path / f"rgb{k:04d}.png"), img[:, :, ::-1])
    return path


def _moving(n: int) -> list[np.ndarray]:
    """A colour fading from red to blue behind a bright square moving 2 px right per frame (48x64)."""
    frames = []
    for k in range(n):
        a = k / (n - 1)
        img = np.empty((48, 64, 3), np.uint8)
        img[:] = np.round((1 - a) * np.array(COLOURS["take_cup"]) + a * np.array(COLOURS["pour_water"]))
        img[16:32, 2 * k % 48 : 2 * k % 48 + 16] = 235
        frames.append(img)
    return frames


@pytest.mark.parametrize("name", ["rgb", "flow"])
def test_a_window_gets_the_scores_of_its_frames_as_one_clip(colour_runs, tmp_path, name):
    """Each window's clip is the one the test pipeline makes of its frames: `fpar predict` on a folder holding only
    them gives the same probabilities (flow models: the same warp flows, computed once for overlapping windows)."""
    frames = _moving(40)
    video = _folder(tmp_path / "video", frames)
    # Frames at a short side of 64, not the run's 32: on smaller images OpenCV's DIS flow gives another result on
    # the first call of a new flow object than on later calls with the same frames.
    r = predict_long_video(colour_runs[name], video, window="16f", stride="10", top=3, batch=2, short_side=64)
    assert r["fps"] is None and r["windows"][0]["start"] is None  # a frame folder without --fps
    # windows at 0, 10, 20, then one ending at the last frame
    assert [(w["start_frame"], w["end_frame"]) for w in r["windows"]] == [(0, 16), (10, 26), (20, 36), (24, 40)]
    tops = []
    for w in r["windows"]:
        one = predict_video(
            colour_runs[name],
            _folder(tmp_path / f"w{w['start_frame']}", frames[w["start_frame"] : w["end_frame"]]),
            top=3,
            short_side=64,
        )
        assert [t["class"] for t in w["top"]] == [t["class"] for t in one["top"]]
        np.testing.assert_allclose([t["prob"] for t in w["top"]], [t["prob"] for t in one["top"]], atol=2e-6)
        tops.append(w["top"][0]["prob"])
    assert len(set(tops)) > 1  # the windows differ, so the check above is not trivially true


def test_csv_output_and_a_frame_folder_at_a_given_rate(colour_runs, tmp_path, capsys):
    rng = np.random.default_rng(1)
    frames = [*_frames(COLOURS["take_cup"], 60, rng, 64, 48, 8), *_frames(COLOURS["open_jam"], 60, rng, 64, 48, 8)]
    video = _folder(tmp_path / "clip", frames)
    base = ["predict", str(colour_runs["rgb"]), str(video), "--window", "1s", "--stride", "0.25s"]
    assert main([*base, "--out", str(tmp_path / "a.csv")]) == 2  # seconds, but a frame folder has no rate
    err = capsys.readouterr().err
    assert err.startswith("error:") and "--fps" in err and len(err.strip().splitlines()) == 1
    args = ["--fps", "24", "--out", str(tmp_path / "a.csv"), "--top", "3", "--timeline", str(tmp_path / "t.png")]
    assert main([*base, *args]) == 0
    capsys.readouterr()
    rows = list(csv.DictReader((tmp_path / "a.csv").open()))
    wins = [r for r in rows if r["kind"] == "window"]
    segs = [r for r in rows if r["kind"] == "segment"]
    assert len(wins) == 17 and (wins[0]["start"], wins[0]["end"], wins[-1]["end_frame"]) == ("0.0", "1.0", "120")
    assert all(r["class"] == r["class_1"] and r["score"] == r["prob_1"] and r["class_3"] for r in wins)
    assert [(r["class"], r["start_frame"], r["end_frame"]) for r in segs] == [
        ("take_cup", "0", "60"),
        ("open_jam", "60", "120"),
    ]
    assert all(r["class_1"] == "" for r in segs) and (tmp_path / "t.png").is_file()
    # the same windows in frames
    same = predict_long_video(colour_runs["rgb"], video, window="24f", stride="6f", top=3)
    assert [w["top"][0]["class"] for w in same["windows"]] == [r["class"] for r in wins]


# ----------------------------------------------------------------------------------------------- merge rule


def test_merge_averages_the_windows_over_each_interval():
    m = merge_windows([0, 2, 4], [4, 6, 8], np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8]]))
    assert m.cuts.tolist() == [0, 2, 4, 6, 8]
    np.testing.assert_allclose(m.mean, [[0.9, 0.1], [0.65, 0.35], [0.3, 0.7], [0.2, 0.8]])
    assert [s[:3] for s in m.segments] == [(0, 4, 0), (4, 8, 1)]
    np.testing.assert_allclose([s[3] for s in m.segments], [(0.9 + 0.65) / 2, (0.7 + 0.8) / 2])


def _one_frame_windows(classes: list[int], sure: float = 0.8) -> tuple[list[int], list[int], np.ndarray]:
    probs = np.full((len(classes), 3), (1 - sure) / 2)
    probs[np.arange(len(classes)), classes] = sure
    return list(range(len(classes))), list(range(1, len(classes) + 1)), probs


def test_short_segments_are_absorbed_by_the_more_probable_neighbour():
    starts, ends, probs = _one_frame_windows([0, 0, 0, 1, 0, 0, 2, 2, 2])
    assert len(merge_windows(starts, ends, probs).segments) == 4
    m = merge_windows(starts, ends, probs, min_frames=2)  # the blip of class 1 joins the 0s around it
    assert [s[:3] for s in m.segments] == [(0, 6, 0), (6, 9, 2)] and m.labels.tolist() == [0] * 6 + [2] * 3
    np.testing.assert_allclose(m.segments[0][3], (5 * 0.8 + 0.1) / 6)
    # between 0 and 2, a blip goes to the neighbour class more probable over its frames
    starts, ends, probs = _one_frame_windows([0, 0, 0, 1, 2, 2, 2])
    probs[3] = [0.2, 0.5, 0.3]
    assert [s[:3] for s in merge_windows(starts, ends, probs, min_frames=2).segments] == [(0, 3, 0), (3, 7, 2)]
    # a segment shorter than the minimum but alone in the video stays
    starts, ends, probs = _one_frame_windows([1, 1])
    assert [s[:3] for s in merge_windows(starts, ends, probs, min_frames=10).segments] == [(0, 2, 1)]


@pytest.mark.parametrize(
    "text, span",
    [
        ("2s", Span(2, "s")),
        ("0.5s", Span(0.5, "s")),
        (".5S", Span(0.5, "s")),
        ("48f", Span(48, "f")),
        ("48", Span(48, "f")),
    ],
)
def test_parse_span(text, span):
    assert parse_span(text, "--window") == span
    assert span.frames(25, "--window", Path("v.mp4")) == (round(span.value * 25) if span.unit == "s" else 48)


@pytest.mark.parametrize("text", ["2x", "1.5", "-1s", "0s", "", "2 s s"])
def test_parse_span_refuses(text):
    with pytest.raises(FparError, match="--window"):
        parse_span(text, "--window")


# ----------------------------------------------------------------------------------------------- errors


def test_bad_options_give_one_line_errors(colour_runs, planted_video, tmp_path, capsys):
    run, video = str(colour_runs["rgb"]), str(planted_video)
    (tmp_path / "taken.mp4").write_bytes(b"mine")
    cases = [
        (["--stride", "0.5s"], "only with --window"),
        (["--render", str(tmp_path / "r.mp4")], "only with --window"),
        (["--window", "2s", "--render-cam"], "--render"),
        (["--window", "2s", "--out", str(tmp_path / "r.txt")], ".json or a .csv"),
        (["--window", "2s", "--cam", str(tmp_path / "cams")], "--render-cam"),
        (["--window", "1s", "--stride", "2s"], "longer than --window"),
        (["--window", "2s", "--render", str(tmp_path / "taken.mp4")], "exists"),
        (["--window", "2s", "--batch", "0"], "--batch"),
        (["--window", "2s", "--render", video], "exists"),
        (["--window", "2s", "--device", "gpu0"], "--device"),
    ]
    for extra, message in cases:
        assert main(["predict", run, video, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("error:") and message in err and len(err.strip().splitlines()) == 1, (extra, err)
    assert (tmp_path / "taken.mp4").read_bytes() == b"mine" and not (tmp_path / "cams").exists()
    assert main(["predict", str(colour_runs["flow"]), video, "--window", "2f"]) == 2
    assert "at least 3 frames" in capsys.readouterr().err
    assert (
        main(
            [
                "predict",
                str(colour_runs["flow"]),
                video,
                "--window",
                "2s",
                "--render",
                str(tmp_path / "c.mp4"),
                "--render-cam",
            ]
        )
        == 2
    )
    assert "cannot draw --render-cam" in capsys.readouterr().err
