"""train.eval_memo_mb: a frozen prefix's features of the evaluation clips, kept in memory between epochs, exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fpar.config import load_config
from fpar.data.dataset import collate_clips
from fpar.engine.build import build_model, forward_batch, resolve_trainable, spec_of, to_channels_last
from fpar.engine.feature_cache import EvalMemo
from fpar.engine.stages import apply_trainable
from fpar.engine.trainer import _to, prepare, train
from fpar.errors import FparError
from tests.conftest import tiny_args

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STAGE1, STAGE2 = CONFIGS / "ego_rnn_stage1.yaml", CONFIGS / "ego_rnn_stage2.yaml"


def _rows(out: Path) -> list[dict]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]


def _model(cfg):
    """What the trainer evaluates: the stage's model with its trainable set, channels-last, in eval mode."""
    manifest, _, _, select_ds, _ = prepare(cfg)
    model, _ = build_model(cfg, manifest.vocab)
    trainable = apply_trainable(model, resolve_trainable(cfg))
    to_channels_last(model)
    return model.eval(), trainable, select_ds


def _batch(ds, items):
    return _to(collate_clips([ds[i] for i in items]), torch.device("cpu"))


MS = ["model.ego_rnn.ms.enabled=true", "model.ego_rnn.ms.layer=conv4"]  # training-only: evaluation never runs it


@pytest.mark.parametrize("config, cut, extra", [(STAGE1, "conv5", []), (STAGE2, "conv4", []), (STAGE2, "conv4", MS)])
def test_the_memo_gives_the_forward_s_logits_bit_for_bit(config, cut, extra, tiny_root):
    """Cold (computed and held), warm (from the memo, the clips not even decoded) and the plain forward agree."""
    cfg = load_config(config, [*tiny_args(tiny_root), *extra])
    model, trainable, ds = _model(cfg)
    memo = EvalMemo.for_run(cfg, spec_of(cfg), model, trainable)
    assert memo is not None and memo.plan.name == cut
    batch = _batch(ds, [0, 1, 2])
    with torch.no_grad():
        plain = forward_batch(model, cfg, batch, train=False).logits
        cold = memo.forward(model, batch, False).logits
        assert len(memo.store) == 1 and memo.held(int(batch["index"][0]), -1)
        ds.skip_rgb = memo.held
        skipped = _batch(ds, [0, 1, 2])
        assert skipped["rgb"] == [None, None, None]  # held clips are not decoded
        warm = memo.forward(model, skipped, False).logits
    assert torch.equal(plain, cold) and torch.equal(plain, warm)
    # the memo's entry is what the forward computes for these clips, the whole batch at once
    side = cfg.data.input_size // (32 if cut == "conv5" else 16)
    (held,) = memo.store.values()
    assert held.shape[:2] == (3, cfg.data.frames) and held.shape[-2:] == (side, side)


def test_batches_beyond_the_budget_are_computed_every_time(tiny_root):
    cfg = load_config(STAGE1, tiny_args(tiny_root))
    model, trainable, ds = _model(cfg)
    memo = EvalMemo.for_run(cfg, spec_of(cfg), model, trainable)
    first, second = _batch(ds, [0, 1]), _batch(ds, [2, 3])
    with torch.no_grad():
        memo.forward(model, first, False)
        per_batch = memo.bytes
        memo.budget = per_batch + 1  # room for the first batch only
        out = memo.forward(model, second, False).logits
        assert torch.equal(out, forward_batch(model, cfg, second, train=False).logits)
    assert len(memo.store) == 1 and memo.bytes == per_batch
    assert not memo.held(int(second["index"][0]), -1)


def test_a_skipped_batch_the_memo_does_not_hold_is_a_clear_error(tiny_root):
    cfg = load_config(STAGE1, tiny_args(tiny_root))
    model, trainable, ds = _model(cfg)
    memo = EvalMemo.for_run(cfg, spec_of(cfg), model, trainable)
    with torch.no_grad():
        memo.forward(model, _batch(ds, [0, 1]), False)
        ds.skip_rgb = memo.held
        regrouped = _batch(ds, [1, 2])  # clip 1 skipped, in a batch of other clips
        with pytest.raises(FparError, match="evaluation batches changed"):
            memo.forward(model, regrouped, False)


def test_the_family_s_forward_gets_a_copy_of_what_is_held(tiny_root):
    """A ``plan.forward`` that writes into its input cannot change what the next evaluation reads."""
    import dataclasses

    cfg = load_config(STAGE1, tiny_args(tiny_root))
    model, trainable, ds = _model(cfg)
    memo = EvalMemo.for_run(cfg, spec_of(cfg), model, trainable)
    real = memo.plan.forward

    def clobbering(model, feats, batch, train):
        out = real(model, feats, batch, train)
        feats.zero_()
        return out

    memo.plan = dataclasses.replace(memo.plan, forward=clobbering)
    batch = _batch(ds, [0, 1])
    with torch.no_grad():
        cold = memo.forward(model, batch, False).logits
        warm = memo.forward(model, batch, False).logits
    assert torch.equal(cold, warm)


def test_a_negative_budget_is_refused(tiny_root):
    with pytest.raises(FparError, match="train.eval_memo_mb"):
        load_config(STAGE1, [*tiny_args(tiny_root), "train.eval_memo_mb=-1"])


@pytest.mark.parametrize(
    "config, extra",
    [
        (STAGE1, ["train.eval_memo_mb=0"]),  # turned off
        (STAGE1, ["data.feature_cache=CACHE"]),  # the on-disk cache serves evaluation
        (STAGE1, ["train.trainable=[.]"]),  # nothing frozen
        (STAGE1, ["model.ego_rnn.repflow.enabled=true"]),  # the family refuses the cut: rep-flow mixes frames
    ],
)
def test_runs_without_a_frozen_per_frame_prefix_get_no_memo(config, extra, tiny_root, tmp_path):
    extra = [e.replace("CACHE", str(tmp_path / "cache")) for e in extra]
    cfg = load_config(config, [*tiny_args(tiny_root), *extra])
    model, trainable, _ = _model(cfg)
    assert EvalMemo.for_run(cfg, spec_of(cfg), model, trainable) is None


def test_a_stage_with_the_memo_equals_one_without_it_and_decodes_the_test_clips_once(tiny_root, tmp_path, monkeypatch):
    """Stage 1 then stage 2 (3 and 2 epochs), with the memo and without: the same metrics and weights bit for bit;
    with it, the 6 test videos are decoded at the first evaluation only."""
    import fpar.data.dataset as dataset_mod

    calls = []
    real = dataset_mod.read_rgb_many
    monkeypatch.setattr(dataset_mod, "read_rgb_many", lambda paths: calls.append(len(paths)) or real(paths))

    def run(name, *extra):
        calls.clear()
        s1, s2 = tmp_path / name / "s1", tmp_path / name / "s2"
        short = [*tiny_args(tiny_root), "train.max_batches=2", *extra]  # 2 training batches an epoch: seconds
        train(load_config(STAGE1, [*short, "train.epochs=3", f"out={s1}"]), log=lambda m: None)
        decoded = len(calls)
        cfg2 = [*short, "train.epochs=2", f"out={s2}", f"init.from={s1}"]
        train(load_config(STAGE2, cfg2), log=lambda m: None)
        weights = torch.load(s2 / "last.pt", weights_only=True)["model"]
        return _rows(s1), _rows(s2), weights, decoded

    off = run("off", "train.eval_memo_mb=0")
    on = run("on")
    assert on[0] == off[0] and on[1] == off[1]
    assert on[2].keys() == off[2].keys() and all(torch.equal(on[2][k], off[2][k]) for k in on[2])
    # stage 1: 2 training batches of 4 clips an epoch (no batch decoded past train.max_batches), and the 6 test
    # clips once with the memo, at all 3 evaluations without
    assert off[3] - on[3] == 2 * 6 and on[3] == 3 * 2 * 4 + 6


def test_several_batches_workers_and_sparse_evaluations_give_the_same_run(tiny_root, tmp_path):
    """Two evaluation batches (4 + 2 clips), a DataLoader worker (which gets a copy of the held clips as each
    evaluation starts) and an evaluation every second epoch: the same metrics and weights with the memo as without."""
    extra = [
        "train.epochs=4",
        "train.eval_every=2",
        "train.eval_batch_size=4",
        "data.num_workers=1",
        "train.max_batches=1",
    ]

    def run(name, *more):
        out = tmp_path / name
        train(load_config(STAGE1, [*tiny_args(tiny_root), *extra, f"out={out}", *more]), log=lambda m: None)
        return _rows(out), torch.load(out / "last.pt", weights_only=True)["model"]

    off_rows, off_w = run("off", "train.eval_memo_mb=0")
    on_rows, on_w = run("on")
    assert on_rows == off_rows and [r["epoch"] for r in on_rows if "val_top1" in r] == [2, 4]
    assert all(torch.equal(on_w[k], off_w[k]) for k in on_w)
