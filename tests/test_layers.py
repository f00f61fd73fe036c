"""ConvLSTM cell, CAM attention and the ResNet trunk (weights, no-BN output, input-conv adaptation)."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision

from fpar.errors import FparError
from fpar.models.backbone import (
    ResNetTrunk,
    adapt_input_conv,
    build_trunk,
    imagenet_checkpoint_path,
    set_batchnorm_eval,
)
from fpar.models.layers.attention import CAMAttention, cam_attention, class_activation_map, select_rows
from fpar.models.layers.conv_lstm import ConvLSTMCell

# ------------------------------------------------------------------------------------------------ ConvLSTM


def _num_threads(n: int):
    """Run the test with ``n`` intra-op threads, then put back the setting it found."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def two_threads():
    """Parallel index_put_ (the non-reproducible sum `select_rows` avoids) only runs with more than one thread."""
    yield from _num_threads(2)


@pytest.fixture
def one_thread():
    """Tiny ops (gradcheck runs thousands) are ~100x slower with 2 intra-op threads on a busy 2-core box."""
    yield from _num_threads(1)


def _reference_step(cell: ConvLSTMCell, x, h_prev, c_prev):
    """Eight separate conv2d calls on the per-gate slices of the fused weights (gate order i, f, c~, o)."""
    hid, pad = cell.hidden_channels, cell.kernel_size // 2
    wx, bx, wh = cell.conv_x.weight, cell.conv_x.bias, cell.conv_h.weight
    pre = []
    for g in range(4):
        sl = slice(g * hid, (g + 1) * hid)
        pre.append(F.conv2d(x, wx[sl], bx[sl], padding=pad) + F.conv2d(h_prev, wh[sl], None, padding=pad))
    i, f, g, o = torch.sigmoid(pre[0]), torch.sigmoid(pre[1]), torch.tanh(pre[2]), torch.sigmoid(pre[3])
    c = g * i + c_prev * f
    return o * torch.tanh(c), c


def test_conv_lstm_matches_step_by_step_reference(one_thread):
    torch.manual_seed(0)
    cell = ConvLSTMCell(5, 6, kernel_size=3)
    with torch.no_grad():
        for _, b, _ in cell.gate_weights().values():
            b.normal_()  # non-zero biases so a bias/gate mix-up would show
    xs = torch.randn(3, 2, 5, 7, 6)  # (T, B, C, H, W)
    state = None
    h_ref = torch.zeros(2, 6, 7, 6)
    c_ref = torch.zeros(2, 6, 7, 6)
    for t in range(3):
        state = cell(xs[t], state)
        h_ref, c_ref = _reference_step(cell, xs[t], h_ref, c_ref)
        torch.testing.assert_close(state[0], h_ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(state[1], c_ref, rtol=1e-5, atol=1e-6)
    assert state[0].shape == (2, 6, 7, 6)
    # the per-gate views are the same slices the reference used
    gw = cell.gate_weights()
    assert list(gw) == ["i", "f", "c", "o"]
    assert torch.equal(gw["c"][0], cell.conv_x.weight[12:18]) and torch.equal(gw["o"][2], cell.conv_h.weight[18:24])


def test_conv_lstm_checkpoints_keep_the_fused_layout(one_thread):
    """Per-gate parameters, fused state dict: a cell of fpar 0.1.0 (two fused convs) loads into it and computes the
    same step; its own state dict is that fused layout again; tracing (keep_vars) sees the parameters."""
    torch.manual_seed(4)
    cin, hid = 5, 6
    old = {
        "conv_x.weight": torch.randn(4 * hid, cin, 3, 3),
        "conv_x.bias": torch.randn(4 * hid),
        "conv_h.weight": torch.randn(4 * hid, hid, 3, 3),
    }
    cell = ConvLSTMCell(cin, hid)
    cell.load_state_dict(old)
    sd = cell.state_dict()
    assert set(sd) == set(old) and all(torch.equal(sd[k], old[k]) for k in old)
    assert torch.equal(cell.gate_weights()["f"][0], old["conv_x.weight"][hid : 2 * hid])
    x, h, c = torch.randn(2, cin, 4, 4), torch.randn(2, hid, 4, 4), torch.randn(2, hid, 4, 4)
    gates = F.conv2d(x, old["conv_x.weight"], old["conv_x.bias"], padding=1) + F.conv2d(
        h, old["conv_h.weight"], padding=1
    )
    i, f, g, o = gates.chunk(4, 1)  # the fused computation of fpar 0.1.0
    c_ref = torch.tanh(g) * torch.sigmoid(i) + c * torch.sigmoid(f)
    h_new, c_new = cell(x, (h, c))
    torch.testing.assert_close(c_new, c_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h_new, torch.sigmoid(o) * torch.tanh(c_ref), rtol=1e-5, atol=1e-6)
    kv = cell.state_dict(keep_vars=True)
    assert "conv_x.weight_i" in kv and isinstance(kv["conv_x.weight_i"], torch.nn.Parameter)
    with pytest.raises(RuntimeError, match="conv_x.weight"):  # a wrong shape is reported under the fused name
        ConvLSTMCell(cin, hid + 1).load_state_dict(old)


def test_conv_lstm_zero_initial_state_and_init():
    torch.manual_seed(1)
    cell = ConvLSTMCell(4, 3)
    x = torch.randn(2, 4, 5, 5)
    h0, c0 = cell(x)
    h1, c1 = cell(x, (torch.zeros(2, 3, 5, 5), torch.zeros(2, 3, 5, 5)))
    assert torch.equal(h0, h1) and torch.equal(c0, c1)
    # with a zero state, c = g * i only (the forget path contributes nothing)
    gates = cell.conv_x(x)
    i, _, g, _ = gates.chunk(4, 1)
    torch.testing.assert_close(c0, torch.tanh(g) * torch.sigmoid(i))
    assert torch.count_nonzero(cell.conv_x.bias) == 0
    assert cell.conv_h.bias is None


def test_conv_lstm_sequence_equals_its_steps_values_and_gradients(one_thread):
    """The whole-sequence call (the zero first step's hidden convs skipped) is the step-by-step recurrence from
    explicit zeros, values and gradients (float64)."""
    torch.manual_seed(5)
    cell = ConvLSTMCell(4, 3).double()
    with torch.no_grad():
        for _, b, _ in cell.gate_weights().values():
            b.normal_()
    seq = torch.randn(2, 5, 4, 6, 6, dtype=torch.float64, requires_grad=True)  # (B, T, C, H, W)
    extra = torch.randn(2, 5, 12, 6, 6, dtype=torch.float64)  # (B, T, 4*C_hid, H, W)
    for ex in (None, extra):
        h, c = cell(seq, extra=ex)
        (h.sum() + 2 * c.sum()).backward()
        got = [seq.grad.clone(), *(p.grad.clone() for p in cell.parameters())]
        seq.grad = None
        cell.zero_grad(set_to_none=True)
        state = (torch.zeros(2, 3, 6, 6, dtype=torch.float64), torch.zeros(2, 3, 6, 6, dtype=torch.float64))
        for t in range(5):
            state = cell(seq[:, t], state, None if ex is None else ex[:, t])
        torch.testing.assert_close(h, state[0], rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(c, state[1], rtol=1e-12, atol=1e-13)
        (state[0].sum() + 2 * state[1].sum()).backward()
        want = [seq.grad.clone(), *(p.grad.clone() for p in cell.parameters())]
        seq.grad = None
        cell.zero_grad(set_to_none=True)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
    # the shortcut step from no state is bit for bit the step from explicit zeros (float32, as training runs)
    cell = cell.float()
    x = torch.randn(2, 4, 6, 6)
    z = torch.zeros(2, 3, 6, 6)
    a, b = cell.step(cell.conv_x.gates(x), None), cell(x, (z, z.clone()))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # a one-step sequence, or a single step from no state, still gives every parameter a gradient (DDP, decay)
    for inp in (x.unsqueeze(1), x):
        cell.zero_grad(set_to_none=True)
        h, c = cell(inp)
        (h.sum() + c.sum()).backward()
        assert all(p.grad is not None for p in cell.parameters())
        assert all(torch.count_nonzero(w.grad) == 0 for _, _, w in cell.gate_weights().values())
    with pytest.raises(ValueError, match="extra must be"):
        cell(x.unsqueeze(1).expand(2, 3, 4, 6, 6), extra=torch.zeros(2, 12, 6, 6))


def test_conv_lstm_xavier_is_per_gate():
    torch.manual_seed(2)
    cell = ConvLSTMCell(512, 512)
    # per-gate fans: 512*9 in, 512*9 out -> std sqrt(2 / (2*512*9)); the fused tensor would give sqrt(2/(5*512*9))
    expected = math.sqrt(2.0 / (512 * 9 + 512 * 9))
    for w in (cell.conv_x.weight, cell.conv_h.weight):
        for g in range(4):
            std = w[g * 512 : (g + 1) * 512].std().item()
            assert abs(std - expected) / expected < 0.01
    n_params = sum(p.numel() for p in cell.parameters())
    assert n_params == 8 * 512 * 512 * 9 + 4 * 512  # 18.88 M, as the original's eight convs


def test_conv_lstm_gradcheck(one_thread):
    torch.manual_seed(3)
    cell = ConvLSTMCell(2, 3).double()
    with torch.no_grad():
        for _, b, _ in cell.gate_weights().values():
            b.normal_()
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    h = torch.randn(1, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    c = torch.randn(1, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, h, c: cell(x, (h, c)), (x, h, c))
    # and w.r.t. the fused parameters (through the module, with torch.func.functional_call)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in cell.named_parameters()}
    names = list(params)

    def step(*ps):
        return torch.func.functional_call(cell, dict(zip(names, ps)), (x.detach(), (h.detach(), c.detach())))

    assert torch.autograd.gradcheck(step, tuple(params.values()), fast_mode=True)  # 552 parameters


# ------------------------------------------------------------------------------------------------ CAM attention


def test_cam_attention_numbers_and_gradients():
    torch.manual_seed(4)
    B, C, h, w, K = 3, 8, 4, 5, 10
    f_bn = torch.relu(torch.randn(B, C, h, w)).requires_grad_(True)
    f_nobn = torch.randn(B, C, h, w, requires_grad=True)
    fc = torch.nn.Linear(C, K)
    attended, attn, win = cam_attention(f_bn, f_nobn, fc.weight, fc.bias)

    assert attended.shape == (B, C, h, w) and attn.shape == (B, 1, h, w) and win.shape == (B,)
    torch.testing.assert_close(attn.sum(dim=(1, 2, 3)), torch.ones(B))
    assert (attn > 0).all()
    assert torch.equal(attended, f_nobn * attn)
    logits = fc(f_bn.mean(dim=(2, 3)))
    assert torch.equal(win, logits.argmax(1))
    # the map is the softmax of the winning class's CAM (weights only, no bias)
    for b in range(B):
        cam = torch.einsum("c,chw->hw", fc.weight[win[b]], f_bn[b])
        torch.testing.assert_close(attn[b, 0], torch.softmax(cam.flatten(), 0).view(h, w))

    attended.sum().backward()
    assert fc.weight.grad is not None and fc.weight.grad.abs().sum() > 0
    assert fc.bias.grad is None
    # only the winning rows of the fc get a gradient
    losers = sorted(set(range(K)) - set(win.tolist()))
    assert torch.count_nonzero(fc.weight.grad[losers]) == 0
    assert f_bn.grad is not None and f_nobn.grad is not None

    # the module wrapper reads the fc at call time
    a2, m2, w2 = CAMAttention()(f_bn, f_nobn, fc)
    assert torch.equal(a2, attended) and torch.equal(m2, attn) and torch.equal(w2, win)


def test_class_activation_map_is_the_winning_rows_dot_product_and_feeds_cam_attention():
    torch.manual_seed(5)
    B, C, h, w, K = 4, 6, 3, 5, 7
    f_bn = torch.relu(torch.randn(B, C, h, w)).requires_grad_(True)
    fc = torch.nn.Linear(C, K)
    cam, win = class_activation_map(f_bn, fc.weight, fc.bias)

    assert cam.shape == (B, 1, h, w) and win.shape == (B,)
    assert torch.equal(win, fc(f_bn.mean(dim=(2, 3))).argmax(1))
    by_hand = torch.einsum("bc,bchw->bhw", fc.weight[win].double(), f_bn.double())  # (B, h, w)
    torch.testing.assert_close(cam[:, 0].double(), by_hand, rtol=1e-6, atol=1e-6)
    # raw, not normalised: negative values survive (the LSTA prior is used before any softmax)
    assert (cam < 0).any()

    # cam_attention is its softmax over positions, bit for bit
    _, attn, win2 = cam_attention(f_bn, f_bn, fc.weight, fc.bias)
    assert torch.equal(win2, win)
    assert torch.equal(attn, torch.softmax(cam.flatten(1), 1).view(B, 1, h, w))

    cam.sum().backward()
    assert fc.bias.grad is None and f_bn.grad is not None
    with pytest.raises(ValueError, match="fc_weight must be"):
        class_activation_map(f_bn, torch.ones(K, C + 1))


def test_select_rows_gradient_is_reproducible_and_exact(two_threads):
    # 128 frames, 512 channels (stage 2's B*T and ResNet's C) picking among three classes, so every row repeats: with
    # weight[index] the accumulated gradient came out in a different order on most runs on a 2-thread CPU (~4e-6)
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(10, 512, generator=g, dtype=torch.float32)
    index = torch.randint(0, 3, (128,), generator=g)
    upstream = torch.randn(128, 512, generator=g)
    grads = []
    for _ in range(40):
        w = weight.clone().requires_grad_(True)
        rows = select_rows(w, index)
        assert torch.equal(rows, weight[index])  # the forward is the plain gather
        rows.backward(upstream)
        grads.append(w.grad)
    assert all(torch.equal(x, grads[0]) for x in grads[1:])
    # each row's gradient is the sum of the upstream rows of the frames that picked it (float64 by hand)
    by_hand = torch.zeros(10, 512, dtype=torch.float64)
    for i, k in enumerate(index.tolist()):
        by_hand[k] += upstream[i].double()
    torch.testing.assert_close(grads[0].double(), by_hand, rtol=0, atol=1e-5)
    assert torch.count_nonzero(grads[0][3:]) == 0


def test_cam_attention_fc_gradient_is_reproducible(two_threads):
    torch.manual_seed(1)
    f_bn = torch.relu(torch.randn(128, 512, 2, 2))
    fc = torch.nn.Linear(512, 5)
    grads = []
    for _ in range(20):
        fc.weight.grad = None
        attended, _, win = cam_attention(f_bn, f_bn, fc.weight, fc.bias)
        attended.square().sum().backward()
        grads.append(fc.weight.grad.clone())
    assert len(set(win.tolist())) < 128  # classes repeat, the case that was not reproducible
    assert all(torch.equal(x, grads[0]) for x in grads[1:])


def test_cam_attention_bias_changes_the_winner():
    f_bn = torch.ones(1, 2, 2, 2)
    weight = torch.tensor([[1.0, 0.0], [0.9, 0.0]])
    _, _, win = cam_attention(f_bn, f_bn, weight)
    assert win.item() == 0
    _, _, win = cam_attention(f_bn, f_bn, weight, torch.tensor([0.0, 1.0]))
    assert win.item() == 1


def test_cam_attention_rejects_bad_shapes():
    with pytest.raises(ValueError):
        cam_attention(torch.ones(1, 2, 3, 3), torch.ones(1, 2, 3, 2), torch.ones(5, 2))
    with pytest.raises(ValueError):
        cam_attention(torch.ones(1, 2, 3, 3), torch.ones(1, 2, 3, 3), torch.ones(5, 3))


# ------------------------------------------------------------------------------------------------ backbone


@pytest.fixture(scope="module")
def r18():
    torch.manual_seed(5)
    return build_trunk("resnet18").eval()


@pytest.fixture(scope="module")
def r34():
    torch.manual_seed(6)
    return build_trunk("resnet34").eval()


@pytest.mark.parametrize("arch", ["resnet18", "resnet34"])
@pytest.mark.parametrize("size", [224, 112])
def test_forward_features_shapes(arch, size, r18, r34):
    trunk = r18 if arch == "resnet18" else r34
    with torch.no_grad():
        out = trunk.forward_features(torch.randn(2, 3, size, size))
    s3, s4, s = size // 8, size // 16, math.ceil(size / 32)  # 112 px: 14, 7, 4
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "conv3": (2, 128, s3, s3),
        "conv4": (2, 256, s4, s4),
        "conv5": (2, 512, s, s),
        "conv5_nobn": (2, 512, s, s),
        "logits": (2, 1000),
    }
    assert trunk.num_features == 512
    assert trunk.feature_channels == {"conv3": 128, "conv4": 256, "conv5": 512}


def test_resnet50_shapes_and_nobn():
    torch.manual_seed(7)
    trunk = build_trunk("resnet50", num_classes=7).eval()
    assert trunk.num_features == 2048 and trunk.feature_channels == {"conv3": 512, "conv4": 1024, "conv5": 2048}
    captured = {}
    handle = trunk.layer4[-2].register_forward_hook(lambda m, a, o: captured.setdefault("x", o))  # last block's input
    with torch.no_grad():
        out = trunk(torch.randn(1, 3, 64, 64))
        handle.remove()
        assert tuple(out["conv3"].shape) == (1, 512, 8, 8)
        assert tuple(out["conv5"].shape) == (1, 2048, 2, 2) and tuple(out["logits"].shape) == (1, 7)
        blk, x = trunk.layer4[-1], captured["x"]
        c = blk.conv3(blk.relu(blk.bn2(blk.conv2(blk.relu(blk.bn1(blk.conv1(x)))))))
        torch.testing.assert_close(out["conv5_nobn"], c + x)
        torch.testing.assert_close(out["conv5"], torch.relu(blk.bn3(c) + x))


def test_conv5_nobn_relationship_and_single_pass(r34):
    blk = r34.layer4[-1]
    captured, calls = {}, []
    h2 = blk.conv2.register_forward_hook(lambda m, a, o: calls.append(o))
    h3 = r34.layer4[-2].register_forward_hook(lambda m, a, o: captured.__setitem__("x_in", o))
    try:
        with torch.no_grad():
            out = r34(torch.randn(2, 3, 224, 224))
    finally:
        h2.remove(), h3.remove()
    assert len(calls) == 1  # the last block's convs run once
    x = captured["x_in"]
    with torch.no_grad():
        c = blk.conv2(blk.relu(blk.bn1(blk.conv1(x))))
        torch.testing.assert_close(out["conv5_nobn"], c + x)
        torch.testing.assert_close(out["conv5"], torch.relu(blk.bn2(c) + x))
        # and conv5 recomputed from conv5_nobn alone: relu(bn2(nobn - x) + x)
        torch.testing.assert_close(out["conv5"], torch.relu(blk.bn2(out["conv5_nobn"] - x) + x), rtol=1e-4, atol=1e-5)
    assert (out["conv5_nobn"] < 0).any()  # no ReLU on the no-BN output


def test_conv5_and_logits_equal_torchvision():
    torch.manual_seed(8)
    tv = torchvision.models.resnet34(weights=None)
    for m in tv.modules():  # non-trivial BN statistics so BN placement matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.2, 0.2)
    tv.eval()
    trunk = ResNetTrunk("resnet34").eval()
    trunk.load_state_dict(tv.state_dict())  # same key names as torchvision
    x = torch.randn(2, 3, 112, 112)  # 112 px keeps it fast; the shapes at 224 are tested above
    with torch.no_grad():
        ref = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        ref3 = tv.layer2(tv.layer1(ref))
        ref4 = tv.layer3(ref3)
        ref5 = tv.layer4(ref4)
        out = trunk(x)
        torch.testing.assert_close(out["conv3"], ref3)
        torch.testing.assert_close(out["conv4"], ref4)
        torch.testing.assert_close(out["conv5"], ref5)
        torch.testing.assert_close(out["logits"], tv(x), rtol=1e-4, atol=1e-5)
        # forward_from('conv3') and forward_to give the same as the full path
        conv3 = trunk.forward_to(x, "conv3")
        torch.testing.assert_close(conv3, out["conv3"])
        rest = trunk.forward_from(conv3, "conv3")
        assert set(rest) == {"conv4", "conv5", "conv5_nobn", "logits"}
        for k, v in rest.items():
            torch.testing.assert_close(v, out[k])
        rest4 = trunk.forward_from(trunk.forward_to(x, "conv4"), "conv4")
        assert set(rest4) == {"conv5", "conv5_nobn", "logits"}
        for k, v in rest4.items():
            torch.testing.assert_close(v, out[k])
    with pytest.raises(ValueError):
        trunk.forward_from(conv3, "conv5")


def test_parameter_names_are_torchvision(r18):
    names = dict(r18.named_parameters())
    assert "layer4.1.conv1.weight" in names and "fc.weight" in names and "conv1.weight" in names
    assert set(r18.state_dict()) == set(torchvision.models.resnet18(weights=None).state_dict())


def test_set_batchnorm_eval(r18):
    r18.train()
    set_batchnorm_eval(r18)
    bns = [m for m in r18.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert r18.training and r18.layer1.training  # only the BNs changed
    before = r18.bn1.running_mean.clone()
    with torch.no_grad():
        r18(torch.randn(2, 3, 64, 64))
    assert torch.equal(before, r18.bn1.running_mean)
    r18.eval()


def test_unknown_arch():
    with pytest.raises(FparError, match="resnet34"):
        build_trunk("resnet99")


# ------------------------------------------------------------------------------------------------ input conv / weights


def test_adapt_input_conv_by_hand():
    w = torch.tensor([[[[1.0]], [[2.0]], [[6.0]]], [[[-3.0]], [[0.0]], [[0.0]]]])  # (2, 3, 1, 1)
    out = adapt_input_conv(w, 10)
    assert out.shape == (2, 10, 1, 1)
    assert torch.equal(out[0, :, 0, 0], torch.full((10,), 3.0))
    assert torch.equal(out[1, :, 0, 0], torch.full((10,), -1.0))
    assert torch.equal(adapt_input_conv(w, 1)[:, 0], w.mean(1))
    assert torch.equal(adapt_input_conv(w, 3), torch.cat([w.mean(1, keepdim=True)] * 3, 1))  # not the identity
    out[0, 0] = 99.0  # a real tensor, not a view of the input
    assert w.max() == 6.0


def _save_tv_resnet18(path, *, wrap=True, seed=9):
    torch.manual_seed(seed)
    tv = torchvision.models.resnet18(weights=None)
    sd = tv.state_dict()
    obj = {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3} if wrap else sd
    torch.save(obj, path)
    return sd


def test_load_local_state_dict_wrapped(tmp_path):
    path = tmp_path / "r18.pth"
    sd = _save_tv_resnet18(path)
    trunk = build_trunk("resnet18", pretrained=str(path))
    got = trunk.state_dict()
    assert set(got) == set(sd)
    for k in sd:
        assert torch.equal(got[k], sd[k]), k


def test_load_local_flow_channels_and_num_classes(tmp_path, caplog):
    path = tmp_path / "r18.pth"
    sd = _save_tv_resnet18(path, wrap=False)
    torch.manual_seed(10)
    fresh_fc = ResNetTrunk("resnet18", num_classes=61).fc.weight.clone()
    torch.manual_seed(10)
    with caplog.at_level(logging.WARNING, logger="fpar.models.backbone"):
        trunk = build_trunk("resnet18", pretrained=str(path), in_chans=10, num_classes=61)
    assert torch.equal(trunk.conv1.weight, adapt_input_conv(sd["conv1.weight"], 10))
    assert trunk.conv1.weight.shape == (64, 10, 7, 7)
    assert torch.equal(trunk.layer3[1].conv2.weight, sd["layer3.1.conv2.weight"])
    assert torch.equal(trunk.fc.weight, fresh_fc)  # left at its init
    assert any("fc" in r.getMessage() for r in caplog.records)
    assert trunk(torch.randn(1, 10, 64, 64))["logits"].shape == (1, 61)


def test_missing_and_mismatched_files(tmp_path):
    missing = tmp_path / "nope" / "resnet34.pth"
    with pytest.raises(FparError) as ei:
        build_trunk("resnet34", pretrained=str(missing))
    assert str(missing) in str(ei.value)

    path = tmp_path / "r18.pth"
    _save_tv_resnet18(path)
    with pytest.raises(FparError) as ei:
        build_trunk("resnet34", pretrained=str(path))  # resnet18 weights into resnet34
    assert str(path) in str(ei.value) and "missing keys" in str(ei.value)

    junk = tmp_path / "junk.pth"
    torch.save({"a.weight": torch.zeros(3)}, junk)
    with pytest.raises(FparError) as ei:
        build_trunk("resnet18", pretrained=str(junk))
    assert str(junk) in str(ei.value) and "unexpected keys: a.weight" in str(ei.value)

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(FparError, match="cannot read"):
        build_trunk("resnet18", pretrained=str(garbage))


def test_imagenet_from_hub_cache_only(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    hub = tmp_path / "torch" / "hub"
    assert torch.hub.get_dir() == str(hub)
    expected = hub / "checkpoints" / "resnet18-f37072fd.pth"
    assert imagenet_checkpoint_path("resnet18") == expected
    with pytest.raises(FparError) as ei:
        build_trunk("resnet18", pretrained="imagenet")
    assert str(expected) in str(ei.value) and "never downloads" in str(ei.value)
    assert not expected.exists()  # nothing was fetched

    expected.parent.mkdir(parents=True)
    sd = _save_tv_resnet18(expected, wrap=False)
    trunk = build_trunk("resnet18", pretrained="ImageNet")
    assert torch.equal(trunk.layer4[1].conv2.weight, sd["layer4.1.conv2.weight"])
    assert torch.equal(trunk.fc.bias, sd["fc.bias"])


def test_imagenet_legacy_filename_and_old_checkpoints(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    legacy = tmp_path / "hub" / "checkpoints" / "resnet18-5c106cde.pth"
    legacy.parent.mkdir(parents=True)
    torch.manual_seed(11)
    sd = torchvision.models.resnet18(weights=None).state_dict()
    old = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}  # pre-0.4 checkpoints lack these
    torch.save(old, legacy)
    trunk = build_trunk("resnet18", pretrained="imagenet")
    assert torch.equal(trunk.conv1.weight, sd["conv1.weight"])
