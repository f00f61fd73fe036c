"""Sampling indices, clip-consistent transforms, flow flipping, motion-map targets."""

import numpy as np
import pytest
import torch

from fpar.config import DataConfig
from fpar.data.dataset import ClipDataset
from fpar.data.layout import discover
from fpar.data.sampling import flow_stack_start, flow_stack_starts, stack_indices, uniform_indices
from fpar.data.transforms import (
    FLOW_MEAN,
    FLOW_STD,
    POSITIONS,
    SCALES,
    CropParams,
    apply_crop,
    crop_box,
    crop_rgb,
    downsample_mmaps,
    draw_code,
    draw_from_code,
    draw_params,
    draw_pool,
    normalize_rgb,
    transform_flow,
    transform_mmaps,
    transform_rgb,
)


@pytest.mark.parametrize(
    "n,t,expected",
    [
        (20, 7, [0, 2, 5, 8, 11, 14, 17]),  # floor(k*20/7)
        (10, 5, [0, 2, 4, 6, 8]),
        (3, 7, [0, 0, 0, 1, 1, 2, 2]),  # N < T: frames repeat
        (16, 16, list(range(16))),
    ],
)
def test_uniform_indices_seed_formula(n, t, expected):
    assert uniform_indices(n, t) == expected


def test_uniform_indices_original_egornn_formula():
    # floor(linspace(1, 20, 7, endpoint=False)) = [1, 3, 6, 9, 11, 14, 17] (1-based) -> 0-based
    assert uniform_indices(20, 7, method="egornn") == [0, 2, 5, 8, 10, 13, 16]


def test_flow_stack_sampling():
    assert flow_stack_start(20, 5, train=False) == 7  # centred: (20-5)//2
    assert flow_stack_start(4, 5, train=False) == 0
    rng = np.random.default_rng(0)
    starts = {flow_stack_start(12, 5, train=True, rng=rng) for _ in range(500)}
    assert starts == set(range(8))  # 0..N-L inclusive
    assert flow_stack_starts(20, 5, 5) == [0, 3, 6, 9, 12]
    assert stack_indices(2, 5, 4) == [2, 3, 3, 3, 3]  # short video: last flow repeats


def test_crop_box_positions():
    # 455x256 frame, scale to 256 (r = 1), crop 0.75*256 = 192
    w, h = 455, 256
    kw = dict(scale_size=256, input_size=224)
    assert crop_box(w, h, CropParams(0.75, "tl", False, True), **kw) == (0, 0, 192, 192)
    assert crop_box(w, h, CropParams(0.75, "br", False, True), **kw) == (263, 64, 455, 256)
    assert crop_box(w, h, CropParams(0.75, "tr", False, True), **kw) == (263, 0, 455, 192)  # not one pixel short
    assert crop_box(w, h, CropParams(1.0, "c", False, True), **kw) == (100, 0, 356, 256)
    assert crop_box(w, h, CropParams(train=False), **kw) == (116, 16, 340, 240)  # centre 224 crop
    # a 228x128 frame scaled x2 to 256: the same crops in original pixels
    assert crop_box(228, 128, CropParams(train=False), **kw) == (58, 8, 170, 120)


def _ramp(h=40, w=60):
    """Frames whose pixel values encode their own x position: a crop or flip is visible in the values."""
    x = np.tile(np.arange(w, dtype=np.uint8) * 4, (h, 1))
    return x


def test_one_draw_shared_by_every_modality_and_flip_inverts_x_flow():
    ramp = _ramp()
    rgb = [np.stack([ramp] * 3, -1)] * 3
    p = CropParams(0.75, "tl", True, True)
    kw = dict(scale_size=40, input_size=32)
    r = transform_rgb(rgb, p, **kw)  # (3, 3, 32, 32)
    mm = transform_mmaps([(ramp > 100).astype(np.uint8)] * 3, p, **kw)
    f = transform_flow([ramp] * 2, [ramp] * 2, p, **kw)  # (4, 32, 32)
    # all modalities took the same (flipped) columns: the value decreases left to right in every one
    col_rgb = r[0, 0, 0].numpy()
    assert col_rgb[0] > col_rgb[-1]
    assert mm[0, 0, 0] == 1 and mm[0, 0, -1] == 0  # flipped: bright (moving) part now on the left
    fy = f[1].numpy() * FLOW_STD + FLOW_MEAN
    fx = f[0].numpy() * FLOW_STD + FLOW_MEAN
    assert fy[0, 0] > fy[0, -1]  # y-flow only mirrored
    # x-flow mirrored AND negated around 128: v -> 256 - v
    np.testing.assert_allclose(fx * 255, np.clip(256 - fy * 255, 0, 255), atol=1e-3)
    noflip = transform_flow([ramp] * 2, [ramp] * 2, CropParams(0.75, "tl", False, True), **kw)
    np.testing.assert_allclose(noflip[0].numpy()[:, ::-1], f[1].numpy(), atol=1e-5)


def test_crop_rgb_equals_the_per_frame_crop_stack_and_flip_for_every_draw():
    """crop_rgb resizes and flips each frame into its slot of the clip; the pixels are those of the plain chain
    (apply_crop per frame, stack, mirror) for all 40 draws and the test transform, shrinking and enlarging."""
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (50, 90, 3), dtype=np.uint8) for _ in range(3)]
    kw = dict(scale_size=50, input_size=40)  # crop sides 50, 44, 38, 33 px: resized down, and up to 40
    draws = [CropParams(s, pos, flip, True) for s in SCALES for pos in POSITIONS for flip in (False, True)]
    for p in draws + [CropParams()]:
        box = crop_box(90, 50, p, **kw)
        expected = np.stack([apply_crop(f, box, 40) for f in frames])  # (T, S, S, 3)
        if p.flip:
            expected = expected[:, :, ::-1]
        got = crop_rgb(frames, p, **kw)  # (T, 3, S, S)
        assert got.dtype == torch.uint8 and got.shape == (3, 3, 40, 40)
        assert np.array_equal(got.permute(0, 2, 3, 1).numpy(), expected), p


def test_read_rgb_equals_bgr_decoding_swapped(tmp_path):
    """read_rgb decodes straight to RGB where OpenCV can: the same pixels as BGR decoding and cvtColor, for a PNG,
    a JPEG and a JPEG inside a tar (the EPIC-KITCHENS layout)."""
    import tarfile

    import cv2

    from fpar.data.imageio import read_rgb

    img = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), img)
    cv2.imwrite(str(tmp_path / "a.jpg"), img)
    with tarfile.open(tmp_path / "f.tar", "w") as tar:
        tar.add(tmp_path / "a.jpg", arcname="./frame_0000000001.jpg")
    for path, ref in [
        (tmp_path / "a.png", tmp_path / "a.png"),
        (tmp_path / "a.jpg", tmp_path / "a.jpg"),
        (f"{tmp_path / 'f.tar'}::./frame_0000000001.jpg", tmp_path / "a.jpg"),
    ]:
        expected = cv2.cvtColor(cv2.imread(str(ref), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        assert np.array_equal(read_rgb(str(path)), expected), path


def test_png_frames_decode_to_the_same_pixels_through_libspng_and_opencv(tmp_path, monkeypatch):
    """read_rgb decodes 8-bit RGB PNG files with libspng (the `fast-png` extra) and every other image with OpenCV:
    every kind gives OpenCV's pixels, with or without libspng; a truncated PNG is still a one-line error."""
    import cv2
    from PIL import Image

    from fpar.data import imageio
    from fpar.data.imageio import ImageError, read_rgb

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    cv2.imwrite(str(tmp_path / "rgb_level0.png"), rgb[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 0])
    cv2.imwrite(str(tmp_path / "rgb_level9.png"), rgb[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9])
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(tmp_path / "rgba.png")
    Image.fromarray(rgb).quantize(16).save(tmp_path / "palette.png")
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb.astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "jpeg_named.png.jpg"), rgb)
    (tmp_path / "jpeg_named.png.jpg").rename(tmp_path / "jpeg_named.png")  # a JPEG behind a .png name
    kinds = ["rgb", "rgb_level0", "rgb_level9", "grey", "rgba", "palette", "rgb16", "jpeg_named"]

    class Counting:  # libspng, counting the frames it decodes
        calls = 0

        @classmethod
        def load(cls, data):
            cls.calls += 1
            return real.load(data)

    real = imageio.pyspng
    if real is not None:
        monkeypatch.setattr(imageio, "pyspng", Counting)
    for kind in kinds:
        path = str(tmp_path / f"{kind}.png")
        expected = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        got = read_rgb(path)
        assert got.dtype == np.uint8 and np.array_equal(got, expected), kind
    if real is not None:
        assert Counting.calls == 3  # the three 8-bit RGB PNGs; the others went to OpenCV
    monkeypatch.setattr(imageio, "pyspng", None)  # without the extra: OpenCV decodes them all, the same pixels
    assert np.array_equal(read_rgb(str(tmp_path / "rgb.png")), rgb)

    monkeypatch.setattr(imageio, "pyspng", real)
    data = (tmp_path / "rgb.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="cut.png cannot be decoded"):
        read_rgb(str(tmp_path / "cut.png"))
    with pytest.raises(ImageError, match="missing.png is missing"):
        read_rgb(str(tmp_path / "missing.png"))


def test_still_flow_stays_still_when_flipped():
    still = [np.full((40, 60), 128, np.uint8)] * 2
    f = transform_flow(still, still, CropParams(1.0, "c", True, True), scale_size=40, input_size=32)
    np.testing.assert_allclose(f.numpy() * FLOW_STD + FLOW_MEAN, 128 / 255, atol=1e-6)


def test_dataset_shares_one_draw_per_clip(tiny_root):
    """In a real clip every frame got the same crop: flow and mmaps agree with RGB on the flip."""
    m = discover(tiny_root)
    cfg = DataConfig(frames=4, input_size=64, scale_size=64)
    ds = ClipDataset(m, list(range(len(m.videos))), cfg, modalities=("rgb", "flow", "mmaps"), train=True)
    item = ds[0]
    rng = np.random.default_rng([0, 0, ds.indices[0], 1])
    p = draw_params(rng, train=True)
    v = m.videos[ds.indices[0]]
    from fpar.data.imageio import read_rgb

    idx = uniform_indices(v.num_frames, 4)
    expected = transform_rgb([read_rgb(v.rgb[k]) for k in idx], p, scale_size=64, input_size=64)
    assert item["rgb"].dtype == torch.uint8  # the crop; normalize_rgb makes the model's input on the device
    torch.testing.assert_close(normalize_rgb(item["rgb"]), expected, rtol=0, atol=0)
    assert ds[0]["rgb"].equal(item["rgb"])  # deterministic for (seed, epoch, video)
    draws = set()
    for epoch in range(6):  # a new epoch draws a new crop/flip
        ds.set_epoch(epoch)
        draws.add(draw_params(np.random.default_rng([0, epoch, ds.indices[0], 1]), train=True))
    assert len(draws) > 1


def test_draw_codes_name_every_training_draw_once():
    codes = [draw_code(draw_from_code(c)) for c in range(40)]
    assert codes == list(range(40))
    # code = (scale index * 5 + position index) * 2 + flip
    assert draw_from_code(0) == CropParams(1.0, "c", False, True)
    assert draw_from_code(13) == CropParams(0.875, "tl", True, True)
    assert draw_from_code(39) == CropParams(0.65625, "br", True, True)
    for bad in (-1, 40):
        with pytest.raises(ValueError, match="0..39"):
            draw_from_code(bad)


def test_draw_pool_limits_each_video_to_k_fixed_draws_and_keeps_its_other_choices(tiny_root):
    """data.draw_pool=K: each block of K epochs shows each of a video's K pooled draws exactly once (the pool fixed
    for the seed, other videos other pools, the order drawn per block), its pixels are that draw's crop, and the
    clip's other random choices (its static frame) are those of the run without a pool. Test clips keep the test
    transform."""
    m = discover(tiny_root)
    videos = list(range(len(m.videos)))
    pooled = ClipDataset(m, videos, DataConfig(frames=3, input_size=32, scale_size=32, draw_pool=3), train=True)
    plain = ClipDataset(m, videos, DataConfig(frames=3, input_size=32, scale_size=32), train=True)
    shown: dict[int, list[int]] = {}
    for epoch in range(30):
        pooled.set_epoch(epoch)
        plain.set_epoch(epoch)
        for i in range(4):
            a, b = pooled[i], plain[i]
            shown.setdefault(a["index"], []).append(a["draw"])
            assert a["static_idx"] == b["static_idx"]
    pools = {vid: draw_pool(0, vid, 3) for vid in shown}
    assert all(len(set(p)) == 3 for p in pools.values())
    for vid, draws in shown.items():  # every block of 3 epochs: the pool, each draw once
        assert [sorted(draws[e : e + 3]) for e in range(0, 30, 3)] == [pools[vid]] * 10
    assert len({tuple(d[:3]) for d in shown.values()} | {tuple(d[3:6]) for d in shown.values()}) > 1  # orders vary
    assert len({tuple(p) for p in pools.values()}) > 1  # each video its own pool
    assert draw_pool(1, 0, 3) != draw_pool(0, 0, 3) or draw_pool(2, 0, 3) != draw_pool(0, 0, 3)  # and each seed
    # the pixels are the pooled draw's crop
    item = pooled[0]
    v = m.videos[item["index"]]
    from fpar.data.imageio import read_rgb

    frames = [read_rgb(v.rgb[k]) for k in uniform_indices(v.num_frames, 3)]
    expected = transform_rgb(frames, draw_from_code(item["draw"]), scale_size=32, input_size=32)
    torch.testing.assert_close(normalize_rgb(item["rgb"]), expected, rtol=0, atol=0)
    test = ClipDataset(m, videos, DataConfig(frames=3, input_size=32, scale_size=32, draw_pool=3), train=False)
    assert test[0]["draw"] == -1


def test_downsample_bw_hand_computed():
    m = torch.zeros(8, 8)
    m[1, 1] = 1  # block (0,0) centre pixel for s=4 is (1,1)
    m[0, 4] = 1  # not a centre pixel: ignored by plain downsampling
    m[6:8, 6:8] = 1
    out = downsample_mmaps(m, 4, "bw")
    expected = torch.zeros(4, 4)
    expected[0, 0] = 1
    expected[3, 3] = 1
    torch.testing.assert_close(out, expected)


def test_downsample_grid_hand_computed():
    m = torch.zeros(4, 4)
    m[0, 0] = 1
    m[0, 1] = 1
    m[3, 3] = 1
    out = downsample_mmaps(m, 2, "grid")
    torch.testing.assert_close(out, torch.tensor([[0.5, 0.0], [0.0, 0.25]]))
    # adaptive when blocks do not divide evenly: 5 -> 2 uses overlapping blocks [0:3], [2:5]
    m5 = torch.ones(5, 5)
    m5[:2] = 0
    torch.testing.assert_close(downsample_mmaps(m5, 2, "grid"), torch.tensor([[1 / 3, 1 / 3], [1.0, 1.0]]))


def test_downsample_224_sizes_and_batch_shape():
    m = (torch.rand(2, 3, 224, 224) > 0.5).float()
    for s in (7, 14, 28):
        assert downsample_mmaps(m, s, "bw").shape == (2, 3, s, s)
        g = downsample_mmaps(m, s, "grid")
        torch.testing.assert_close(g.mean(), m.mean(), atol=1e-5, rtol=0)  # block means preserve the mean
    # bw samples pixel 16 + 32 i at 7x7
    torch.testing.assert_close(downsample_mmaps(m, 7, "bw"), m[..., 16::32, 16::32])


def test_pretraining_colour_jitter_by_hand():
    """`fpar pretrain`'s photometric jitter: gain x per-channel tint, plus an offset, rounded and clipped; the
    draws come after the frame and crop draws, so a run without jitter draws every crop as before."""
    from fpar.engine.pretrain import jitter_colour

    img = np.array([[[10, 128, 250], [0, 64, 200]]], dtype=np.uint8)  # (1, 2, 3)
    rng = np.random.default_rng(7)
    gain, tint, offset = rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2, size=3), rng.uniform(-0.2, 0.2) * 64
    want = np.clip(np.floor(img * (gain * tint) + offset + 0.5), 0, 255).astype(np.uint8)
    got = jitter_colour(img, np.random.default_rng(7), 0.2)
    assert np.array_equal(got, want) and got.dtype == np.uint8 and not np.array_equal(got, img)
    assert np.array_equal(jitter_colour(img, np.random.default_rng(0), 0.0), img)  # strength 0: the image itself
