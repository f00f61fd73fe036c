"""A tiny end-to-end run of every model variant through the real recipes (one short epoch each)."""

import json

import pytest
import torch

from fpar.config import load_config
from fpar.engine.checkpoint import load_checkpoint
from fpar.engine.trainer import train

from .conftest import tiny_args

SHORT = ["train.epochs=1", "train.max_batches=2"]


def _run(recipe, overrides, out, *extra):
    cfg = load_config(f"configs/{recipe}", [*overrides, *SHORT, f"out={out}", *extra])
    return train(cfg, log=lambda m: None)


@pytest.fixture(scope="module")
def stage1(tiny_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("s1") / "stage1"
    ov = _tiny(tiny_root)
    _run("ego_rnn_stage1.yaml", ov, out)
    return out


def _tiny(root):
    return tiny_args(root)


@pytest.mark.parametrize(
    "recipe,extra",
    [
        ("ego_rnn_stage2.yaml", []),
        ("ego_rnn_nocam_stage2.yaml", []),
        ("ego_rnn_ms_stage2.yaml", []),
        ("ego_rnn_ms_stage2.yaml", ["model.ms.task=reg", "model.ms.target=grid"]),
        ("ego_rnn_ms_conv4_stage2.yaml", ["model.ms.task=reg", "model.ms.target=grid"]),
        ("ego_rnn_ms_conv3_stage2.yaml", ["model.ms.head=conv"]),
        ("ego_rnn_sd_stage2.yaml", ["model.disc.alpha=0.1"]),
        ("ego_rnn_sd_stage2.yaml", ["model.disc.train_conv5=true"]),
        ("ego_rnn_repflow.yaml", ["model.repflow.bottleneck=4", "model.repflow.n_iter=2"]),
    ],
)
def test_stage2_variants(recipe, extra, stage1, tiny_root, tmp_path):
    s = _run(recipe, _tiny(tiny_root), tmp_path / "r", f"init.from={stage1}", *extra)
    assert 0 <= s["best_top1"] <= 100 and s["videos"] == 6
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    cfg = load_config(f"configs/{recipe}", extra)
    if cfg.model.ms.enabled:
        assert rows[0]["train_ms_loss"] > 0
        assert ("train_ms_acc" if cfg.model.ms.task == "cls" else "train_ms_mae") in rows[0]
    if cfg.model.disc.enabled:
        assert "train_disc_loss" in rows[0] and "train_disc_acc" in rows[0]
    # the checkpoint rebuilds alone, without the stage-1 run or pretrained files
    from fpar import load_run

    model, info = load_run(str(tmp_path / "r"))
    clip = torch.zeros(1, 3, 3, 64, 64)
    assert model(clip).logits.shape == (1, 6)


def test_flow_then_two_stream(tiny_root, tmp_path, stage1):
    ov = _tiny(tiny_root) + ["data.flow_stack=2"]
    rgb = tmp_path / "rgb"
    _run("ego_rnn_stage2.yaml", _tiny(tiny_root), rgb, f"init.from={stage1}")
    _run("flow_resnet34.yaml", ov, tmp_path / "flow", "data.flow_stacks_test=2")
    s = _run("two_stream.yaml", ov, tmp_path / "ts", f"model.rgb_run={rgb}", f"model.flow_run={tmp_path / 'flow'}")
    assert s["model"] == "two_stream" and s["videos"] == 6
    ck = load_checkpoint(tmp_path / "ts")
    before = load_checkpoint(tmp_path / "flow")["model"]
    last = load_checkpoint(tmp_path / "ts", "last")["model"]
    # the flow stream's layer4 trained (and its BN statistics moved); its layer3 did not
    assert not torch.equal(before["backbone.layer4.0.conv1.weight"], last["flow.backbone.layer4.0.conv1.weight"])
    assert not torch.equal(
        before["backbone.layer4.0.bn1.running_mean"], last["flow.backbone.layer4.0.bn1.running_mean"]
    )
    assert torch.equal(before["backbone.layer3.0.conv1.weight"], last["flow.backbone.layer3.0.conv1.weight"])
    assert "streams" in ck
    from fpar import load_run

    model, _ = load_run(str(tmp_path / "ts"))
    assert model(torch.zeros(1, 3, 3, 64, 64), torch.zeros(1, 4, 64, 64)).logits.shape == (1, 6)


def test_two_stream_refuses_wrong_runs(tiny_root, tmp_path, stage1):
    from fpar.errors import FparError

    ov = _tiny(tiny_root) + ["data.flow_stack=2"]
    with pytest.raises(FparError, match="model.two_stream.flow_run=.* is a run of model 'ego_rnn'"):
        _run("two_stream.yaml", ov, tmp_path / "ts", f"model.rgb_run={stage1}", f"model.flow_run={stage1}")
    with pytest.raises(FparError, match="model.two_stream.rgb_run"):
        _run("two_stream.yaml", ov, tmp_path / "ts2", f"model.rgb_run={tmp_path / 'nope'}", f"model.flow_run={stage1}")


def test_late_fusion_cli(tiny_root, tmp_path, stage1, capsys):
    from fpar.cli import main

    ov = _tiny(tiny_root) + ["data.flow_stack=2"]
    _run("flow_resnet34.yaml", ov, tmp_path / "flow")
    assert main(["fuse", str(stage1), str(tmp_path / "flow"), "--json", "--weight", "0.5"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["videos"] == 6 and set(r) >= {"rgb", "flow", "fusion"}
    assert main(["fuse", str(stage1), str(tmp_path / "flow"), "--weight", "2"]) == 2


def test_discriminator_with_rep_flow_is_refused():
    from fpar import create_model
    from fpar.errors import FparError
    from fpar.models.ego_rnn import DiscConfig, RepFlowConfig

    with pytest.raises(FparError, match="cannot be combined"):
        create_model(
            "ego_rnn",
            num_classes=3,
            backbone="resnet18",
            pretrained=None,
            cam=False,
            disc=DiscConfig(enabled=True),
            repflow=RepFlowConfig(enabled=True),
        )
