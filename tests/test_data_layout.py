"""Layout discovery, cleaning rules, class ids, data check, and decoding of the real GTEA61 clip."""

import json
import os
import shutil

import cv2
import numpy as np
import pytest

from fpar.cli import main
from fpar.data.check import check_dataset
from fpar.data.imageio import read_grey, read_mmap, read_rgb
from fpar.data.layout import discover, nearest_fill
from fpar.errors import FparError

from .conftest import REAL_CLIP


def _img(path, value=100, size=(24, 32), channels=3):
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = size + ((channels,) if channels > 1 else ())
    cv2.imwrite(str(path), np.full(shape, value, np.uint8))


def make_gtea_video(root, subj, cls, inst, n=6, flows=None, maps=None, frames_dir="processed_frames2"):
    flows = n - 1 if flows is None else flows
    maps = range(1, n + 1) if maps is None else maps
    base = root / frames_dir / subj / cls / str(inst)
    for k in range(1, n + 1):
        _img(base / "rgb" / f"rgb{k:04d}.png", 10 * k)
    for k in maps:
        _img(base / "mmaps" / f"map{k:04d}.png", 255 * (k % 2), channels=1)
    for d in ("x", "y"):
        for k in range(1, flows + 1):
            _img(root / f"flow_{d}_processed" / subj / cls / str(inst) / f"flow_{d}_{k:05d}.png", 128)


def make_egornn_video(root, subj, cls, inst, n=6):
    for k in range(1, n + 1):
        _img(root / "frames" / subj / cls / str(inst) / f"image_{k:05d}.jpg", 10 * k)
    for d in ("x", "y"):
        for k in range(1, n):
            _img(root / f"flow_{d}" / subj / cls / str(inst) / f"flow_{d}_{k:05d}.jpg", 128, channels=1)


def test_course_layout_and_class_ids_stable_across_subjects(tmp_path):
    # S1 lacks one class and lists folders in another order: ids come from ONE sorted list of names
    for cls in ["take_water", "pour_water,cup", "close_chocolate"]:
        make_gtea_video(tmp_path, "S2", cls, 1)
    for cls in ["take_water", "close_chocolate"]:
        make_gtea_video(tmp_path, "S1", cls, 1)
    m = discover(tmp_path)
    assert m.layout == "gtea61"
    assert m.classes == ["close_chocolate", "pour_water,cup", "take_water"]
    ids = {(v.subject, v.cls): v.label for v in m.videos}
    assert ids[("S1", "take_water")] == ids[("S2", "take_water")] == 2
    assert ids[("S2", "pour_water,cup")] == 1
    v = m.videos[0]
    assert v.num_frames == 6 and v.num_flows == 5 and len(v.mmaps) == 6
    assert m.subjects() == {"S1": 2, "S2": 3}
    assert v.verb == "close" and v.noun == "chocolate"


def test_frames_dir_name_is_configurable(tmp_path):
    make_gtea_video(tmp_path, "S1", "take_cup", 1, frames_dir="processed_frames")
    assert discover(tmp_path).videos[0].num_frames == 6
    assert discover(tmp_path, frames_dir="processed_frames").layout == "gtea61"


def test_original_egornn_layout(tmp_path):
    make_egornn_video(tmp_path, "S1", "take_cup", 1, n=7)
    make_egornn_video(tmp_path, "S2", "take_cup", 1, n=5)
    m = discover(tmp_path)
    assert m.layout == "egornn"
    assert [v.num_frames for v in m.videos] == [7, 5]
    assert [v.num_flows for v in m.videos] == [6, 4]
    assert m.videos[0].mmaps == []


def test_cleaning_rules(tmp_path):
    make_gtea_video(tmp_path, "S1", "take_cup", 1, n=6, maps=[2, 3, 5, 6])  # map1 and map4 missing
    base = tmp_path / "processed_frames2" / "S1" / "take_cup" / "1"
    (tmp_path / ".DS_Store").write_bytes(b"x")
    (tmp_path / "processed_frames2" / "S1" / ".DS_Store").write_bytes(b"x")
    shutil.copy(base / "rgb" / "rgb0002.png", base / "rgb" / "rgb0002(1).png")
    fx = tmp_path / "flow_x_processed" / "S1" / "take_cup" / "1"
    shutil.copy(fx / "flow_x_00002.png", fx / "flow_x_00007(1).png")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    m = discover(tmp_path)
    v = m.videos[0]
    kinds = [p.kind for p in m.problems]
    assert kinds.count("duplicate_file") == 2 and v.num_frames == 6 and v.num_flows == 5
    assert "hidden_file" in kinds  # .DS_Store inside S1 (the root-level one is never listed as a subject)
    # nearest existing map: 1 -> 2 (the report's fix), 4 -> 5 (tie between 3 and 5 goes to the later one)
    names = [os.path.basename(p) for p in v.mmaps]
    assert names == ["map0002.png", "map0002.png", "map0003.png", "map0005.png", "map0005.png", "map0006.png"]
    assert sum(k == "missing_mmap" for k in kinds) == 2
    msg = [p for p in m.problems if p.kind == "missing_mmap"][0]
    assert msg.path.endswith("mmaps/map0001.png") and "map0002.png" in msg.message
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # the dataset is never modified


def test_nearest_fill_hand_values():
    files, filled = nearest_fill([1, 2, 3, 4], {2: "b", 4: "d"})
    assert files == ["b", "b", "d", "d"] and filled == [1, 3]


def test_count_mismatch_uses_common_range(tmp_path):
    make_gtea_video(tmp_path, "S1", "take_cup", 1, n=10, flows=6)
    make_gtea_video(tmp_path, "S1", "take_cup", 2, n=6, flows=6)  # N flows for N frames: normal
    m = discover(tmp_path)
    a, b = m.videos
    assert (a.num_frames, a.num_flows) == (7, 6)
    assert (b.num_frames, b.num_flows) == (6, 6)
    probs = [p for p in m.problems if p.kind == "count_mismatch"]
    assert len(probs) == 1 and "common range" in probs[0].message


def test_empty_video_and_empty_class_are_reported(tmp_path):
    make_gtea_video(tmp_path, "S1", "take_cup", 1)
    (tmp_path / "processed_frames2" / "S1" / "take_cup" / "2" / "rgb").mkdir(parents=True)
    (tmp_path / "processed_frames2" / "S1" / "open_jam").mkdir(parents=True)
    m = discover(tmp_path)
    kinds = {p.kind: p for p in m.problems}
    assert kinds["empty_video"].path == "processed_frames2/S1/take_cup/2" and kinds["empty_video"].fatal
    assert kinds["empty_class"].path == "processed_frames2/S1/open_jam"
    assert [v.usable for v in m.videos] == [True, False]


@pytest.mark.parametrize(
    "setup,match",
    [
        (lambda p: None, "does not exist"),
        (lambda p: (p / "x").mkdir(parents=True) or (p / "x" / "junk").mkdir(), "not a GTEA61 dataset"),
        (lambda p: (p / "x" / "processed_frames2").mkdir(parents=True), "no videos found"),
    ],
)
def test_bad_roots_give_one_line_errors(tmp_path, setup, match):
    setup(tmp_path)
    with pytest.raises(FparError, match=match) as e:
        discover(tmp_path / "x")
    assert "\n" not in str(e.value)


def test_unreadable_image_error_names_the_file(tmp_path):
    p = tmp_path / "rgb0001.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    with pytest.raises(FparError, match="rgb0001.png"):
        read_rgb(str(p))


def test_real_gtea61_clip_decodes():
    rgb = read_rgb(str(REAL_CLIP / "rgb0001.png"))
    assert rgb.shape == (256, 455, 3) and rgb.dtype == np.uint8
    raw = cv2.imread(str(REAL_CLIP / "flow_x_00002.png"), cv2.IMREAD_UNCHANGED)
    assert raw.ndim == 3 and (raw[..., 0] == raw[..., 1]).all()  # 3 equal channels on disk
    fx = read_grey(str(REAL_CLIP / "flow_x_00002.png"))
    assert fx.shape == (256, 455) and np.array_equal(fx, raw[..., 0])
    assert 100 < np.median(fx) < 156  # mostly still: around 128
    mm = read_mmap(str(REAL_CLIP / "map0001.png"))
    assert mm.shape == (256, 455) and set(np.unique(mm)) <= {0, 1} and mm.any()


def test_real_clip_in_the_course_layout(tmp_path):
    """The real files placed in the layout go through discovery, sampling and the transforms."""
    from fpar.config import DataConfig
    from fpar.data.dataset import ClipDataset

    vid = tmp_path / "processed_frames2" / "S1" / "close_chocolate" / "1"
    for sub in ("rgb", "mmaps"):
        (vid / sub).mkdir(parents=True)
    for k in (1, 11, 20):
        shutil.copy(REAL_CLIP / f"rgb{k:04d}.png", vid / "rgb" / f"rgb{k:04d}.png")
        shutil.copy(REAL_CLIP / f"map{k:04d}.png", vid / "mmaps" / f"map{k:04d}.png")
    for d, ks in (("x", (2, 11, 20)), ("y", (1, 11, 20))):
        fd = tmp_path / f"flow_{d}_processed" / "S1" / "close_chocolate" / "1"
        fd.mkdir(parents=True)
        for i, k in enumerate(ks, 1):
            shutil.copy(REAL_CLIP / f"flow_{d}_{k:05d}.png", fd / f"flow_{d}_{i:05d}.png")
    m = discover(tmp_path)
    cfg = DataConfig(frames=3, flow_stack=2, input_size=224)
    item = ClipDataset(m, [0], cfg, modalities=("rgb", "flow", "mmaps"), train=True)[0]
    assert item["rgb"].shape == (3, 3, 224, 224) and item["flow"].shape == (4, 224, 224)
    assert item["mmaps"].shape == (3, 224, 224) and set(item["mmaps"].unique().tolist()) <= {0, 1}


def test_data_check_cli_json_and_exit_codes(tiny_root, tmp_path, capsys):
    assert main(["data", "check", str(tiny_root), "--json", "--frames", "16"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["videos"] == 24 and len(r["classes"]) == 6
    assert r["subjects"] == {"S1": 6, "S2": 6, "S3": 6, "S4": 6}
    kinds = {p["kind"] for p in r["problems"]}
    assert {"hidden_file", "missing_mmap", "too_short", "duplicate_file"} <= kinds
    assert all(not os.path.isabs(p["path"]) for p in r["problems"])
    # a dataset without test-subject videos is not usable: exit 2 with a one-line message
    assert main(["data", "check", str(tiny_root), "--test", "S9"]) == 2
    assert "error:" in capsys.readouterr().err
    assert main(["data", "check", str(tmp_path / "nope")]) == 2


def test_check_finds_truncated_image(tmp_path):
    make_gtea_video(tmp_path, "S1", "take_cup", 1)
    make_gtea_video(tmp_path, "S2", "take_cup", 1)
    (tmp_path / "processed_frames2" / "S1" / "take_cup" / "1" / "rgb" / "rgb0003.png").write_bytes(b"\x89PNG broken")
    r = check_dataset(str(tmp_path))
    bad = [p for p in r["problems"] if p["kind"] == "unreadable_image"]
    assert bad and bad[0]["path"].endswith("rgb0003.png")
    assert r["usable_videos"] == 1 and not r["usable"]


def test_a_jpeg_cut_short_is_refused_without_libjpeg_s_warnings(tmp_path, capfd):
    """libjpeg decodes a cut JPEG with grey rows and only warns on stderr; fpar refuses it (a file, or a member of
    an EPIC tar), naming it, and libjpeg prints nothing. A whole JPEG, or one padded after its end marker, reads."""
    import tarfile

    from fpar.data.frames import SEP
    from fpar.data.imageio import ImageError

    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), (5, 5), 0)
    data = cv2.imencode(".jpg", img)[1].tobytes()
    whole, padded, cut = tmp_path / "whole.jpg", tmp_path / "padded.jpg", tmp_path / "cut.jpg"
    whole.write_bytes(data)
    padded.write_bytes(data + bytes(200))
    cut.write_bytes(data[: int(len(data) * 0.7)])
    assert np.array_equal(read_rgb(str(whole)), read_rgb(str(padded)))
    assert read_rgb(str(whole)).shape == (48, 64, 3)
    capfd.readouterr()
    with pytest.raises(ImageError, match=r"cut.jpg is a JPEG cut short \(no end-of-image marker\)"):
        read_rgb(str(cut))
    tar = tmp_path / "P01_01.tar"
    with tarfile.open(tar, "w") as t:
        t.add(cut, arcname="./frame_0000000001.jpg")
    with pytest.raises(ImageError, match="is a JPEG cut short .* download its tar again"):
        read_rgb(f"{tar}{SEP}./frame_0000000001.jpg")
    assert capfd.readouterr().err == ""  # libjpeg never saw the cut files
