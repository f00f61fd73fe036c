"""data.feature_cache: a frozen trunk's per-clip features written once per (video, draw) and read back exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fpar.config import load_config
from fpar.data.transforms import normalize_rgb
from fpar.engine.trainer import train
from fpar.errors import FparError
from tests.conftest import tiny_args

STAGE1 = Path(__file__).resolve().parents[1] / "configs" / "ego_rnn_stage1.yaml"


def _cfg(root, out, *extra):
    return load_config(STAGE1, [*tiny_args(root), "train.epochs=3", f"out={out}", *extra])


def _run(root, out, *extra) -> tuple[dict, list[dict]]:
    train(_cfg(root, out, *extra), log=lambda m: None)
    weights = torch.load(out / "last.pt", weights_only=True)["model"]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return weights, rows


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in ("time_s", "cache_hit_rate")} for r in rows]


def test_a_warm_cache_is_bit_identical_to_a_cold_one_and_close_to_no_cache(tiny_root, tmp_path):
    cache = tmp_path / "cache"
    none_w, none_rows = _run(tiny_root, tmp_path / "none")
    cold_w, cold_rows = _run(tiny_root, tmp_path / "cold", f"data.feature_cache={cache}")
    warm_w, warm_rows = _run(tiny_root, tmp_path / "warm", f"data.feature_cache={cache}")
    assert all(torch.equal(cold_w[k], warm_w[k]) for k in cold_w)
    assert _strip(cold_rows) == _strip(warm_rows)
    assert cold_rows[0]["cache_hit_rate"] == 0.0 and [r["cache_hit_rate"] for r in warm_rows] == [1.0, 1.0, 1.0]
    # against the run without a cache (the whole batch through the trunk at once): float rounding only
    assert max((none_w[k] - cold_w[k]).abs().max().item() for k in none_w) < 1e-5
    for a, b in zip(none_rows, cold_rows, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
        assert a["val_top1"] == b["val_top1"]
    # one folder per trunk fingerprint; one entry per (video, draw) seen: 18 training videos x 3 epochs at most,
    # plus the 6 test videos' test transform
    (sub,) = [p for p in cache.iterdir() if p.is_dir()]
    entries = list(sub.rglob("*.npy"))
    tests = [p for p in entries if p.name == "d00.npy"]
    assert len(tests) == 6 and len(entries) <= 18 * 3 + 6
    assert not list(sub.rglob("*.tmp"))


def test_stored_features_are_the_prefix_of_one_clip(tiny_root, tmp_path):
    """An entry holds exactly what the trunk gives for that clip's frames and draw."""
    from fpar.data.dataset import ClipDataset, make_splits
    from fpar.data.readers import read_dataset
    from fpar.engine.run import open_run

    cache = tmp_path / "cache"
    run = tmp_path / "r"
    train(_cfg(tiny_root, run, f"data.feature_cache={cache}", "train.epochs=1"), log=lambda m: None)
    r = open_run(run, "last")
    cfg = r.cfg
    manifest = read_dataset(cfg.data)
    test = make_splits(manifest, cfg.data).test
    ds = ClipDataset(manifest, test, cfg.data, modalities=("rgb",), train=False)
    item = ds[0]
    (sub,) = [p for p in cache.iterdir() if p.is_dir()]
    stored = np.load(sub / f"v{item['index']:06d}" / "d00.npy")
    with torch.no_grad():
        feats = r.spec.feature_cache[0].prefix(r.model, normalize_rgb(item["rgb"]))  # stage 1: the conv5 cut
    assert stored.dtype == np.float32 and stored.shape == tuple(feats.shape)
    assert np.array_equal(stored, feats.contiguous().numpy())


def test_float16_entries_are_used_as_stored(tiny_root, tmp_path):
    cache = tmp_path / "cache16"
    args = (f"data.feature_cache={cache}", "data.feature_cache_dtype=float16", "train.epochs=2")
    cold_w, _ = _run(tiny_root, tmp_path / "cold", *args)
    warm_w, _ = _run(tiny_root, tmp_path / "warm", *args)
    assert all(torch.equal(cold_w[k], warm_w[k]) for k in cold_w)
    one = next(cache.rglob("*.npy"))
    assert np.load(one).dtype == np.float16


def test_other_weights_get_their_own_entries(tiny_root, tmp_path):
    """The fingerprint covers the trunk's weights: another init never reads the first one's features."""
    cache = tmp_path / "cache"
    _run(tiny_root, tmp_path / "a", f"data.feature_cache={cache}", "train.epochs=1", "seed=0")
    _run(tiny_root, tmp_path / "b", f"data.feature_cache={cache}", "train.epochs=1", "seed=1")
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 2


@pytest.mark.parametrize(
    "extra, message",
    [
        (["train.trainable=[.]"], "needs a frozen trunk, but this stage trains backbone"),
        (["train.trainable=[backbone.layer3.0.conv1.weight, lstm]"], "trains backbone.layer3.0.conv1.weight"),
        (["train.bn_train=[backbone.layer3]"], "trains its BatchNorm"),
        (["model.ms.enabled=true"], "the MS head reads the trunk's conv features"),
        (["model.name=flow_resnet", "train.trainable=[fc_action]"], "has no frozen per-frame trunk"),
    ],
)
def test_stages_that_cannot_use_the_cache_are_refused(extra, message, tiny_root, tmp_path):
    with pytest.raises(FparError, match=message):
        train(_cfg(tiny_root, tmp_path / "r", f"data.feature_cache={tmp_path / 'c'}", *extra), log=lambda m: None)
    assert not (tmp_path / "r" / "last.pt").exists()


def test_stage2_caches_the_trunk_up_to_layer3_exactly(tiny_root, tmp_path):
    """A stage that trains layer4 (Ego-RNN stage 2) caches the stem and layers 1-3: a warm run is bit-identical to
    the cold one, close to the run without the cache, its entries are the layer3 maps, and layer4 did train."""
    stage1 = tmp_path / "s1"
    train(_cfg(tiny_root, stage1, "train.epochs=1"), log=lambda m: None)
    stage2 = Path(__file__).resolve().parents[1] / "configs" / "ego_rnn_stage2.yaml"
    cache = tmp_path / "cache"

    def run(out, *extra):
        cfg = load_config(
            stage2, [*tiny_args(tiny_root), "train.epochs=2", f"out={out}", f"init.from={stage1}", *extra]
        )
        train(cfg, log=lambda m: None)
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        return torch.load(out / "last.pt", weights_only=True)["model"], rows

    none_w, none_rows = run(tmp_path / "none")
    cold_w, cold_rows = run(tmp_path / "cold", f"data.feature_cache={cache}")
    warm_w, warm_rows = run(tmp_path / "warm", f"data.feature_cache={cache}")
    assert all(torch.equal(cold_w[k], warm_w[k]) for k in cold_w) and _strip(cold_rows) == _strip(warm_rows)
    assert [r["cache_hit_rate"] for r in warm_rows] == [1.0, 1.0]
    assert max((none_w[k] - cold_w[k]).abs().max().item() for k in none_w) < 1e-5
    for a, b in zip(none_rows, cold_rows, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5) and a["val_top1"] == b["val_top1"]
    s1 = torch.load(stage1 / "last.pt", weights_only=True)["model"]
    key = next(k for k in cold_w if k.startswith("backbone.layer4.") and k.endswith("conv1.weight"))
    assert not torch.equal(cold_w[key], s1[key])  # layer4 trained through the cached path
    assert torch.equal(cold_w["backbone.layer3.0.conv1.weight"], s1["backbone.layer3.0.conv1.weight"])
    (sub,) = [p for p in cache.iterdir() if p.is_dir()]
    entry = np.load(next(sub.rglob("d00.npy")))
    cfg = load_config(stage2, tiny_args(tiny_root))
    side = cfg.data.input_size // 16  # layer3 output: stride 16
    assert entry.shape == (cfg.data.frames, 256, side, side) and entry.dtype == np.float32


def test_a_warm_cache_decodes_no_frames(tiny_root, tmp_path, monkeypatch):
    """With every (video, draw) cached, the loader skips decoding: the datasets' frame reader is never called, and
    a run gives the weights of the run that filled the cache."""
    import fpar.data.dataset as dataset_mod

    cache = tmp_path / "cache"
    cold_w, _ = _run(tiny_root, tmp_path / "cold", f"data.feature_cache={cache}", "train.epochs=1")
    calls = []
    real = dataset_mod.read_rgb_many
    monkeypatch.setattr(dataset_mod, "read_rgb_many", lambda paths: calls.append(len(paths)) or real(paths))
    warm_w, rows = _run(tiny_root, tmp_path / "warm", f"data.feature_cache={cache}", "train.epochs=1")
    assert all(torch.equal(cold_w[k], warm_w[k]) for k in cold_w)
    assert rows[0]["cache_hit_rate"] == 1.0
    assert calls == [], f"{len(calls)} clips decoded with a warm cache"


def test_a_draw_pool_bounds_the_entries_and_its_warm_run_is_bit_identical(tiny_root, tmp_path):
    """data.draw_pool=2: at most 2 entries per training video whatever the epochs, every one of them a pooled draw,
    the cache full after 2 epochs (the pool is cycled through), and the warm run equals the cold one."""
    from fpar.data.transforms import draw_pool

    cache = tmp_path / "cache"
    args = (f"data.feature_cache={cache}", "data.draw_pool=2", "train.epochs=5")
    cold_w, cold_rows = _run(tiny_root, tmp_path / "cold", *args)
    warm_w, warm_rows = _run(tiny_root, tmp_path / "warm", *args)
    assert all(torch.equal(cold_w[k], warm_w[k]) for k in cold_w)
    assert _strip(cold_rows) == _strip(warm_rows) and [r["cache_hit_rate"] for r in warm_rows] == [1.0] * 5
    (sub,) = [p for p in cache.iterdir() if p.is_dir()]
    for video in sub.iterdir():
        draws = sorted(int(e.stem[1:]) - 1 for e in video.glob("d*.npy") if e.name != "d00.npy")  # d00: test
        assert set(draws) <= set(draw_pool(0, int(video.name[1:]), 2))
    trained = [v for v in sub.iterdir() if any(e.name != "d00.npy" for e in v.glob("d*.npy"))]
    assert len(trained) == 18  # every training video, each within its pool of 2
    # epoch 2 on, every clip is a hit; epoch 1's hits are the 6 evaluation clips (the test transform, cached at 0)
    assert [r["cache_hit_rate"] for r in cold_rows] == [0.0, 6 / 24, 1.0, 1.0, 1.0]


def test_bad_draw_pool_is_refused(tiny_root, tmp_path):
    with pytest.raises(FparError, match=r"data.draw_pool' must be in 0..40"):
        _cfg(tiny_root, tmp_path / "x", "data.draw_pool=41")


def test_stale_temporaries_are_swept_and_fresh_ones_kept(tmp_path):
    import os
    import time

    from fpar.utils import sweep_stale_temporaries

    (tmp_path / "v000001").mkdir()
    old = tmp_path / "v000001" / ".d01.npy.123.tmp"
    new = tmp_path / "v000001" / ".d02.npy.456.tmp"
    keep = tmp_path / "v000001" / "d03.npy"
    for p in (old, new, keep):
        p.write_bytes(b"x")
    hour_ago = time.time() - 7200
    os.utime(old, (hour_ago, hour_ago))
    os.utime(keep, (hour_ago, hour_ago))
    assert sweep_stale_temporaries(tmp_path, "v*/.*.tmp") == 1
    assert not old.exists() and new.exists() and keep.exists()


def test_an_entry_damaged_after_loading_is_removed_so_the_next_run_recomputes_it(tiny_root, tmp_path):
    cache = tmp_path / "cache"
    first, _ = _run(tiny_root, tmp_path / "a", f"data.feature_cache={cache}", "train.epochs=1")
    entries = sorted(cache.glob("*/v*/d*.npy"))
    entries[0].write_bytes(b"")  # a crash mid-write left an empty file under the final name
    with pytest.raises(FparError, match="is removed"):
        _run(tiny_root, tmp_path / "b", f"data.feature_cache={cache}", "train.epochs=1")
    assert not entries[0].exists()
    again, _ = _run(tiny_root, tmp_path / "c", f"data.feature_cache={cache}", "train.epochs=1")
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_entries_computed_on_a_gpu_are_kept_apart_from_the_cpu_s():
    """The fingerprint holds the device a GPU run computes on (its kernels round otherwise); a CPU run's is the one
    it always was, so existing caches stay warm."""
    from types import SimpleNamespace

    from fpar.engine.feature_cache import _fingerprint
    from fpar.registry import model_spec
    from tests.test_models import tiny_ego

    cfg, model = load_config(STAGE1, []), tiny_ego()
    plan, manifest = model_spec("ego_rnn").feature_cache[0], SimpleNamespace(fingerprint=lambda: "manifest")
    cpu = _fingerprint(cfg, model, plan, manifest)
    assert _fingerprint(cfg, model, plan, manifest, "cpu") == cpu
    assert _fingerprint(cfg, model, plan, manifest, "cuda") != cpu
