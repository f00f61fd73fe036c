"""data.frame_cache: frames decoded once into memory-mapped files (`fpar data cache`), clips equal to decoded ones."""

from __future__ import annotations

import copy
import os
import shutil

import numpy as np
import pytest
import torch

from fpar.cli import main
from fpar.config import DataConfig
from fpar.data.dataset import ClipDataset
from fpar.data.frame_cache import FrameCache, build_frame_cache
from fpar.data.readers import read_dataset
from fpar.errors import FparError
from tests.native_datasets import make_egtea


def _with_cache(cfg: DataConfig, folder) -> DataConfig:
    out = copy.deepcopy(cfg)
    out.frame_cache = str(folder)
    return out


def _items(ds: ClipDataset, n: int) -> list[dict]:
    return [ds[i] for i in range(min(n, len(ds)))]


def _same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["draw"] == y["draw"] and x["index"] == y["index"]
        assert torch.equal(x["rgb"], y["rgb"])


@pytest.mark.parametrize("train", [True, False])
def test_cached_clips_equal_decoded_clips(tiny_root, tmp_path, train):
    cfg = DataConfig(root=str(tiny_root), frames=5, input_size=48, scale_size=56)
    manifest = read_dataset(cfg)
    s = build_frame_cache(manifest, tmp_path / "fc")
    usable = [i for i, v in enumerate(manifest.videos) if v.usable]
    assert s["written"] == len(usable) and s["current"] == 0
    assert s["frames"] == sum(manifest.videos[i].num_frames for i in usable)
    plain = ClipDataset(manifest, usable, cfg, train=train, seed=3)
    cached = ClipDataset(manifest, usable, _with_cache(cfg, tmp_path / "fc"),
                         train=train, seed=3)  # fmt: skip
    for epoch in (0, 1):
        plain.set_epoch(epoch)
        cached.set_epoch(epoch)
        _same(_items(plain, 6), _items(cached, 6))
    assert cached.frame_cache.misses == 0
    # A frame of the cached array is the decoded frame, pixel for pixel.
    v = manifest.videos[usable[0]]
    from fpar.data.imageio import read_rgb

    np.testing.assert_array_equal(cached.frame_cache.frames(v, [2])[0], read_rgb(v.rgb[2]))


def test_changed_sources_are_decoded_and_rebuild_skips_current_entries(tiny_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_root, root)
    cfg = DataConfig(root=str(root), frames=5, input_size=48, scale_size=56)
    manifest = read_dataset(cfg)
    first = build_frame_cache(manifest, tmp_path / "fc")
    usable = [i for i, v in enumerate(manifest.videos) if v.usable]
    v = manifest.videos[usable[0]]
    last = v.rgb[-1]
    os.utime(last, ns=(os.stat(last).st_atime_ns, os.stat(last).st_mtime_ns + 10**9))  # the source changed
    fc = FrameCache(tmp_path / "fc")
    assert v not in fc and manifest.videos[usable[1]] in fc
    cached = ClipDataset(manifest, usable[:2], _with_cache(cfg, tmp_path / "fc"))
    plain = ClipDataset(manifest, usable[:2], cfg)
    _same(_items(plain, 2), _items(cached, 2))  # the changed video is decoded, the other read from the cache
    assert cached.frame_cache.misses == 1
    again = build_frame_cache(manifest, tmp_path / "fc")
    assert again["written"] == 1 and again["current"] == first["written"] - 1


def test_mp4_clips_cache_equals_decoding(tmp_path):
    make_egtea(tmp_path / "egtea")
    cfg = DataConfig(root=str(tmp_path / "egtea"), format="egtea", frames=4, input_size=32, scale_size=40)
    manifest = read_dataset(cfg)
    usable = [i for i, v in enumerate(manifest.videos) if v.usable][:4]
    build_frame_cache(manifest, tmp_path / "fc", videos=usable)
    plain = ClipDataset(manifest, usable, cfg, train=True)
    cached = ClipDataset(manifest, usable, _with_cache(cfg, tmp_path / "fc"),
                         train=True)  # fmt: skip
    _same(_items(plain, 4), _items(cached, 4))
    assert cached.frame_cache.misses == 0  # read from the cache, not decoded again


def test_cli_builds_and_a_missing_cache_is_a_one_line_error(tiny_root, tmp_path, capsys):
    assert main(["data", "cache", str(tiny_root), "--out", str(tmp_path / "fc")]) == 0
    out = capsys.readouterr().out
    assert f"data.frame_cache={tmp_path / 'fc'}" in out and "written" in out
    with pytest.raises(FparError, match="no frame cache there"):
        FrameCache(tmp_path / "nothing")
