"""fpar.video: flow codec, video / frame-folder reading, warp flow and motion maps, and `prepare` (course layout)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from PIL import Image

from fpar.data.flowcodec import decode_flow, encode_flow
from fpar.errors import FparError
from fpar.video.flow import compute_flow, estimate_camera_homography, motion_map, to_grey, warp_flow
from fpar.video.io import read_frame_folder, read_video
from fpar.video.prepare import LOCK_NAME, MANIFEST_NAME, TMP_NAME, discover, prepare

REAL_VIDEO = Path(__file__).resolve().parent / "data" / "videos" / "ucf101-eyemakeup.avi"
needs_real_video = pytest.mark.skipif(not REAL_VIDEO.is_file(), reason=f"{REAL_VIDEO} not available")

W, H, FPS = 96, 72, 10
BG_SHIFT = (2, 0)  # px / frame: the whole background (camera motion)
SQ_SHIFT = (0, 3)  # px / frame: the bright square, in image coordinates
SQ = 20  # square side, px
REL = (SQ_SHIFT[0] - BG_SHIFT[0], SQ_SHIFT[1] - BG_SHIFT[1])  # the square's motion relative to the background


# ------------------------------------------------------------------------------------------------ helpers


def synth_frames(n: int = 8, seed: int = 0) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
    """A textured background translating by BG_SHIFT per frame and a textured bright square moving by SQ_SHIFT.

    Returns RGB uint8 frames (H, W, 3) and the square's top-left corner (x, y) in each frame.
    """
    rng = np.random.default_rng(seed)
    big = cv2.GaussianBlur(rng.uniform(0, 255, (H + 64, W + 64)).astype(np.float32), (0, 0), 1.5)
    big = cv2.normalize(big, None, 20, 160, cv2.NORM_MINMAX)  # dark-ish texture, (H+64, W+64)
    tex = cv2.GaussianBlur(rng.uniform(0, 255, (SQ, SQ)).astype(np.float32), (0, 0), 1.0)
    tex = cv2.normalize(tex, None, 190, 255, cv2.NORM_MINMAX)  # bright texture, (SQ, SQ)
    frames, corners = [], []
    for k in range(n):
        ox, oy = 32 - BG_SHIFT[0] * k, 32 - BG_SHIFT[1] * k  # moving the crop window left moves the content right
        f = big[oy : oy + H, ox : ox + W].copy()  # (H, W)
        x, y = 30 + SQ_SHIFT[0] * k, 10 + SQ_SHIFT[1] * k
        f[y : y + SQ, x : x + SQ] = tex
        frames.append(np.repeat(np.clip(f, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2))  # (H, W, 3)
        corners.append((x, y))
    return frames, corners


def write_video(path: Path, frames: list[np.ndarray], fps: int = FPS) -> Path:
    """Encode RGB frames with PyAV (H.264 near-lossless in .mp4; MPEG-4 part 2 in .avi)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        if path.suffix == ".mp4":
            s = c.add_stream("libx264", rate=fps)
            s.options = {"crf": "4", "preset": "ultrafast"}
        else:
            s = c.add_stream("mpeg4", rate=fps)
            s.bit_rate = 4_000_000
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())
    return path


@pytest.fixture(scope="module")
def synth_video(tmp_path_factory) -> tuple[Path, list[np.ndarray], list[tuple[int, int]]]:
    frames, corners = synth_frames()
    path = write_video(tmp_path_factory.mktemp("vid") / "synth.mp4", frames)
    return path, frames, corners


def square_masks(corner: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(square, square interior shrunk by 3 px, background away from the square by > 4 px) boolean (H, W) masks."""
    x, y = corner
    sq = np.zeros((H, W), bool)
    sq[y : y + SQ, x : x + SQ] = True
    inner = np.zeros((H, W), bool)
    inner[y + 3 : y + SQ - 3, x + 3 : x + SQ - 3] = True
    near = cv2.dilate(sq.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    return sq, inner, ~near


def snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------ flow codec


def test_flow_codec_exact_values():
    f = np.array([0.0, 20.0, -20.0, 25.0, -1000.0, 0.1, -0.1, 10.0, np.nan], np.float32)
    v = encode_flow(f)
    assert v.dtype == np.uint8 and v.shape == f.shape
    # 128 + 255 f / 40: 0 -> 128, +20 -> 255.5 -> 255 (clip), -20 -> 0.5 -> 0 (half to even), 0.1 -> 128.6375 -> 129
    assert v.tolist() == [128, 255, 0, 255, 0, 129, 127, 192, 128]
    assert decode_flow(np.array([128, 255, 0], np.uint8)).tolist() == pytest.approx(
        [0.0, 127 * 40 / 255, -128 * 40 / 255]
    )
    assert decode_flow(np.uint8([1])).dtype == np.float32


def test_flow_codec_round_trip():
    rng = np.random.default_rng(0)
    f = rng.uniform(-19.9, 19.9, (2, 17, 23)).astype(np.float32)
    back = decode_flow(encode_flow(f))
    assert back.shape == f.shape and back.dtype == np.float32
    assert np.abs(back - f).max() <= 20 / 255 + 1e-5  # half a quantisation step
    v = np.arange(256, dtype=np.uint8)
    assert np.array_equal(encode_flow(decode_flow(v)), v)  # decode is an exact right inverse
    assert np.array_equal(encode_flow(np.full(3, 5.0), bound=10.0), [192, 192, 192])  # 128 + 255 * 5 / 20 = 191.75


# ------------------------------------------------------------------------------------------------ reading


@needs_real_video
def test_read_real_video():
    frames = read_video(REAL_VIDEO, max_frames=10, short_side=120)
    assert len(frames) == 10
    assert all(f.shape == (120, 160, 3) and f.dtype == np.uint8 for f in frames)
    full = read_video(REAL_VIDEO)
    assert len(full) == 164 and full[0].shape == (240, 320, 3)
    # This AVI attaches locally permuted timestamps (1, 2, 4, 3, ...) to frames: resampling and trimming must still
    # follow the real order. 25 fps -> 12.5 fps keeps every other frame; [2 s, 3 s) is frames 50..74 (t = 0.04 k).
    half = read_video(REAL_VIDEO, fps=12.5)
    assert len(half) == 82
    assert all(np.array_equal(a, full[2 * i]) for i, a in enumerate(half))
    seg = read_video(REAL_VIDEO, start=2.0, end=3.0)
    assert len(seg) == 25
    assert np.array_equal(seg[0], full[49]) and np.array_equal(seg[-1], full[73])


def test_read_synth_video_trim_and_resample(synth_video):
    path, frames, _ = synth_video
    got = read_video(path)
    assert len(got) == 8 and got[0].shape == (H, W, 3)
    assert np.abs(got[3].astype(int) - frames[3]).mean() < 6  # near-lossless encode
    assert len(read_video(path, fps=5)) == 4  # t = 0, .2, .4, .6
    assert len(read_video(path, start=0.2, end=0.6)) == 4  # t = .2, .3, .4, .5
    assert len(read_video(path, start=0.25)) == 5  # t = .3 ... .7
    small = read_video(path, short_side=36, max_frames=2)
    assert len(small) == 2 and small[0].shape == (36, 48, 3)


def test_a_forked_process_decodes_after_its_parent_did(synth_video, tmp_path):
    """PyAV keeps one swscale context per thread at module level: a child forked after the parent converted a frame
    (DataLoader workers fork) hung forever on its first frame of another size, waiting for slice threads that did not
    survive the fork. fpar's readers convert with a context of their own, so the child decodes and exits."""
    from fpar.data.frames import read_video_frames
    from tests.conftest import Forked

    path, frames, _ = synth_video
    big = write_video(tmp_path / "big.mp4", [np.kron(f, np.ones((4, 4, 1), np.uint8)) for f in frames[:2]])
    with av.open(str(path)) as c:  # the parent converts the PyAV way: its thread's context now has slice threads
        next(c.decode(video=0)).to_ndarray(format="rgb24")
    assert len(read_video(path)) == 8

    def decode() -> int:
        got = read_video(big), read_video_frames(str(big), [0, 1])
        return 0 if len(got[0]) == 2 and got[1][1].shape == (4 * H, 4 * W, 3) else 3

    # the child needs about a second; a hang is a TimeoutError
    code, err = Forked(["decode", big.name], target=decode).wait(timeout=30)
    assert code == 0, err


def test_read_video_errors(tmp_path):
    with pytest.raises(FparError, match="not found.*nope.mp4"):
        read_video(tmp_path / "nope.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"this is not a video" * 10)
    with pytest.raises(FparError, match="bad.mp4"):
        read_video(bad)
    with pytest.raises(FparError, match="end"):
        read_video(bad, start=2, end=1)


def test_read_frame_folder(tmp_path):
    for i in (1, 2, 10):
        cv2.imwrite(str(tmp_path / f"frame{i}.png"), np.full((6, 8, 3), (i, 0, 200), np.uint8))  # BGR on disk
    cv2.imwrite(str(tmp_path / "frame3 (1).png"), np.zeros((6, 8, 3), np.uint8))  # a file-manager copy
    cv2.imwrite(str(tmp_path / ".frame4.png"), np.zeros((6, 8, 3), np.uint8))  # hidden
    (tmp_path / "notes.txt").write_text("x")
    frames = read_frame_folder(tmp_path)
    assert [int(f[0, 0, 2]) for f in frames] == [1, 2, 10]  # natural order, RGB (blue channel last)
    assert frames[0][0, 0, 0] == 200 and frames[0].shape == (6, 8, 3)
    (tmp_path / "frame11.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(FparError, match="frame11.png"):
        read_frame_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FparError, match="no image files"):
        read_frame_folder(tmp_path / "empty")
    with pytest.raises(FparError, match="not found"):
        read_frame_folder(tmp_path / "missing")


# ------------------------------------------------------------------------------------------------ flow


def test_warp_flow_removes_camera_motion(synth_video):
    path, _, corners = synth_video
    grey = [to_grey(f) for f in read_video(path)]
    for k in range(3):
        Hm = estimate_camera_homography(grey[k], grey[k + 1])
        assert Hm[:2, 2] == pytest.approx(BG_SHIFT, abs=0.3)  # the background translation, not the square's
        assert np.abs(Hm[:2, :2] - np.eye(2)).max() < 0.02

        sq, inner, bg = square_masks(corners[k])
        raw = compute_flow(grey[k], grey[k + 1], "dis")
        assert raw.shape == (H, W, 2) and raw.dtype == np.float32
        assert np.median(raw[bg][:, 0]) == pytest.approx(BG_SHIFT[0], abs=0.3)  # raw flow sees the camera

        wf = warp_flow(grey[k], grey[k + 1], "dis")
        assert wf.shape == (H, W, 2) and wf.dtype == np.float32
        assert np.median(np.linalg.norm(wf[bg], axis=1)) < 0.5  # camera motion removed
        assert np.median(wf[inner], axis=0) == pytest.approx(REL, abs=0.6)  # square keeps its relative motion

        mm = motion_map(wf)
        assert mm.dtype == np.uint8 and mm.shape == (H, W) and set(np.unique(mm)) <= {0, 255}
        assert (mm[sq] > 0).mean() > 0.8  # most of the square
        assert (mm[~sq] > 0).mean() < 0.15  # little of the background (a halo next to the square at most)
        assert (mm[bg] > 0).mean() < 0.05


def test_tvl1_warp_flow_small(synth_video):
    path, _, corners = synth_video
    a, b = (to_grey(f) for f in read_video(path, max_frames=2))
    wf = warp_flow(a, b, "tvl1")
    _, inner, bg = square_masks(corners[0])
    assert np.median(np.linalg.norm(wf[bg], axis=1)) < 0.5
    assert np.median(wf[inner], axis=0) == pytest.approx(REL, abs=0.5)


def test_farneback_and_flow_errors():
    rng = np.random.default_rng(1)
    a = cv2.GaussianBlur(rng.uniform(0, 255, (48, 64)).astype(np.float32), (0, 0), 2).astype(np.uint8)
    b = np.roll(a, 1, axis=1)  # content moves +1 px in x
    f = compute_flow(a, b, "farneback")
    assert np.median(f[8:-8, 8:-8, 0]) == pytest.approx(1.0, abs=0.2)
    assert np.median(np.abs(f[8:-8, 8:-8, 1])) < 0.2
    with pytest.raises(FparError, match="unknown flow method"):
        compute_flow(a, b, "raft")


def test_homography_from_flow_and_motion_map_cleanup():
    flow = np.zeros((60, 80, 2), np.float32)
    flow[..., 0], flow[..., 1] = 2.0, -1.0
    flow[20:30, 30:40] = (6.0, 0.0)  # an independently moving patch (outliers for RANSAC)
    Hm = estimate_camera_homography(np.zeros((60, 80), np.uint8), np.zeros((60, 80), np.uint8), flow=flow)
    assert Hm[:2, 2] == pytest.approx((2.0, -1.0), abs=1e-3)
    # no texture, no flow: identity
    assert np.array_equal(estimate_camera_homography(np.zeros((60, 80)), np.zeros((60, 80))), np.eye(3))

    wf = np.zeros((60, 80, 2), np.float32)
    wf[10:30, 10:30] = (3.0, 0.0)  # a moving blob
    wf[50, 70] = (9.0, 9.0)  # an isolated outlier pixel
    mm = motion_map(wf, thresh=1.0)
    assert (mm[12:28, 12:28] == 255).all() and mm[45:, 60:].max() == 0
    assert motion_map(np.zeros((60, 80, 2), np.float32)).max() == 0


# ------------------------------------------------------------------------------------------------ prepare


@pytest.fixture
def videos_dir(tmp_path) -> Path:
    frames, _ = synth_frames(8)
    write_video(tmp_path / "videos" / "S1" / "take" / "1.mp4", frames)
    write_video(tmp_path / "videos" / "S2" / "open" / "7.avi", synth_frames(6, seed=1)[0])
    (tmp_path / "videos" / "S1" / "take" / "README.txt").write_text("not a video")
    return tmp_path / "videos"


def expected_files(key: str, n: int, frames_dir: str = "processed_frames2") -> set[str]:
    files = {f"{frames_dir}/{key}/rgb/rgb{i:04d}.png" for i in range(1, n + 1)}
    files |= {f"{frames_dir}/{key}/mmaps/map{i:04d}.png" for i in range(1, n + 1)}
    files |= {f"flow_x_processed/{key}/flow_x_{i:05d}.png" for i in range(1, n)}
    files |= {f"flow_y_processed/{key}/flow_y_{i:05d}.png" for i in range(1, n)}
    return files


def test_prepare_folder_layout_and_resume(videos_dir, tmp_path):
    out = tmp_path / "data"
    summary = prepare(videos_dir, out, short_side=48, flow_method="dis", progress=False)
    assert summary["processed"] == ["S1/take/1", "S2/open/7"] and summary["skipped"] == [] and summary["failed"] == []
    assert summary["frames"] == 14

    files = {k for k in snapshot(out) if not k.startswith(".")}
    assert files == expected_files("S1/take/1", 8) | expected_files("S2/open/7", 6)
    assert not (out / TMP_NAME).exists() and not (out / LOCK_NAME).exists()
    assert set(json.loads((out / MANIFEST_NAME).read_text())["videos"]) == {"S1/take/1", "S2/open/7"}

    inst = out / "processed_frames2" / "S1" / "take" / "1"
    rgb = Image.open(inst / "rgb" / "rgb0001.png")
    assert rgb.mode == "RGB" and rgb.size == (64, 48)  # 96x72 -> shorter side 48
    for p in (inst / "mmaps" / "map0003.png", out / "flow_x_processed/S1/take/1/flow_x_00007.png"):
        im = Image.open(p)
        assert im.mode == "L" and im.size == (64, 48)
    maps = [np.array(Image.open(inst / "mmaps" / f"map{i:04d}.png")) for i in range(1, 9)]
    assert all(set(np.unique(m)) <= {0, 255} for m in maps)
    assert all(m.any() for m in maps)  # the square moves in every frame
    assert np.array_equal(maps[7], maps[6])  # the last frame reuses the previous map
    fx = decode_flow(np.array(Image.open(out / "flow_x_processed/S1/take/1/flow_x_00002.png")))
    assert np.median(np.abs(fx)) < 0.3  # camera motion (2 px/frame before resizing) removed

    before = snapshot(out)
    again = prepare(videos_dir, out, short_side=48, flow_method="dis", progress=False)
    assert again["processed"] == [] and again["skipped"] == ["S1/take/1", "S2/open/7"] and again["frames"] == 0
    assert snapshot(out) == before  # nothing rewritten, manifest included

    # a deleted output file or changed settings make that work redo, and only that
    (inst / "rgb" / "rgb0005.png").unlink()
    third = prepare(videos_dir, out, short_side=48, flow_method="dis", progress=False)
    assert third["processed"] == ["S1/take/1"] and third["skipped"] == ["S2/open/7"]
    assert (inst / "rgb" / "rgb0005.png").exists()
    # other settings replace earlier work only when asked to (--redo): a mistyped option loses nothing
    before = snapshot(out)
    with pytest.raises(
        FparError,
        match=r"2 video\(s\) prepared with other settings \(e.g. S1/take/1: short_side "
        r"48 -> 36\); nothing was changed: pass --redo",
    ):
        prepare(videos_dir, out, short_side=36, flow_method="dis", progress=False)
    assert snapshot(out) == before
    fourth = prepare(videos_dir, out, short_side=36, flow_method="dis", progress=False, redo=True)
    assert fourth["processed"] == ["S1/take/1", "S2/open/7"]
    assert Image.open(inst / "rgb" / "rgb0001.png").size == (48, 36)


def test_prepare_killed_between_a_video_and_its_record_prepares_it_again(videos_dir, tmp_path, monkeypatch):
    """Videos are claimed in the manifest before they are written: a kill after a video lands but before it is
    recorded leaves it prepare's own (prepared again on the rerun), never a stranger's that the rerun refuses."""
    import fpar.video.prepare as prep

    out = tmp_path / "data"
    real, calls = prep.atomic_write_json, []

    def dies_at_the_first_record(path, obj):
        calls.append(path)
        if len(calls) == 2:  # 1: the claims, 2: the first finished video's record
            raise KeyboardInterrupt
        real(path, obj)

    monkeypatch.setattr(prep, "atomic_write_json", dies_at_the_first_record)
    with pytest.raises(KeyboardInterrupt):
        prepare(videos_dir, out, short_side=48, flow_method="dis", progress=False)
    monkeypatch.setattr(prep, "atomic_write_json", real)
    claims = json.loads((out / MANIFEST_NAME).read_text())["videos"]
    assert sorted(claims) == ["S1/take/1", "S2/open/7"] and {c["frames"] for c in claims.values()} == {-1}
    assert (out / "processed_frames2" / "S1" / "take" / "1" / "rgb").is_dir()  # it landed, unrecorded
    again = prepare(videos_dir, out, short_side=48, flow_method="dis", progress=False)
    assert again["processed"] == ["S1/take/1", "S2/open/7"] and again["failed"] == []


def test_prepare_never_replaces_a_video_it_did_not_write(videos_dir, tmp_path):
    """An instance already in OUT that prepare has no record of (a dataset written otherwise) is refused, untouched;
    so is OUT = the videos folder."""
    out = tmp_path / "data"
    inst = out / "processed_frames2" / "S1" / "take" / "1" / "rgb"
    inst.mkdir(parents=True)
    (inst / "rgb0001.png").write_bytes(b"someone else's frame")
    before = snapshot(out)
    with pytest.raises(
        FparError,
        match=r"already holds 1 video\(s\) that fpar prepare did not write there \(e.g. "
        r"S1/take/1",
    ):
        prepare(videos_dir, out, short_side=48, flow_method="dis", progress=False, redo=True)
    assert snapshot(out) == before
    with pytest.raises(FparError, match="is the VIDEOS folder itself"):
        prepare(videos_dir, videos_dir, short_side=48, flow_method="dis", progress=False)


def test_prepare_csv_with_start_end(videos_dir, tmp_path):
    csv = tmp_path / "list.csv"
    csv.write_text(
        "video,subject,class,start,end\n"
        "videos/S1/take/1.mp4,P1,pour,,\n"
        f"{videos_dir / 'S1' / 'take' / '1.mp4'},P1,pour,0.2,0.6\n"  # absolute path; t = .2 .3 .4 .5
        "videos/S2/open/7.avi,P2,open,0.3,\n"  # t = .3 .4 .5
        "videos/missing.mp4,P2,open,,\n"
    )
    out = tmp_path / "data"
    summary = prepare(None, out, csv=csv, short_side=48, flow_method="dis", progress=False)
    assert summary["processed"] == ["P1/pour/1", "P1/pour/2", "P2/open/1"]
    assert [f["key"] for f in summary["failed"]] == ["P2/open/2"]
    assert "missing.mp4" in summary["failed"][0]["error"]
    files = {k for k in snapshot(out) if not k.startswith(".")}
    assert files == expected_files("P1/pour/1", 8) | expected_files("P1/pour/2", 4) | expected_files("P2/open/1", 3)
    assert not (out / "processed_frames2" / "P2" / "open" / "2").exists()

    # passing the CSV as `videos` works too, and a bad header is a one-line FparError
    assert prepare(csv, out, short_side=48, flow_method="dis", progress=False)["skipped"] == summary["processed"]
    bad = tmp_path / "bad.csv"
    bad.write_text("path,subject\nx.mp4,P1\n")
    with pytest.raises(FparError, match="missing column.*class"):
        prepare(None, out, csv=bad, progress=False)


def test_prepare_failure_is_isolated_and_atomic(videos_dir, tmp_path, monkeypatch):
    out = tmp_path / "data"
    (out / TMP_NAME / "leftover").mkdir(parents=True)  # an interrupted earlier run
    (out / LOCK_NAME).write_text(f"999999999@{socket.gethostname()}\n")  # its stale lock (no such pid)

    import fpar.video.flow as flow_mod

    real = flow_mod.motion_map
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # dies half-way through the first video
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(flow_mod, "motion_map", flaky)
    summary = prepare(videos_dir, out, short_side=48, flow_method="dis", progress=False)
    assert summary["processed"] == ["S2/open/7"]
    assert summary["failed"] == [
        {
            "key": "S1/take/1",
            "source": str((videos_dir / "S1/take/1.mp4").resolve()),
            "error": "RuntimeError: simulated crash",
        }
    ]
    # nothing half-written is visible for the failed video, and no temporary files remain
    for top in ("processed_frames2", "flow_x_processed", "flow_y_processed"):
        assert not (out / top / "S1").exists()
    assert not (out / TMP_NAME).exists() and not (out / LOCK_NAME).exists()
    assert list(json.loads((out / MANIFEST_NAME).read_text())["videos"]) == ["S2/open/7"]

    monkeypatch.setattr(flow_mod, "motion_map", real)
    again = prepare(videos_dir, out, short_side=48, flow_method="dis", progress=False)
    assert again["processed"] == ["S1/take/1"] and again["skipped"] == ["S2/open/7"]


def test_prepare_lock_held(videos_dir, tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / LOCK_NAME).write_text(f"{os.getpid()}@{socket.gethostname()}\n")  # a live process holds it
    with pytest.raises(FparError, match="another prepare"):
        prepare(videos_dir, out, flow_method="dis", progress=False)


def test_prepare_frame_folders_and_workers(tmp_path):
    frames, _ = synth_frames(5)
    inst = tmp_path / "videos" / "S1" / "stir" / "3"
    inst.mkdir(parents=True)
    for i, f in enumerate(frames, 1):
        cv2.imwrite(str(inst / f"img_{i}.jpg"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    write_video(tmp_path / "videos" / "S1" / "stir" / "4.mp4", frames[:4])
    write_video(tmp_path / "videos" / "S2" / "stir" / "1.avi", frames[:3])
    out = tmp_path / "data"
    # two spawn workers: the worker entry point must be importable and its results picklable
    summary = prepare(
        tmp_path / "videos",
        out,
        short_side=None,
        flow_method="farneback",
        workers=2,
        frames_dir="frames",
        progress=False,
    )
    assert summary["processed"] == ["S1/stir/3", "S1/stir/4", "S2/stir/1"] and summary["failed"] == []
    files = {k for k in snapshot(out) if not k.startswith(".")}
    expect = expected_files("S1/stir/3", 5, "frames") | expected_files("S1/stir/4", 4, "frames")
    assert files == expect | expected_files("S2/stir/1", 3, "frames")
    assert Image.open(out / "frames/S1/stir/3/rgb/rgb0005.png").size == (W, H)  # short_side=None keeps the size


def test_prepare_input_errors(tmp_path):
    with pytest.raises(FparError, match="videos folder not found"):
        prepare(tmp_path / "nope", tmp_path / "out", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FparError, match="no videos found"):
        prepare(tmp_path / "empty", tmp_path / "out", progress=False)
    with pytest.raises(FparError, match="unknown flow method"):
        prepare(tmp_path / "empty", tmp_path / "out", flow_method="raft", progress=False)
    dup = tmp_path / "dup" / "S1" / "take"
    dup.mkdir(parents=True)
    (dup / "1.mp4").write_bytes(b"")
    (dup / "1.avi").write_bytes(b"")
    with pytest.raises(FparError, match="both become instance S1/take/1"):
        discover(tmp_path / "dup")


# ------------------------------------------------------------------------------------------------ prepare at scale


def test_prepare_tvl1_torch_batches_give_the_per_pair_flow(tmp_path):
    """--flow tvl1-torch: flows computed 3 pairs at a time are the flows of each pair alone (as written, 8-bit),
    and the summary times the camera step apart from the flow."""
    frames, _ = synth_frames(5)
    write_video(tmp_path / "videos" / "S1" / "take" / "1.mp4", frames)
    out = tmp_path / "data"
    summary = prepare(
        tmp_path / "videos", out, short_side=None, flow_method="tvl1-torch", flow_batch=3, flow_device="cpu",
        progress=False,
    )  # fmt: skip
    assert summary["processed"] == ["S1/take/1"] and summary["failed"] == []
    assert summary["flow_s"] > 0 and summary["camera_s"] > 0
    decoded = read_video(tmp_path / "videos" / "S1" / "take" / "1.mp4")
    greys = [to_grey(f) for f in decoded]
    for k in range(1, len(greys)):
        want = warp_flow(greys[k - 1], greys[k], "tvl1-torch")
        got = cv2.imread(str(out / f"flow_x_processed/S1/take/1/flow_x_{k:05d}.png"), cv2.IMREAD_GRAYSCALE)
        np.testing.assert_array_equal(got, encode_flow(want[..., 0]))
    # The batch size is not part of what was prepared: changing it redoes nothing.
    again = prepare(tmp_path / "videos", out, short_side=None, flow_method="tvl1-torch", flow_batch=1, progress=False)
    assert again["skipped"] == ["S1/take/1"] and again["processed"] == []


def test_prepare_progress_counts_frames_over_workers(tmp_path, capsys):
    frames, _ = synth_frames(6)
    write_video(tmp_path / "videos" / "S1" / "take" / "1.mp4", frames)
    write_video(tmp_path / "videos" / "S1" / "take" / "2.mp4", frames[:4])
    summary = prepare(tmp_path / "videos", tmp_path / "data", short_side=48, flow_method="dis", workers=2)
    assert summary["frames"] == 10
    err = capsys.readouterr().err
    assert "10/10" in err and "frame/s" in err and "videos 2/2" in err, err[-400:]


def _numbered_folder(folder: Path, numbers: list[int]) -> None:
    folder.mkdir(parents=True)
    frames, _ = synth_frames(len(numbers))
    for k, f in zip(numbers, frames):
        cv2.imwrite(str(folder / f"frame_{k:010d}.jpg"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))


def test_prepare_warns_about_strided_folders_not_gappy_ones(tmp_path, caplog):
    from fpar.data.frames import file_stride

    assert file_stride([f"frame_{k:010d}.jpg" for k in range(1, 60, 6)]) == 6
    assert file_stride(["rgb0001.png", "rgb0002.png", "rgb0004.png", "rgb0005.png", "rgb0006.png"]) is None
    assert file_stride(["a.png", "b.png"]) is None
    _numbered_folder(tmp_path / "videos" / "P01" / "cut" / "every6", list(range(1, 31, 6)))  # every 6th frame
    _numbered_folder(tmp_path / "videos" / "P01" / "cut" / "gappy", [1, 2, 3, 5, 6, 7, 8, 9, 11, 12])  # lost frames
    with caplog.at_level("WARNING", logger="fpar.video.prepare"):
        summary = prepare(tmp_path / "videos", tmp_path / "data", short_side=48, flow_method="dis", progress=False)
    assert summary["failed"] == []
    warned = [r.getMessage() for r in caplog.records if "steps of" in r.getMessage()]
    assert len(warned) == 1 and "every6 looks strided" in warned[0] and "steps of 6" in warned[0], warned
    assert summary["notes"] == [warned[0].removeprefix("prepare: ")]
