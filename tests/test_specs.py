"""Specs, not switches: config blocks and their fpar 0.1.0 aliases, readers chosen by data.format, verb/noun heads,
and run folders of fpar 0.1.0 opening through open_run."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import yaml

from fpar.cli import main
from fpar.config import canonical_key, from_dict, load_config, to_dict
from fpar.data.manifest import Vocabulary
from fpar.engine.run import open_run
from fpar.engine.trainer import train
from fpar.errors import FparError
from fpar.models.heads import VerbNounHead, make_classifier
from fpar.models.outputs import ModelOutput
from fpar.registry import ModelSpec, model_spec, register_model_spec
from tests.conftest import tiny_args
from tests.test_data_layout import make_gtea_video

# --------------------------------------------------------------------------------------------------------------
# Config blocks and aliases


def test_old_and_new_spellings_give_the_same_config(tmp_path):
    old = load_config(None, ["model.cam=false", "model.ms.layer=conv4", "model.rgb_run=r", "data.train_subjects=[S1]"])
    new = load_config(
        None,
        [
            "model.ego_rnn.cam=false",
            "model.ego_rnn.ms.layer=conv4",
            "model.two_stream.rgb_run=r",
            "data.gtea61.train_subjects=[S1]",
        ],
    )
    assert to_dict(old) == to_dict(new)
    assert old.model.cam is False and old.model.ego_rnn.cam is False  # attribute aliases read the block
    old.model.mem_size = 7  # and write it
    assert old.model.ego_rnn.mem_size == 7
    assert (
        canonical_key("data.layout") == "data.format"
        and canonical_key("model.disc.alpha") == "model.ego_rnn.disc.alpha"
    )
    # a recipe in the old spelling, extended by one in the new spelling: the child wins whichever spelling it uses
    (tmp_path / "a.yaml").write_text("model: {cam: false, mem_size: 9}\ndata: {layout: egornn}\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\nmodel: {ego_rnn: {cam: true}}\n")
    cfg = load_config(tmp_path / "b.yaml")
    assert cfg.model.ego_rnn.cam is True and cfg.model.ego_rnn.mem_size == 9 and cfg.data.format == "egornn"


def test_block_keys_are_listed_and_checked(capsys):
    assert main(["config", "--keys"]) == 0
    keys = capsys.readouterr().out.split()
    assert {"model.ego_rnn.ms.layer", "model.two_stream.flow_run", "data.gtea61.test_subjects", "model.heads"} <= set(
        keys
    )
    with pytest.raises(FparError, match="model.ego_rnn.ms.layer.*is 'conv9'; choose one of conv3, conv4, conv5"):
        load_config(None, ["model.ego_rnn.ms.layer=conv9"])
    with pytest.raises(FparError, match="unknown config key 'model.ms.layr'.*did you mean 'model.ms.layer'"):
        load_config(None, ["model.ms.layr=conv3"])
    with pytest.raises(FparError, match="unknown model 'ego_rn' .*did you mean 'ego_rnn'"):
        load_config(None, ["model.name=ego_rn"])
    with pytest.raises(FparError, match="model.ego_rnn.mem_size' must be at least 1"):
        load_config(None, ["model.mem_size=0"])


def test_interpolation_is_resolved_after_the_overrides(tmp_path):
    (tmp_path / "r.yaml").write_text("name: base\nout: runs/${name}\n")
    assert load_config(tmp_path / "r.yaml", ["name=x"]).out == "runs/x"
    assert load_config(tmp_path / "r.yaml").out == "runs/base"


# --------------------------------------------------------------------------------------------------------------
# Readers


def test_format_is_detected_and_named_in_the_log(tmp_path):
    make_gtea_video(tmp_path / "course", "S1", "take_cup", 1)
    make_gtea_video(tmp_path / "course", "S2", "take_cup", 1)
    from fpar.config import DataConfig
    from fpar.data.readers import detect_format, read_dataset

    assert detect_format(tmp_path / "course").name == "gtea61"
    assert read_dataset(DataConfig(root=str(tmp_path / "course"))).layout == "gtea61"
    with pytest.raises(FparError, match="looks like the 'gtea61' layout, but data.format is 'egornn'"):
        read_dataset(DataConfig(root=str(tmp_path / "course"), format="egornn"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(FparError, match="matches no known dataset format .*notes.txt.*set data.format to one of"):
        detect_format(tmp_path / "empty")
    with pytest.raises(FparError, match="unknown dataset format 'epic'"):
        load_config(None, ["data.format=epic"])


def test_gtea_vocabulary_and_manifest_labels(tiny_root):
    from fpar.config import DataConfig
    from fpar.data.readers import read_dataset

    m = read_dataset(DataConfig(root=str(tiny_root)))
    v = m.vocab
    assert v.actions == m.classes and v.has_verb_noun
    for video in m.videos:
        verb, noun = video.cls.split("_", 1)
        assert (v.verbs[video.verb_label], v.nouns[video.noun_label]) == (verb, noun) == (video.verb, video.noun)
        assert v.action_verb[video.label] == video.verb_label and v.action_noun[video.label] == video.noun_label
    assert set(v.subsets["pair"]) == {c for c in m.classes if c.split("_")[0] in ("take", "put", "open", "close")}


# --------------------------------------------------------------------------------------------------------------
# Heads


def test_verb_noun_head_scores_actions_by_their_pairs():
    vocab = Vocabulary.from_pairs(
        ["open_jar", "put_cup", "take_cup"], [("open", "jar"), ("put", "cup"), ("take", "cup")]
    )
    assert vocab.verbs == ["open", "put", "take"] and vocab.nouns == ["cup", "jar"]
    torch.manual_seed(0)
    head = VerbNounHead(4, vocab)
    x = torch.randn(2, 4)
    o = head.outputs(x)
    lv, ln = (
        (x @ head.verb.weight.T + head.verb.bias).log_softmax(1),
        (x @ head.noun.weight.T + head.noun.bias).log_softmax(1),
    )
    expected = torch.stack([lv[:, 0] + ln[:, 1], lv[:, 1] + ln[:, 0], lv[:, 2] + ln[:, 0]], 1)  # by hand
    torch.testing.assert_close(o["logits"], expected)
    batch = {"verb": torch.tensor([2, 0]), "noun": torch.tensor([0, 1])}
    terms = head.losses(ModelOutput(**o), batch)
    torch.testing.assert_close(terms["verb"].value, F.cross_entropy(o["verb_logits"], batch["verb"]))
    torch.testing.assert_close(terms["noun"].value, F.cross_entropy(o["noun_logits"], batch["noun"]))
    with pytest.raises(FparError, match="model.heads=verb_noun needs a dataset whose vocabulary has verbs and nouns"):
        make_classifier(4, Vocabulary(["a", "b"]), "verb_noun")


@pytest.mark.parametrize("name", ["ego_rnn", "flow_resnet"])
def test_verb_noun_heads_train_for_any_family(name, tiny_root, tmp_path):
    cfg = load_config(
        None,
        [
            *tiny_args(tiny_root),
            f"model.name={name}",
            "model.heads=verb_noun",
            "train.trainable=[.]",
            "train.epochs=1",
            "train.max_batches=2",
            "data.flow_stack=2",
            f"out={tmp_path / 'r'}",
        ],
    )
    s = train(cfg, log=lambda m: None)
    row = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["train_loss"] == pytest.approx(row["train_verb_loss"] + row["train_noun_loss"], rel=1e-5)
    # verb / noun heads are scored by their own scores (EPIC's metrics), not through the predicted action
    assert "train_action_loss" not in row and s["verb_top1"] is not None and s["action_top1"] is not None
    run = open_run(tmp_path / "r")
    head = run.model.classifier if name == "ego_rnn" else run.model.fc_action
    assert isinstance(head, VerbNounHead)  # rebuilt with its verb/noun head from the checkpoint alone


# --------------------------------------------------------------------------------------------------------------
# Run folders of fpar 0.1.0


def _as_fpar_010(config: dict) -> dict:
    """The config dict fpar 0.1.0 saved: family and reader keys at the top of their sections, data.layout."""
    c = json.loads(json.dumps(config))
    ego, ts, gtea = c["model"].pop("ego_rnn"), c["model"].pop("two_stream"), c["data"].pop("gtea61")
    c["model"].pop("heads")
    c["model"].update(ego)
    c["model"].update(ts)
    c["data"].update(gtea)
    c["data"]["layout"] = c["data"].pop("format")
    return c


def test_a_run_folder_of_fpar_010_opens_and_evaluates_the_same(tiny_root, tmp_path, capsys):
    run = tmp_path / "r"
    train(load_config(None, [*tiny_args(tiny_root), "train.epochs=1", f"out={run}"]), log=lambda m: None)
    assert main(["eval", str(run), "--json"]) == 0
    now = json.loads(capsys.readouterr().out)
    for name in ("best.pt", "last.pt"):
        ck = torch.load(run / name, weights_only=True)
        ck["config"] = _as_fpar_010(ck["config"])
        assert ck["format"] == 1  # the checkpoint's version, as fpar 0.1.0 wrote it
        for key in ("vocabulary", "data_format"):
            ck.pop(key)
        torch.save(ck, run / name)
    (run / "config.yaml").write_text(yaml.safe_dump(_as_fpar_010(to_dict(load_config(run / "config.yaml")))))
    assert "mem_size" in yaml.safe_load((run / "config.yaml").read_text())["model"]  # the old layout
    old = open_run(run)
    assert old.vocab.has_verb_noun and old.cfg.model.ego_rnn.mem_size == 16  # rebuilt by the gtea61 reader
    assert main(["eval", str(run), "--json"]) == 0
    then = json.loads(capsys.readouterr().out)
    assert {k: then[k] for k in ("top1", "top5", "verb_acc", "noun_acc", "loss")} == {
        k: now[k] for k in ("top1", "top5", "verb_acc", "noun_acc", "loss")
    }
    assert from_dict(_as_fpar_010(to_dict(old.cfg))).model.ego_rnn.mem_size == 16


# --------------------------------------------------------------------------------------------------------------
# Registry


def test_a_name_registered_twice_by_two_modules_is_refused():
    spec = model_spec("ego_rnn")

    def build(ctx):  # defined here: another module than fpar.models.ego_rnn
        raise AssertionError

    with pytest.raises(FparError, match="model 'ego_rnn' is registered twice"):
        register_model_spec(ModelSpec(name="ego_rnn", build=build, inputs=spec.inputs, forward=spec.forward))
    assert model_spec("ego_rnn") is spec


# --------------------------------------------------------------------------------------------------------------
# CLI usage errors (typer vendors click now; fpar must not import click)


def test_usage_errors_and_version_without_traceback(capsys):
    from fpar.version import __version__

    assert main([]) == 2  # the help, as a usage error
    assert main(["predict"]) == 2 and "Missing argument" in capsys.readouterr().err
    assert main(["predict", "r", "v", "--top", "abc"]) == 2
    assert main(["--version"]) == 0 and capsys.readouterr().out.strip() == f"fpar {__version__}"
    assert main(["-h"]) == 0 and "Usage" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------------------
# Parameters a stage trains that never get a gradient (DDP)


@pytest.mark.parametrize(
    "recipe,extra,some",
    [
        ("ego_rnn_stage2.yaml", [], False),  # the CAM gives the fc's weight its gradient
        ("ego_rnn_stage2.yaml", ["train.trainable=[.]"], True),  # the fc's bias: argmax only
        ("ego_rnn_nocam_stage2.yaml", [], True),
        ("lsta_stage1.yaml", [], True),
        ("lsta_stage2.yaml", ["train.trainable=[.]"], True),
    ],
)
def test_no_gradient_names_exactly_the_trainable_parameters_a_step_leaves_without_one(recipe, extra, some):
    """ModelSpec.no_gradient (which turns DDP's find_unused_parameters on) is what a training step shows: the
    trainable parameters whose .grad stays None after backward, no more and no fewer."""
    import re
    from pathlib import Path

    from fpar.engine.build import build_model, forward_batch, resolve_trainable
    from fpar.engine.stages import apply_trainable, set_train_mode
    from fpar.models.heads import total_loss

    configs = Path(__file__).resolve().parents[1] / "configs"
    small = ["data.input_size=64", "data.scale_size=72", "data.frames=3", "model.backbone=resnet18"]
    cfg = load_config(configs / recipe, ["model.pretrained=none", "init.from=null", *small, *extra])
    torch.manual_seed(0)
    model, _ = build_model(cfg, [f"c{i}" for i in range(5)])
    trainable = apply_trainable(model, resolve_trainable(cfg))
    set_train_mode(model, cfg.train.bn_train)
    batch = {"rgb": torch.randn(2, 3, 3, 64, 64), "label": torch.tensor([1, 4])}
    total_loss(model.losses(forward_batch(model, cfg, batch, train=True), batch))[0].backward()
    params = dict(model.named_parameters())
    without = {n for n in trainable if params[n].grad is None}
    declared = {n for n in trainable if any(re.search(r, n) for r in model_spec(cfg.model.name).no_gradient(cfg))}
    assert without == declared
    assert bool(without) == some


def test_several_processes_look_for_unused_parameters_only_where_the_family_says_some_get_no_gradient(monkeypatch):
    """DDP's find_unused_parameters (`fpar.engine.trainer._find_unused`): on by itself under several processes
    for LSTA's stage 1 (its coupling_fc only enters an argmax), said in the log; off for Ego-RNN's stage 2 and in
    one process; train.ddp_find_unused=true turns it on anywhere."""
    from pathlib import Path

    from fpar.engine import distributed
    from fpar.engine.trainer import _find_unused

    configs = Path(__file__).resolve().parents[1] / "configs"
    lsta = load_config(configs / "lsta_stage1.yaml", [])
    ego = load_config(configs / "ego_rnn_stage2.yaml", [])
    lsta_trainable = ["cell.coupling_fc.weight", "cell.c_classifier.weight", "classifier.weight"]
    ego_trainable = ["lstm.conv_x.weight_i", "backbone.fc.weight"]
    said: list[str] = []
    assert not _find_unused(lsta, lsta_trainable, said.append)  # one process: no DDP
    monkeypatch.setattr(distributed, "current", lambda: distributed.Dist(0, 2, 0, "gloo"))
    assert _find_unused(lsta, lsta_trainable, said.append)
    assert said == [
        "cell.coupling_fc.weight: trainable but never given a gradient in this model, so DDP looks for unused "
        "parameters every step (train.ddp_find_unused)"
    ]
    assert not _find_unused(lsta, lsta_trainable[1:], said.append)  # not trained: nothing to look for
    assert not _find_unused(ego, ego_trainable, said.append)
    assert _find_unused(load_config(configs / "ego_rnn_stage2.yaml", ["train.ddp_find_unused=true"]), [], print)
    assert len(said) == 1
