"""train.checkpoint: the per-frame trunk recomputed in backward gives the plain gradients and saves less for it."""

from __future__ import annotations

from pathlib import Path

import torch

from fpar.config import load_config
from fpar.engine.build import build_model, forward_batch
from fpar.engine.stages import apply_trainable, set_train_mode
from fpar.models.backbone import ResNetTrunk
from fpar.models.heads import total_loss

STAGE2 = Path(__file__).resolve().parents[1] / "configs" / "ego_rnn_stage2.yaml"


def _model():
    cfg = load_config(
        STAGE2,
        [
            "model.backbone=resnet18",
            "model.pretrained=none",
            "model.ego_rnn.mem_size=16",
            "model.ego_rnn.ms.enabled=true",
            "model.ego_rnn.ms.layer=conv4",
            "data.input_size=64",
            "train.trainable=[.]",  # the whole backbone trains: what checkpointing is for
            "init.from=null",
        ],
    )
    torch.manual_seed(0)
    model, _ = build_model(cfg, [f"c{i}" for i in range(5)])
    apply_trainable(model, ["."])
    set_train_mode(model, [])  # BatchNorm frozen, as in Ego-RNN
    g = torch.Generator().manual_seed(1)
    s = 64 // 16  # conv4 maps at 64 px
    batch = {
        "rgb": torch.randn(2, 3, 3, 64, 64, generator=g),
        "mmaps": (torch.rand(2, 3, 64, 64, generator=g) > 0.5).to(torch.uint8),
        "label": torch.tensor([1, 3]),
        "static_idx": torch.tensor([0, 2]),
    }
    return cfg, model, batch, s


def _grads(cfg, model, batch, checkpoint: bool, chunk: int = 32):
    for m in model.modules():
        if isinstance(m, ResNetTrunk):
            m.checkpoint, m.checkpoint_chunk = checkpoint, chunk
    model.zero_grad(set_to_none=True)
    saved: list[int] = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    torch.manual_seed(5)  # the same dropout masks in every pass (checkpointing replays them in the recomputation)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward_batch(model, cfg, batch, train=True)
        loss, _ = total_loss(model.losses(out, batch))
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, sum(saved)


def test_checkpointed_backward_equals_plain_backward():
    cfg, model, batch, _ = _model()
    plain, plain_saved = _grads(cfg, model, batch, False)
    one, one_saved = _grads(cfg, model, batch, True)  # 6 frames, one chunk: the same arithmetic
    assert plain.keys() == one.keys() and any(n.startswith("backbone.layer1") for n in plain)
    assert all(torch.equal(plain[n], one[n]) for n in plain)
    chunked, _ = _grads(cfg, model, batch, True, chunk=4)  # two chunks of frames: float rounding only
    for n in plain:
        torch.testing.assert_close(chunked[n], plain[n], rtol=1e-5, atol=1e-6)
    # what autograd keeps for backward during the forward: the trunk's inputs and outputs, not its layers
    assert one_saved < plain_saved / 2


def test_amp_on_the_cpu_autocasts_to_bf16_or_says_it_cannot(tiny_root, tmp_path, monkeypatch):
    """train.amp=true on a CPU: bf16 autocast where oneDNN has bf16 (the loss then differs from fp32 by rounding);
    where it has not, a one-line error before anything is written (not a silent fp32 run)."""
    import json

    import pytest

    from fpar.engine import trainer
    from fpar.errors import FparError
    from tests.conftest import tiny_args

    stage1 = STAGE2.parent / "ego_rnn_stage1.yaml"

    def run(out, *extra):
        trainer.train(load_config(stage1, [*tiny_args(tiny_root), "train.epochs=1", f"out={out}", *extra]),
                      log=lambda m: None)  # fmt: skip
        return json.loads((out / "metrics.jsonl").read_text().splitlines()[0])

    if trainer._cpu_has_bf16():
        fp32, bf16 = run(tmp_path / "fp32"), run(tmp_path / "bf16", "train.amp=true")
        assert bf16["train_loss"] != fp32["train_loss"]
        assert bf16["train_loss"] == pytest.approx(fp32["train_loss"], rel=0.05)
    monkeypatch.setattr(trainer, "_cpu_has_bf16", lambda: False)
    with pytest.raises(FparError, match="this CPU has no bf16 arithmetic"):
        run(tmp_path / "none", "train.amp=true")
    assert not (tmp_path / "none" / "config.yaml").exists()
