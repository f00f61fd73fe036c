"""Stage-2 training step speed (layer4 + ConvLSTM + classifier trained), fpar against the original code's way.

    python benchmarks/bench_stage2.py [--frames 16] [--size 224] [--batch 4] [--rounds 3] [--threads 2]
                                      [--compile] [--matmul 4096] [--json benchmarks/results/stage2.json]

One Adam step (forward, cross-entropy, backward, update) on the same random clips, in alternating rounds (medians),
with the same weights (ResNet-34 trunk, ConvLSTM 512, CAM):

* ``baseline``: the 2018 code's way, written here: each frame through the trunk in a Python loop (frozen parameters
  with ``requires_grad=False``), CAM per frame, the ConvLSTM as eight separate convolutions;
* ``fpar_nchw``: fpar's model (all frames of the batch through the trunk at once, per-gate ConvLSTM) in the
  default memory format;
* ``fpar_whole``: the same with ``train.channels_last``: conv weights in channels_last;
* ``fpar``: the trainer's defaults: channels_last, and the frozen prefix run ``train.frozen_chunk`` frames at a time
  (layer4 and the rest on the whole batch);
* ``fpar_compiled`` (``--compile``): that, with ``train.compile`` (the trunk and the ConvLSTM cell compiled by
  inductor; the compilation is in the warm-up, not timed).

Every way runs with denormals flushed to zero, as the trainer runs (``train.flush_denormal``).

The frozen prefix (stem to layer3) keeps no graph in either fpar variant: nothing in it requires grad, so autograd
records nothing there (tests/test_models.py::test_frozen_trunk_keeps_no_graph). Nor does it in the baseline, whose
frozen parameters do not require grad either: every way does the same arithmetic. So the step's FLOPs
(``torch.utils.flop_counter``, forward and backward, counted for the baseline and for fpar) are printed with each way's
GFLOP/s and its share of a ``--matmul``^3 fp32 matmul timed in the same rounds: what the levers can still give is
only a higher rate on the same FLOPs. Figures are clips per second.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from fpar import create_model
from fpar.config import TrainConfig
from fpar.engine.build import compile_model, to_channels_last
from fpar.engine.stages import apply_trainable, set_train_mode
from fpar.models.layers.attention import cam_attention
from fpar.registry import model_spec
from fpar.utils import flush_denormal

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_convlstm import EightConvCell  # noqa: E402  (the original cell, written once)
from common import emit_json  # noqa: E402  (benchmarks/common.py)

STAGE2 = [r"^lstm\.", r"^classifier\.", r"^backbone\.layer4\.\d+\.conv[12]\.weight$", r"^backbone\.fc\.weight$"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also fpar with train.compile")
    ap.add_argument("--matmul", type=int, default=4096, help="size of the square fp32 matmul timed for the rate")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    with flush_denormal(True):
        run(a)


def run(a) -> None:
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = create_model("ego_rnn", num_classes=61, pretrained=None, input_size=a.size)
    apply_trainable(model, STAGE2)
    set_train_mode(model, [])
    x = torch.randn(a.batch, a.frames, 3, a.size, a.size)
    y = torch.randint(0, 61, (a.batch,))

    # The original's way: the same weights, frame by frame, eight-conv cell.
    base = copy.deepcopy(model)
    trunk = base.backbone
    lstm = EightConvCell(base.lstm)
    head = base.classifier

    def baseline_logits() -> torch.Tensor:
        state = None
        for t in range(x.shape[1]):
            feats = trunk.forward_features(x[:, t])
            attended, _, _ = cam_attention(feats["conv5"], feats["conv5_nobn"], trunk.fc.weight, trunk.fc.bias)
            state = lstm(attended, state)
        return head.outputs(base.dropout(state[1].mean(dim=(2, 3))))["logits"]

    nchw = copy.deepcopy(model)
    whole = to_channels_last(copy.deepcopy(model))
    nhwc = to_channels_last(copy.deepcopy(model))
    nhwc.backbone.frozen_chunk = TrainConfig().frozen_chunk  # as the trainer sets it

    def stepper(params, logits_fn):
        opt = torch.optim.Adam([p for p in params if p.requires_grad], lr=1e-4, eps=1e-4)

        def step() -> None:
            loss = F.cross_entropy(logits_fn(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        return step

    base_params = [*trunk.parameters(), *lstm.parameters(), *head.parameters()]
    cases = {
        "baseline": stepper(base_params, baseline_logits),
        "fpar_nchw": stepper(nchw.parameters(), lambda: nchw(x).logits),
        "fpar_whole": stepper(whole.parameters(), lambda: whole(x).logits),
        "fpar": stepper(nhwc.parameters(), lambda: nhwc(x).logits),
    }
    if a.compile:
        compiled = copy.deepcopy(nhwc)  # the trainer's defaults (channels_last, frozen_chunk), then compiled
        compile_model(compiled, model_spec("ego_rnn"))
        cases["fpar_compiled"] = stepper(compiled.parameters(), lambda: compiled(x).logits)
    for fn in cases.values():
        fn()  # warm-up (and Adam state; compilation)
        fn()
    # The FLOPs of one step (forward, loss, backward; Adam's elementwise update is not counted), for the two
    # ways whose arithmetic differs in form: the same count says every lever here only changes the rate.
    step_flops = {}
    for name in ("baseline", "fpar"):
        with FlopCounterMode(display=False) as fc:
            cases[name]()
        step_flops[name] = fc.get_total_flops()
    mat_a, mat_b = torch.randn(a.matmul, a.matmul), torch.randn(a.matmul, a.matmul)
    cases_timed = {**cases, "matmul": lambda: mat_a @ mat_b}
    cases_timed["matmul"]()
    times: dict[str, list[float]] = {k: [] for k in cases_timed}
    for r in range(a.rounds):
        for name, fn in cases_timed.items() if r % 2 == 0 else list(cases_timed.items())[::-1]:
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    mm_rate = 2 * a.matmul**3 / statistics.median(times.pop("matmul"))
    rate = {k: a.batch / statistics.median(v) for k, v in times.items()}
    # each way's rate from its own count (the fpar ways share one: the same model in another memory format)
    gflops = {k: step_flops.get(k, step_flops["fpar"]) / statistics.median(v) / 1e9 for k, v in times.items()}
    out = {
        "frames": a.frames,
        "size": a.size,
        "batch": a.batch,
        "threads": torch.get_num_threads(),
        "rounds": a.rounds,
        "clips_per_s": {k: round(v, 3) for k, v in rate.items()},
        "fpar_vs_baseline": round(rate["fpar"] / rate["baseline"], 2),
        "fpar_nchw_vs_baseline": round(rate["fpar_nchw"] / rate["baseline"], 2),
        "fpar_whole_vs_baseline": round(rate["fpar_whole"] / rate["baseline"], 2),
        "frozen_chunk": nhwc.backbone.frozen_chunk,
        "denormals": "flushed",
        "step_gflops": {k: round(v / 1e9, 1) for k, v in step_flops.items()},
        "matmul": f"{a.matmul}^3 fp32",
        "matmul_gflops_per_s": round(mm_rate / 1e9, 1),
        "gflops_per_s": {k: round(v, 1) for k, v in gflops.items()},
        "share_of_matmul_rate": {k: round(v * 1e9 / mm_rate, 3) for k, v in gflops.items()},
        # fpar's FLOPs at 1.5x the baseline's clips/s, as a share of the matmul's rate
        "share_needed_for_1.5x": round(1.5 * rate["baseline"] / a.batch * step_flops["fpar"] / mm_rate, 3),
    }
    if a.compile:
        out["fpar_compiled_vs_baseline"] = round(rate["fpar_compiled"] / rate["baseline"], 2)
    emit_json(out, a.json)


if __name__ == "__main__":
    main()
