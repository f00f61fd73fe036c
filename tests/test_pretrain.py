"""`fpar pretrain`: BatchNorm statistics are re-estimated once, after the last epoch."""

from __future__ import annotations

import torch

from fpar.engine import pretrain


def _train(root, out, **kw):
    return pretrain.pretrain_backbone(
        str(root),
        out,
        epochs=2,
        per_video=2,
        batch_size=8,
        input_size=32,
        scale_size=40,
        progress=False,
        log=lambda m: None,
        **kw,
    )


def test_final_backbone_does_not_depend_on_the_running_statistics_between_epochs(tiny_root, tmp_path, monkeypatch):
    """The re-estimation runs only after the last epoch, which is exact only if nothing before it reads the running
    averages and nothing reads the global RNG (which the earlier re-estimates' loaders moved): training normalises
    with batch statistics and draws from (seed, epoch, frame). Garbage written into the running averages at every
    evaluation before the re-estimate, drawn from the global RNG, must leave the saved backbone bit-identical."""
    plain = _train(tiny_root, tmp_path / "a.pt")
    evaluate = pretrain._frame_accuracy
    calls = []  # the training-set sizes the re-estimate was called with

    def scrambled(model, ds, batch_size):
        for m in model.modules() if not calls else ():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(12345)
        return evaluate(model, ds, batch_size)

    recompute = pretrain._recompute_bn_stats

    def counted(model, ds, batch_size):
        calls.append(len(ds))
        return recompute(model, ds, batch_size)

    monkeypatch.setattr(pretrain, "_frame_accuracy", scrambled)
    monkeypatch.setattr(pretrain, "_recompute_bn_stats", counted)
    other = _train(tiny_root, tmp_path / "b.pt")
    len_train = calls[0] if calls else 0
    a, b = torch.load(tmp_path / "a.pt"), torch.load(tmp_path / "b.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert plain["train_acc"] == other["train_acc"]
    # the saved statistics are the re-estimate over the training frames (20 batches at most), made once
    assert calls == [len_train] and len_train > 0
    tracked = {int(v) for k, v in a.items() if k.endswith("num_batches_tracked")}
    assert tracked == {min(20, -(-len_train // 8))}
