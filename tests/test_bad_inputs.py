"""The bad-input corpus: every kind of bad dataset, config, checkpoint and video a user can hand fpar.

Each case asserts the exit code, that stderr is one line naming the file or key and saying what to do (or, for
dataset problems fpar works around, that `fpar data check` reports the problem with its path), that no traceback
is printed, and that every file that existed before the command is byte-identical after it.
"""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from fpar.cli import main
from fpar.config import load_config
from fpar.engine.trainer import train
from tests.conftest import REAL_VIDEO, tiny_args


@dataclass
class World:
    tmp: Path
    tiny: Path  # the shared tiny dataset (read-only)
    run: Path  # a trained tiny Ego-RNN run
    flow_run: Path

    def data(self, name: str, mutate: Callable[[Path], None]) -> Path:
        """A copy of the tiny dataset changed by ``mutate``."""
        root = self.tmp / "data" / name
        if not root.exists():
            shutil.copytree(self.tiny, root)
            mutate(root)
        return root

    def file(self, name: str, content: bytes | str) -> Path:
        p = self.tmp / "files" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content.encode() if isinstance(content, str) else content)
        return p


@pytest.fixture(scope="module")
def world(tiny_root, tmp_path_factory) -> World:
    tmp = tmp_path_factory.mktemp("bad")
    run, flow = tmp / "runs" / "rgb", tmp / "runs" / "flow"
    base = [*tiny_args(tiny_root), "train.epochs=1", "train.max_batches=1"]
    train(load_config(None, [*base, f"out={run}"]), log=lambda m: None)
    train(load_config(None, [*base, "model.name=flow_resnet", "data.flow_stack=2", f"out={flow}"]), log=lambda m: None)
    return World(tmp, tiny_root, run, flow)


def _first(root: Path, pattern: str) -> Path:
    return sorted(root.glob(pattern))[0]


def _video(w: World, name: str, frames: int, size=(64, 48)) -> Path:
    import av

    p = w.tmp / "videos" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    c = av.open(str(p), "w")
    s = c.add_stream("mpeg4", rate=24)
    s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
    for k in range(frames):
        img = np.full((size[1], size[0], 3), 20 * k % 255, np.uint8)
        for pkt in s.encode(__import__("av").VideoFrame.from_ndarray(img, format="rgb24")):
            c.mux(pkt)
    for pkt in s.encode(None):
        c.mux(pkt)
    c.close()
    return p


def _audio_only(w: World) -> Path:
    import av
    import av.audio.frame

    p = w.tmp / "videos" / "audio.mp4"
    p.parent.mkdir(parents=True, exist_ok=True)
    c = av.open(str(p), "w")
    s = c.add_stream("aac", rate=16000)
    fr = av.audio.frame.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
    fr.sample_rate = 16000
    for pkt in [*s.encode(fr), *s.encode(None)]:
        c.mux(pkt)
    c.close()
    return p


def _evil_checkpoint(w: World) -> Path:
    class Evil:
        def __reduce__(self):
            return (shutil.rmtree, (str(w.tmp / "runs"),))  # would delete the runs if it were ever unpickled

    return w.file("evil.pt", pickle.dumps({"model": Evil(), "config": {}}))


def _with_classes_changed(w: World) -> Path:
    def rename(root: Path):
        for d in root.glob("processed_frames2/*/take_cup"):
            d.rename(d.with_name("grab_cup"))

    return w.data("renamed_class", rename)


def _copy_run(w: World, name: str, change: Callable[[Path], None]) -> Path:
    dst = w.tmp / "runs" / name
    if not dst.exists():
        shutil.copytree(w.run, dst)
        change(dst)
    return dst


def _one_frame_bigger(root: Path) -> None:
    cv2.imwrite(str(_first(root, "processed_frames2/S1/*/*/rgb/rgb0002.png")), np.zeros((80, 150, 3), np.uint8))


def _every_second_frame_bigger(root: Path) -> None:
    for f in root.glob("processed_frames2/S*/*/*/rgb/rgb0002.png"):
        cv2.imwrite(str(f), np.zeros((80, 150, 3), np.uint8))


def _truncate(p: Path, keep: int = 60) -> None:
    p.write_bytes(p.read_bytes()[:keep])


T = "tiny"  # placeholder replaced by the tiny data root in argv

# (id, argv builder, exit code, text that stderr (rc 2) or the data check JSON (rc 0) must hold)
CASES: list[tuple[str, Callable[[World], list[str]], int, str]] = [
    # ---- datasets: unusable roots and splits
    ("missing root", lambda w: ["data", "check", str(w.tmp / "nope")], 2, "does not exist; create one with"),
    ("root is a file", lambda w: ["data", "check", str(w.file("root.txt", "x"))], 2, "is not a folder"),
    (
        "unknown layout",
        lambda w: [
            "data",
            "check",
            str(w.data("empty", lambda r: [shutil.rmtree(d) for d in r.iterdir() if d.is_dir()])),
        ],
        2,
        "matches no known dataset format",
    ),  # noqa: E501
    (
        "no videos",
        lambda w: [
            "data",
            "check",
            str(
                w.data(
                    "novideo", lambda r: [shutil.rmtree(d) for d in (r / "processed_frames2").iterdir() if d.is_dir()]
                )
            ),
        ],
        2,
        "no videos found under",
    ),  # noqa: E501
    ("missing test subject", lambda w: ["data", "check", T, "--test", "S9"], 2, "subject(s) S9 not found"),
    (
        "train and test overlap",
        lambda w: ["data", "check", T, "--train", "S1,S2", "--test", "S2"],
        2,
        "are in both data.gtea61.train_subjects and test_subjects",
    ),  # noqa: E501
    (
        "layout forced wrong",
        lambda w: ["data", "check", T, "data.format=egornn"],
        2,
        "looks like the 'gtea61' layout, but data.format is 'egornn'",
    ),  # noqa: E501
    ("unknown format", lambda w: ["data", "check", T, "data.format=epic"], 2, "unknown dataset format 'epic'"),
    # ---- datasets: problems fpar works around, reported by data check
    (
        "empty class folder",
        lambda w: [
            "data",
            "check",
            str(w.data("emptyclass", lambda r: (r / "processed_frames2" / "S1" / "wave_hand").mkdir())),
            "--json",
            "--no-decode",
        ],
        0,
        "empty_class",
    ),  # noqa: E501
    (
        "truncated png",
        lambda w: [
            "data",
            "check",
            str(w.data("trunc", lambda r: _truncate(_first(r, "processed_frames2/S1/*/*/rgb/rgb0002.png")))),
            "--json",
        ],
        0,
        "truncated or not an image",
    ),  # noqa: E501
    (
        "zero-byte png",
        lambda w: [
            "data",
            "check",
            str(w.data("zero", lambda r: _first(r, "processed_frames2/S3/*/*/rgb/rgb0002.png").write_bytes(b""))),
            "--json",
        ],
        0,
        "unreadable_image",
    ),  # noqa: E501
    (
        "non-image file named png",
        lambda w: [
            "data",
            "check",
            str(w.data("text", lambda r: _first(r, "processed_frames2/S4/*/*/rgb/rgb0003.png").write_text("hello"))),
            "--json",
        ],
        0,
        "cannot be decoded",
    ),  # noqa: E501
    (
        "stray file",
        lambda w: [
            "data",
            "check",
            str(w.data("stray", lambda r: (_first(r, "processed_frames2/S1/*/*/rgb") / "notes.txt").write_text("x"))),
            "--json",
            "--no-decode",
        ],
        0,
        "stray_file",
    ),  # noqa: E501
    (
        "colour flow",
        lambda w: [
            "data",
            "check",
            str(
                w.data(
                    "colour",
                    lambda r: cv2.imwrite(
                        str(_first(r, "flow_x_processed/S1/*/*/flow_x_00001.png")),
                        np.dstack(
                            [
                                np.zeros((64, 114), np.uint8),
                                np.full((64, 114), 255, np.uint8),
                                np.zeros((64, 114), np.uint8),
                            ]
                        ),
                    ),
                )
            ),
            "--json",
        ],
        0,
        "colour_flow",
    ),  # noqa: E501
    (
        "16-bit flow",
        lambda w: [
            "data",
            "check",
            str(
                w.data(
                    "flow16",
                    lambda r: cv2.imwrite(
                        str(_first(r, "flow_y_processed/S1/*/*/flow_y_00001.png")), np.full((64, 114), 30000, np.uint16)
                    ),
                )
            ),
            "--json",
        ],
        0,
        "uint16 pixels",
    ),  # noqa: E501
    (
        "missing flow for a video",
        lambda w: [
            "data",
            "check",
            str(w.data("noflow", lambda r: shutil.rmtree(_first(r, "flow_x_processed/S1/*/*")))),
            "--json",
            "--no-decode",
        ],
        0,
        "no flow_x or flow_y frames",
    ),  # noqa: E501
    (
        "fewer flows than frames",
        lambda w: [
            "data",
            "check",
            str(
                w.data(
                    "fewflows",
                    lambda r: [p.unlink() for p in sorted(_first(r, "flow_x_processed/S3/*/*").glob("*.png"))[2:]],
                )
            ),
            "--json",
            "--no-decode",
        ],
        0,
        "count_mismatch",
    ),  # noqa: E501
    (
        "fewer than 5 flows",
        lambda w: ["data", "check", T, "--json", "--no-decode", "--flow-stack", "50"],
        0,
        "the last flow is repeated",
    ),  # noqa: E501
    (
        "video shorter than T",
        lambda w: ["data", "check", T, "--json", "--no-decode", "--frames", "40"],
        0,
        "frames are repeated",
    ),
    (
        "class only in the test split",
        lambda w: [
            "data",
            "check",
            str(
                w.data(
                    "testonly",
                    lambda r: shutil.copytree(
                        _first(r, "processed_frames2/S2/*"), r / "processed_frames2" / "S2" / "wave_hand"
                    ),
                )
            ),
            "--json",
            "--no-decode",
        ],
        0,
        "class_one_split",
    ),  # noqa: E501
    (
        "missing motion map",
        lambda w: [
            "data",
            "check",
            str(w.data("nomap", lambda r: _first(r, "processed_frames2/S1/*/*/mmaps/map0003.png").unlink())),
            "--json",
            "--no-decode",
        ],
        0,
        "missing_mmap",
    ),  # noqa: E501
    ("hidden and duplicate files", lambda w: ["data", "check", T, "--json", "--no-decode"], 0, "duplicate_file"),
    (
        "frames of different sizes",
        lambda w: ["data", "check", str(w.data("sizes", _one_frame_bigger)), "--json"],
        0,
        "mixed_sizes",
    ),
    (
        "frames of different sizes in training",
        lambda w: ["train", T, f"data.root={w.data('sizes2', _every_second_frame_bigger)}", "data.frames=8"],
        2,
        "the frames of one video must share one size",
    ),
    (
        "names with spaces and commas",
        lambda w: [
            "data",
            "check",
            str(
                w.data(
                    "spaces",
                    lambda r: _first(r, "processed_frames2/S1/*").rename(
                        r / "processed_frames2" / "S1" / "pour water, cup"
                    ),
                )
            ),
            "--json",
            "--no-decode",
        ],
        0,
        "pour water, cup",
    ),  # noqa: E501
    # ---- configs
    ("unknown key", lambda w: ["train", "optim.lrr=1"], 2, "unknown config key 'optim.lrr'"),
    ("unknown key in old spelling", lambda w: ["train", "model.ms.layr=conv3"], 2, "did you mean 'model.ms.layer'"),
    ("wrong type", lambda w: ["train", "data.frames=abc"], 2, "'data.frames' in the command line expects an integer"),
    ("bool expected", lambda w: ["train", "model.ego_rnn.cam=maybe"], 2, "expects true or false"),
    ("list expected", lambda w: ["train", "sched.milestones={a: 1}"], 2, "expects a list"),
    ("out of range", lambda w: ["train", "model.dropout=1.5"], 2, "'model.dropout' must be in [0, 1)"),
    ("frames 0", lambda w: ["train", "data.frames=0"], 2, "data.frames and data.flow_stack must be at least 1"),
    ("input size too small", lambda w: ["train", "data.input_size=8"], 2, "data.input_size must be at least 32"),
    ("not key=value", lambda w: ["train", T, "lr0.1"], 2, "override 'lr0.1' is not key=value"),
    ("missing config file", lambda w: ["train", str(w.tmp / "nope.yaml")], 2, "not found; give a YAML file"),
    (
        "yaml syntax error",
        lambda w: ["train", str(w.file("syn.yaml", "model: {name: [\n"))],
        2,
        "is not valid YAML at line",
    ),  # noqa: E501
    (
        "yaml list",
        lambda w: ["train", str(w.file("list.yaml", "- a\n- b\n"))],
        2,
        "must hold a mapping of keys, got list",
    ),  # noqa: E501
    ("binary config", lambda w: ["train", str(w.file("bin.yaml", bytes(range(256))))], 2, "is not a text file"),
    (
        "missing extends target",
        lambda w: ["train", str(w.file("ext.yaml", "extends: nope.yaml\n"))],
        2,
        "nope.yaml not found",
    ),  # noqa: E501
    (
        "extends cycle",
        lambda w: ["train", str(w.file("cyc.yaml", "extends: cyc.yaml\n"))],
        2,
        "extends itself in a cycle",
    ),  # noqa: E501
    (
        "bad interpolation",
        lambda w: ["train", str(w.file("interp.yaml", "name: run_${nope}\n"))],
        2,
        "Interpolation key 'nope' not found",
    ),
    (
        "missing data root",
        lambda w: ["train", T, f"data.root={w.tmp / 'nodata'}"],
        2,
        "does not exist; create one with",
    ),
    ("unknown model", lambda w: ["train", "model.name=ego_rn"], 2, "did you mean 'ego_rnn'"),
    (
        "bad regex",
        lambda w: ["train", T, "train.trainable=[(]", f"out={w.tmp / 'o1'}"],
        2,
        "is not a valid regular expression",
    ),  # noqa: E501
    (
        "pattern matching nothing",
        lambda w: ["train", T, "train.trainable=[^nothing]", f"out={w.tmp / 'o2'}"],
        2,
        "match no parameter of this model",
    ),  # noqa: E501
    ("bad optim group", lambda w: ["train", T, "optim.groups=[{pattern: x}]"], 2, "each optim.groups entry is"),
    ("cuda unavailable", lambda w: ["train", T, "train.device=cuda"], 2, "CUDA is not available here"),
    (
        "val split empties training",
        lambda w: ["train", T, "data.select_on=val", "data.val_fraction=0.99", f"out={w.tmp / 'o3'}"],
        2,
        "leaves no training videos",
    ),  # noqa: E501
    (
        "two-stream without runs",
        lambda w: ["train", T, "model.name=two_stream", f"out={w.tmp / 'o4'}"],
        2,
        "needs model.two_stream.rgb_run=RUN",
    ),  # noqa: E501
    (
        "init.from another model",
        lambda w: ["train", T, f"init.from={w.flow_run}", f"out={w.tmp / 'o5'}"],
        2,
        "is a run of model 'flow_resnet'",
    ),  # noqa: E501
    (
        "init.from missing",
        lambda w: ["train", T, f"init.from={w.tmp / 'none'}", f"out={w.tmp / 'o6'}"],
        2,
        "init.from:",
    ),  # noqa: E501
    (
        "corrupt pretrained file",
        lambda w: ["train", T, f"model.pretrained={w.file('w.pt', b'junk')}", f"out={w.tmp / 'o7'}"],
        2,
        "give a plain state dict",
    ),  # noqa: E501
    (
        "resume of a folder that is no run",
        lambda w: ["train", "--resume", str(w.tmp / "files")],
        2,
        "is not a run folder (no config.yaml)",
    ),  # noqa: E501
    ("resume changing the run", lambda w: ["train", "--resume", str(w.run), "optim.lr=1"], 2, "would change it"),
    # ---- checkpoints
    ("missing run folder", lambda w: ["eval", str(w.tmp / "norun")], 2, "not found; give a run folder"),
    (
        "truncated checkpoint",
        lambda w: ["eval", str(w.file("trunc.pt", (w.run / "best.pt").read_bytes()[:1000]))],
        2,
        "it is corrupt or not an fpar checkpoint",
    ),  # noqa: E501
    (
        "pickle that would run code",
        lambda w: ["eval", str(_evil_checkpoint(w))],
        2,
        "it is corrupt or not an fpar checkpoint",
    ),  # noqa: E501
    (
        "weights-only file as a run",
        lambda w: ["eval", str(w.file("sd.pt", _state_dict_bytes()))],
        2,
        "weights-only files go to model.pretrained",
    ),  # noqa: E501
    (
        "dataset with other classes",
        lambda w: ["eval", str(w.run), "--data", str(_with_classes_changed(w))],
        2,
        "(new: grab_cup; missing: take_cup) other than the",
    ),  # noqa: E501
    (
        "another run's last.pt",
        lambda w: [
            "train",
            "--resume",
            str(
                _copy_run(
                    w,
                    "foreign",
                    lambda d: (shutil.copy(w.flow_run / "last.pt", d / "last.pt"), (d / "summary.json").unlink()),
                )
            ),
        ],
        2,
        "does not belong to this run folder",
    ),  # noqa: E501
    ("unknown export format", lambda w: ["export", str(w.run), "--format", "nope"], 2, "unknown export format 'nope'"),  # noqa: E501
    (
        "export frames for a flow model",
        lambda w: ["export", str(w.flow_run), "--frames", "5"],
        2,
        "applies to Ego-RNN models only",
    ),  # noqa: E501
    (
        "fuse with swapped runs",
        lambda w: ["fuse", str(w.flow_run), str(w.run)],
        2,
        "takes the RGB run first and the flow run second",
    ),  # noqa: E501
    ("cam of a flow model", lambda w: ["cam", str(w.flow_run), "S2/take_cup/1"], 2, "no CAM attention map"),
    ("cam of an unknown video", lambda w: ["cam", str(w.run), "S2/nope/1"], 2, "nope"),
    # ---- videos
    (
        "missing video",
        lambda w: ["predict", str(w.run), str(w.tmp / "none.mp4")],
        2,
        "video file or frame folder not found",
    ),  # noqa: E501
    ("empty video file", lambda w: ["predict", str(w.run), str(w.file("empty.mp4", b""))], 2, "cannot open video"),
    (
        "corrupt video",
        lambda w: ["predict", str(w.run), str(w.file("corrupt.avi", REAL_VIDEO.read_bytes()[:5000]))],
        2,
        "cannot open video",
    ),  # noqa: E501
    ("audio-only file", lambda w: ["predict", str(w.run), str(_audio_only(w))], 2, "has no video stream"),
    (
        "one-frame video for a flow model",
        lambda w: ["predict", str(w.flow_run), str(_video(w, "one.mp4", 1))],
        2,
        "needs at least 3 frames",
    ),  # noqa: E501
    (
        "empty frame folder",
        lambda w: ["predict", str(w.run), str((w.tmp / "emptydir").mkdir() or w.tmp / "emptydir")],
        2,
        "no image files in frame folder",
    ),  # noqa: E501
    ("bad --top", lambda w: ["predict", str(w.run), str(REAL_VIDEO), "--top", "0"], 2, "top=0 must be >= 1"),
    (
        "bad --flow",
        lambda w: ["predict", str(w.flow_run), str(REAL_VIDEO), "--flow", "magic"],
        2,
        "unknown flow method 'magic'",
    ),  # noqa: E501
    # ---- outputs that are there already: refused before anything is written (the file stays as it was)
    (
        "cam over a file",
        lambda w: ["cam", str(w.run), "S2/take_cup/1", "--out", _mine(w, "c.png")],
        2,
        "exists; nothing was written",
    ),  # noqa: E501
    (
        "data show over a file",
        lambda w: ["data", "show", T, "S2/take_cup/1", "--out", _mine(w, "s.png")],
        2,
        "exists; nothing was written",
    ),  # noqa: E501
    (
        "export over a file",
        lambda w: ["export", str(w.run), "--format", "torch-export", "--out", _mine(w, "e.pt2")],
        2,
        "exists; nothing was written",
    ),  # noqa: E501
    (
        "export over its sidecar",
        lambda w: ["export", str(w.run), "--format", "torch-export", "--out", _mine(w, "f.pt2.json")[:-5]],
        2,
        "f.pt2.json exists",
    ),  # noqa: E501
    (
        "pretrain over a file",
        lambda w: ["pretrain", T, _mine(w, "p.pt"), "--epochs", "1"],
        2,
        "exists; nothing was written",
    ),  # noqa: E501
    (
        "pretrain for 0 epochs",
        lambda w: ["pretrain", T, str(w.tmp / "p0.pt"), "--epochs", "0"],
        2,
        "epochs=0, batch_size=32: give at least 1",
    ),  # noqa: E501
    (
        "report into someone's folder",
        lambda w: ["report", str(w.run), "--out", str(Path(_mine(w, "rep/table.md")).parent)],
        2,
        "holds files that are not an fpar report",
    ),  # noqa: E501
    (
        "report into a file",
        lambda w: ["report", str(w.run), "--out", _mine(w, "rep.txt")],
        2,
        "is a file; give a folder",
    ),
    (
        "sweep into a file",
        lambda w: ["sweep", _grid(w, "g1"), "--out", _mine(w, "sw.txt"), "--max-trials", "0"],
        2,
        "is a file; give a folder",
    ),  # noqa: E501
    (
        "sweep into another grid's folder",
        lambda w: ["sweep", _grid(w, "g3"), "--out", _swept(w, "g2"), "--max-trials", "0"],
        2,
        "holds the sweep of grid 'g2', not 'g3'",
    ),  # noqa: E501
    (
        "train into another run's config",
        lambda w: ["train", T, f"out={Path(_mine(w, 'own/config.yaml')).parent}"],
        2,
        "holds a config.yaml of another run",
    ),  # noqa: E501
    # ---- values and files of the wrong kind
    ("name that leaves runs/", lambda w: ["train", T, "name=../../escaped"], 2, "config key 'name' is '../../escaped'"),
    ("infinite learning rate", lambda w: ["train", T, "optim.lr=inf"], 2, "config key 'optim.lr' must be finite"),
    ("no training subject", lambda w: ["train", T, "data.train_subjects=[]"], 2, "the training split of"),
    ("extends is no file name", lambda w: ["config", str(w.file("ext.yaml", "extends: 5\n"))], 2, "'extends' is 5"),
    (
        "grid base a number",
        lambda w: ["sweep", str(w.file("gb.yaml", "base: 5\ngrid: {optim.lr: [0.1]}\n")), "--max-trials", "0"],
        2,
        "base is 5",
    ),  # noqa: E501
    (
        "grid stage a word",
        lambda w: ["sweep", str(w.file("gs.yaml", "stages: [a]\n")), "--max-trials", "0"],
        2,
        "each of stages is a mapping",
    ),  # noqa: E501
    (
        "grid published a word",
        lambda w: ["sweep", _grid(w, "gp", "published: {base: abc}\n"), "--max-trials", "0"],
        2,
        "published numbers must be numbers",
    ),  # noqa: E501
    (
        "grid pivot of numbers",
        lambda w: ["sweep", _grid(w, "gv", "pivot: {rows: 5, columns: optim.lr}\n"), "--max-trials", "0"],
        2,
        "5 is not a config key",
    ),  # noqa: E501
    (
        "prepare CSV not UTF-8",
        lambda w: [
            "prepare",
            str(w.file("latin.csv", b"video,subject,class\nv.mp4,S1,caf\xe9\n")),
            str(w.tmp / "prep"),
        ],
        2,
        "is not UTF-8 text (byte",
    ),  # noqa: E501
    (
        "data show of size 0",
        lambda w: ["data", "show", T, "S2/take_cup/1", "--transformed", "--input-size", "0"],
        2,
        "--input-size 0",
    ),  # noqa: E501
    (
        "sweep status of a damaged manifest",
        lambda w: ["sweep", str(Path(w.file("sw/sweep.json", "{")).parent), "--status"],
        2,
        "sweep.json cannot be read",
    ),  # noqa: E501
    (
        "resume with a damaged summary",
        lambda w: [
            "train",
            "--resume",
            str(_copy_run(w, "damaged_summary", lambda d: (d / "summary.json").write_text("{"))),
        ],
        2,
        "summary.json is damaged; delete it",
    ),  # noqa: E501
    (
        "resume with an empty config",
        lambda w: [
            "train",
            "--resume",
            str(_copy_run(w, "empty_config", lambda d: (d / "config.yaml").write_text(""))),
        ],
        2,
        "config.yaml is empty",
    ),  # noqa: E501
    (
        "init.from another backbone",
        lambda w: ["train", T, f"init.from={w.run}", "model.backbone=resnet34", f"out={w.tmp / 'o_bb'}"],
        2,
        "is a run with model.backbone=resnet18; this run has resnet34",
    ),
    ("negative sched.gamma", lambda w: ["train", T, "sched.gamma=-1"], 2, "'sched.gamma' must be a finite number"),
    ("negative milestone", lambda w: ["train", T, "sched.milestones=[-5]"], 2, "must be increasing epochs"),
    (
        "infinite group lr",
        lambda w: ["train", T, "optim.groups=[{pattern: lstm, lr: .inf}]"],
        2,
        "its lr must be a finite number",
    ),
    (
        "optim.groups as a mapping in a file",
        lambda w: ["config", str(w.file("groups_map.yaml", "optim:\n  groups: {a: 1}\n"))],
        2,
        "config key 'optim.groups' in",
    ),
    (
        "seed in a grid",
        lambda w: ["sweep", _grid(w, "seedgrid", grid="{seed: [0, 1]}"), "--out", str(w.tmp / "sw_seed")],
        2,
        "seed is set per trial by seeds:",
    ),
    (
        "checkpoint with another model's weights",
        lambda w: ["eval", str(w.file("mixed.pt", _mixed_checkpoint(w)))],
        2,
        "holds weights of other shapes than its own config builds",
    ),
    (
        "checkpoint fields of the wrong type",
        lambda w: ["eval", str(w.file("strings.pt", _pickled({"model": "x", "config": "y"})))],
        2,
        "its model or config is not a mapping",
    ),
    (
        "cam --compare with a flow run",
        lambda w: ["cam", str(w.run), "S2/take_cup/1", "--out", str(w.tmp / "cmp.png"), "--compare", str(w.flow_run)],
        2,
        "compare with a run of an RGB model",
    ),
    (
        "negative synth seed",
        lambda w: ["data", "synth", str(w.tmp / "neg_seed"), "--preset=tiny", "--seed", "-1"],
        2,
        "--seed -1: give a seed of at least 0",
    ),
    (
        "pretrain input size 0",
        lambda w: ["pretrain", T, str(w.tmp / "p0.pt"), "--input-size", "0"],
        2,
        "give sizes with 32 <= input size <= scale size",
    ),
    (
        "resume with tb a file",
        lambda w: [
            "train",
            "--resume",
            str(_copy_run(w, "tb_file", _tb_file)),
            "train.epochs=2",
        ],
        2,
        "is a file where the run keeps its TensorBoard folder",
    ),
    (
        "predict with a huge --short-side",
        lambda w: ["predict", str(w.run), str(REAL_VIDEO), "--short-side", "100000"],
        2,
        "at most 4320",
    ),
    (
        "weights that diverge",
        lambda w: ["train", T, "optim.lr=1e30", "train.epochs=2", "train.max_batches=1"],
        2,
        "the weights diverged; lower optim.lr",
    ),
    ("eval --which of another name", lambda w: ["eval", str(w.run), "--which", "foo"], 2, "--which foo: choose best"),
    (
        "resume a run without last.pt",
        lambda w: ["train", "--resume", str(_copy_run(w, "no_last", lambda d: (d / "last.pt").unlink()))],
        2,
        "has no last.pt, so it cannot be resumed",
    ),
    ("a run folder given as the config", lambda w: ["config", str(w.run)], 2, "is a folder; give a YAML file"),
    ("data.root null", lambda w: ["config", str(w.file("null_root.yaml", "data: {root: ~}\n"))], 2, "has no value"),
    ("data check --frames 0", lambda w: ["data", "check", T, "--frames", "0"], 2, "--frames 0: give at least 1"),
    (
        "data check of a frames folder that is not there",
        lambda w: ["data", "check", T, "--frames-dir", "nope"],
        2,
        "data.gtea61.frames_dir=nope:",
    ),
    ("sweep --seeds of no seed", lambda w: ["sweep", _grid(w, "noseed"), "--seeds", ","], 2, "give distinct seeds"),
    ("sweep --stale-after -1", lambda w: ["sweep", _grid(w, "stale"), "--stale-after", "-1"], 2, "positive number"),
    (
        "cam --out of another kind",
        lambda w: ["cam", str(w.run), "S2/take_cup/1", "--out", str(w.tmp / "c.txt")],
        2,
        "give a path ending in .png",
    ),
    (
        "train into a folder of someone else's files",
        lambda w: ["train", T, f"out={_foreign_folder(w)}"],
        2,
        "holds metrics.jsonl, provenance.json but no config.yaml of a run",
    ),
]


def _pickled(obj) -> bytes:
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _mixed_checkpoint(w: World) -> bytes:
    """The RGB run's best.pt holding the flow run's weights (same names, other shapes: conv1 reads 4 channels)."""
    import torch

    ckpt = torch.load(w.run / "best.pt", weights_only=True)
    ckpt["model"] = {
        **ckpt["model"],
        **{
            k: v
            for k, v in torch.load(w.flow_run / "best.pt", weights_only=True)["model"].items()
            if k in ckpt["model"]
        },
    }
    return _pickled(ckpt)


def _tb_file(d: Path) -> None:
    (d / "summary.json").unlink()
    shutil.rmtree(d / "tb")
    (d / "tb").write_text("not a folder\n")


def _foreign_folder(w: World) -> Path:
    """A folder (under runs/, so the test checks it is left as it was) holding files a run would write."""
    d = w.tmp / "runs" / "someone_elses"
    d.mkdir(parents=True, exist_ok=True)
    for name in ("metrics.jsonl", "provenance.json"):
        (d / name).write_text("precious\n")
    return d


def _mine(w: World, name: str) -> str:
    """A file of the user's where a command is told to write (the command must leave it as it is)."""
    return str(w.file(f"mine/{name}", "precious\n"))


def _grid(w: World, name: str, extra: str = "", grid: str = "{optim.lr: [0.1]}") -> str:
    """A one-point grid file on the tiny data (no trial runs: --max-trials 0)."""
    text = f"name: {name}\nbase: {_RECIPE}\noverrides: [data.root={w.tiny}]\ngrid: {grid}\n{extra}"
    return str(w.file(f"grids/{name}.yaml", text))


def _swept(w: World, name: str) -> str:
    """A sweep folder holding grid ``name``'s manifest (written by `fpar sweep --max-trials 0`)."""
    out = w.tmp / "sweeps" / name
    if not out.exists():
        assert main(["sweep", _grid(w, name), "--out", str(out), "--max-trials", "0"]) == 0
    return str(out)


_RECIPE = Path(__file__).resolve().parents[1] / "configs" / "ego_rnn_stage1.yaml"


def _state_dict_bytes() -> bytes:
    import io

    import torch

    buf = io.BytesIO()
    torch.save({"conv1.weight": torch.zeros(1)}, buf)
    return buf.getvalue()


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_corpus_has_at_least_sixty_kinds():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, world, capsys):
    name, build, rc, text = case
    argv = [str(world.tiny) if a == T else a for a in build(world)]
    if argv[:2] == ["train", str(world.tiny)]:  # "train T ...": the tiny data's settings, then the bad one
        argv = ["train", *tiny_args(world.tiny), *argv[2:]]
    elif argv[0] == "train" and "--resume" not in argv and not argv[1].endswith(".yaml"):
        if not any(a.startswith("data.root=") for a in argv):
            argv = ["train", *tiny_args(world.tiny), *argv[1:]]
    if argv[0] == "train" and "--resume" not in argv and not any(a.startswith("out=") for a in argv):
        argv.append(f"out={world.tmp / 'out' / name.replace(' ', '_')}")  # never the current folder
    before = {**_snapshot(world.tmp / "runs"), **_snapshot(world.tiny)}
    capsys.readouterr()
    got = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    if rc == 2:
        assert got == 2, (argv, out, err)
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert text in err, err
    else:
        assert got == 0, (argv, err)
        report = json.loads(out)
        problems = json.dumps(report["problems"])
        assert text in problems or text in json.dumps(report["classes"]), problems[:2000]
        assert all(not Path(p["path"]).is_absolute() for p in report["problems"])
    after = {**_snapshot(world.tmp / "runs"), **_snapshot(world.tiny)}
    assert {k: v for k, v in after.items() if k in before} == before  # nothing that existed was changed


@pytest.mark.parametrize("value", ["abc", "0", "-2"])
def test_a_bad_fpar_threads_is_one_line(value, world, monkeypatch, capsys):
    monkeypatch.setenv("FPAR_THREADS", value)
    assert main(["eval", str(world.run)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: FPAR_THREADS={value!r} must be a whole number of threads, at least 1 (or unset)\n"


def test_a_damaged_confusion_matrix_costs_its_figure_not_the_report(world, tmp_path, capsys, caplog):
    """A confusion.csv cut short or edited: the report says which file it skipped and writes everything else."""
    for name, damage in (("edited", lambda s: s.replace(",0", ",x", 1)), ("cut", lambda s: s[: len(s) // 2])):
        run = _copy_run(world, f"confusion_{name}", lambda d: None)
        (run / "confusion.csv").write_text(damage((world.run / "confusion.csv").read_text()))
        out = tmp_path / name
        caplog.clear()
        assert main(["report", str(run), "--out", str(out)]) == 0
        assert f"skipped a confusion figure: {run / 'confusion.csv'}" in caplog.text
        assert (out / "index.html").is_file() and (out / "table.md").is_file()
        assert any(out.glob("figures/*_curves.png")) and not any(out.glob("figures/*_confusion.png"))


def test_resume_takes_an_override_that_changes_nothing(world, capsys):
    """--resume refuses overrides that would change the run, not those that repeat its own values."""
    assert main(["train", "--resume", str(world.run), "train.max_batches=1"]) == 0
    assert "nothing to resume" in capsys.readouterr().out
    assert main(["train", "--resume", str(world.run), "train.max_batches=2"]) == 2
    assert "'train.max_batches=2' would change it" in capsys.readouterr().err
