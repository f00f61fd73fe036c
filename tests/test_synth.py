"""The synthetic generator: layout, determinism, GTEA61 quirks, motion-only pairs."""

import hashlib

import numpy as np

from fpar.data.flowcodec import decode_flow
from fpar.data.imageio import read_rgb
from fpar.data.layout import discover
from fpar.data.synth import PRESETS, STYLES, full_classes, motion_pairs, render_video, synthesize


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_layout_counts_and_quirks(tiny_root):
    m = discover(tiny_root)
    assert m.layout == "gtea61"
    assert m.classes == sorted(PRESETS["tiny"].classes)
    assert m.subjects() == {"S1": 6, "S2": 6, "S3": 6, "S4": 6}
    for v in m.videos:
        lo, hi = PRESETS["tiny"].frames
        assert lo <= v.num_frames <= hi
        assert v.num_flows in (v.num_frames, v.num_frames - 1)
        assert len(v.mmaps) == v.num_frames
    kinds = {p.kind for p in m.problems}
    assert {"hidden_file", "missing_mmap", "duplicate_file"} <= kinds
    assert (tiny_root / ".DS_Store").exists()
    assert read_rgb(m.videos[0].rgb[0]).shape == (64, 114, 3)


def test_deterministic_for_a_seed(tmp_path, tiny_root):
    synthesize(tmp_path / "again", preset="tiny", seed=0)
    assert _digest(tmp_path / "again") == _digest(tiny_root)
    synthesize(tmp_path / "other", preset="tiny", seed=1)
    assert _digest(tmp_path / "other") != _digest(tiny_root)


def test_refuses_to_overwrite(tmp_path, tiny_root):
    import pytest

    from fpar.errors import FparError

    with pytest.raises(FparError, match="not empty"):
        synthesize(tiny_root, preset="tiny")


def test_put_is_take_backwards_and_flows_point_the_other_way():
    rng = lambda: np.random.default_rng(5)  # noqa: E731  same layout for both
    f_take, fl_take, _ = render_video("take_cup", STYLES["S1"], 10, 114, 64, rng())
    f_put, fl_put, _ = render_video("put_cup", STYLES["S1"], 10, 114, 64, rng())
    # same scene content, reversed motion: the object/hand flow has opposite mean direction
    moving_t = np.abs(fl_take).sum(-1) > 0.5
    moving_p = np.abs(fl_put).sum(-1) > 0.5
    assert moving_t.any() and moving_p.any()
    dy_take = fl_take[..., 1][moving_t].mean()
    dy_put = fl_put[..., 1][moving_p].mean()
    assert np.sign(dy_take) == -np.sign(dy_put)


def test_camera_motion_is_removed_from_warp_flow_and_maps_mark_motion(tiny_root):
    m = discover(tiny_root)
    v = m.videos[0]
    import cv2

    fx = decode_flow(cv2.imread(v.flow_x[2], cv2.IMREAD_GRAYSCALE))
    mm = cv2.imread(v.mmaps[2], cv2.IMREAD_GRAYSCALE) > 127
    still = ~cv2.dilate(mm.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    assert np.abs(fx[still]).mean() < 0.3  # background: camera motion removed, only noise
    a, b = read_rgb(v.rgb[2]).astype(float), read_rgb(v.rgb[3]).astype(float)
    assert np.abs(a - b)[still].mean() > 1.0  # yet the background pixels do move (camera ego-motion)


def test_subjects_differ_in_appearance():
    f1, _, _ = render_video("take_cup", STYLES["S1"], 4, 114, 64, np.random.default_rng(1))
    f2, _, _ = render_video("take_cup", STYLES["S2"], 4, 114, 64, np.random.default_rng(1))
    assert np.abs(f1[0].mean((0, 1)) - f2[0].mean((0, 1))).max() > 15  # table colour / lighting shift


def test_class_lists():
    full = full_classes()
    assert len(full) == 61 and len(set(full)) == 61
    pairs = motion_pairs(full)
    assert 2 * len(pairs) >= 61 // 2  # motion-only pairs are a good share of the classes
    demo = list(PRESETS["demo"].classes)
    assert 2 * len(motion_pairs(demo)) >= len(demo) // 2
    assert PRESETS["demo"].videos["S2"] * len(demo) >= 60  # a test split large enough to compare models
