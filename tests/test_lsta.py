"""LSTA: the cell against a slow per-gate reference of its equations, gradients, attention maps, the original
repo's weight names, and a tiny cross-modal two-stream run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fpar.config import load_config
from fpar.engine.run import open_run
from fpar.engine.stages import apply_trainable, set_train_mode
from fpar.engine.trainer import train
from fpar.models.backbone import build_trunk
from fpar.models.layers.lsta_cell import LSTACell
from fpar.models.lsta import LSTA, NO_GRADIENT, STAGE1, STAGE2, from_original, to_original
from tests.conftest import tiny_args

SHAPES = Path(__file__).parent / "data" / "lsta_state_dict_shapes.json"


def reference_step(cell: LSTACell, x, cam, state):
    """One LSTA step written from the equations (lsta.md §1) with one conv per gate, as the original declares them."""
    a, s, c, o = state
    mem = cell.mem_size

    def conv(inp, w, b=None):
        return F.conv2d(inp, w, b, padding=1)

    ws, bs, wc = cell.conv_s.weight, cell.conv_s.bias, cell.conv_cam.weight
    pre = {g: conv(s, ws[i : i + 1], bs[i : i + 1]) + conv(cam, wc[i : i + 1]) for i, g in enumerate("ifao")}
    a = torch.sigmoid(pre["f"]) * a + torch.sigmoid(pre["i"]) * torch.tanh(pre["a"])
    s = torch.sigmoid(pre["o"]) * torch.tanh(a)
    b, _, hh, ww = x.shape
    u = torch.exp(s + cam) / torch.exp(s + cam).sum(dim=(2, 3), keepdim=True)
    xb = x * u
    h = o * torch.tanh(c)
    wx, bx, wh = cell.conv_x.weight, cell.conv_x.bias, cell.conv_h.weight
    g = {k: conv(xb, wx[i * mem : (i + 1) * mem], bx[i * mem : (i + 1) * mem]) + conv(h, wh[i * mem : (i + 1) * mem])
         for i, k in enumerate("ifc")}  # fmt: skip
    c = torch.sigmoid(g["f"]) * c + torch.sigmoid(g["i"]) * torch.tanh(g["c"])
    z = c.mean(dim=(2, 3)) @ cell.c_classifier.weight.T + xb.mean(dim=(2, 3)) @ cell.coupling_fc.weight.T
    k = z.argmax(1)
    c_hat = torch.stack([cell.c_classifier.weight[k[n]][:, None, None] * c[n] for n in range(b)])
    o = torch.sigmoid(conv(h, cell.conv_o_h.weight, cell.conv_o_h.bias) + conv(c_hat, cell.conv_o_c.weight))
    return xb, u, (a, s, c, o)


def test_cell_matches_the_per_gate_reference_at_every_step():
    torch.manual_seed(0)
    cell = LSTACell(6, 5, out_pool_size=4).double()
    for p in cell.parameters():  # non-zero biases too, so that every term is checked
        p.data.normal_(0, 0.5)
    x = torch.randn(3, 4, 6, 5, 5, dtype=torch.float64)  # (B, T, C, h, w)
    cam = torch.randn(3, 4, 1, 5, 5, dtype=torch.float64)
    state = ref = cell.zero_state(x[:, 0])
    for t in range(4):
        xb, u, state = cell(x[:, t], cam[:, t], state)
        rxb, ru, ref = reference_step(cell, x[:, t], cam[:, t], ref)
        torch.testing.assert_close(u, ru, rtol=0, atol=1e-6)
        torch.testing.assert_close(xb, rxb, rtol=0, atol=1e-6)
        for got, want in zip(state, ref):  # a, s, c, o
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        torch.testing.assert_close(u.sum(dim=(2, 3)), torch.ones(3, 1, dtype=torch.float64))


def test_cell_gradcheck():
    torch.manual_seed(1)
    cell = LSTACell(2, 2, out_pool_size=3).double()
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    cam = torch.randn(1, 1, 3, 3, dtype=torch.float64, requires_grad=True)

    def two_steps(x, cam):
        _, u, st = cell(x, cam)
        _, u2, st = cell(x * 0.5, cam, st)
        return u2, st[2], st[3]

    assert torch.autograd.gradcheck(two_steps, (x, cam), eps=1e-6, atol=1e-5)


def tiny_lsta(**kw) -> LSTA:
    torch.manual_seed(0)
    return LSTA(backbone=build_trunk("resnet18", pretrained=None, num_classes=10), num_classes=5, mem_size=8, **kw)


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_exactly_the_stage_parameters_get_gradients(stage):
    model = tiny_lsta(out_pool_size=6)
    patterns = STAGE1 if stage == "stage1" else STAGE2
    trainable = apply_trainable(model, patterns)
    set_train_mode(model, [])
    out = model(torch.randn(2, 3, 3, 64, 64))
    F.cross_entropy(out.logits, torch.tensor([0, 3])).backward()
    attn = out.attn
    torch.testing.assert_close(attn.sum(dim=(2, 3)), torch.ones(2, 3))
    for name, p in model.named_parameters():
        if name not in trainable:
            assert p.grad is None, name  # frozen: no graph, no gradient
        elif NO_GRADIENT.search(name):
            assert p.grad is None, f"{name} is used only inside an argmax and can never get a gradient"
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert ("backbone.fc.weight" in trainable) == (stage == "stage2")


def test_original_weight_names_map_both_ways():
    spec = json.loads(SHAPES.read_text())
    assert spec["constructor"] == "attentionModel(num_classes=61, mem_size=512, c_cam_classes=100)"
    g = torch.Generator().manual_seed(0)
    orig = {k: torch.randn(v, generator=g) if v else torch.tensor(3) for k, v in spec["tensors"].items()}
    orig["fc.weight"], orig["fc.bias"] = orig["classifier.1.weight"], orig["classifier.1.bias"]  # one module, twice
    model = LSTA(backbone=build_trunk("resnet34", pretrained=None), num_classes=61, mem_size=512, out_pool_size=100)
    mapped = from_original(orig)
    missing, unexpected = model.load_state_dict(mapped, strict=True), None
    assert not missing.missing_keys and not missing.unexpected_keys and unexpected is None
    back = to_original(model.state_dict())
    assert set(back) == set(spec["tensors"])
    for k, v in spec["tensors"].items():
        assert list(back[k].shape) == v, k
        assert torch.equal(back[k], orig[k]), k
    # the fused gates hold the original convs in the documented order
    assert torch.equal(model.cell.conv_x.weight[512:1024], orig["lsta_cell.conv_f_x.weight"])
    assert torch.equal(model.cell.conv_s.weight[2], orig["lsta_cell.conv_a_s.weight"][0])
    assert torch.equal(model.cell.conv_o_h.weight, orig["lsta_cell.conv_o_x.weight"])  # applied to h in both


def test_tiny_cross_modal_two_stream_moves_both_fusion_convs(tiny_root, tmp_path):
    common = [*tiny_args(tiny_root), "data.flow_stack=2", "train.epochs=1", "train.max_batches=2"]
    rgb, flow = tmp_path / "rgb", tmp_path / "flow"
    train(load_config(None, [*common, "model.name=lsta", "model.lsta.mem_size=8", f"out={rgb}"]), log=lambda m: None)
    train(
        load_config(None, [*common, "model.name=lsta_flow", "model.lsta_flow.mem_size=8", "train.trainable=[.]",
                           f"out={flow}"]),
        log=lambda m: None,
    )  # fmt: skip
    ts = tmp_path / "ts"
    cfg = load_config(
        Path(__file__).resolve().parents[1] / "fpar" / "configs" / "lsta_two_stream.yaml",
        [*common, f"model.lsta_two_stream.rgb_run={rgb}", f"model.lsta_two_stream.flow_run={flow}", f"out={ts}",
         "optim.lr=0.1"],
    )  # fmt: skip
    train(cfg, log=lambda m: None)
    model = open_run(ts).model
    for conv in (model.flow_to_rgb, model.rgb_to_flow):  # zero at the start (the streams side by side) ...
        assert conv.weight.abs().sum() > 0  # ... and trained
    # the streams came from their runs: the flow stream's first conv is the flow run's (layer4 only trains here)
    assert torch.equal(model.flow.backbone.conv1.weight, open_run(flow).model.backbone.conv1.weight)
    # the late-fusion baseline: the two_stream family with an LSTA run as its RGB stream
    fr = tmp_path / "flow_resnet"
    train(load_config(None, [*common, "model.name=flow_resnet", f"out={fr}"]), log=lambda m: None)
    late = load_config(
        Path(__file__).resolve().parents[1] / "fpar" / "configs" / "lsta_late_fusion.yaml",
        [*common, f"model.two_stream.rgb_run={rgb}", f"model.two_stream.flow_run={fr}", f"out={tmp_path / 'late'}"],
    )
    assert train(late, log=lambda m: None)["model"] == "two_stream"
    ego = tmp_path / "ego"
    train(load_config(None, [*common, f"out={ego}"]), log=lambda m: None)
    for rgb_run, match in ((flow, "this slot needs a model that reads rgb"), (ego, "takes a run of lsta there")):
        with pytest.raises(Exception, match=match):
            bad = [*common, "model.name=lsta_two_stream", f"model.lsta_two_stream.rgb_run={rgb_run}",
                   f"model.lsta_two_stream.flow_run={flow}", f"out={tmp_path / 'bad'}"]  # fmt: skip
            train(load_config(None, bad), log=lambda m: None)
