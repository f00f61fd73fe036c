"""Model variants: shapes, gradients of trainable vs frozen parameters, heads, losses, discriminator, fusion."""

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from fpar import create_model, list_models
from fpar.config import OptimConfig
from fpar.engine.stages import apply_trainable, param_groups, set_train_mode
from fpar.errors import FparError
from fpar.models.ego_rnn import DiscConfig, MSConfig, RepFlowConfig, feature_size, make_static_clip
from fpar.models.heads import MotionSegmentationHead, disc_loss, ms_loss, ms_targets, total_loss

STAGE1 = [r"^lstm\.", r"^classifier\."]
STAGE2 = STAGE1 + [r"^backbone\.layer4\.\d+\.conv[12]\.weight$", r"^backbone\.fc\.weight$"]
S = 64  # input size of the tiny variants


def tiny_ego(**kw):
    torch.manual_seed(0)
    args = dict(num_classes=5, backbone="resnet18", pretrained=None, input_size=S, mem_size=8, backbone_classes=10)
    args.update(kw)
    return create_model("ego_rnn", **args)


VARIANTS = {
    "cam": {},
    "nocam": {"cam": False},
    "ms_cls_conv5": {"ms": MSConfig(enabled=True, layer="conv5", task="cls")},
    "ms_reg_conv4_grid": {"ms": MSConfig(enabled=True, layer="conv4", task="reg", target="grid")},
    "ms_cls_conv3_convhead": {"ms": MSConfig(enabled=True, layer="conv3", task="cls", head="conv")},
    "disc": {"disc": DiscConfig(enabled=True, alpha=0.1)},
    "repflow": {"cam": False, "repflow": RepFlowConfig(enabled=True, bottleneck=4, n_iter=2)},
    "resnet34": {"backbone": "resnet34"},
}


def test_registry_lists_the_families():
    assert {"ego_rnn", "flow_resnet", "two_stream"} <= set(list_models())


def test_create_model_builds_a_family_without_a_constructor_as_its_config_does():
    """LSTA has no keyword constructor: create_model routes each keyword to model.lsta.*, model.* or data.* and
    builds what `fpar train` builds from those overrides (same parameters, same values from the same seed)."""
    from fpar.config import load_config
    from fpar.data.manifest import Vocabulary
    from fpar.engine.build import build_model

    torch.manual_seed(0)
    made = create_model("lsta", classes=["a", "b", "c"], backbone="resnet18", pretrained="none", mem_size=8)
    cfg = load_config(
        None, ["model.name=lsta", "model.backbone=resnet18", "model.pretrained=none", "model.lsta.mem_size=8"]
    )
    torch.manual_seed(0)
    built, _ = build_model(cfg, Vocabulary(["a", "b", "c"]))
    assert type(made) is type(built)
    ours, theirs = made.state_dict(), built.state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert made(torch.randn(1, 2, 3, S, S)).logits.shape == (1, 3)
    for kwargs, words in (
        ({"num_classes": 3, "mem_sise": 8}, "no config key model.lsta.mem_sise, model.mem_sise or data.mem_sise"),
        ({"mem_size": 8}, "needs the classes"),
        ({"num_classes": 0}, "num_classes must be a positive integer"),
        ({"num_classes": 3, "mem_size": "big"}, "model.lsta.mem_size"),
    ):
        with pytest.raises(FparError, match=words):
            create_model("lsta", pretrained="none", **kwargs)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_ego_rnn_variants_shapes_no_nan(name):
    model = tiny_ego(**VARIANTS[name]).train()
    x = torch.randn(2, 3, 3, S, S)
    out = model(x, static_idx=torch.tensor([0, 2]), with_ms=True)
    assert out.logits.shape == (2, 5) and torch.isfinite(out.logits).all()
    assert out.features.shape == (2, 8)
    t = 2 if name == "repflow" else 3
    if name in ("cam", "ms_cls_conv5", "disc", "resnet34"):
        assert out.attn.shape == (2, t, 2, 2)
        torch.testing.assert_close(out.attn.sum((2, 3)), torch.ones(2, t))  # CAM maps sum to one
    if "ms" in VARIANTS[name]:
        ms = VARIANTS[name]["ms"]
        s = feature_size(S, {"conv3": 8, "conv4": 16, "conv5": 32}[ms.layer])
        assert out.ms.shape == (2, 3, 2 if ms.task == "cls" else 1, s, s)
    if name == "disc":
        assert out.disc_logits.shape == (4, 2)
    model.eval()
    assert model(x).ms is None  # the MS head is not run at inference


def test_feature_sizes():
    assert [feature_size(224, s) for s in (8, 16, 32)] == [28, 14, 7]
    assert [feature_size(112, s) for s in (8, 16, 32)] == [14, 7, 4]


@pytest.mark.parametrize("patterns,name", [(STAGE1, "stage1"), (STAGE2, "stage2")])
def test_stage_gradients_and_frozen_batchnorm(patterns, name):
    model = tiny_ego()
    trainable = set(apply_trainable(model, patterns))
    set_train_mode(model, [])
    bn_before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    out = model(torch.randn(2, 3, 3, S, S))
    F.cross_entropy(out.logits, torch.tensor([0, 1])).backward()
    for n, p in model.named_parameters():
        if n in trainable and n != "backbone.fc.bias":
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None, n
    for k, v in model.state_dict().items():
        if "running" in k:
            torch.testing.assert_close(v, bn_before[k])  # frozen BN statistics do not move
    if name == "stage2":
        assert "backbone.layer4.0.downsample.0.weight" not in trainable
        assert not any("bn" in n for n in trainable)
        assert "backbone.fc.weight" in trainable


def test_frozen_trunk_keeps_no_graph():
    model = tiny_ego()
    apply_trainable(model, STAGE1)
    feats, _ = model.frame_features(torch.randn(1, 2, 3, S, S))
    assert feats["conv5"].grad_fn is None  # no activations kept for backward in the frozen trunk
    apply_trainable(model, STAGE2)
    feats, _ = model.frame_features(torch.randn(1, 2, 3, S, S))
    assert feats["conv4"].grad_fn is None and feats["conv5"].grad_fn is not None


def test_input_receives_gradient():
    model = tiny_ego().eval()
    x = torch.randn(1, 2, 3, S, S, requires_grad=True)
    model(x).logits[0, 0].backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("layer,size", [("conv3", 28), ("conv4", 14), ("conv5", 7)])
@pytest.mark.parametrize("task", ["cls", "reg"])
@pytest.mark.parametrize("head", ["fc", "conv"])
def test_ms_head_shapes_at_224(layer, size, task, head):
    c = {"conv3": 128, "conv4": 256, "conv5": 512}[layer]
    h = MotionSegmentationHead(c, size, task=task, head=head)
    y = h(torch.randn(3, c, size, size))
    assert y.shape == (3, 2 if task == "cls" else 1, size, size)
    if head == "fc" and layer == "conv3":
        assert h.classifier.weight.numel() == 100 * 784 * (2 if task == "cls" else 1) * 784


def test_ms_loss_hand_computed():
    # one clip, two frames, 2x2 maps
    pred = torch.zeros(1, 2, 2, 2, 2)
    pred[0, 0, 1] = 2.0  # frame 0 says "moving" everywhere with logit margin 2
    target = torch.tensor([[[[1, 0], [0, 0]], [[1, 1], [1, 1]]]])
    loss, acc = ms_loss(pred, target, "cls")
    p_move = 1 / (1 + torch.exp(torch.tensor(-2.0)))
    frame0 = -torch.log(p_move) - 3 * torch.log(1 - p_move)  # summed over the 4 pixels
    frame1 = -4 * torch.log(torch.tensor(0.5))
    torch.testing.assert_close(loss, (frame0 + frame1) / 2)  # averaged over frames (and batch)
    assert acc == pytest.approx(100 * (1 + 0) / 8 + 100 * 4 / 8 * 0)  # ties argmax to class 0 on frame 1
    reg_pred = torch.full((1, 2, 1, 2, 2), 0.5)
    rloss, mae = ms_loss(reg_pred, target.float(), "reg")
    torch.testing.assert_close(rloss, torch.tensor(8 * 0.25 / 2))
    assert mae == pytest.approx(0.5)


def test_ms_targets_round_grid_for_classification():
    m = torch.zeros(1, 1, 4, 4)
    m[..., :2, :2] = 1
    m[..., 0, 2] = 1  # block (0,1) has 1/4 moving
    cls = ms_targets(m, 2, "grid", "cls")
    reg = ms_targets(m, 2, "grid", "reg")
    assert cls.dtype == torch.long and cls[0, 0].tolist() == [[1, 0], [0, 0]]
    torch.testing.assert_close(reg[0, 0], torch.tensor([[1.0, 0.25], [0.0, 0.0]]))


def test_total_loss_adds_weighted_parts():
    model = tiny_ego(ms=MSConfig(enabled=True), disc=DiscConfig(enabled=True, alpha=0.1)).train()
    torch.manual_seed(1)
    batch = {
        "rgb": torch.randn(2, 3, 3, S, S),
        "label": torch.tensor([0, 3]),
        "mmaps": (torch.rand(2, 3, S, S) > 0.5).long(),
        "static_idx": torch.tensor([1, 2]),
    }
    torch.manual_seed(2)
    out = model(batch["rgb"], static_idx=batch["static_idx"], with_ms=True)
    terms = model.losses(out, batch)  # the heads' terms with their configured weights (ms 1.0, alpha 0.1)
    assert list(terms) == ["action", "ms", "disc"] and terms["disc"].weight == 0.1
    loss, parts = total_loss(terms)
    expected = parts["action_loss"] + parts["ms_loss"] + 0.1 * parts["disc_loss"]
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_static_clip_is_one_frame_repeated_and_matches_the_shortcut():
    x = torch.randn(2, 4, 3, S, S)
    idx = torch.tensor([1, 3])
    st = make_static_clip(x, idx)
    for b in range(2):
        for t in range(4):
            assert st[b, t].equal(x[b, idx[b]])
    model = tiny_ego(disc=DiscConfig(enabled=True)).eval()  # eval: no dropout, compare numbers
    out = model(x, static_idx=idx)
    # the model's static half equals running the discriminator on the real repeated-frame clip
    feats, _ = model.frame_features(st)
    att, _ = model.attend(feats)
    ref = model.disc(model.recurrent(att.view(2, 4, *att.shape[1:])))
    torch.testing.assert_close(out.disc_logits[2:], ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("train_conv5", [False, True])
def test_discriminator_configurations_update_the_right_parameters(train_conv5):
    model = tiny_ego(disc=DiscConfig(enabled=True, train_conv5=train_conv5))
    apply_trainable(model, STAGE2 + [r"^disc\."])
    set_train_mode(model, [])
    out = model(torch.randn(2, 3, 3, S, S), static_idx=torch.tensor([0, 1]))
    disc_loss(out.disc_logits).backward()  # only the static-dynamic loss
    assert model.disc.weight.grad.abs().sum() > 0
    assert model.lstm.conv_x.weight_i.grad.abs().sum() > 0  # the per-gate parameters (the fused tensor is a copy)
    conv5 = model.backbone.layer4[1].conv1.weight.grad
    if train_conv5:
        assert conv5 is not None and conv5.abs().sum() > 0
    else:
        assert conv5 is None or conv5.abs().sum() == 0
    assert model.classifier.weight.grad is None  # the action classifier is not involved


def test_disc_loss_labels():
    logits = torch.tensor([[5.0, -5.0], [-5.0, 5.0]])  # dynamic says 0, static says 1: nearly zero loss
    assert disc_loss(logits).item() < 1e-3
    assert disc_loss(logits.flip(0)).item() > 10


def test_flow_resnet_shapes_and_multi_stack_average():
    torch.manual_seed(0)
    m = create_model("flow_resnet", num_classes=5, backbone="resnet18", pretrained=None, stack=5).eval()
    assert m.backbone.conv1.weight.shape[1] == 10
    x = torch.randn(2, 3, 10, S, S)
    out = m(x)
    assert out.logits.shape == (2, 5) and out.features.shape == (2, 512)
    per = m(x.flatten(0, 1)).logits.view(2, 3, 5).mean(1)
    torch.testing.assert_close(out.logits, per)


def test_two_stream_fusion_against_hand_made_features():
    torch.manual_seed(0)
    rgb = tiny_ego()
    flow = create_model("flow_resnet", num_classes=5, backbone="resnet18", pretrained=None, stack=2)
    ts = create_model("two_stream", rgb=rgb, flow=flow, num_classes=5).eval()
    assert ts.classifier.in_features == 8 + 512
    ff, rf = torch.randn(2, 512), torch.randn(2, 8)
    expected = torch.cat([ff, rf], 1) @ ts.classifier.weight.T + ts.classifier.bias  # flow first
    torch.testing.assert_close(ts.fuse(ff, rf), expected)
    out = ts(torch.randn(2, 3, 3, S, S), torch.randn(2, 4, S, S))
    assert out.logits.shape == (2, 5)


def test_two_stream_trainable_sets_and_group_lrs():
    rgb = tiny_ego()
    flow = create_model("flow_resnet", num_classes=5, backbone="resnet18", pretrained=None, stack=2)
    ts = create_model("two_stream", rgb=rgb, flow=flow, num_classes=5)
    pats = [
        r"^classifier\.",
        r"^rgb\.lstm\.",
        r"^rgb\.backbone\.layer4\.\d+\.conv[12]\.weight$",
        r"^rgb\.backbone\.fc\.weight$",
        r"^flow\.backbone\.layer4\.",
    ]
    names = set(apply_trainable(ts, pats))
    assert "flow.backbone.layer4.0.bn1.weight" in names and "rgb.backbone.layer4.0.bn1.weight" not in names
    assert not any(n.startswith("flow.fc_action") or n.startswith("rgb.classifier") for n in names)
    with pytest.raises(FparError, match="match no trainable parameter"):
        param_groups(ts, OptimConfig(lr=1e-2, groups=[{"pattern": r"^flwo\.", "lr": 1e-4}]))
    groups = param_groups(ts, OptimConfig(lr=1e-2, groups=[{"pattern": r"^flow\.", "lr": 1e-4}]))
    by_lr = {g["lr"]: sum(p.numel() for p in g["params"]) for g in groups}
    flow_n = sum(p.numel() for n, p in ts.named_parameters() if n.startswith("flow.") and n in names)
    assert by_lr[1e-4] == flow_n and set(by_lr) == {1e-2, 1e-4}
    set_train_mode(ts, [r"^flow\.backbone\.layer4"])
    assert ts.flow.backbone.layer4[0].bn1.training and not ts.rgb.backbone.layer4[0].bn1.training
    assert not ts.flow.backbone.layer3[0].bn1.training


def test_repflow_variant_parameters_get_gradients():
    model = tiny_ego(cam=False, repflow=RepFlowConfig(enabled=True, bottleneck=4, n_iter=2))
    apply_trainable(model, STAGE1 + [r"^repflow\.", r"^backbone\.layer[34]\."])
    set_train_mode(model, [])
    out = model(torch.randn(2, 4, 3, S, S))
    F.cross_entropy(out.logits, torch.tensor([0, 1])).backward()
    for n, p in model.repflow.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n


def test_unknown_pattern_is_an_error():
    from fpar.errors import FparError

    with pytest.raises(FparError, match="match no parameter"):
        apply_trainable(tiny_ego(), [r"^lsmt\."])
    m = copy.deepcopy(tiny_ego())
    with pytest.raises(FparError, match="not a valid regular expression"):
        apply_trainable(m, ["(["])


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_folded_batchnorm_equals_unfolded(arch):
    """BN folded into the convs (inference) gives the trunk's outputs and the model's logits and CAMs of the
    unfolded model; the no-BN output of the last block keeps its raw conv."""
    from fpar.models.backbone import fold_batchnorm

    model = tiny_ego(backbone=arch).eval()
    with torch.no_grad():  # BN statistics that are not the identity, so folding has something to do
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    x = torch.randn(2, 3, 3, S, S)
    with torch.no_grad():
        ref = model(x)
        ref_feats = model.backbone(x[:, 0])
    folded = copy.deepcopy(model)
    blocks = sum(len(getattr(folded.backbone, f"layer{i}")) for i in range(1, 5))
    per_block = 3 if arch == "resnet50" else 2
    n = fold_batchnorm(folded)
    assert n == 1 + blocks * per_block - 1 + 4 - (arch == "resnet18")  # stem + blocks - the last one's + downsamples
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules()) == 1
    with torch.no_grad():
        out = folded(x)
        feats = folded.backbone(x[:, 0])
    for k in ref_feats:  # float rounding only: relative to the map's scale (random BN statistics make it large)
        torch.testing.assert_close(
            feats[k], ref_feats[k], rtol=1e-4, atol=1e-5 * float(ref_feats[k].abs().max()), msg=k
        )
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.attn, ref.attn, rtol=1e-4, atol=1e-6)
    with pytest.raises(RuntimeError, match="eval mode"):
        fold_batchnorm(copy.deepcopy(model).train())


def assert_same_step(model, fast) -> None:
    """One cross-entropy step of ``model`` and of its faster copy on the same clips and dropout mask: the same loss
    and gradients, to float rounding (relative to each gradient's size)."""
    x, y = torch.randn(2, 3, 3, S, S), torch.tensor([1, 3])
    losses = []
    for m in (model, fast):
        torch.manual_seed(1)  # the same dropout mask
        loss = F.cross_entropy(m(x).logits, y)
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(model.named_parameters(), fast.parameters()):
        if p.grad is not None:
            scale = float(p.grad.abs().max())
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=2e-5 * scale, msg=name)


def test_channels_last_step_equals_the_default_layout():
    """train.channels_last: the conv weights change memory format, not values; one stage-2 step gives the same
    loss and gradients (to float rounding), and 5-D weights (the representation-flow layer's Conv3d) are left."""
    from fpar.engine.build import to_channels_last

    for kw in ({}, VARIANTS["repflow"]):
        model = tiny_ego(**kw)
        apply_trainable(model, STAGE2 + ([r"^repflow\."] if kw else []))
        set_train_mode(model, [])
        fast = to_channels_last(copy.deepcopy(model))
        conv = fast.backbone.layer4[0].conv1.weight
        assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
        assert_same_step(model, fast)


@pytest.mark.parametrize("stage", [STAGE1, STAGE2])
def test_frozen_chunk_equals_the_whole_batch(stage):
    """train.frozen_chunk: a trunk that records nothing (stage 1: all of it; stage 2: the stem to layer3) runs its
    frames in chunks, with the same outputs and the same step's gradients (to float rounding); with a BatchNorm
    that trains, or a trunk that trains from its stem, the batch goes through whole."""
    model = tiny_ego()
    apply_trainable(model, stage)
    set_train_mode(model, [])
    chunked = copy.deepcopy(model)
    chunked.backbone.frozen_chunk = 4
    calls = []
    chunked.backbone.conv1.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    last = chunked.backbone.layer4[-1].conv1
    last.register_forward_hook(lambda m, i, o: calls.append(("layer4", i[0].shape[0])))
    x = torch.randn(2, 5, 3, S, S)  # 10 frames: chunks of 4, 4, 2
    with torch.no_grad():
        ref, out = model.backbone(x.flatten(0, 1)), chunked.backbone(x.flatten(0, 1))
    for k in ref:
        torch.testing.assert_close(out[k], ref[k], rtol=1e-6, atol=1e-6, msg=k)
    assert calls == [4, ("layer4", 4), 4, ("layer4", 4), 2, ("layer4", 2)]  # no graph at all: layer4 chunked too
    calls.clear()
    assert_same_step(model, chunked)  # 6 frames
    if stage is STAGE2:  # layer4 trains: it takes the whole batch, the prefix before it is chunked
        assert calls == [4, 2, ("layer4", 6)]
    else:
        assert calls == [4, ("layer4", 4), 2, ("layer4", 2)]
    calls.clear()
    set_train_mode(chunked, [r"^backbone\.bn1$"])  # a BN that trains: batch statistics need every frame at once
    with torch.no_grad():
        chunked.backbone(x.flatten(0, 1))
    assert calls == [10, ("layer4", 10)]
    calls.clear()
    apply_trainable(chunked, stage + [r"^backbone\.conv1\."])  # a graph from the stem on: nothing to chunk
    set_train_mode(chunked, [])
    chunked(x)
    assert calls == [10, ("layer4", 10)]


def test_every_spec_names_compile_targets_its_model_has():
    """ModelSpec.compile names submodules (train.compile); a misspelt one would only show up on a long run."""
    from fpar.registry import model_specs
    from tests.test_lsta import tiny_lsta

    for family, model in (("ego_rnn", tiny_ego()), ("lsta", tiny_lsta())):
        for name in model_specs()[family].compile:
            assert isinstance(model.get_submodule(name), torch.nn.Module)


def test_compile_without_a_compiler_is_one_line(monkeypatch):
    from fpar.engine.build import compile_model
    from fpar.registry import model_specs

    monkeypatch.setenv("CXX", "no-such-c++-compiler")
    with pytest.raises(FparError, match="needs a C[+][+] compiler .no-such-c[+][+]-compiler not found"):
        compile_model(tiny_ego(), model_specs()["ego_rnn"])


@pytest.mark.parametrize("variant", ["cam", "repflow", "lsta"])
def test_compiling_a_trunk_covers_every_convolution_it_runs(variant, monkeypatch):
    """train.compile on a family's trunk: every convolution its frames go through runs inside a compiled call,
    in chunks (stage 1's frozen trunk) and not (stage 2's layer4), through forward_features and through
    forward_to / forward_from (the rep-flow variant). nn.Module.compile's own way, compiling __call__, covered none:
    the families never call the trunk itself. torch.compile is replaced by a wrapper that only counts the depth."""
    from fpar.engine.build import compile_model
    from fpar.registry import model_specs
    from tests.test_lsta import tiny_lsta

    depth = [0]

    def counting_compile(fn, *args, **kwargs):
        def run(*a, **kw):
            depth[0] += 1
            try:
                return fn(*a, **kw)
            finally:
                depth[0] -= 1

        return run

    monkeypatch.setattr(torch, "compile", counting_compile)
    if variant == "lsta":
        from fpar.models import lsta

        model, family, stages = tiny_lsta(), "lsta", (lsta.STAGE1, lsta.STAGE2)
    else:
        model, family, stages = tiny_ego(**VARIANTS[variant]), "ego_rnn", (STAGE1, STAGE2)
    compile_model(model, model_specs()[family])
    seen: dict[str, bool] = {}
    for name, m in model.backbone.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_pre_hook(lambda mod, inp, name=name: seen.setdefault(name, depth[0] > 0) and None)
    model.backbone.frozen_chunk = 2
    t = 2 if variant == "repflow" else 3
    for stage in stages:
        apply_trainable(model, stage)
        set_train_mode(model, [])
        seen.clear()
        model(torch.randn(2, t, 3, S, S))
        convs = {n for n, m in model.backbone.named_modules() if isinstance(m, torch.nn.Conv2d)}
        assert set(seen) == convs  # every conv ran ...
        assert all(seen.values()), sorted(n for n, inside in seen.items() if not inside)  # ... compiled


def test_a_compiled_trunk_stays_within_dynamo_s_recompile_limit():
    """Every frame dynamo compiles for a trunk (dynamo's own eager backend: no code generated) is compiled, none
    left to run eager for want of cache entries: as submodules, sharing nn.Module.__call__, the ninth fell back."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    for variant in ("cam", "repflow"):  # forward_features; forward_to and forward_from
        model = tiny_ego(**VARIANTS[variant])
        model.backbone.compile(backend="eager")
        model.backbone.frozen_chunk = 2
        for stage in (STAGE1, STAGE2):
            apply_trainable(model, stage)
            set_train_mode(model, [])
            for t in (3, 4):  # chunks of 2 and a last one of another size
                model(torch.randn(2, t, 3, S, S)).logits.sum().backward()
    frames = counters["frames"]
    assert frames["total"] >= len(model.backbone._COMPILED) and frames["ok"] == frames["total"]
    torch._dynamo.reset()


def test_compiled_step_equals_eager():
    """train.compile: the ConvLSTM cell compiled by inductor gives the eager loss and gradients to float rounding,
    and its parameter names (checkpoints) are unchanged."""
    from fpar.engine.build import compile_model

    model = tiny_ego()
    apply_trainable(model, STAGE2)
    set_train_mode(model, [])
    fast = copy.deepcopy(model)
    only_the_cell = SimpleNamespace(name="ego_rnn", compile=("lstm",))  # the trunk would compile for minutes here
    assert compile_model(fast, only_the_cell) == ["lstm"]
    assert [n for n, _ in fast.named_parameters()] == [n for n, _ in model.named_parameters()]
    assert_same_step(model, fast)
